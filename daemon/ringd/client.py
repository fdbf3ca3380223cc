"""Client of a ringd daemon's unix socket: ordered group messaging and control requests.

Ordered delivery (Trio)::

    async with open_client(path) as ring:          # or: async with await RingClient.connect(path)
        await ring.join("chat")
        await ring.send("chat", "hello")           # one frame; a list sends a batch
        async for ev in ring.events():             # MessageEvent | ConfigEvent | GroupEvent
            ...

Ordered delivery (blocking, no threads, no Trio)::

    with BlockingRingClient(path) as ring:
        ring.join("chat")
        ring.send("chat", b"hello")
        for ev in ring.events(timeout=1.0):
            ...

Control requests (Trio)::

    async with await ControlClient.connect(path) as client:
        status = await client.request("status")

Control requests, blocking (each call runs its own ``trio.run``; not from inside Trio)::

    from ringd import client
    client.members(path)   # [{"name", "state", "incarnation", "address", "tags"}, ...]

Every error is a :class:`ClientError` whose ``str()`` is one line.
"""

from __future__ import annotations

import base64
import collections
import errno
import itertools
import os
import socket as stdlib_socket
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import trio

from ringd.config import default_socket_path
from ringd.runtime.stream import SocketConnection
from ringd.wire import FrameReader, WireError, pack_frame

REQUEST_TIMEOUT_S = 5.0
READ_BYTES_MAX = 65536


class ClientError(Exception):
    """Base of client errors; ``str()`` is one line."""


class DaemonNotRunning(ClientError):
    """Nothing listens on the control socket (missing file or connection refused)."""

    def __init__(self, path: str | Path, detail: str = "") -> None:
        self.path = Path(path)
        more = f" ({detail})" if detail else ""
        super().__init__(f"no ringd daemon is running at {path}{more}; start one with `ringd run`")


class ProtocolError(ClientError):
    """The daemon's answer is not a valid reply frame, or the connection broke mid-reply."""


class RequestFailed(ClientError):
    """The daemon answered ``{"ok": False, "error": ...}``."""


class DaemonTimeout(ClientError):
    """The daemon did not answer in time."""


class TryAgain(RequestFailed):
    """``send(..., wait=False)`` found the daemon's ordered queue full; retry later."""


class ConnectionLost(ClientError):
    """The daemon closed the connection: it exited, or dropped us (e.g. we read too slowly)."""


def resolve_socket(path: str | Path | None) -> Path:
    """``None`` → the default daemon's socket."""
    return Path(path) if path else default_socket_path()


def _connect_error(sock_path: Path, exc: OSError) -> ClientError:
    """The ClientError for a failed connect to ``sock_path``."""
    if isinstance(exc, FileNotFoundError):
        return DaemonNotRunning(sock_path, "no such socket")
    if isinstance(exc, ConnectionRefusedError):
        return DaemonNotRunning(sock_path, "connection refused")
    if isinstance(exc, PermissionError):
        return ClientError(f"permission denied on control socket {sock_path}")
    if exc.errno in (errno.ENOENT, errno.ECONNREFUSED, errno.ENOTSOCK):
        return DaemonNotRunning(sock_path, exc.strerror or "")
    return ClientError(f"cannot connect to {sock_path}: {exc.strerror or exc}")


async def _open_stream(path: str | Path | None) -> tuple[trio.SocketStream, Path]:
    """A stream to the daemon's socket (default socket if None), or a one-line ClientError."""
    sock_path = resolve_socket(path)
    try:
        stream = await trio.open_unix_socket(os.fspath(sock_path))
    except OSError as exc:
        raise _connect_error(sock_path, exc) from None
    return stream, sock_path


async def _open_connection(path: str | Path | None) -> tuple[SocketConnection, Path]:
    """Like :func:`_open_stream`, as a :class:`SocketConnection` (no scheduler round trip
    per read or write: the ordered-delivery path is latency-bound)."""
    stream, sock_path = await _open_stream(path)
    fd = stream.socket.detach()
    return SocketConnection(stdlib_socket.socket(fileno=fd)), sock_path


class ControlClient:
    """One connection to a daemon's control socket (Trio)."""

    def __init__(self, stream: trio.abc.Stream, path: Path) -> None:
        self._stream = stream
        self.path = path
        self._reader = FrameReader()
        self._pending: list[Any] = []

    @classmethod
    async def connect(cls, path: str | Path | None = None) -> ControlClient:
        """Connect to the daemon at ``path`` (default socket if None)."""
        return cls(*await _open_stream(path))

    async def __aenter__(self) -> ControlClient:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._stream.aclose()

    async def request(self, op: str, **fields: Any) -> dict[str, Any]:
        """Send ``{"op": op, **fields}`` and return the reply (``ok`` true), else raise."""
        try:
            await self._stream.send_all(pack_frame({"op": op, **fields}))
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            raise ProtocolError(f"connection to {self.path} broke while sending: {exc}") from None
        reply = await self._next_frame()
        if reply is None:
            raise ProtocolError(f"daemon at {self.path} closed the connection without replying")
        if not isinstance(reply, dict) or not isinstance(reply.get("ok"), bool):
            raise ProtocolError(f"daemon at {self.path} sent an invalid reply: {reply!r:.80}")
        if not reply["ok"]:
            raise RequestFailed(f"{op}: {reply.get('error', 'unknown error')}")
        return reply

    async def wait_closed(self) -> None:
        """Return once the daemon closes the connection (e.g. it exited after ``leave``)."""
        while await self._next_frame() is not None:
            pass

    async def _next_frame(self) -> Any | None:
        """The next frame, or None at end of stream."""
        while not self._pending:
            try:
                data = await self._stream.receive_some(READ_BYTES_MAX)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return None
            if not data:
                return None
            try:
                self._pending.extend(self._reader.feed(data))
            except WireError as exc:
                raise ProtocolError(f"daemon at {self.path} sent a malformed frame: {exc}") from None
        return self._pending.pop(0)


# --- blocking helpers (CLI, scripts, tests) -----------------------------------------------


async def _one_request(
    path: str | Path | None, op: str, timeout_s: float, fields: dict[str, Any] | None = None
) -> dict[str, Any]:
    sock_path = resolve_socket(path)
    try:
        with trio.fail_after(timeout_s):
            async with await ControlClient.connect(sock_path) as client:
                return await client.request(op, **(fields or {}))
    except trio.TooSlowError:
        raise DaemonTimeout(f"daemon at {sock_path} did not answer {op!r} within {timeout_s:g} s") from None


def status(path: str | Path | None = None, *, timeout_s: float = REQUEST_TIMEOUT_S) -> dict[str, Any]:
    """The daemon's status object (name, members_alive, uptime_s, transport, gossip, ...)."""
    reply = trio.run(_one_request, path, "status", timeout_s)
    reply.pop("ok", None)
    return reply


def request(path: str | Path | None, op: str, *, timeout_s: float = REQUEST_TIMEOUT_S,
            **fields: Any) -> dict[str, Any]:
    """One control request ``{"op": op, **fields}``; returns the reply without ``ok``."""
    reply = trio.run(_one_request, path, op, timeout_s, fields)
    reply.pop("ok", None)
    return reply


def set_tags(path: str | Path | None, tags: dict[str, str]) -> None:
    """Replace the daemon's tags; gossip disseminates them."""
    request(path, "tags", tags=tags)


def send_event(path: str | Path | None, name: str, payload: bytes = b"") -> None:
    """Disseminate a small user event by gossip (best effort, unordered, like ``serf event``)."""
    request(path, "event", name=name, payload=payload)


def events(path: str | Path | None = None) -> list[dict[str, Any]]:
    """The user events this daemon received recently (bounded), oldest first."""
    out = request(path, "events").get("events")
    if not isinstance(out, list):
        raise ProtocolError("events reply without an event list")
    return out


def members(path: str | Path | None = None, *, timeout_s: float = REQUEST_TIMEOUT_S) -> list[dict[str, Any]]:
    """The membership as this daemon sees it, sorted by name."""
    reply = trio.run(_one_request, path, "members", timeout_s)
    out = reply.get("members")
    if not isinstance(out, list):
        raise ProtocolError(f"members reply without a member list: {reply!r:.80}")
    return out


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


def leave(path: str | Path | None = None, *, timeout_s: float = REQUEST_TIMEOUT_S) -> str:
    """Blocking :func:`leave_async`."""
    return trio.run(lambda: leave_async(path, timeout_s=timeout_s))


# --- ordered delivery: events ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MessageEvent:
    """One application message delivered in total order. ``sender`` is the sending node,
    ``member`` the sending process (``node:pid``); ``seq`` counts delivered messages of
    all groups on ring ``ring`` (``"seq.rep"``); ``safe``: every ring member has it."""

    group: str
    sender: str
    member: str
    ring: str
    seq: int
    data: bytes
    safe: bool


@dataclass(frozen=True, slots=True)
class MessageBatch:
    """One delivered send request (a whole event frame): item ``i`` has seq ``first_seq + i``."""

    group: str
    sender: str
    member: str
    ring: str
    first_seq: int
    data: tuple[bytes, ...]
    safe: bool

    def messages(self) -> list[MessageEvent]:
        """The batch as one :class:`MessageEvent` per item."""
        return [MessageEvent(self.group, self.sender, self.member, self.ring, self.first_seq + i, item,
                             self.safe) for i, item in enumerate(self.data)]


@dataclass(frozen=True, slots=True)
class ConfigEvent:
    """A ring configuration: ``kind`` is ``"transitional"`` (the survivors of the old ring)
    or ``"regular"`` (the new ring); ``members`` are node names."""

    kind: str
    ring: str
    members: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class GroupEvent:
    """A group's membership changed: ``reason`` is join, leave, disconnect or nodedown."""

    group: str
    members: tuple[str, ...]
    joined: tuple[str, ...]
    left: tuple[str, ...]
    reason: str


Event = MessageEvent | ConfigEvent | GroupEvent
Batch = MessageBatch | ConfigEvent | GroupEvent


def _strs(frame: dict[str, Any], key: str) -> tuple[str, ...]:
    value = frame[key]
    if type(value) is not list or not all(type(v) is str for v in value):
        raise TypeError(key)
    return tuple(value)


def _typed(frame: dict[str, Any], key: str, tp: type) -> Any:
    value = frame[key]
    if type(value) is not tp:
        raise TypeError(key)
    return value


def decode_event(frame: Any) -> Batch:
    """An event frame (``{"ev": ...}``) as a dataclass; :class:`ProtocolError` if invalid."""
    try:
        kind = frame["ev"]
        if kind == "message":
            data = frame["data"]
            if type(data) is not list or not all(type(d) is bytes for d in data):
                raise TypeError("data")
            return MessageBatch(_typed(frame, "group", str), _typed(frame, "sender", str),
                                _typed(frame, "member", str), _typed(frame, "ring", str),
                                _typed(frame, "seq", int), tuple(data), _typed(frame, "safe", bool))
        if kind == "config":
            return ConfigEvent(_typed(frame, "kind", str), _typed(frame, "ring", str), _strs(frame, "members"))
        if kind == "group":
            return GroupEvent(_typed(frame, "group", str), _strs(frame, "members"), _strs(frame, "joined"),
                              _strs(frame, "left"), _typed(frame, "reason", str))
    except (KeyError, TypeError) as exc:
        if not isinstance(frame, dict):
            raise ProtocolError(f"an event frame must be a map, not {type(frame).__name__}") from None
        raise ProtocolError(f"invalid {frame.get('ev')!r} event frame (field {exc.args[0]!r})") from None
    raise ProtocolError(f"unknown event type {kind!r}")


def expand(batch: Batch) -> list[Event]:
    """A decoded event frame as the events it holds (a message batch: one per item)."""
    return batch.messages() if isinstance(batch, MessageBatch) else [batch]


def event_json(event: Event) -> dict[str, Any]:
    """The JSON object ``ringd subscribe`` prints for one event."""
    if isinstance(event, MessageEvent):
        out: dict[str, Any] = {"type": "message", "group": event.group, "sender": event.sender,
                               "ring": event.ring, "seq": event.seq}
        try:
            out["data"] = event.data.decode()
        except UnicodeDecodeError:
            out["data_b64"] = base64.b64encode(event.data).decode()
        return out
    if isinstance(event, ConfigEvent):
        return {"type": "config", "kind": event.kind, "ring": event.ring, "members": list(event.members)}
    return {"type": "group", "group": event.group, "members": list(event.members),
            "joined": list(event.joined), "left": list(event.left), "reason": event.reason}


def _items(data: bytes | str | Sequence[bytes | str]) -> list[bytes]:
    """Message data as a list of bytes (str is encoded as UTF-8)."""
    if isinstance(data, (bytes, str)):
        data = [data]
    out = []
    for item in data:
        if isinstance(item, str):
            out.append(item.encode())
        elif isinstance(item, (bytes, bytearray, memoryview)):
            out.append(bytes(item))
        else:
            raise TypeError(f"message data must be bytes or str, not {type(item).__name__}")
    return out


def _check_reply(op: str, reply: Any) -> dict[str, Any]:
    """A reply frame's map if ``ok``; raise the matching ClientError otherwise."""
    if reply["ok"]:
        return reply  # type: ignore[no-any-return]
    error = f"{op}: {reply.get('error', 'unknown error')}"
    if reply.get("again"):
        raise TryAgain(error)
    raise RequestFailed(error)


def _plain_reply(reply: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in reply.items() if k not in ("ok", "id")}


def _is_reply(frame: Any) -> bool:
    return isinstance(frame, dict) and isinstance(frame.get("ok"), bool)


def _is_event(frame: Any) -> bool:
    return isinstance(frame, dict) and isinstance(frame.get("ev"), str)


# --- ordered delivery: Trio client ---------------------------------------------------------

# Event frames read ahead for the application (a request waiting for its reply reads past
# the events before it). When this many wait, requests stop reading the socket, so an
# application that does not consume is eventually dropped by the daemon (which buffers
# 4096 frames per connection) instead of growing our memory without bound.
EVENT_FRAMES_BUFFERED = 1024


class _Pending:
    __slots__ = ("reply",)

    def __init__(self) -> None:
        self.reply: dict[str, Any] | None = None


class RingClient:
    """One connection to the local daemon for ordered group messaging (Trio).

    Use it as an async context manager. Requests may be made concurrently from several
    tasks (they are pipelined); events are read by one consumer with :meth:`events` or
    :meth:`batches`. A client that joined groups must keep reading events, or the daemon
    drops it.

    There is no background reader: whichever task waits (the consumer for events, a
    request for its reply) reads the socket and hands what it read to the others. A
    delivered event then reaches the consumer without a hand-over between tasks, which
    at low rates is a good part of the client's share of the delivery latency.
    """

    def __init__(self, stream: SocketConnection, path: Path,
                 events_buffered: int = EVENT_FRAMES_BUFFERED) -> None:
        self._stream = stream
        self.path = path
        self._send_lock = trio.Lock()
        self._ids = itertools.count(1)
        self._pending: dict[int, _Pending] = {}
        self._frames = FrameReader()
        # Event frames read but not yet consumed; a request stops reading once this holds
        # events_buffered of them (so an app that does not consume cannot make it grow).
        self._events: collections.deque[Any] = collections.deque()
        self._events_max = max(1, events_buffered)
        self._reading = False  # a task is reading the socket for everyone
        self._consumer: trio.lowlevel.Task | None = None  # the task iterating the events
        # Tasks parked until the reader's progress ends their wait: what they wait for,
        # and whether they are the event consumer (it may read however many events wait).
        self._parked: dict[trio.lowlevel.Task, tuple[Callable[[], bool], bool]] = {}
        self._open = False
        self._error: ClientError | None = None  # why the connection ended, if it did
        self._closing = False
        self._unsolicited: str | None = None  # an error the daemon sent without an id

    @classmethod
    async def connect(cls, path: str | Path | None = None) -> RingClient:
        """Connect to the daemon at ``path`` (default socket if None); enter it with ``async with``."""
        return cls(*await _open_connection(path))

    async def __aenter__(self) -> RingClient:
        self._open = True
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connection (the daemon drops our group memberships); tasks waiting on
        it get :class:`ConnectionLost` (the event consumer just stops)."""
        self._closing = True
        self._open = False
        self._lost()
        self._wake_parked()  # before the await: __aexit__ often runs in a cancelled scope
        await self._stream.aclose()

    # --- requests ---------------------------------------------------------------------

    async def request(self, op: str, **fields: Any) -> dict[str, Any]:
        """Send ``{"op": op, **fields}`` and return the reply map (``ok`` true), else raise
        :class:`RequestFailed` (:class:`TryAgain` for a full queue) or :class:`ConnectionLost`."""
        if not self._open:
            raise ClientError("RingClient is not open: use `async with`")
        if self._error is not None:
            raise self._error
        request_id = next(self._ids)
        try:
            frame = pack_frame({"op": op, "id": request_id, **fields})
        except ValueError as exc:
            raise ClientError(f"{op}: {exc}") from None
        pending = self._pending[request_id] = _Pending()
        try:
            # The lock keeps concurrent requests' bytes apart; taken without a scheduler
            # round when free (the common case), like the write itself.
            try:
                self._send_lock.acquire_nowait()
            except trio.WouldBlock:
                await self._send_lock.acquire()
            try:
                await self._write(frame)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                error = self._lost()
                self._wake_parked()
                raise error from None
            finally:
                self._send_lock.release()
            # The consumer's own task may read past the event bound: nobody else would.
            consumer = self._consumer is not None and self._consumer is trio.lowlevel.current_task()
            await self._wait(lambda: pending.reply is not None, consumer=consumer)
        finally:
            del self._pending[request_id]
        if pending.reply is None:
            assert self._error is not None
            raise self._error
        return _check_reply(op, pending.reply)

    async def _write(self, frame: bytes) -> None:
        view = memoryview(frame)
        try:
            while view:
                view = view[self._stream.send_nowait(view):]
                if view:
                    await self._stream.wait_writable()
        except BaseException:
            if 0 < len(view) < len(frame):
                # Cancelled half-way through a frame: the byte stream cannot be resynchronised.
                self._error = ConnectionLost(f"connection to {self.path} abandoned in the middle of a request")
                self._stream.close()
                self._wake_parked()
            raise

    async def join(self, group: str, *, self_discard: bool = False) -> str:
        """Join ``group``; returns our member id ``node:pid``. With ``self_discard`` our own
        messages to the group are not delivered back to us."""
        reply = await self.request("group_join", group=group, self_discard=self_discard)
        return str(reply.get("member", ""))

    async def leave(self, group: str) -> None:
        """Leave ``group``."""
        await self.request("group_leave", group=group)

    async def send(self, group: str, data: bytes | str | Sequence[bytes | str], *,
                   safe: bool = False, wait: bool = True) -> int:
        """Send one message, or a list of messages as one request (delivered consecutively),
        to every member of ``group`` in total order (we need not be a member). Returns once
        the daemon queued them (``safe``: once every ring member has them); returns the count.
        With ``wait=False`` a full queue raises :class:`TryAgain` instead of waiting."""
        reply = await self.request("send", group=group, data=_items(data), safe=safe, wait=wait)
        return int(reply.get("count", 0))

    async def members(self, group: str | None = None) -> dict[str, list[str]]:
        """Members (``node:pid``) of ``group``, or of every group, as the ring agreed them."""
        fields = {} if group is None else {"group": group}
        groups = (await self.request("group_members", **fields)).get("groups")
        if not isinstance(groups, dict):
            raise ProtocolError("group_members reply without groups")
        return groups

    async def ring(self) -> dict[str, Any]:
        """The Totem ring: ``state``, ``ring`` id, ``members``, ``held_out`` (flapping) nodes."""
        return _plain_reply(await self.request("ring"))

    async def status(self) -> dict[str, Any]:
        """The daemon's status object (as ``ringd status --json``)."""
        return _plain_reply(await self.request("status"))

    # --- events -----------------------------------------------------------------------

    async def batches(self) -> AsyncIterator[Batch]:
        """Event frames as they arrive: a :class:`MessageBatch` per delivered send request
        (cheaper than :meth:`events` for fast consumers), or a config/group event. Ends
        when we close the client; raises :class:`ConnectionLost` if the daemon closed."""
        events = self._events
        while True:
            self._consumer = trio.lowlevel.current_task()
            if not events:
                await self._wait(lambda: bool(events), consumer=True)
                if not events:  # the connection ended; what came before it was delivered
                    if self._error is not None and not self._closing:
                        raise self._error
                    return
            frame = events.popleft()
            if self._parked and len(events) == self._events_max - 1:
                self._wake_parked()  # a request may have waited for room to read
            yield decode_event(frame)

    async def events(self) -> AsyncIterator[Event]:
        """Every event in delivery order, one :class:`MessageEvent` per message."""
        async for batch in self.batches():
            for event in expand(batch):
                yield event

    # --- reading: whoever waits reads ---------------------------------------------------

    def _lost(self) -> ClientError:
        if self._error is None:
            why = f": {self._unsolicited}" if self._unsolicited else ""
            self._error = ConnectionLost(f"daemon at {self.path} closed the connection{why}")
        return self._error

    async def _wait(self, done: Callable[[], bool], *, consumer: bool) -> None:
        """Return once ``done()`` or the connection ended. If nobody reads the socket, this
        task does (a request only while the event buffer has room); else it parks until the
        reader's progress ends its wait or hands the reading over to it."""
        try:
            while not done() and self._error is None:
                if self._reading or not (consumer or len(self._events) < self._events_max):
                    await self._park(done, consumer)
                else:
                    await self._read_once()
        finally:
            if self._parked and not self._reading:
                self._wake_parked()  # we leave: someone else may have to read now

    async def _park(self, done: Callable[[], bool], consumer: bool) -> None:
        task = trio.lowlevel.current_task()
        self._parked[task] = (done, consumer)

        def abort(_: Any) -> trio.lowlevel.Abort:
            self._parked.pop(task, None)
            return trio.lowlevel.Abort.SUCCEEDED

        await trio.lowlevel.wait_task_rescheduled(abort)

    def _wake_parked(self) -> None:
        """Reschedule the parked tasks whose wait is over, and, if nobody reads, one that
        still waits and may read (it then takes over the reading)."""
        ended = self._error is not None
        room = len(self._events) < self._events_max
        successor = None
        for task, (done, consumer) in list(self._parked.items()):
            if ended or done():
                del self._parked[task]
                trio.lowlevel.reschedule(task)
            elif successor is None and not self._reading and (consumer or room):
                successor = task
        if successor is not None:
            del self._parked[successor]
            trio.lowlevel.reschedule(successor)

    async def _read_once(self) -> None:
        """Read what the socket has (waiting for it) and hand out every complete frame."""
        self._reading = True
        try:
            try:
                data = await self._stream.receive_some(READ_BYTES_MAX)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                data = b""
            if not data:
                self._lost()
                return
            try:
                frames = self._frames.feed(data)
            except WireError as exc:
                self._error = ProtocolError(f"daemon at {self.path} sent a malformed frame: {exc}")
                return
            for frame in frames:
                if _is_event(frame):
                    self._events.append(frame)
                elif _is_reply(frame):
                    pending = self._pending.get(frame.get("id"))  # type: ignore[arg-type]
                    if pending is not None:
                        pending.reply = frame
                    elif not frame["ok"] and frame.get("id") is None:  # e.g. "too many connections"
                        self._unsolicited = str(frame.get("error"))
                else:
                    self._error = ProtocolError(f"daemon at {self.path} sent an unexpected frame")
                    return
        finally:
            self._reading = False
            if self._parked:
                self._wake_parked()


@asynccontextmanager
async def open_client(path: str | Path | None = None) -> AsyncIterator[RingClient]:
    """``async with open_client(path) as ring:`` -- a connected, running :class:`RingClient`."""
    async with await RingClient.connect(path) as ring:
        yield ring


# --- ordered delivery: blocking client -----------------------------------------------------

# Event frames a BlockingRingClient keeps while the application is busy with requests.
BLOCKING_EVENT_FRAMES_MAX = 65536


class BlockingRingClient:
    """:class:`RingClient`'s API as plain blocking calls on a stdlib socket (no threads,
    no Trio). Events that arrive while waiting for a reply are kept for :meth:`events`."""

    def __init__(self, path: str | Path | None = None, *, timeout_s: float | None = None) -> None:
        """Connect to the daemon at ``path``; ``timeout_s`` bounds each request (None: wait)."""
        self.path = resolve_socket(path)
        self.timeout_s = timeout_s
        self._sock = stdlib_socket.socket(stdlib_socket.AF_UNIX, stdlib_socket.SOCK_STREAM)
        try:
            self._sock.connect(os.fspath(self.path))
        except OSError as exc:
            self._sock.close()
            raise _connect_error(self.path, exc) from None
        self._reader = FrameReader()
        self._ids = itertools.count(1)
        self._replies: dict[int, dict[str, Any]] = {}
        self._events: collections.deque[Any] = collections.deque()
        self._expanded: collections.deque[Event] = collections.deque()
        self._error: ClientError | None = None
        self._unsolicited: str | None = None

    def __enter__(self) -> BlockingRingClient:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection (the daemon drops our group memberships)."""
        self._sock.close()

    def request(self, op: str, **fields: Any) -> dict[str, Any]:
        """Send ``{"op": op, **fields}`` and return the reply map (``ok`` true), else raise."""
        request_id = next(self._ids)
        try:
            frame = pack_frame({"op": op, "id": request_id, **fields})
        except ValueError as exc:
            raise ClientError(f"{op}: {exc}") from None
        self._check_open()
        self._sock.settimeout(self.timeout_s)
        try:
            self._sock.sendall(frame)
        except TimeoutError:
            raise DaemonTimeout(f"daemon at {self.path} did not take {op!r} within {self.timeout_s:g} s") from None
        except OSError:
            raise self._lost() from None
        deadline = None if self.timeout_s is None else time.monotonic() + self.timeout_s
        while request_id not in self._replies:
            if deadline is not None and time.monotonic() >= deadline:
                raise DaemonTimeout(f"daemon at {self.path} did not answer {op!r} within {self.timeout_s:g} s")
            self._receive(None if deadline is None else max(deadline - time.monotonic(), 0.0))
        return _check_reply(op, self._replies.pop(request_id))

    def join(self, group: str, *, self_discard: bool = False) -> str:
        """See :meth:`RingClient.join`."""
        return str(self.request("group_join", group=group, self_discard=self_discard).get("member", ""))

    def leave(self, group: str) -> None:
        """See :meth:`RingClient.leave`."""
        self.request("group_leave", group=group)

    def send(self, group: str, data: bytes | str | Sequence[bytes | str], *,
             safe: bool = False, wait: bool = True) -> int:
        """See :meth:`RingClient.send`."""
        reply = self.request("send", group=group, data=_items(data), safe=safe, wait=wait)
        return int(reply.get("count", 0))

    def members(self, group: str | None = None) -> dict[str, list[str]]:
        """See :meth:`RingClient.members`."""
        groups = self.request("group_members", **({} if group is None else {"group": group})).get("groups")
        if not isinstance(groups, dict):
            raise ProtocolError("group_members reply without groups")
        return groups

    def ring(self) -> dict[str, Any]:
        """See :meth:`RingClient.ring`."""
        return _plain_reply(self.request("ring"))

    def status(self) -> dict[str, Any]:
        """The daemon's status object."""
        return _plain_reply(self.request("status"))

    def batches(self, timeout: float | None = None) -> Iterator[Batch]:
        """Event frames (see :meth:`RingClient.batches`); stops after ``timeout`` seconds
        without an event (None: never). Raises :class:`ConnectionLost` if the daemon closed."""
        while True:
            while self._events:
                yield decode_event(self._events.popleft())
            if not self._receive(timeout):
                return

    def events(self, timeout: float | None = None) -> Iterator[Event]:
        """Every event in delivery order, one :class:`MessageEvent` per message; stops after
        ``timeout`` seconds without an event (None: never)."""
        while True:
            while self._expanded:
                yield self._expanded.popleft()
            while self._events:
                self._expanded.extend(expand(decode_event(self._events.popleft())))
            if self._expanded:
                continue
            if not self._receive(timeout):
                return

    def _check_open(self) -> None:
        if self._error is not None:
            raise self._error

    def _lost(self) -> ClientError:
        if self._error is None:
            why = f": {self._unsolicited}" if self._unsolicited else ""
            self._error = ConnectionLost(f"daemon at {self.path} closed the connection{why}")
        return self._error

    def _receive(self, timeout: float | None) -> bool:
        """Read once from the socket and file the frames; False if ``timeout`` passed first."""
        self._check_open()
        self._sock.settimeout(timeout)
        try:
            data = self._sock.recv(READ_BYTES_MAX)
        except TimeoutError:
            return False
        except OSError:
            raise self._lost() from None
        if not data:
            raise self._lost()
        try:
            frames = self._reader.feed(data)
        except WireError as exc:
            self._error = ProtocolError(f"daemon at {self.path} sent a malformed frame: {exc}")
            raise self._error from None
        for frame in frames:
            if _is_event(frame):
                if len(self._events) >= BLOCKING_EVENT_FRAMES_MAX:
                    self._error = ClientError(f"more than {BLOCKING_EVENT_FRAMES_MAX} unread event frames: "
                                              "read events() or leave the group")
                    raise self._error
                self._events.append(frame)
            elif _is_reply(frame):
                if isinstance(frame.get("id"), int):
                    self._replies[frame["id"]] = frame
                elif not frame["ok"]:
                    self._unsolicited = str(frame.get("error"))
            else:
                self._error = ProtocolError(f"daemon at {self.path} sent an unexpected frame")
                raise self._error
        return True
