"""The control socket: a unix stream socket speaking length-prefixed CBOR frames.

Request ``{"op": str, ...}``; reply ``{"ok": True, ...}`` or ``{"ok": False, "error": str}``.
Ops: ``status``, ``members``, ``leave``. Handlers read core state directly (one Trio
thread, no await between reads); anything that changes the daemon goes through the
inbox as an event, so the driver loop stays the only caller of ``core.handle``.
"""

from __future__ import annotations

import collections
import dataclasses
import enum
import errno
import logging
import os
import socket as stdlib_socket
import stat
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import trio

import ringd
from ringd.core.events import Input, SendUserEvent, SetTags
from ringd.wire import FrameReader, WireError, pack_frame

if TYPE_CHECKING:
    from ringd.runtime.node import Daemon

# Concurrent control connections; more are answered with an error and closed.
CONTROL_CONNECTIONS_MAX = 64
# Largest control request; requests are small maps, so a huge length prefix is an error.
CONTROL_FRAME_BYTES_MAX = 1 << 20
# Bytes read from a control connection at a time.
CONTROL_READ_BYTES_MAX = 65536
# A user event rides in gossip piggyback space, so it must stay small (Serf: 512 B).
USER_EVENT_BYTES_MAX = 512
KNOWN_OPS = ("status", "members", "leave", "tags", "event", "events")
# How long we wait for an existing socket to answer before calling it stale.
PROBE_TIMEOUT_S = 1.0


class ControlSocketError(Exception):
    """The control socket cannot be set up; ``str()`` is one line."""


@dataclass(slots=True)
class ControlStats:
    """Plain counters of the control server (reported by ``status``)."""

    connections_total: int = 0
    connections_rejected: int = 0
    requests: collections.Counter[str] = field(default_factory=collections.Counter)
    errors: collections.Counter[str] = field(default_factory=collections.Counter)


def plain(obj: Any) -> Any:
    """Dataclasses, Counters, enums, tuples → plain dict/list/str/int for CBOR and JSON."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        return {plain(k) if isinstance(k, enum.Enum) else str(k): plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [plain(v) for v in obj]
    if isinstance(obj, enum.Enum):
        return obj.name.lower()
    return obj


def status_reply(daemon: Daemon) -> dict[str, Any]:
    core, cfg, net = daemon.core, daemon.cfg, daemon.cfg.net
    views = core.members()
    alive = sum(1 for v in views if v.state.name == "ALIVE")
    return {
        "name": core.name,
        "cluster": cfg.cluster_name,
        "address": _own_address(daemon),
        "bind": str(daemon.transport.local_address),
        "incarnation": core.incarnation,
        "members_alive": alive,
        "members_total": len(views),
        "health_score": core.health_score,
        "leaving": daemon.leaving,
        "uptime_s": round(daemon.uptime_s, 3),
        "started_at": daemon.started_wall,
        "pid": os.getpid(),
        "version": ringd.__version__,
        "socket": str(cfg.socket_path),
        "multicast": f"{net.multicast_group}:{net.multicast_port}" if net.multicast_enabled else None,
        "metrics": getattr(daemon, "metrics_url", None),  # absent on stand-in daemons in tests
        "inbox_len": daemon.inbox_recv.statistics().current_buffer_used,
        "broadcast_queue_len": core.broadcast_queue_len,
        "transport": plain(daemon.transport.stats),
        "gossip": plain(core.stats),
        "control": plain(daemon.control_stats),
    }


def _own_address(daemon: Daemon) -> str:
    for view in daemon.core.members():
        if view.name == daemon.core.name:
            return str(view.address)
    return f"{daemon.cfg.advertise_host}:{daemon.transport.local_address.port}"


def members_reply(daemon: Daemon) -> dict[str, Any]:
    return {
        "ok": True,
        "members": [
            {
                "name": v.name,
                "state": v.state.name.lower(),
                "incarnation": v.incarnation,
                "address": str(v.address),
                "tags": dict(v.tags),
            }
            for v in sorted(daemon.core.members(), key=lambda v: v.name)
        ],
    }


class ControlServer:
    """Owns the socket file: refuses a path a live daemon answers on, replaces a stale
    one, restricts permissions, and unlinks the file on close (only if it is still ours)."""

    def __init__(self, path: Path, log: logging.Logger) -> None:
        self.path = path
        self.log = log
        self.stats = ControlStats()
        self._sock: trio.socket.SocketType | None = None
        self._inode: int | None = None
        self._limiter = trio.CapacityLimiter(CONTROL_CONNECTIONS_MAX)

    async def bind(self) -> None:
        """Create the parent directory (0700) and the listening socket (0600)."""
        path = self.path
        try:
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            raise ControlSocketError(f"cannot create {path.parent}: {exc.strerror}") from None
        if len(os.fsencode(path)) >= 108:
            raise ControlSocketError(f"control socket path {path} is too long (unix sockets allow 107 bytes)")
        await self._remove_stale(path)
        sock = trio.socket.socket(stdlib_socket.AF_UNIX, stdlib_socket.SOCK_STREAM)
        try:
            await sock.bind(os.fspath(path))
            os.chmod(path, 0o600)
            sock.listen(16)
        except OSError as exc:
            sock.close()
            raise ControlSocketError(f"cannot listen on control socket {path}: {exc.strerror}") from None
        self._sock = sock
        self._inode = os.stat(path).st_ino

    async def _remove_stale(self, path: Path) -> None:
        try:
            mode = os.lstat(path).st_mode
        except FileNotFoundError:
            return
        if not stat.S_ISSOCK(mode):
            raise ControlSocketError(f"control socket path {path} exists and is not a socket")
        try:
            with trio.fail_after(PROBE_TIMEOUT_S):
                stream = await trio.open_unix_socket(os.fspath(path))
        except (ConnectionRefusedError, FileNotFoundError):
            self.log.info("removing stale control socket %s", path)
            path.unlink(missing_ok=True)
            return
        except trio.TooSlowError:
            raise ControlSocketError(f"control socket {path} is in use by an unresponsive process") from None
        except OSError as exc:
            if exc.errno in (errno.ECONNREFUSED, errno.ENOENT):
                path.unlink(missing_ok=True)
                return
            raise ControlSocketError(f"cannot check control socket {path}: {exc.strerror}") from None
        await stream.aclose()
        raise ControlSocketError(f"control socket {path} is in use by a running daemon (use --socket)")

    async def serve(self, daemon: Daemon, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        assert self._sock is not None, "bind() first"
        listener = trio.SocketListener(self._sock)

        async def handler(stream: trio.SocketStream) -> None:
            await self._handle_connection(daemon, stream)

        async with trio.open_nursery() as nursery:
            await nursery.start(trio.serve_listeners, handler, [listener])
            task_status.started()

    def close(self) -> None:
        """Unlink the socket file if it is still the one we created."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        if self._inode is not None:
            try:
                if os.stat(self.path).st_ino == self._inode:
                    self.path.unlink()
            except OSError:
                pass
            self._inode = None

    async def _handle_connection(self, daemon: Daemon, stream: trio.SocketStream) -> None:
        self.stats.connections_total += 1
        async with stream:
            try:
                self._limiter.acquire_nowait()
            except trio.WouldBlock:
                self.stats.connections_rejected += 1
                await _send(stream, {"ok": False, "error": "too many control connections"})
                return
            try:
                await self._serve_requests(daemon, stream)
            except (trio.BrokenResourceError, trio.ClosedResourceError, ConnectionError):
                pass  # the client went away; nothing to clean up
            finally:
                self._limiter.release()

    async def _serve_requests(self, daemon: Daemon, stream: trio.SocketStream) -> None:
        reader = FrameReader(CONTROL_FRAME_BYTES_MAX)
        while True:
            data = await stream.receive_some(CONTROL_READ_BYTES_MAX)
            if not data:
                return
            try:
                requests = reader.feed(data)
            except WireError as exc:
                self.stats.errors["malformed"] += 1
                await _send(stream, {"ok": False, "error": f"malformed frame: {exc}"})
                return  # the byte stream cannot be resynchronised
            for request in requests:
                reply, after = self._dispatch(daemon, request)
                await _send(stream, reply)
                if after is not None:
                    await after()

    def _dispatch(
        self, daemon: Daemon, request: Any
    ) -> tuple[dict[str, Any], Callable[[], Awaitable[None]] | None]:
        """Answer one request. The second item runs after the reply has been sent."""
        if not isinstance(request, dict) or not isinstance(request.get("op"), str):
            self.stats.errors["bad_request"] += 1
            return {"ok": False, "error": "a request must be a map with a string 'op'"}, None
        op = request["op"]
        if op == "status":
            self.stats.requests[op] += 1
            return {"ok": True, **status_reply(daemon)}, None
        if op == "members":
            self.stats.requests[op] += 1
            return members_reply(daemon), None
        if op == "leave":
            self.stats.requests[op] += 1

            async def leave() -> None:
                await daemon.request_leave("control socket request")

            return {"ok": True, "name": daemon.core.name}, leave
        if op == "tags":
            return self._tags(daemon, request)
        if op == "event":
            return self._event(daemon, request)
        if op == "events":
            self.stats.requests[op] += 1
            return {"ok": True, "events": list(daemon.recent_events)}, None
        self.stats.errors["unknown_op"] += 1
        return {"ok": False, "error": f"unknown op {op!r} (known: {', '.join(KNOWN_OPS)})"}, None

    def _tags(self, daemon: Daemon, request: dict[str, Any]) -> tuple[dict[str, Any], None]:
        """Replace our tags; disseminated by gossip with a higher incarnation."""
        tags = request.get("tags")
        if not isinstance(tags, dict) or not all(
            isinstance(k, str) and k and isinstance(v, str) for k, v in tags.items()
        ):
            self.stats.errors["bad_request"] += 1
            return {"ok": False, "error": "tags: expected a map of non-empty string keys to strings"}, None
        size = sum(len(k.encode()) + len(v.encode()) + 2 for k, v in tags.items())
        if size > daemon.cfg.gossip.tags_bytes_max:
            self.stats.errors["bad_request"] += 1
            return {"ok": False, "error": f"tags: {size} bytes exceeds gossip.tags_bytes_max "
                    f"({daemon.cfg.gossip.tags_bytes_max})"}, None
        return self._enqueue(daemon, "tags", SetTags(tags=dict(tags)))

    def _event(self, daemon: Daemon, request: dict[str, Any]) -> tuple[dict[str, Any], None]:
        """Disseminate a small user event by gossip (best effort, unordered)."""
        name, payload = request.get("name"), request.get("payload", b"")
        if not isinstance(name, str) or not name or not isinstance(payload, bytes):
            self.stats.errors["bad_request"] += 1
            return {"ok": False, "error": "event: expected a non-empty string 'name' and bytes 'payload'"}, None
        if len(name.encode()) + len(payload) > USER_EVENT_BYTES_MAX:
            self.stats.errors["bad_request"] += 1
            return {"ok": False, "error": f"event: name + payload exceed {USER_EVENT_BYTES_MAX} bytes"}, None
        return self._enqueue(daemon, "event", SendUserEvent(name=name, payload=payload))

    def _enqueue(self, daemon: Daemon, op: str, event: Input) -> tuple[dict[str, Any], None]:
        # Mutations go through the inbox so the driver stays the only caller of core.handle.
        try:
            daemon.inbox_send.send_nowait(event)
        except trio.WouldBlock:
            self.stats.errors["busy"] += 1
            return {"ok": False, "error": f"{op}: daemon busy (inbox full), try again"}, None
        self.stats.requests[op] += 1
        return {"ok": True}, None


async def _send(stream: trio.SocketStream, obj: Any) -> None:
    await stream.send_all(pack_frame(obj))
