"""One client connection to a ringd daemon, sans-IO: request ids, framing, reply matching,
coalescing of sends and the buffer of received events. It never touches a socket or a
clock; the Trio client (:mod:`ringd.client.trio_client`) and the blocking client
(:mod:`ringd.client.blocking`) move its bytes.

The adapter queues requests (:meth:`ClientConnection.request`, :meth:`ClientConnection.send`),
writes what :meth:`ClientConnection.outgoing` returns and reports how much went out with
:meth:`ClientConnection.wrote`, and feeds what it reads to
:meth:`ClientConnection.receive_data`. Every call gets a :class:`Ticket` that holds its
outcome once the reply came (or the connection ended).

Coalescing: queued send calls are packed into frames only when the outgoing buffer is
empty, and consecutive queued sends with the same ``(group, safe, wait)`` become ONE
``send`` request whose ``data`` is all their messages, in call order, up to the daemon's
limit of :data:`SEND_BYTES_MAX` bytes of data per request. The daemon then treats them as
one request: one reply, one event frame, consecutive seqs. A reply answers every call in
the request alike: each gets its own message count, or each gets the error.
"""

from __future__ import annotations

import collections
import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ringd.client.errors import ClientError, ConnectionLost, ProtocolError, RequestFailed, TryAgain
from ringd.client.events import Batch, decode_event
from ringd.messages import only_of
from ringd.wire import FrameReader, WireError, pack_frame

# The daemon's limit on the data of one send request (API_SEND_BYTES_MAX in
# ringd.core.requests; a test checks they agree). A call above it is refused at once;
# coalescing never makes a request above it.
SEND_BYTES_MAX = 1 << 20
# Messages in one coalesced request: each costs up to 5 bytes of CBOR framing besides its
# data, so this keeps a request far inside the daemon's frame limit (2 MiB + 64 KiB).
SEND_ITEMS_MAX = 16384
# Messages in one send call: the daemon refuses a frame of more than wire.FRAME_ITEMS_MAX
# CBOR items (131,072) and closes the connection, so a larger call is refused here at once.
SEND_CALL_ITEMS_MAX = 65536
# Event frames read ahead for the application by default (see ClientConnection.events_max).
EVENT_FRAMES_MAX = 1024
# submit(): queued send data that is written at once (else it waits for more, for the
# next request or for flush()): a request this big costs the daemon little per message ...
SUBMIT_FRAME_BYTES = 64 << 10
SUBMIT_FRAME_CALLS = 1024
# ... and the unanswered send data beyond which submit() waits for replies (the daemon
# takes 256 KiB at a time from one connection; more here would only queue longer).
SUBMIT_PENDING_BYTES_MAX = 1 << 20
# Bytes read from the socket at a time; seconds the one-call helpers wait for an answer.
READ_BYTES_MAX = 65536
REQUEST_TIMEOUT_S = 5.0

SendKey = tuple[str, bool, bool]  # (group, safe, wait): sends that may share one request


class Ticket:
    """The outcome of one request or one send call. ``done`` once the daemon answered or the
    connection ended; then :meth:`result` returns the reply map or raises the error."""

    __slots__ = ("op", "key", "items", "size", "frame", "request_id", "reply", "error", "submitted")

    def __init__(self, op: str) -> None:
        self.op = op
        self.key: SendKey | None = None  # a send's coalescing key; None for other requests
        self.items: list[bytes] = []
        self.size = 0  # bytes of data (sends)
        self.frame = b""  # the packed frame (other requests: packed when queued)
        self.request_id = 0
        self.reply: dict[str, Any] | None = None
        self.error: ClientError | None = None
        self.submitted = False  # a send made with submit(): settled into the flush tally

    @property
    def done(self) -> bool:
        """The daemon answered, or the connection ended."""
        return self.reply is not None or self.error is not None

    @property
    def count(self) -> int:
        """Messages of this send call (what a successful send returns)."""
        return len(self.items)

    def result(self) -> dict[str, Any]:
        """The reply map (``ok`` true); raises the call's error, or :class:`ClientError` if
        the call is not answered yet."""
        if self.error is not None:
            raise self.error
        if self.reply is None:
            raise ClientError(f"{self.op}: not answered yet")
        return self.reply

    def __repr__(self) -> str:
        state = "failed" if self.error else "answered" if self.reply else "pending"
        return f"<Ticket {self.op} x{len(self.items)} {state}>"


@dataclass(slots=True)
class ConnectionStats:
    """Plain counters of one client connection."""

    request_frames: int = 0  # frames written (every request, sends included)
    send_requests: int = 0  # send request frames
    send_calls: int = 0  # send calls packed into them (> send_requests: calls were coalesced)
    messages: int = 0  # messages in them
    event_frames: int = 0  # event frames received


def message_items(data: bytes | str | Sequence[bytes | str]) -> list[bytes]:
    """Message data as a new list of bytes (str is encoded as UTF-8). A copy, because the
    caller may reuse its list before the send is packed."""
    if isinstance(data, bytes):
        return [data]
    if isinstance(data, str):
        return [data.encode()]
    items = list(data)
    if only_of(items, bytes):  # the common case
        return items
    out = []
    for item in items:
        if isinstance(item, str):
            out.append(item.encode())
        elif isinstance(item, (bytes, bytearray, memoryview)):
            out.append(bytes(item))
        else:
            raise TypeError(f"message data must be bytes or str, not {type(item).__name__}")
    return out


def plain_reply(reply: dict[str, Any]) -> dict[str, Any]:
    """A reply map without its ``ok`` and ``id``."""
    return {k: v for k, v in reply.items() if k not in ("ok", "id")}


def reply_error(op: str, reply: dict[str, Any]) -> ClientError:
    """The error a failed reply (``ok`` false) means for a call of ``op``."""
    error = f"{op}: {reply.get('error', 'unknown error')}"
    return TryAgain(error) if reply.get("again") else RequestFailed(error)


class ClientConnection:
    """The client's side of one daemon connection, without I/O (see the module docstring).

    ``events`` holds received event frames (raw, decoded by :meth:`next_batch`) in delivery
    order; the adapters bound it with ``events_max`` (see :meth:`may_read`).
    """

    def __init__(self, peer: str = "the daemon", *, events_max: int = EVENT_FRAMES_MAX) -> None:
        self.peer = peer  # "daemon at PATH", for error messages
        self.events_max = max(1, events_max)
        self.events: collections.deque[Any] = collections.deque()
        self.error: ClientError | None = None  # why the connection ended, if it did
        self.stats = ConnectionStats()
        self._ids = itertools.count(1)
        self._queue: collections.deque[Ticket] = collections.deque()  # not yet packed
        self._queued_bytes = 0
        self._out = b""  # packed frames ...
        self._out_offset = 0  # ... of which this many bytes went out
        # request id -> the calls it carries, their data bytes and message count
        self._unanswered: dict[int, tuple[list[Ticket], int, int]] = {}
        self._unanswered_bytes = 0
        self._reader = FrameReader()
        self._unsolicited: str | None = None  # an error the daemon sent without an id
        # Sends made with submit(): how many are not answered yet, and what flush() reports.
        self.submitted_open = 0
        self._submitted_count = 0
        self._submitted_error: ClientError | None = None

    # --- queueing calls ---------------------------------------------------------------

    def request(self, op: str, fields: dict[str, Any]) -> Ticket:
        """Queue ``{"op": op, **fields}`` (not a send: those go through :meth:`send`)."""
        self._check_open()
        ticket = Ticket(op)
        ticket.request_id = next(self._ids)
        try:
            ticket.frame = pack_frame({"op": op, "id": ticket.request_id, **fields})
        except (ValueError, TypeError) as exc:  # cbor2's encode errors are one of these
            raise ClientError(f"{op}: {exc}") from None
        self._queue.append(ticket)
        return ticket

    def send(self, group: str, items: list[bytes], *, safe: bool, wait: bool,
             submitted: bool = False) -> Ticket:
        """Queue one send call of ``items`` to ``group``. More than :data:`SEND_BYTES_MAX`
        bytes of data or :data:`SEND_CALL_ITEMS_MAX` messages raise :class:`RequestFailed`
        here (the daemon would refuse them)."""
        self._check_open()
        if not isinstance(group, str):
            raise TypeError(f"group must be a str, not {type(group).__name__}")
        size = sum(map(len, items))
        if size > SEND_BYTES_MAX:
            raise RequestFailed(f"send: {size} bytes of data exceed {SEND_BYTES_MAX} per request")
        if len(items) > SEND_CALL_ITEMS_MAX:
            raise RequestFailed(f"send: {len(items)} messages exceed {SEND_CALL_ITEMS_MAX} per call")
        ticket = Ticket("send")
        ticket.key = (group, bool(safe), bool(wait))
        ticket.items = items
        ticket.size = size
        ticket.submitted = submitted
        if submitted:
            self.submitted_open += 1
        self._queue.append(ticket)
        self._queued_bytes += size
        return ticket

    def withdraw(self, ticket: Ticket) -> bool:
        """Take back a queued call none of whose bytes went out (its caller was cancelled);
        False if it is already packed (then its reply will come)."""
        try:
            self._queue.remove(ticket)
        except ValueError:
            return False
        self._queued_bytes -= ticket.size
        if ticket.submitted:
            self.submitted_open -= 1
        ticket.error = ClientError(f"{ticket.op}: withdrawn before it was sent")
        return True

    @property
    def queued(self) -> int:
        """Calls queued and not yet packed into frames."""
        return len(self._queue)

    @property
    def queued_bytes(self) -> int:
        """Message data of the queued send calls."""
        return self._queued_bytes

    @property
    def unanswered(self) -> int:
        """Request frames packed (in flight) whose reply has not come."""
        return len(self._unanswered)

    @property
    def pending_send_bytes(self) -> int:
        """Message data of send calls not answered yet (queued or in flight)."""
        return self._queued_bytes + self._unanswered_bytes

    def has_output(self) -> bool:
        """Something waits to be written (packed bytes, or queued calls)."""
        return self._out_offset < len(self._out) or bool(self._queue)

    def outgoing(self) -> memoryview:
        """The bytes to write next; empty if there are none. Queued calls are packed only
        once everything packed before went out, so calls queued meanwhile coalesce."""
        if self._out_offset >= len(self._out) and self._queue:
            self._pack()
        return memoryview(self._out)[self._out_offset:]

    def wrote(self, n: int) -> None:
        """``n`` bytes of :meth:`outgoing` went out."""
        self._out_offset += n
        if self._out_offset >= len(self._out):
            self._out, self._out_offset = b"", 0

    def _pack(self) -> None:
        frames = []
        queue, stats = self._queue, self.stats
        while queue:
            first = queue.popleft()
            if first.key is None:
                frames.append(first.frame)
                self._unanswered[first.request_id] = ([first], 0, 0)
                stats.request_frames += 1
                continue
            batch, size, count = [first], first.size, len(first.items)
            # An empty call is never merged: the daemon refuses it, and only it should fail.
            while count and queue and queue[0].key == first.key and queue[0].items:
                nxt = queue[0]
                if size + nxt.size > SEND_BYTES_MAX or count + len(nxt.items) > SEND_ITEMS_MAX:
                    break
                batch.append(queue.popleft())
                size += nxt.size
                count += len(nxt.items)
            request_id = next(self._ids)
            data = first.items if len(batch) == 1 else [item for t in batch for item in t.items]
            group, safe, wait = first.key
            frames.append(pack_frame({"op": "send", "id": request_id, "group": group, "data": data,
                                      "safe": safe, "wait": wait}))
            self._unanswered[request_id] = (batch, size, count)
            self._unanswered_bytes += size
            stats.request_frames += 1
            stats.send_requests += 1
            stats.send_calls += len(batch)
            stats.messages += count
        self._queued_bytes = 0
        self._out = frames[0] if len(frames) == 1 else b"".join(frames)
        self._out_offset = 0

    # --- receiving ----------------------------------------------------------------------

    def receive_data(self, data: bytes) -> None:
        """File the frames completed by ``data``: replies to their calls, events into
        ``events``. A malformed or unexpected frame ends the connection (``error``)."""
        try:
            frames = self._reader.feed(data)
        except WireError as exc:
            self.fail(ProtocolError(f"{self.peer} sent a malformed frame: {exc}"))
            return
        for frame in frames:
            if type(frame) is not dict:
                self.fail(ProtocolError(f"{self.peer} sent an unexpected frame"))
                return
            if type(frame.get("ev")) is str:
                self.events.append(frame)
                self.stats.event_frames += 1
                continue
            ok = frame.get("ok")
            if type(ok) is not bool:
                self.fail(ProtocolError(f"{self.peer} sent an unexpected frame"))
                return
            request_id = frame.get("id")
            request = self._unanswered.pop(request_id, None) if type(request_id) is int else None
            if request is None and request_id is None and not ok:
                # An error about the connection, not about a request (e.g. "too many control
                # connections", sent before it closes): the oldest request gets it.
                self._unsolicited = str(frame.get("error"))
                oldest = next(iter(self._unanswered), None)
                request = None if oldest is None else self._unanswered.pop(oldest)
            if request is not None:
                self._answer(request, frame)

    def _answer(self, request: tuple[list[Ticket], int, int], reply: dict[str, Any]) -> None:
        calls, size, count = request
        if calls[0].key is not None:
            self._unanswered_bytes -= size
            if reply["ok"] and reply.get("count") != count:
                reply = {"ok": False, "error": f"the daemon took {reply.get('count')!r} of {count} messages"}
        for ticket in calls:
            if reply["ok"]:
                ticket.reply = reply
            else:
                ticket.error = reply_error(ticket.op, reply)  # one exception object per caller
            if ticket.submitted:
                self._settle_submitted(ticket)

    def end_of_stream(self) -> None:
        """The daemon closed the connection."""
        why = f": {self._unsolicited}" if self._unsolicited else ""
        self.fail(ConnectionLost(f"{self.peer} closed the connection{why}"))

    def fail(self, error: ClientError) -> None:
        """The connection ended (``error`` says why): every call not answered gets it."""
        if self.error is not None:
            return
        self.error = error
        calls = [t for batch, _, _ in self._unanswered.values() for t in batch] + list(self._queue)
        self._unanswered.clear()
        self._queue.clear()
        self._queued_bytes = self._unanswered_bytes = 0
        self._out, self._out_offset = b"", 0
        for ticket in calls:
            ticket.error = error
            if ticket.submitted:
                self._settle_submitted(ticket)

    def _check_open(self) -> None:
        if self.error is not None:
            raise self.error

    # --- events and the flush tally -------------------------------------------------------

    def may_read(self, consumer: bool) -> bool:
        """Whether a task waiting for a reply may read more (the buffer of unconsumed event
        frames is below ``events_max``); the event consumer itself always may."""
        return consumer or len(self.events) < self.events_max

    def next_batch(self) -> Batch | None:
        """The oldest unconsumed event frame, decoded; None if there is none."""
        return decode_event(self.events.popleft()) if self.events else None

    def _settle_submitted(self, ticket: Ticket) -> None:
        self.submitted_open -= 1
        if ticket.error is not None:
            if self._submitted_error is None:
                self._submitted_error = ticket.error
        else:
            self._submitted_count += len(ticket.items)

    def submitted_result(self) -> int:
        """Messages of the submitted sends answered since the last call; raises the first
        of their errors instead if one failed. Call it once ``submitted_open`` is 0."""
        count, error = self._submitted_count, self._submitted_error
        self._submitted_count, self._submitted_error = 0, None
        if error is not None:
            raise error
        return count
