"""What the control server and the daemon's driver loop exchange about client API connections.

The server turns group requests of a connection into :class:`ApiRequest` items on the
daemon's inbox and answers nothing itself; the driver calls ``reply()`` exactly once per
request (maybe much later, e.g. after safe delivery) and ``ApiConnection.push()`` for
events. Both are plain synchronous calls: the driver never blocks on a client.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import trio

# Frames waiting to be written to one connection. A subscriber whose backlog reaches
# this is dropped instead of slowing the daemon (and every other subscriber) down.
API_OUTGOING_FRAMES_MAX = 4096
# The same bound in payload bytes: a few large frames must not pin hundreds of MiB.
API_OUTGOING_BYTES_MAX = 32 << 20


@dataclass(slots=True)
class ApiRequest:
    """One validated group request of connection ``conn`` (client process ``pid``).

    ``op`` is one of ``group_join``, ``group_leave``, ``send``, ``group_members``, ``ring``.
    ``request`` is the request map, normalised: ``data`` of a send is always a list of bytes.
    ``reply`` takes the reply map (``{"ok": True, ...}`` or ``{"ok": False, "error": ...}``);
    the server adds the request's ``id``. Call it exactly once.
    """

    conn: int
    pid: int
    op: str
    request: dict[str, Any]
    reply: Callable[[dict[str, Any]], None]


@dataclass(slots=True)
class ApiDisconnect:
    """Connection ``conn`` ended (it is no longer in ``daemon.api_connections``): drop its
    group memberships. Only sent for connections that made at least one ApiRequest."""

    conn: int


class ApiConnection:
    """One accepted client connection, as the driver sees it: an id, the client's pid and
    a bounded, non-blocking outgoing frame buffer."""

    def __init__(self, conn: int, pid: int, on_overflow: Callable[[ApiConnection], None],
                 capacity: int | None = None) -> None:
        self.conn = conn
        self.pid = pid
        self._on_overflow = on_overflow
        # Frame maps; the server's writer task encodes and sends them.
        self.outgoing_send, self.outgoing_recv = trio.open_memory_channel[Any](
            API_OUTGOING_FRAMES_MAX if capacity is None else capacity)
        self.closed = False
        self.made_requests = False
        # Payload bytes pushed and not yet written (as estimated by the pusher).
        self.queued_bytes = 0

    def push(self, frame: dict[str, Any], size: int = 0) -> bool:
        """Queue one frame for the client without blocking. False if the connection is
        closed or its buffer is full; a full buffer closes the connection (slow reader).

        ``size`` estimates the frame's payload bytes; the writer reports them written with
        :meth:`written`.
        """
        if self.closed:
            return False
        try:
            if self.queued_bytes + size > API_OUTGOING_BYTES_MAX and self.queued_bytes:
                raise trio.WouldBlock
            self.outgoing_send.send_nowait((frame, size))
        except trio.WouldBlock:
            self.close()
            self._on_overflow(self)
            return False
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            self.closed = True
            return False
        self.queued_bytes += size
        return True

    def written(self, size: int) -> None:
        """The writer sent a frame pushed with ``size``."""
        self.queued_bytes -= size

    def close(self) -> None:
        """Stop accepting frames (frames already queued may still be written)."""
        self.closed = True

    def __repr__(self) -> str:
        return f"ApiConnection(conn={self.conn}, pid={self.pid}, closed={self.closed})"
