"""The Trio client: a :class:`~ringd.client.connection.ClientConnection` whose bytes are moved
by the tasks that use it. It only does I/O and decides who does it."""

from __future__ import annotations

import os
import socket as stdlib_socket
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from types import TracebackType
from typing import Any

import trio

from ringd.client.connection import (
    EVENT_FRAMES_MAX,
    READ_BYTES_MAX,
    REQUEST_TIMEOUT_S,
    SUBMIT_FRAME_BYTES,
    SUBMIT_FRAME_CALLS,
    SUBMIT_PENDING_BYTES_MAX,
    ClientConnection,
    ConnectionStats,
    Ticket,
    message_items,
    plain_reply,
)
from ringd.client.errors import ClientError, ConnectionLost, DaemonTimeout, ProtocolError
from ringd.client.events import Batch, Event, decode_event, expand
from ringd.client.socket_path import connect_error, resolve_socket
from ringd.runtime.stream import SocketConnection

# Event frames read ahead for the application (a request waiting for its reply reads past
# the events before it). When this many wait, requests stop reading the socket, so an
# application that does not consume is eventually dropped by the daemon (which buffers
# 4096 frames per connection) instead of growing our memory without bound.
EVENT_FRAMES_BUFFERED = EVENT_FRAMES_MAX


async def open_connection(path: str | Path | None) -> tuple[SocketConnection, Path]:
    """A connected :class:`SocketConnection` to the daemon's socket (default if None): no
    scheduler round trip per read or write when the kernel is ready, as the
    ordered-delivery path is latency-bound."""
    sock_path = resolve_socket(path)
    try:
        stream = await trio.open_unix_socket(os.fspath(sock_path))
    except OSError as exc:
        raise connect_error(sock_path, exc) from None
    fd = stream.socket.detach()
    return SocketConnection(stdlib_socket.socket(fileno=fd)), sock_path


class RingClient:
    """One connection to the local daemon for ordered group messaging (Trio).

    Use it as an async context manager. Requests may be made concurrently from several
    tasks (they are pipelined, and concurrent sends are coalesced: see :meth:`send`);
    events are read by one consumer with :meth:`events` or :meth:`batches`. A client that
    joined groups must keep reading events, or the daemon drops it.

    There is no background task: whichever task waits (the consumer for events, a request
    for its reply) reads the socket and hands what it read to the others, and writes what
    is queued if nobody else is writing. A delivered event then reaches the consumer
    without a hand-over between tasks, which at low rates is a good part of the client's
    share of the delivery latency.
    """

    def __init__(self, stream: SocketConnection, path: Path,
                 events_buffered: int = EVENT_FRAMES_BUFFERED) -> None:
        self._stream = stream
        self.path = path
        # A request stops reading once events_buffered event frames wait unconsumed.
        self._conn = ClientConnection(f"daemon at {path}", events_max=events_buffered)
        self._reading = False  # a task is reading the socket for everyone
        self._writing = False  # a task is writing (or gathering sends to write)
        self._read_scope: trio.CancelScope | None = None  # the reader's, to hand it a write
        self._consumer: trio.lowlevel.Task | None = None  # the task iterating the events
        # Tasks parked until progress ends their wait: what they wait for, and whether they
        # are the event consumer (it may read however many events wait).
        self._parked: dict[trio.lowlevel.Task, tuple[Callable[[], bool], bool]] = {}
        self._open = False
        self._closing = False

    @classmethod
    async def connect(cls, path: str | Path | None = None) -> RingClient:
        """Connect to the daemon at ``path`` (default socket if None); enter it with ``async with``."""
        return cls(*await open_connection(path))

    async def __aenter__(self) -> RingClient:
        self._open = True
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        try:
            if exc_type is None and self._conn.submitted_open and self._conn.error is None:
                await self.flush()  # like closing a file: what was submitted goes out
        finally:
            await self.aclose()

    async def aclose(self) -> None:
        """Close the connection (the daemon drops our group memberships); tasks waiting on
        it get :class:`ConnectionLost` (the event consumer just stops). Submitted sends not
        yet written are dropped: :meth:`flush` first (leaving ``async with`` does)."""
        self._closing = True
        self._open = False
        self._conn.fail(ConnectionLost(f"connection to {self.path} closed by this client"))
        self._wake_parked()  # before the await: __aexit__ often runs in a cancelled scope
        await self._stream.aclose()

    @property
    def stats(self) -> ConnectionStats:
        """The connection's counters (request frames, send calls coalesced into them, ...)."""
        return self._conn.stats

    def _check_usable(self) -> None:
        if not self._open:
            raise ClientError(f"{type(self).__name__} is not open: use `async with`")
        if self._conn.error is not None:
            raise self._conn.error

    def _is_consumer(self) -> bool:
        # The consumer's own task may read past the event bound: nobody else would.
        return self._consumer is not None and self._consumer is trio.lowlevel.current_task()

    # --- requests ---------------------------------------------------------------------

    async def request(self, op: str, **fields: Any) -> dict[str, Any]:
        """Send ``{"op": op, **fields}`` and return the reply map (``ok`` true), else raise
        :class:`RequestFailed` (:class:`TryAgain` for a full queue) or :class:`ConnectionLost`."""
        self._check_usable()
        return await self._outcome(self._conn.request(op, fields))

    async def _outcome(self, ticket: Ticket) -> dict[str, Any]:
        try:
            await self._wait(lambda: ticket.done, consumer=self._is_consumer())
        except BaseException:
            self._conn.withdraw(ticket)  # cancelled before it went out: it never will
            raise
        return ticket.result()

    async def send(self, group: str, data: bytes | str | Sequence[bytes | str], *,
                   safe: bool = False, wait: bool = True) -> int:
        """Send one message, or a list of messages as one request (delivered consecutively),
        to every member of ``group`` in total order (we need not be a member). Returns once
        the daemon queued them (``safe``: once every ring member has them); returns the count.
        With ``wait=False`` a full queue raises :class:`TryAgain` instead of waiting.

        Sends made while earlier requests of this client are unanswered (from other tasks,
        typically) are coalesced: consecutive ones with the same ``(group, safe, wait)`` go
        out as one request. The daemon answers that request once for all of them, so each
        call returns when its own messages are queued (or safe), and if the request fails
        every call in it raises the error. A cancelled call whose request has not gone out
        is taken back; once it went out, its messages may still be delivered."""
        self._check_usable()
        conn = self._conn
        ticket = conn.send(group, message_items(data), safe=safe, wait=wait)
        if conn.unanswered and conn.queued == 1 and not self._writing:
            # Earlier requests are in flight, so sends come from several tasks: let the
            # tasks of this scheduler round queue theirs too, then all go out in one frame.
            self._writing = True
            try:
                await trio.lowlevel.checkpoint()
            except BaseException:
                self._writing = False
                conn.withdraw(ticket)
                self._hand_over_writing()
                raise
            self._writing = False
        await self._outcome(ticket)
        return ticket.count

    async def submit(self, group: str, data: bytes | str | Sequence[bytes | str], *,
                     safe: bool = False, wait: bool = True) -> Ticket:
        """Queue a send without waiting for its reply (pipelining from one task); returns its
        :class:`Ticket`. Like a buffered file write: it goes out with a later write, at the
        latest once 64 KiB are queued or at :meth:`flush`, coalesced with the sends around
        it. Nothing is promised until :meth:`flush` returns or the ticket is ``done``. Waits
        only while over 1 MiB of send data is unanswered."""
        self._check_usable()
        conn = self._conn
        if conn.pending_send_bytes >= SUBMIT_PENDING_BYTES_MAX:
            await self._wait(lambda: conn.pending_send_bytes < SUBMIT_PENDING_BYTES_MAX // 2,
                             consumer=self._is_consumer())
        ticket = conn.send(group, message_items(data), safe=safe, wait=wait, submitted=True)
        if not self._writing and (not conn.unanswered or conn.queued_bytes >= SUBMIT_FRAME_BYTES
                                  or conn.queued >= SUBMIT_FRAME_CALLS):
            await self._write_out()
        return ticket

    async def flush(self) -> int:
        """Write every submitted send and wait until all are answered; returns their message
        count. If any failed, raises the first one's error (after all were answered; each
        ticket holds its own outcome)."""
        self._check_usable()
        conn = self._conn
        await self._wait(lambda: conn.submitted_open == 0, consumer=self._is_consumer())
        return conn.submitted_result()

    async def join(self, group: str, *, self_discard: bool = False) -> str:
        """Join ``group``; returns our member id ``node:pid``. With ``self_discard`` our own
        messages to the group are not delivered back to us."""
        reply = await self.request("group_join", group=group, self_discard=self_discard)
        return str(reply.get("member", ""))

    async def leave(self, group: str) -> None:
        """Leave ``group``."""
        await self.request("group_leave", group=group)

    async def members(self, group: str | None = None) -> dict[str, list[str]]:
        """Members (``node:pid``) of ``group``, or of every group, as the ring agreed them."""
        fields = {} if group is None else {"group": group}
        groups = (await self.request("group_members", **fields)).get("groups")
        if not isinstance(groups, dict):
            raise ProtocolError("group_members reply without groups")
        return groups

    async def ring(self) -> dict[str, Any]:
        """The Totem ring: ``state``, ``ring`` id, ``members``, ``held_out`` (flapping) nodes."""
        return plain_reply(await self.request("ring"))

    async def status(self) -> dict[str, Any]:
        """The daemon's status object (as ``ringd status --json``)."""
        return plain_reply(await self.request("status"))

    async def quorum(self) -> dict[str, Any]:
        """The quorum state: ``quorate``, ``votes`` present, ``expected_votes``, ``quorum``
        (votes needed), the ``ring`` it was decided for, and the quorum options."""
        return plain_reply(await self.request("quorum"))

    # --- events -----------------------------------------------------------------------

    async def batches(self) -> AsyncIterator[Batch]:
        """Event frames as they arrive: a :class:`MessageBatch` per delivered send request
        (cheaper than :meth:`events` for fast consumers), or a config/group event. Ends
        when we close the client; raises :class:`ConnectionLost` if the daemon closed."""
        conn = self._conn
        events = conn.events
        while True:
            self._consumer = trio.lowlevel.current_task()
            if not events:
                await self._wait(lambda: bool(events), consumer=True)
                if not events:  # the connection ended; what came before it was delivered
                    if conn.error is not None and not self._closing:
                        raise conn.error
                    return
            frame = events.popleft()
            if self._parked and len(events) == conn.events_max - 1:
                self._wake_parked()  # a request may have waited for room to read
            yield decode_event(frame)

    async def events(self) -> AsyncIterator[Event]:
        """Every event in delivery order, one :class:`MessageEvent` per message."""
        async for batch in self.batches():
            for event in expand(batch):
                yield event

    # --- I/O: whoever waits reads, and writes what is queued ------------------------------

    async def _wait(self, done: Callable[[], bool], *, consumer: bool) -> None:
        """Return once ``done()`` or the connection ended. Meanwhile write what is queued if
        nobody writes; read if nobody reads (a request only while the event buffer has
        room); else park until another task's progress ends the wait or hands us a turn."""
        conn = self._conn
        try:
            while not done() and conn.error is None:
                if conn.has_output() and not self._writing:
                    await self._write_out()
                elif self._reading or not conn.may_read(consumer):
                    await self._park(done, consumer)
                else:
                    await self._read_once()
        finally:
            if self._parked:
                self._wake_parked()  # we leave: someone else may have to read or write now

    async def _park(self, done: Callable[[], bool], consumer: bool) -> None:
        task = trio.lowlevel.current_task()
        self._parked[task] = (done, consumer)

        def abort(_: Any) -> trio.lowlevel.Abort:
            self._parked.pop(task, None)
            return trio.lowlevel.Abort.SUCCEEDED

        await trio.lowlevel.wait_task_rescheduled(abort)

    def _wake_parked(self) -> bool:
        """Reschedule the parked tasks whose wait is over, one to write if output waits and
        nobody writes, and one to read if nobody reads. True if one was woken to write."""
        conn = self._conn
        ended = conn.error is not None
        need_writer = not self._writing and conn.has_output()
        need_reader = not self._reading
        woke_writer = False
        for task, (done, consumer) in list(self._parked.items()):
            if ended or done():
                pass
            elif need_writer:
                need_writer, woke_writer = False, True
            elif need_reader and conn.may_read(consumer):
                need_reader = False
            else:
                continue
            del self._parked[task]
            trio.lowlevel.reschedule(task)
        return woke_writer

    def _hand_over_writing(self) -> None:
        """A writer left (cancelled) with bytes still to write: a waiting task takes over;
        if the only one is blocked reading, its read is interrupted so that it does."""
        if self._conn.has_output() and not self._wake_parked() and self._read_scope is not None:
            self._read_scope.cancel()

    async def _write_out(self) -> None:
        """Write until nothing is queued (what others queue meanwhile goes out too)."""
        conn, stream = self._conn, self._stream
        self._writing = True
        try:
            while conn.has_output():
                view = conn.outgoing()
                n = stream.send_nowait(view)
                view.release()
                conn.wrote(n)
                if conn.has_output():
                    await stream.wait_writable()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            self._lost()
        finally:
            self._writing = False
            if conn.error is None and conn.has_output():
                self._hand_over_writing()  # cancelled in the middle: the rest is not lost
            elif self._parked:
                self._wake_parked()

    def _lost(self) -> None:
        self._conn.end_of_stream()
        if self._parked:
            self._wake_parked()

    async def _read_once(self) -> None:
        """Read what the socket has (waiting for it) and file every complete frame."""
        conn = self._conn
        self._reading = True
        try:
            try:
                if self._writing:
                    # The writer may be cancelled half-way and need us to write the rest
                    # (see _hand_over_writing); a cancel scope costs too much for every read.
                    with trio.CancelScope() as scope:
                        self._read_scope = scope
                        data = await self._stream.receive_some(READ_BYTES_MAX)
                    if scope.cancelled_caught:
                        return  # interrupted to write what a cancelled writer left
                else:
                    data = await self._stream.receive_some(READ_BYTES_MAX)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                data = b""
            if data:
                conn.receive_data(data)
            else:
                conn.end_of_stream()
        finally:
            self._reading = False
            self._read_scope = None
            if self._parked:
                self._wake_parked()


@asynccontextmanager
async def open_client(path: str | Path | None = None) -> AsyncIterator[RingClient]:
    """``async with open_client(path) as ring:`` -- a connected, running :class:`RingClient`."""
    async with await RingClient.connect(path) as ring:
        yield ring


class ControlClient(RingClient):
    """A :class:`RingClient` for control requests (``status``, ``members``, ``leave``, ...):
    usable without ``async with`` (close it with :meth:`aclose`)."""

    def __init__(self, stream: SocketConnection, path: Path,
                 events_buffered: int = EVENT_FRAMES_BUFFERED) -> None:
        super().__init__(stream, path, events_buffered)
        self._open = True

    @classmethod
    async def connect(cls, path: str | Path | None = None) -> ControlClient:
        """Connect to the daemon at ``path`` (default socket if None)."""
        return cls(*await open_connection(path))

    async def __aenter__(self) -> ControlClient:
        return self

    async def wait_closed(self) -> None:
        """Return once the daemon closes the connection (e.g. it exited after ``leave``)."""
        await self._wait(lambda: False, consumer=True)


async def leave_async(path: str | Path | None = None, *, timeout_s: float = REQUEST_TIMEOUT_S) -> str:
    """Ask the daemon to leave gracefully and wait until it has closed the connection
    (it does so on exit). Returns the daemon's name."""
    sock_path = resolve_socket(path)
    try:
        with trio.fail_after(timeout_s):
            async with await ControlClient.connect(sock_path) as client:
                reply = await client.request("leave")
                await client.wait_closed()
    except trio.TooSlowError:
        raise DaemonTimeout(f"daemon at {sock_path} did not finish leaving within {timeout_s:g} s") from None
    return str(reply.get("name", ""))
