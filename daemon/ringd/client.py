"""Client of a ringd daemon's control socket: a Trio API and blocking wrappers.

Trio::

    async with await ControlClient.connect(path) as client:
        status = await client.request("status")

Blocking (each call runs its own ``trio.run``; do not call from inside Trio)::

    from ringd import client
    client.members(path)   # [{"name", "state", "incarnation", "address", "tags"}, ...]

Every error is a :class:`ClientError` whose ``str()`` is one line.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path
from types import TracebackType
from typing import Any

import trio

from ringd.config import default_socket_path
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


def resolve_socket(path: str | Path | None) -> Path:
    """``None`` → the default daemon's socket."""
    return Path(path) if path else default_socket_path()


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
        sock_path = resolve_socket(path)
        try:
            stream = await trio.open_unix_socket(os.fspath(sock_path))
        except FileNotFoundError:
            raise DaemonNotRunning(sock_path, "no such socket") from None
        except ConnectionRefusedError:
            raise DaemonNotRunning(sock_path, "connection refused") from None
        except PermissionError:
            raise ClientError(f"permission denied on control socket {sock_path}") from None
        except OSError as exc:
            if exc.errno in (errno.ENOENT, errno.ECONNREFUSED, errno.ENOTSOCK):
                raise DaemonNotRunning(sock_path, exc.strerror or "") from None
            raise ClientError(f"cannot connect to {sock_path}: {exc.strerror or exc}") from None
        return cls(stream, sock_path)

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
