"""How the driver is woken while it waits for datagrams: an eventfd it waits on beside the
UDP sockets, written when another task queued an event or when its next deadline passed.

Why not a cancel scope with a deadline around each wait: the driver waits once per token
hop, and entering and leaving a scope (registering and dropping its deadline) costs a
noticeable part of a hop. Here the wait itself is bare; a separate timer task sleeps until
the driver's deadline. Deadlines mostly move later (each token visit pushes the token-loss
timer out): the timer task then wakes at the earlier one and just sleeps again. One that
moves earlier is set on the timer's cancel scope in place, which re-files it in trio's
deadline heap without waking the timer task (cancelling the scope to re-arm it woke the
task about 0.6 times per message with 3 nodes each sending 100 msgs/s, one token hop in 12).
"""

from __future__ import annotations

import math
import os

import trio


class Alarm:
    """Wakes a task parked on :attr:`fd` (plus its sockets) at a deadline or on demand."""

    def __init__(self) -> None:
        self.fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self.deadline = math.inf  # when the parked task must wake up
        self._armed_at = math.inf  # what the timer task sleeps until
        self._timer_scope: trio.CancelScope | None = None
        self._parked = False
        self._rung = False

    def park(self, deadline: float) -> None:
        """The owner is about to wait on :attr:`fd`: wake it at ``deadline`` at the latest."""
        self.deadline = deadline
        self._parked = True
        if deadline < self._armed_at:
            self._armed_at = deadline
            if self._timer_scope is not None:
                self._timer_scope.deadline = deadline

    def unpark(self) -> None:
        """The owner woke up (for whatever reason): reset the eventfd if it was written."""
        self._parked = False
        if self._rung:
            self._rung = False
            try:
                os.eventfd_read(self.fd)
            except BlockingIOError:
                pass

    def ring(self) -> None:
        """Wake the owner now if it is parked (from another task of the same thread)."""
        if self._parked and not self._rung:
            self._rung = True
            os.eventfd_write(self.fd, 1)

    async def run_timer(self) -> None:
        """The timer task: ring when the owner's deadline passes while it is parked."""
        while True:
            with trio.CancelScope(deadline=self._armed_at) as self._timer_scope:
                await trio.sleep_forever()
            self._timer_scope = None
            if trio.current_time() >= self.deadline:
                self.ring()
                # Sleep until the owner parks with a new deadline (which sets ours).
                self._armed_at = math.inf
            else:
                self._armed_at = self.deadline  # it moved later meanwhile

    def close(self) -> None:
        os.close(self.fd)
