"""A non-blocking stream socket with trio's stream methods, for the control socket.

Why not ``trio.SocketStream``: every call on it goes through the scheduler even when the
kernel has the bytes ready (a checkpoint before and after the syscall), and a client
request and its reply each cross it on the latency path of every ordered message. Here a
call first tries the syscall and only waits in trio when it would block.
"""

from __future__ import annotations

import errno
import socket
from types import TracebackType

import trio

# Reads that return data at once in a row before a receive lets other tasks run anyway:
# a client that writes faster than we read must not starve the daemon.
IMMEDIATE_READS_MAX = 16


class SocketConnection:
    """One accepted (or connected) stream socket, switched to non-blocking mode.

    ``receive_some``/``send_all``/``aclose`` behave like trio's: a closed connection raises
    :class:`trio.ClosedResourceError`; a peer that went away :class:`trio.BrokenResourceError`.
    """

    def __init__(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        self.socket = sock
        self._immediate_reads = 0

    async def receive_some(self, max_bytes: int) -> bytes:
        """Up to ``max_bytes`` bytes; ``b""`` once the peer closed its side."""
        sock = self.socket
        while True:
            try:
                data = sock.recv(max_bytes)
            except BlockingIOError:
                self._immediate_reads = 0
                await trio.lowlevel.wait_readable(sock)
                continue
            except OSError as exc:
                raise _converted(exc) from None
            self._immediate_reads += 1
            if self._immediate_reads >= IMMEDIATE_READS_MAX:
                self._immediate_reads = 0
                # Shielded: a cancel here would throw away the bytes just read.
                await trio.lowlevel.cancel_shielded_checkpoint()
            return data

    def send_nowait(self, data: bytes | memoryview) -> int:
        """Bytes of ``data`` the kernel took now (0 when its buffer is full)."""
        try:
            return self.socket.send(data)
        except BlockingIOError:
            return 0
        except OSError as exc:
            raise _converted(exc) from None

    async def wait_writable(self) -> None:
        """Until the kernel buffer has room again."""
        await trio.lowlevel.wait_writable(self.socket)

    async def send_all(self, data: bytes | memoryview) -> None:
        """All of ``data``, waiting for room in the kernel buffer when needed."""
        view = memoryview(data)
        while view:
            sent = self.send_nowait(view)
            view = view[sent:]
            if view:
                await trio.lowlevel.wait_writable(self.socket)

    def close(self) -> None:
        """Close the socket now; tasks waiting on it get :class:`trio.ClosedResourceError`."""
        if self.socket.fileno() != -1:
            trio.lowlevel.notify_closing(self.socket)
            self.socket.close()

    async def aclose(self) -> None:
        """:meth:`close`, as a checkpoint."""
        self.close()
        await trio.lowlevel.checkpoint()

    async def __aenter__(self) -> SocketConnection:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.aclose()


def _converted(exc: OSError) -> Exception:
    if exc.errno == errno.EBADF:
        return trio.ClosedResourceError("connection closed")
    return trio.BrokenResourceError(f"connection broken: {exc.strerror or exc}")


# accept() errors that mean "not now" (out of fds or memory, or the client gave up): as
# trio.serve_listeners does, wait a little and go on instead of ending the server.
_ACCEPT_RETRY_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS})
ACCEPT_RETRY_S = 0.1


async def accept(listener: socket.socket) -> SocketConnection:
    """The next connection of a non-blocking listening socket."""
    while True:
        try:
            sock, _address = listener.accept()
        except BlockingIOError:
            await trio.lowlevel.wait_readable(listener)
            continue
        except OSError as exc:
            if exc.errno == errno.ECONNABORTED:
                continue
            if exc.errno in _ACCEPT_RETRY_ERRNOS:
                await trio.sleep(ACCEPT_RETRY_S)
                continue
            raise
        return SocketConnection(sock)
