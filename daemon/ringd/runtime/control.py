"""The control socket: a unix stream socket speaking length-prefixed CBOR frames.

Request ``{"op": str, "id"?: int, ...}``; reply ``{"ok": True, ...}`` or
``{"ok": False, "error": str}``, echoing ``id``. Events (group messages and views) carry
``"ev"`` and no ``"ok"``.

Control ops (``status``, ``members``, ``leave``, ``tags``, ``event``, ``events``) are
answered here: handlers read the daemon through :class:`DaemonView` (one Trio thread, no
await between reads); anything that changes the daemon goes through the inbox as an event,
so the driver loop stays the only caller of the node core's ``handle``. Client API ops
(``group_join``, ``group_leave``, ``send``, ``group_members``, ``ring``) are parsed here,
once, into the typed requests of :mod:`ringd.core.requests` and handed to the driver as
:class:`~ringd.runtime.api_types.ApiRequest`. Sends are pipelined: a connection
may have several unanswered sends (up to :data:`PIPELINED_SEND_BYTES_MAX` of data), so a
client waiting for safe delivery does not stop its next message from entering the ring;
any other API op waits until the connection's sends are answered, so it never overtakes
one.

Frames for a client are written straight to its socket while the kernel takes them;
beyond that every connection has a bounded outgoing buffer drained by its own writer
task, so the driver pushes events without blocking; a client that stops reading is
dropped when its buffer fills (``ControlStats.slow_dropped``) and nobody else slows down.
"""

from __future__ import annotations

import collections
import dataclasses
import enum
import errno
import itertools
import logging
import os
import pwd
import socket as stdlib_socket
import stat
import struct
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import trio

import ringd
from ringd.core.events import PublishInternal, SendUserEvent, SetTags
from ringd.core.requests import (
    API_OPS,
    API_SEND_BYTES_MAX,
    BadRequest,
    ClientGone,
    SendMessages,
    parse_request,
)
from ringd.messages import MemberState
from ringd.runtime.api_types import ApiConnection, ApiRequest
from ringd.runtime.keys import KeyRequestError, KeyService
from ringd.runtime.stream import SocketConnection, accept
from ringd.wire import FrameReader, WireError, encode_payload, pack_frame

if TYPE_CHECKING:
    from ringd.config import Config
    from ringd.core.node import NodeCore
    from ringd.messages import Address

# Concurrent control connections; more are answered with an error and closed.
CONTROL_CONNECTIONS_MAX = 256
# Largest request frame: a full send plus its map and per-item overhead. Control ops are
# bounded by their own checks (tags, events), so a bigger length prefix is an error.
CONTROL_FRAME_BYTES_MAX = 2 * API_SEND_BYTES_MAX + (64 << 10)
# After the client's side ended (or a malformed frame), queued frames get this long to go out.
CLOSE_FLUSH_TIMEOUT_S = 2.0
# Data of a connection's unanswered send requests beyond which we stop reading its next
# request (one send of any size is always taken): the daemon holds at most this much
# parked per connection, and the client feels the backpressure in its socket.
PIPELINED_SEND_BYTES_MAX = 256 << 10
# Bytes read from a control connection at a time.
CONTROL_READ_BYTES_MAX = 65536
# A user event rides in gossip piggyback space, so it must stay small (Serf: 512 B).
USER_EVENT_BYTES_MAX = 512
KNOWN_OPS = ("status", "members", "leave", "tags", "event", "events", "keys", *API_OPS)
# struct ucred {pid_t pid; uid_t uid; gid_t gid;} of SO_PEERCRED (Linux).
_UCRED = struct.Struct("iII")
# How long we wait for an existing socket to answer before calling it stale.
PROBE_TIMEOUT_S = 1.0


class ControlSocketError(Exception):
    """The control socket cannot be set up; ``str()`` is one line."""


@dataclass(slots=True)
class ControlStats:
    """Plain counters of the control server (reported by ``status``)."""

    connections_total: int = 0
    connections_rejected: int = 0
    connections_refused_user: int = 0  # clients of another user not in control_allow_users
    connections_open: int = 0
    slow_dropped: int = 0  # connections closed because their outgoing buffer filled up
    requests: collections.Counter[str] = field(default_factory=collections.Counter)
    errors: collections.Counter[str] = field(default_factory=collections.Counter)


class Inbox(Protocol):
    """The driver's inbox: puts wake the driver."""

    async def send(self, event: Any) -> None: ...

    def send_nowait(self, event: Any) -> None: ...


class TransportView(Protocol):
    @property
    def stats(self) -> Any: ...

    @property
    def local_address(self) -> Address: ...


class DaemonView(Protocol):
    """What the control server and the metrics read of a running daemon (the real
    :class:`ringd.runtime.node.Daemon`, or a test's stand-in with the same attributes)."""

    cfg: Config
    node: NodeCore
    transport: TransportView
    control_stats: ControlStats
    inbox_send: Inbox
    api_connections: dict[int, ApiConnection]
    own_address: Address
    metrics_url: str | None
    leaving: bool
    started_wall: float
    view_changed_wall: float
    ring_changed_wall: float
    recent_events: collections.deque[dict[str, object]]
    keys: KeyService | None

    @property
    def uptime_s(self) -> float: ...

    def inbox_len(self) -> int: ...

    def ring_info(self) -> dict[str, object]: ...

    def backlog_changed(self, conn: ApiConnection) -> None: ...

    async def request_leave(self, why: str) -> None: ...


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


def status_reply(daemon: DaemonView) -> dict[str, Any]:
    node, cfg, net = daemon.node, daemon.cfg, daemon.cfg.net
    gossip = node.gossip
    views = gossip.members()
    alive = sum(1 for v in views if v.state.name == "ALIVE")
    groups = node.groups
    subscribers = groups.subscribers()
    return {
        "name": node.name,
        "cluster": cfg.cluster_name,
        "address": _own_address(daemon),
        "bind": str(daemon.transport.local_address),
        "incarnation": gossip.incarnation,
        "members_alive": alive,
        "members_total": len(views),
        "health_score": gossip.health_score,
        "leaving": daemon.leaving,
        "uptime_s": round(daemon.uptime_s, 3),
        "started_at": daemon.started_wall,
        "pid": os.getpid(),
        "version": ringd.__version__,
        "socket": str(cfg.socket_path),
        "multicast": f"{net.multicast_group}:{net.multicast_port}" if net.multicast_enabled else None,
        "metrics": daemon.metrics_url,
        "inbox_len": daemon.inbox_len(),
        "broadcast_queue_len": gossip.broadcast_queue_len,
        "transport": plain(daemon.transport.stats),
        "gossip": plain(gossip.stats),
        "control": {**plain(daemon.control_stats), "subscribers": subscribers},
        "totem": {**daemon.ring_info(), "stats": plain(node.totem.stats), "driver": plain(node.stats)},
        "quorum": {**node.quorum.info(), "stats": plain(node.quorum.stats)},
        "groups": {"groups": groups.members(), "subscribers": subscribers, "stats": plain(groups.stats)},
    }


def _own_address(daemon: DaemonView) -> str:
    for view in daemon.node.gossip.members():
        if view.name == daemon.node.name:
            return str(view.address)
    return str(daemon.own_address)


def members_reply(daemon: DaemonView) -> dict[str, Any]:
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
            for v in sorted(daemon.node.gossip.members(), key=lambda v: v.name)
        ],
    }


class ControlServer:
    """Owns the socket file: refuses a path a live daemon answers on, replaces a stale
    one, restricts permissions, and unlinks the file on close (only if it is still ours)."""

    def __init__(self, path: Path, log: logging.Logger, allow_users: tuple[str, ...] = ()) -> None:
        self.path = path
        self.log = log
        self.allow_users = allow_users
        self._allowed_uids: frozenset[int] | None = frozenset({os.getuid()})  # None: anyone
        self.stats = ControlStats()
        self._sock: stdlib_socket.socket | None = None
        self._inode: int | None = None
        self._limiter = trio.CapacityLimiter(CONTROL_CONNECTIONS_MAX)
        self._conn_ids = itertools.count(1)
        self._request_ids = itertools.count(1)

    async def bind(self) -> None:
        """Create the parent directory (0700) and the listening socket (0660: the owner's
        group may run client applications)."""
        self._allowed_uids = allowed_uids(self.allow_users)
        path = self.path
        try:
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            raise ControlSocketError(f"cannot create {path.parent}: {exc.strerror}") from None
        if len(os.fsencode(path)) >= 108:
            raise ControlSocketError(f"control socket path {path} is too long (unix sockets allow 107 bytes)")
        await self._remove_stale(path)
        sock = stdlib_socket.socket(stdlib_socket.AF_UNIX, stdlib_socket.SOCK_STREAM)
        sock.setblocking(False)
        try:
            sock.bind(os.fspath(path))
            os.chmod(path, 0o660)
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

    async def serve(self, daemon: DaemonView, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        assert self._sock is not None, "bind() first"
        listener = self._sock
        async with trio.open_nursery() as nursery:
            task_status.started()
            while True:
                try:
                    stream = await accept(listener)
                except trio.ClosedResourceError:
                    return
                nursery.start_soon(self._handle_connection, daemon, stream)

    def close(self) -> None:
        """Unlink the socket file if it is still the one we created."""
        if self._sock is not None:
            if self._sock.fileno() != -1:
                trio.lowlevel.notify_closing(self._sock)
            self._sock.close()
            self._sock = None
        if self._inode is not None:
            try:
                if os.stat(self.path).st_ino == self._inode:
                    self.path.unlink()
            except OSError:
                pass
            self._inode = None

    async def serve_stream(self, daemon: DaemonView, stream: SocketConnection) -> None:
        """Serve one connection made inside the daemon's process (see
        :meth:`ringd.runtime.node.Daemon.open_local_connection`) as an accepted one."""
        await self._handle_connection(daemon, stream)

    async def _handle_connection(self, daemon: DaemonView, stream: SocketConnection) -> None:
        self.stats.connections_total += 1
        async with stream:
            try:
                self._limiter.acquire_nowait()
            except trio.WouldBlock:
                self.stats.connections_rejected += 1
                await _send(stream, {"ok": False, "error": "too many control connections"})
                return
            try:
                refusal = self._refusal(stream)
                if refusal is not None:
                    self.stats.connections_refused_user += 1
                    try:
                        await _send(stream, {"ok": False, "error": refusal})
                        await _drain(stream)
                    except (trio.BrokenResourceError, trio.ClosedResourceError, ConnectionError):
                        pass  # the client went away
                    return
                await self._serve_connection(daemon, stream)
            finally:
                self._limiter.release()

    def _refusal(self, stream: SocketConnection) -> str | None:
        """Why this client may not use the socket (another user, not allowed), or None."""
        allowed = self._allowed_uids
        if allowed is None:
            return None
        uid = _peer_creds(stream)[1]
        if uid is None or uid in allowed:
            return None
        self.log.warning("control socket: refused a client of uid %d (not in control_allow_users)", uid)
        return (f"control socket {self.path}: user {_user_name(uid)} (uid {uid}) may not use this "
                f"daemon, which runs as {_user_name(os.getuid())}; add the user to "
                "control_allow_users in its config to allow it")

    async def _serve_connection(self, daemon: DaemonView, stream: SocketConnection) -> None:
        scope = trio.CancelScope()

        def overflow(conn: ApiConnection) -> None:
            self.stats.slow_dropped += 1
            self.log.warning("dropping client connection %d (pid %d): it does not read its events "
                             "(%d frames, %.1f MiB queued)", conn.conn, conn.pid, conn.queued_frames,
                             conn.queued_bytes / (1 << 20))
            scope.cancel()

        conn = ApiConnection(next(self._conn_ids), _peer_pid(stream), overflow, sink=stream,
                             on_backlog=daemon.backlog_changed)
        registry = daemon.api_connections
        registry[conn.conn] = conn
        self.stats.connections_open += 1
        try:
            with scope:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(conn.write_backlog, stream)
                    await self._serve_requests(daemon, conn, stream)
                    # Our side is done reading: let the writer send what is queued (e.g. the
                    # error about a malformed frame), but not forever.
                    conn.close()
                    conn.finish()
                    nursery.cancel_scope.deadline = trio.current_time() + CLOSE_FLUSH_TIMEOUT_S
        except* (trio.BrokenResourceError, trio.ClosedResourceError, ConnectionError):
            pass  # the client went away
        finally:
            conn.close()
            self.stats.connections_open -= 1
            registry.pop(conn.conn, None)
            if conn.made_requests:  # only then can the driver hold state for it
                # Not shielded: only a daemon shutdown cancels us here, and then the
                # memberships go away with the daemon anyway.
                await _put_disconnect(daemon, conn)

    async def _serve_requests(self, daemon: DaemonView, conn: ApiConnection, stream: SocketConnection) -> None:
        reader = FrameReader(CONTROL_FRAME_BYTES_MAX)
        in_flight = _InFlight()
        while True:
            data = await stream.receive_some(CONTROL_READ_BYTES_MAX)
            if not data:
                return
            try:
                requests = reader.feed(data)
            except WireError as exc:
                self.stats.errors["malformed"] += 1
                conn.push({"ok": False, "error": f"malformed frame: {exc}"})
                return  # the byte stream cannot be resynchronised
            for request in requests:
                await self._handle_request(daemon, conn, request, in_flight)

    async def _handle_request(self, daemon: DaemonView, conn: ApiConnection, request: Any,
                              in_flight: _InFlight) -> None:
        """Answer one request. A send returns once the driver has it (its reply comes
        later, in the order the driver answers); any other API request waits here until
        the driver replied."""
        request_id = request.get("id") if isinstance(request, dict) else None
        if request_id is not None and type(request_id) is not int:
            self.stats.errors["bad_request"] += 1
            conn.push({"ok": False, "error": "'id' must be an integer"})
            return

        def answer(reply: dict[str, Any]) -> None:
            if request_id is not None:
                reply = {**reply, "id": request_id}
            conn.push(reply)

        op = request.get("op") if isinstance(request, dict) else None
        if op == "keys":
            answer(await self._keys(daemon, request))
            return
        if op not in API_OPS:
            reply, after = self._dispatch(daemon, request)
            answer(reply)
            if after is not None:
                # `leave`: the writer sends the reply long before the daemon has left.
                await after()
            return
        assert isinstance(request, dict) and isinstance(op, str)
        try:
            parsed = parse_request(op, request, conn=conn.conn, pid=conn.pid,
                                   request_id=next(self._request_ids))
        except BadRequest as exc:
            self.stats.errors["bad_request"] += 1
            answer({"ok": False, "error": str(exc)})
            return
        self.stats.requests[op] += 1
        size = parsed.size if type(parsed) is SendMessages else 0
        if type(parsed) is SendMessages:
            await in_flight.wait_for_room(size)
        else:
            await in_flight.wait_until_empty()  # never overtake an unanswered send
        in_flight.add(size)
        replied = False

        def reply(frame: dict[str, Any]) -> None:
            nonlocal replied
            if replied:
                self.log.error("second reply to %s on connection %d ignored", op, conn.conn)
                return
            replied = True
            in_flight.remove(size)
            answer(frame)

        conn.made_requests = True
        await daemon.inbox_send.send(ApiRequest(request=parsed, reply=reply))
        if type(parsed) is not SendMessages:
            await in_flight.wait_until_empty()

    async def _keys(self, daemon: DaemonView, request: dict[str, Any]) -> dict[str, Any]:
        """A keyring op for the whole cluster: published on the ring (and sent straight to
        gossip-only observers), answered once every member applied it (see
        :mod:`ringd.runtime.keys`)."""
        service = daemon.keys
        if service is None:
            self.stats.errors["bad_request"] += 1
            return {"ok": False, "error": "this daemon runs without a key "
                    "(start every daemon with key_file to use keys)"}
        if not daemon.node.active:
            self.stats.errors["bad_request"] += 1
            return {"ok": False, "error": "this daemon is not in the ring (a gossip-only "
                    "observer); ask a ring member"}
        alive = [v.name for v in daemon.node.gossip.members() if v.state is MemberState.ALIVE]
        try:
            op = service.prepare(request, alive)
        except KeyRequestError as exc:
            self.stats.errors["bad_request"] += 1
            return {"ok": False, "error": str(exc)}
        self.stats.requests["keys"] += 1
        await daemon.inbox_send.send(PublishInternal(payload=encode_payload(op)))
        return await service.wait(op)

    def _dispatch(
        self, daemon: DaemonView, request: Any
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

            return {"ok": True, "name": daemon.node.name}, leave
        if op == "tags":
            return self._tags(daemon, request)
        if op == "event":
            return self._event(daemon, request)
        if op == "events":
            self.stats.requests[op] += 1
            return {"ok": True, "events": list(daemon.recent_events)}, None
        self.stats.errors["unknown_op"] += 1
        return {"ok": False, "error": f"unknown op {op!r} (known: {', '.join(KNOWN_OPS)})"}, None

    def _tags(self, daemon: DaemonView, request: dict[str, Any]) -> tuple[dict[str, Any], None]:
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

    def _event(self, daemon: DaemonView, request: dict[str, Any]) -> tuple[dict[str, Any], None]:
        """Disseminate a small user event by gossip (best effort, unordered)."""
        name, payload = request.get("name"), request.get("payload", b"")
        if not isinstance(name, str) or not name or not isinstance(payload, bytes):
            self.stats.errors["bad_request"] += 1
            return {"ok": False, "error": "event: expected a non-empty string 'name' and bytes 'payload'"}, None
        if len(name.encode()) + len(payload) > USER_EVENT_BYTES_MAX:
            self.stats.errors["bad_request"] += 1
            return {"ok": False, "error": f"event: name + payload exceed {USER_EVENT_BYTES_MAX} bytes"}, None
        return self._enqueue(daemon, "event", SendUserEvent(name=name, payload=payload))

    def _enqueue(self, daemon: DaemonView, op: str, event: SetTags | SendUserEvent) -> tuple[dict[str, Any], None]:
        # Mutations go through the inbox so the driver stays the only caller of core.handle.
        try:
            daemon.inbox_send.send_nowait(event)
        except trio.WouldBlock:
            self.stats.errors["busy"] += 1
            return {"ok": False, "error": f"{op}: daemon busy (inbox full), try again"}, None
        self.stats.requests[op] += 1
        return {"ok": True}, None


class _InFlight:
    """The API requests of one connection that the driver has not answered yet."""

    def __init__(self) -> None:
        self.count = 0
        self.bytes = 0
        self._changed = trio.Event()

    def add(self, size: int) -> None:
        self.count += 1
        self.bytes += size

    def remove(self, size: int) -> None:
        self.count -= 1
        self.bytes -= size
        self._changed.set()
        self._changed = trio.Event()

    async def wait_for_room(self, size: int) -> None:
        while self.count and self.bytes + size > PIPELINED_SEND_BYTES_MAX:
            await self._changed.wait()

    async def wait_until_empty(self) -> None:
        while self.count:
            await self._changed.wait()


async def _send(stream: SocketConnection, obj: Any) -> None:
    await stream.send_all(pack_frame(obj))


async def _drain(stream: SocketConnection) -> None:
    """Read and discard what the client sends (bounded, for a short while) before we close:
    a client that writes its request after our error frame then reads the error, instead
    of failing its write on a socket we already closed."""
    received = 0
    with trio.move_on_after(CLOSE_FLUSH_TIMEOUT_S):
        while received < CONTROL_FRAME_BYTES_MAX:
            data = await stream.receive_some(CONTROL_READ_BYTES_MAX)
            if not data:
                return
            received += len(data)


async def _put_disconnect(daemon: DaemonView, conn: ApiConnection) -> None:
    try:
        await daemon.inbox_send.send(ClientGone(conn=conn.conn))
    except (trio.ClosedResourceError, trio.BrokenResourceError):
        pass  # the daemon is shutting down


def _peer_creds(stream: SocketConnection) -> tuple[int, int | None]:
    """The client's (pid, uid) from SO_PEERCRED; (0, None) where the OS does not tell."""
    option = getattr(stdlib_socket, "SO_PEERCRED", None)
    if option is None:
        return 0, None
    try:
        creds = stream.socket.getsockopt(stdlib_socket.SOL_SOCKET, option, _UCRED.size)
    except OSError:
        return 0, None
    pid, uid, _gid = _UCRED.unpack(creds)
    return int(pid), int(uid)


def _peer_pid(stream: SocketConnection) -> int:
    """The client's process id from SO_PEERCRED (0 where the OS does not tell)."""
    return _peer_creds(stream)[0]


def _user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def allowed_uids(users: tuple[str, ...]) -> frozenset[int] | None:
    """The uids that may use the control socket: ours and ``users`` (names or uids);
    None when ``"*"`` allows anyone who can open the socket file. ControlSocketError
    names an unknown user."""
    if "*" in users:
        return None
    uids = {os.getuid()}
    for user in users:
        if user.isdigit():
            uids.add(int(user))
            continue
        try:
            uids.add(pwd.getpwnam(user).pw_uid)
        except KeyError:
            raise ControlSocketError(f"control_allow_users: no user named {user!r}") from None
    return frozenset(uids)
