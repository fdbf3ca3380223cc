"""What the control server and the daemon's driver loop exchange about client API connections.

The server turns client requests of a connection into :class:`ApiRequest` items (a typed
request of :mod:`ringd.core.requests` and its reply callback) on the daemon's inbox, and a
closed connection into :class:`~ringd.core.requests.ClientGone`; it answers nothing itself.
The driver calls ``reply()`` exactly once per request (maybe much later, e.g. after safe
delivery) and ``ApiConnection.push()`` for events. Both are plain synchronous calls: the driver never blocks on a client.
"""

from __future__ import annotations

import collections
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import trio

from ringd.core.requests import OP_OF, Request
from ringd.runtime.logs import LOGGER_NAME
from ringd.wire import pack_frame

log = logging.getLogger(LOGGER_NAME)

# Frames waiting to be written to one connection. A subscriber whose backlog reaches
# this is dropped instead of slowing the daemon (and every other subscriber) down.
API_OUTGOING_FRAMES_MAX = 4096
# The same bound in payload bytes: a few large frames must not pin hundreds of MiB.
API_OUTGOING_BYTES_MAX = 32 << 20
# The writer task coalesces queued frames into one write of about this many bytes.
WRITE_BATCH_BYTES = 256 << 10


@dataclass(slots=True)
class ApiRequest:
    """One validated client request on its way to the driver: the typed ``request`` for the
    node core, and ``reply``, which takes the reply map (``{"ok": True, ...}`` or
    ``{"ok": False, "error": ...}``; the server adds the request's ``id``). The driver calls
    ``reply`` exactly once, when the core answers ``request.request_id``."""

    request: Request
    reply: Callable[[dict[str, Any]], None]

    @property
    def op(self) -> str:
        """The client API op this request came as (``send``, ``group_join``, ...)."""
        return OP_OF[type(self.request)]

    @property
    def conn(self) -> int:
        return self.request.conn


class ApiConnection:
    """One accepted client connection, as the driver sees it: an id, the client's pid and
    a bounded, non-blocking outgoing frame buffer.

    :meth:`push` writes a frame straight to the socket when nothing is waiting before it
    (no hop through another task on the way to the client); what the kernel does not take
    at once waits here, in order, for the connection's writer task (:meth:`write_backlog`).
    """

    def __init__(self, conn: int, pid: int, on_overflow: Callable[[ApiConnection], None],
                 capacity: int | None = None, sink: FrameSink | None = None,
                 on_backlog: Callable[[ApiConnection], None] | None = None) -> None:
        self.conn = conn
        # Told whenever queued_bytes or drained_at change (the node core decides whether
        # this client's backlog holds the ring up).
        self._on_backlog = on_backlog
        self.pid = pid
        self._on_overflow = on_overflow
        self._capacity = API_OUTGOING_FRAMES_MAX if capacity is None else capacity
        self._sink = sink
        # Frames not yet packed, with their pushed sizes; then packed bytes the kernel has
        # not taken yet (they go first).
        self._frames: collections.deque[tuple[Any, int]] = collections.deque()
        self._unsent: bytes | memoryview = b""
        self._backlog_event = trio.Event()
        self.closed = False
        self.finished = False  # no frame will be pushed any more: the writer may end
        self.made_requests = False
        # Payload bytes pushed and not yet handed to the kernel (as estimated by the pusher).
        self.queued_bytes = 0
        # When the kernel last took queued bytes (trio clock): a client with a backlog that
        # still reads is slow, one whose backlog has not moved for a while has stopped.
        self.drained_at = -math.inf

    @property
    def queued_frames(self) -> int:
        """Frames waiting for the writer task (not counting bytes the kernel refused)."""
        return len(self._frames)

    @property
    def has_backlog(self) -> bool:
        return bool(self._frames or self._unsent)

    def push(self, frame: dict[str, Any], size: int = 0) -> bool:
        """Queue one frame for the client without blocking. False if the connection is
        closed or its buffer is full; a full buffer closes the connection (slow reader).

        ``size`` estimates the frame's payload bytes (for the byte bound and for
        ``queued_bytes``).
        """
        if self.closed:
            return False
        if len(self._frames) >= self._capacity or (
                self.queued_bytes + size > API_OUTGOING_BYTES_MAX and self.queued_bytes):
            self.close()
            self._on_overflow(self)
            return False
        if self._sink is not None and not self.has_backlog:
            data = _pack(frame)
            try:
                sent = self._sink.send_nowait(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                self.close()  # the client went away; its reader sees the end soon
                return False
            if sent == len(data):
                return True
            self._unsent = memoryview(data)[sent:]
            self._backlog_event.set()
            return True
        self._frames.append((frame, size))
        self.queued_bytes += size
        self._backlog_event.set()
        if self._on_backlog is not None:
            self._on_backlog(self)
        return True

    async def write_backlog(self, sink: FrameSink) -> None:
        """The writer task's loop: send what :meth:`push` could not, until :meth:`finish`
        and the backlog is gone (or the connection is dropped)."""
        while True:
            if self.closed and not self.finished:
                return  # dropped (a slow reader or a broken pipe): nothing more goes out
            if not self.has_backlog:
                if self.finished:
                    return
                self._backlog_event = trio.Event()
                await self._backlog_event.wait()
                continue
            if not self._unsent:
                self._unsent = memoryview(self._pack_some())
            # _unsent stays non-empty until the kernel took it all, so push() queues
            # behind it instead of writing out of order.
            sent = sink.send_nowait(self._unsent)
            if sent:
                self.drained_at = trio.current_time()
                if self._on_backlog is not None:
                    self._on_backlog(self)
            self._unsent = self._unsent[sent:]
            if self._unsent:
                await sink.wait_writable()

    def _pack_some(self) -> bytes:
        """Frames from the queue packed into one write of about WRITE_BATCH_BYTES."""
        chunks: list[bytes] = []
        size = 0
        frames = self._frames
        while frames and size < WRITE_BATCH_BYTES:
            frame, pushed = frames.popleft()
            self.queued_bytes -= pushed
            data = _pack(frame)
            chunks.append(data)
            size += len(data)
        return b"".join(chunks)

    def finish(self) -> None:
        """No more frames: the writer ends once the backlog is written."""
        self.finished = True
        self._backlog_event.set()

    def close(self) -> None:
        """Stop accepting frames (frames already queued may still be written)."""
        self.closed = True
        self._backlog_event.set()

    def __repr__(self) -> str:
        return f"ApiConnection(conn={self.conn}, pid={self.pid}, closed={self.closed})"


class FrameSink(Protocol):
    """Where an ApiConnection writes: a non-blocking socket."""

    def send_nowait(self, data: bytes | memoryview) -> int: ...

    async def wait_writable(self) -> None: ...


def _pack(frame: Any) -> bytes:
    try:
        return pack_frame(frame)
    except ValueError as exc:  # a bug in whoever built the frame: drop it, keep the stream
        log.error("dropping a frame that cannot be encoded: %s", exc)
        return b""
