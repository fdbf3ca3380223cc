"""Ring datagrams as the core receives them, token hold on an idle ring, merge detection.

Mixed into :class:`ringd.core.totem.TotemCore` (split out to keep each module short); it only
uses attributes that class defines. Ordering and delivery rules themselves are in
``totem_ring``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING

from ringd.core.totem_events import Broadcast
from ringd.core.totem_ring import emit_chunks
from ringd.core.totem_state import Reason, State
from ringd.totem_messages import (
    CommitToken,
    Mcast,
    MergeDetect,
    Recovered,
    RingId,
    Token,
    TokenAck,
    TokenHoldCancel,
)

if TYPE_CHECKING:
    from ringd.core.totem import TotemCore


class ReceiveMixin:
    """Datagram, token-hold and merge-detect handlers of :class:`TotemCore`."""

    _holder: str | None

    def _hold(self: TotemCore, token: Token, out: list) -> None:
        """Idle ring: keep the token a while instead of spinning it; tell others we live."""
        ring = self.ring
        assert ring is not None
        self._held = token
        self._hold_until = self._now + self._hold_s
        self.stats.token_held += 1
        if self._deaf and len(ring.members) == 1:
            return  # see _failed_to_receive: do not invite others to merge with us yet
        self.stats.merge_detect_tx += 1
        out.append(Broadcast(msg=MergeDetect(ring_id=ring.ring_id)))

    def _release_hold(self: TotemCore, out: list, to: str | None = None) -> None:
        """Visit with the held token now and forward it (to ``to`` instead of our successor:
        see :meth:`_on_hold_cancel`)."""
        token = self._held
        if token is None:
            return
        self._held = None
        self._hold_until = math.inf
        self._releasing = True
        self._release_to = to
        try:
            self._on_token(token, self.name, out)
        finally:
            self._releasing = False
            self._release_to = None

    def _on_hold_cancel(self: TotemCore, msg: TokenHoldCancel, sender: str, out: list) -> None:
        ring = self.ring
        if self._held is None or ring is None or msg.ring_id != ring.ring_id:
            return
        self.stats.hold_cancels += 1
        ring.idle_visits = 0
        # The token goes straight to the member that has something to send, skipping those
        # between us and it for this rotation: two hops from a send to its multicast
        # instead of the cancel plus the way round to it. Safe because the ring was idle
        # when we held (at least one whole rotation in which every member saw aru == seq
        # and asked for nothing: everyone has everything; see Ring.idle) and we send
        # nothing on this visit, so the aru we forward claims nothing the skipped members
        # have not confirmed; they see the token later in this same rotation.
        jump = sender != self.name and sender in ring.members and self._app.backlog() == 0
        self._release_hold(out, to=sender if jump else None)
        if jump:
            self.stats.token_jumps += 1

    # --- Datagrams ------------------------------------------------------------------------

    def _make_emit(self: TotemCore) -> Callable[[list, Mcast, int, RingId], None]:
        reassembler = self.reassembler
        stats = self.stats

        def emit(out: list, mcast: Mcast, seq: int, ring_id: RingId) -> None:
            emit_chunks(out, mcast, seq, ring_id, reassembler, stats)

        return emit

    def _on_mcast(self: TotemCore, msg: Mcast, sender: str, out: list) -> None:
        state = self.state
        if state is State.OPERATIONAL or state is State.GATHER:
            ring = self.ring
        elif state is State.RECOVERY:
            ring = self.new_ring
        else:
            ring = None  # COMMIT: our entry is sent; old-ring datagrams now come only as Recovered
        if ring is not None and msg.ring_id == ring.ring_id:
            members = ring.members
            if sender not in members or msg.origin not in members:
                # Only members multicast on a ring. Stored, such a datagram (forged, or a
                # bug) left a ring of one unable to hold its token, passed to itself
                # without end (found by fuzzing).
                self.stats.nonmember_rx += 1
                return
            if ring.store(msg.seq, msg):
                self.stats.mcast_rx += 1
                if state is State.OPERATIONAL:
                    self._progress(msg.seq)
                    ring.deliver(out, self._emit)
            else:
                self.stats.mcast_dup_rx += 1
            return
        if self.ring is not None and msg.ring_id == self.ring.ring_id:
            return  # our old ring, while in Commit/Recovery
        self._foreign(sender, msg.ring_id, out)

    def _on_recovered(self: TotemCore, msg: Recovered, sender: str, out: list) -> None:
        state = self.state
        ring = self.new_ring if state is State.RECOVERY else (
            self.ring if state is State.OPERATIONAL else None)
        if ring is None or msg.ring_id != ring.ring_id:
            if ring is None or msg.ring_id.seq > ring.ring_id.seq:
                self._foreign(sender, msg.ring_id, out)
            return
        if sender not in ring.members or msg.sender not in ring.members:
            self.stats.nonmember_rx += 1  # as in _on_mcast
            return
        if not ring.store(msg.seq, msg):
            self.stats.mcast_dup_rx += 1
            return
        self.stats.mcast_rx += 1
        old = self.ring
        if state is State.RECOVERY and old is not None and msg.old_ring_id == old.ring_id:
            old.store(msg.old_seq, msg.mcast if msg.mcast is not None else msg)
        if state is State.OPERATIONAL:
            self._progress(msg.seq)
            ring.deliver(out, self._emit)

    def _on_token_ack(self: TotemCore, ack: TokenAck, sender: str, out: list) -> None:
        last = self._last_sent
        if (last is not None and last[0] == sender and type(last[1]) in (Token, CommitToken)
                and last[1].ring_id == ack.ring_id and last[1].token_seq == ack.token_seq):
            self._retransmit_at = math.inf
            self._last_sent = None

    def _progress(self: TotemCore, seq: int) -> None:
        """A datagram past the token we forwarded: our successor has it, stop resending."""
        last = self._last_sent
        if last is not None and type(last[1]) is Token and seq > last[1].seq:
            self._retransmit_at = math.inf
            self._last_sent = None

    def _foreign(self: TotemCore, sender: str, ring_id: RingId, out: list) -> None:
        """A message of another ring: merge if it comes from outside or from a newer ring."""
        self.stats.foreign_rx += 1
        if (self.state is not State.OPERATIONAL or sender == self.name
                or self.flaps.held_out(sender, self._now)):
            return
        ring = self.ring
        assert ring is not None
        if sender not in ring.members or ring_id.seq > ring.ring_id.seq:
            self._enter_gather(Reason.FOREIGN_RING, out, proc={sender})

    def _on_merge_detect(self: TotemCore, msg: MergeDetect, sender: str, out: list) -> None:
        self.stats.merge_detect_rx += 1
        if sender == self.name or self.state is not State.OPERATIONAL:
            return
        ring = self.ring
        assert ring is not None
        if msg.ring_id == ring.ring_id:
            # A member holds the idle token: the ring is alive.
            self._token_loss_at = self._now + self.token_timeout(len(ring.members))
            self._holder = sender
            if self._last_sent is not None and self._last_sent[0] == sender:
                self._retransmit_at = math.inf
                self._last_sent = None
            if self._wake_pending:
                self._wake_held_token(out)  # it holds the token that passed us before our send
            return
        self._foreign(sender, msg.ring_id, out)
