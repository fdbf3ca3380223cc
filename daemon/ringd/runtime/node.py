"""Run one ringd daemon: sockets, the driver loop, the control socket, signals.

One nursery per daemon. The runtime is an executor: the :class:`~ringd.core.node.NodeCore`
makes every protocol decision, and the driver loop is the only task that calls its
``handle``. The loop reads the UDP sockets itself and takes what the control server puts
in a bounded inbox channel. It parks on the sockets and an
:class:`~ringd.runtime.alarm.Alarm` that rings at the core's ``next_deadline()`` (its only
timer) or when the inbox gets an event; a passed deadline gives the core a :class:`Tick`.
Effects are executed in order right after each ``handle`` call: datagrams, frames and
replies to clients, counters persisted, log lines.
"""

from __future__ import annotations

import collections
import logging
import os
import random
import signal
import socket as stdlib_socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import trio

from ringd.config import Config
from ringd.core.events import (
    ClientBacklog,
    Fatal,
    KeyMessageDelivered,
    LeaveCluster,
    LeaveDone,
    Log,
    MemberChanged,
    Multicast,
    Persist,
    PublishInternal,
    RelayInternal,
    Reply,
    Send,
    Start,
    Tick,
    UserEventDelivered,
)
from ringd.core.groups import ToClient
from ringd.core.node import INCARNATION, RING_SEQ, NodeCore
from ringd.core.quorum import EXPECTED_VOTES, REASON_CONFIGURATION, QuorumStatus
from ringd.core.totem_events import ConfigChange, ConfigKind
from ringd.keyring import KEYRING_FILE, KeyFileError, Keyring, key_id, load_key
from ringd.messages import Address
from ringd.runtime.alarm import Alarm
from ringd.runtime.api_types import ApiConnection, ApiRequest
from ringd.runtime.control import ControlServer, ControlSocketError, ControlStats
from ringd.runtime.keys import KeyService
from ringd.runtime.logs import embedded_logger, level_number, setup_logging
from ringd.runtime.state_files import read_counter, write_counter
from ringd.runtime.stream import SocketConnection
from ringd.runtime.udp import UdpTransport, advertised_host, open_udp_transport
from ringd.wire import Codec, decode_payload, encode_payload, new_epoch

if TYPE_CHECKING:
    from ringd.runtime.metrics import MetricsServer

# After a leave request (signal or control op) the daemon exits at the latest this long
# later, even if the core never reports LeaveDone (e.g. alone, or the network is gone).
LEAVE_WAIT_S = 2.0
INCARNATION_FILE = "incarnation"
RING_SEQ_FILE = "ring_seq"
EXPECTED_VOTES_FILE = "expected_votes"
EPOCH_FILE = "epoch"
_STATE_FILES = {INCARNATION: INCARNATION_FILE, RING_SEQ: RING_SEQ_FILE,
                EXPECTED_VOTES: EXPECTED_VOTES_FILE}
_TICK = Tick()


class StartupError(Exception):
    """The daemon cannot start; ``str()`` is one line for the operator."""


def parse_hostport(text: str) -> Address:
    """``"host:port"`` or ``"[v6]:port"`` → :class:`Address` (validated by config already)."""
    host, _, port = text.rpartition(":")
    return Address(host=host.strip("[]"), port=int(port))


def read_incarnation(state_dir: Path, log: logging.Logger) -> int | None:
    """The incarnation persisted by the previous run, or None on a first start (a damaged
    file counts as none: the core refutes stale views anyway)."""
    return read_counter(state_dir / INCARNATION_FILE, log)


def write_incarnation(state_dir: Path, incarnation: int) -> None:
    write_counter(state_dir / INCARNATION_FILE, incarnation)


def read_ring_seq(state_dir: Path, log: logging.Logger) -> int:
    # Missing or damaged: 0 is safe, because other members carry higher ring seqs in their
    # Joins and we adopt the highest.
    return read_counter(state_dir / RING_SEQ_FILE, log) or 0


def read_expected_votes(state_dir: Path, log: logging.Logger) -> int:
    # Missing or damaged: 0, i.e. quorum.expected_votes or the votes of the first
    # configuration; the largest configuration seen is persisted again at once.
    return read_counter(state_dir / EXPECTED_VOTES_FILE, log) or 0


def load_keyring(cfg: Config, state_dir: Path, log: logging.Logger) -> Keyring | None:
    """The keyring this daemon starts with: the one persisted in the state directory (keys
    installed, switched and removed online survive restarts), else one holding the key of
    ``key_file``; None without ``key_file``. Raises :class:`StartupError`."""
    if not cfg.key_file:
        return None
    path = state_dir / KEYRING_FILE
    try:
        key = load_key(cfg.key_file)
        keyring = Keyring.load(path)
        if keyring is None:
            keyring = Keyring([key])
            keyring.save(path)
        elif key_id(key) not in keyring.keys:
            log.warning("the key of %s (%s) is not in the keyring %s (removed by a rotation?); "
                        "using the keyring, primary key %s", cfg.key_file, key_id(key), path,
                        keyring.primary)
    except KeyFileError as exc:
        raise StartupError(str(exc)) from None
    except OSError as exc:
        raise StartupError(f"cannot write {path}: {exc.strerror}") from None
    return keyring


def next_epoch(state_dir: Path, log: logging.Logger) -> int:
    """This run's sender epoch (see :func:`ringd.wire.new_epoch`), persisted before use."""
    epoch = new_epoch(read_counter(state_dir / EPOCH_FILE, log) or 0)
    try:
        write_counter(state_dir / EPOCH_FILE, epoch)
    except OSError as exc:
        raise StartupError(f"cannot write {state_dir / EPOCH_FILE}: {exc.strerror}") from None
    return epoch


def prepare_state_dir(path: Path) -> None:
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise StartupError(f"cannot create state directory {path}: {exc.strerror}") from None
    if not os.access(path, os.W_OK):
        raise StartupError(f"state directory {path} is not writable")


RECENT_EVENTS_MAX = 256
# Queued events handled before a due timer fires anyway (see Daemon.drive).
OVERDUE_EVENTS_MAX = 1024
# Longest the driver runs without letting other tasks (control, client writers) run.
DRIVER_TURN_S = 0.002


class WakingInbox:
    """The driver's inbox as other tasks see it: a bounded memory channel whose every put
    also wakes the driver, which parks on the UDP sockets rather than on this channel."""

    def __init__(self, channel: trio.MemorySendChannel[Any], wake: Callable[[], None]) -> None:
        self._channel = channel
        self._wake = wake
        # Events put and not yet taken: the driver looks here instead of trying (and
        # failing, raising WouldBlock) to take one before every read of the sockets.
        self.queued = 0

    async def send(self, event: Any) -> None:
        try:
            self._channel.send_nowait(event)  # no scheduler round before the driver sees it
        except trio.WouldBlock:
            await self._channel.send(event)
        self.queued += 1
        self._wake()

    def send_nowait(self, event: Any) -> None:
        self._channel.send_nowait(event)
        self.queued += 1
        self._wake()


class Daemon:
    """Everything one running daemon owns. The control server and the metrics read it
    (see :class:`ringd.runtime.control.DaemonView`); only the driver loop mutates the node."""

    def __init__(
        self,
        cfg: Config,
        node: NodeCore,
        transport: UdpTransport,
        codec: Codec,
        inbox_send: trio.MemorySendChannel[Any],
        inbox_recv: trio.MemoryReceiveChannel[Any],
        log: logging.Logger,
        control_stats: ControlStats,
        own_address: Address,
    ) -> None:
        self.cfg = cfg
        self.node = node
        self.transport = transport
        self.codec = codec
        self.inbox_send = WakingInbox(inbox_send, self.wake)
        self.inbox_recv = inbox_recv
        # Datagrams read in one batch and not handled yet.
        self._ready: collections.deque[Any] = collections.deque()
        # Wakes the driver parked on the sockets; its timer task runs in our nursery.
        self.alarm = Alarm()
        transport.watch(self.alarm.fd)
        # Our own multicast comes back from the kernel with our bound address as source
        # (or the advertised one when bound to a wildcard address): the transport drops it
        # unread; the node core hands its own broadcasts back to itself.
        transport.ignored_sources.update((a.host, a.port) for a in (transport.local_address, own_address))
        self.log = log
        self.control_stats = control_stats
        self.own_address = own_address
        self.started_at = trio.current_time()
        self.started_wall = time.time()
        self.leaving = False
        self.exit_code = 0
        # URL of the /metrics endpoint, None when disabled (reported by status).
        self.metrics_url: str | None = None
        # Wall-clock times a member state in our view, and our ring, last changed:
        # convergence signals for metrics, kept here because cores know no wall clock.
        self.view_changed_wall = self.started_wall
        self.ring_changed_wall = self.started_wall
        # Recent gossip user events, for `ringd events` style queries; bounded on purpose.
        self.recent_events: collections.deque[dict[str, object]] = collections.deque(maxlen=RECENT_EVENTS_MAX)
        # Client connections of the API, registered by the control server, and the reply
        # callbacks of their requests still in the core.
        self.api_connections: dict[int, ApiConnection] = {}
        self._replies: dict[int, Callable[[dict[str, Any]], None]] = {}
        # Connections whose outgoing backlog changed since the core last heard of it.
        self._backlog_changed: dict[int, ApiConnection] = {}
        self._nursery: trio.Nursery | None = None
        # Serves in-process connections (open_local_connection); set by run_daemon.
        self.control: ControlServer | None = None
        # The keyring and its online changes; None without key_file.
        self.keys: KeyService | None = None
        if codec.keyring is not None:
            self.keys = KeyService(node.name, codec.keyring, cfg.state_path / KEYRING_FILE, log,
                                   relay=self._relay)

    @property
    def uptime_s(self) -> float:
        return trio.current_time() - self.started_at

    def inbox_len(self) -> int:
        return self.inbox_recv.statistics().current_buffer_used

    def ring_info(self) -> dict[str, object]:
        """Totem state, ring id, ring members and held-out (flapping) members, for status."""
        return self.node.ring_info(trio.current_time())

    def backlog_changed(self, conn: ApiConnection) -> None:
        """A connection's outgoing buffer grew or drained: the core hears of it before its
        next input (a hook of :class:`ApiConnection`; no wake-up needed, the core asks
        for a tick while it waits on readers)."""
        self._backlog_changed[conn.conn] = conn

    def open_local_connection(self) -> SocketConnection:
        """A client connection from inside this process (``ringd.embedded``): one end of a
        socket pair whose other end the control server serves like an accepted client, so
        it speaks the same API, with the same checks, as a client of the socket file."""
        if self._nursery is None or self.control is None:
            raise RuntimeError("the daemon is not running")
        ours, theirs = stdlib_socket.socketpair(stdlib_socket.AF_UNIX, stdlib_socket.SOCK_STREAM)
        self._nursery.start_soon(self.control.serve_stream, self, SocketConnection(theirs))
        return SocketConnection(ours)

    def stop(self, exit_code: int) -> None:
        """Cancel every task of the daemon; ``run_daemon`` then returns ``exit_code``."""
        self.exit_code = exit_code
        if self._nursery is not None:
            self._nursery.cancel_scope.cancel()

    async def request_leave(self, why: str) -> None:
        """Start a graceful leave (idempotent): the core disseminates Left, then LeaveDone."""
        if self.leaving:
            return
        self.leaving = True
        self.log.info("leaving the cluster (%s)", why)
        await self.inbox_send.send(LeaveCluster())
        assert self._nursery is not None
        self._nursery.start_soon(self._leave_deadline)

    async def _leave_deadline(self) -> None:
        await trio.sleep(LEAVE_WAIT_S)
        self.log.info("leave not confirmed within %.1f s, exiting anyway", LEAVE_WAIT_S)
        self.stop(0)

    # --- the driver loop ----------------------------------------------------------------

    async def drive(self) -> int:
        """Feed datagrams, inbox events and timer ticks to the node core; execute its
        effects. Returns the exit code when the core says we are done (LeaveDone) or cannot
        go on (Fatal)."""
        node = self.node
        now = trio.current_time()
        done = await self.execute(node.handle(Start(), now))
        overdue_events = 0  # events handled while a timer was already due
        yielded_at = now
        while done is None:
            now = trio.current_time()
            if self._backlog_changed:
                done = await self._report_backlogs(now)
                if done is not None:
                    break
            deadline = node.next_deadline()
            due = deadline <= now
            accepting = node.accepting_input
            event = self._next_event() if accepting else None
            # A due timer waits for what is already queued (up to a bound): under load the
            # token may be waiting in a socket, and firing token loss first would reform a
            # healthy ring.
            if due and (event is None or overdue_events >= OVERDUE_EVENTS_MAX):
                if event is not None:
                    self._ready.appendleft(event)
                overdue_events = 0
                done = await self.execute(node.handle(_TICK, now))
                if now - yielded_at >= DRIVER_TURN_S:
                    # A timer can be due again at once (a singleton ring passes the token
                    # to itself) and sends do not yield: let the other tasks run.
                    await trio.lowlevel.checkpoint()
                    yielded_at = now
                continue
            if event is None:
                if not accepting:
                    # The core holds a token visit for slow local readers and takes no
                    # input until its deadline: datagrams wait in the socket buffers.
                    await trio.sleep_until(deadline)
                    continue
                # Nothing to do: park until a datagram arrives, another task puts an event
                # in the inbox, or the next timer is due (both ring the alarm).
                self.alarm.park(deadline)
                await self.transport.wait_readable()
                self.alarm.unpark()
                yielded_at = trio.current_time()
                continue
            overdue_events += due
            if type(event) is ApiRequest:
                request = event.request
                self._replies[request.request_id] = event.reply
                event = request
            effects = node.handle(event, now)
            if effects:
                done = await self.execute(effects)
            if done is None and node.turn_pending:
                # Our multicasts are out; Totem takes them back now, without a pass through
                # the sockets first (input could not overtake them anyway: see
                # NodeCore.handle).
                done = await self.execute(node.handle(_TICK, now))
            if now - yielded_at >= DRIVER_TURN_S:
                # Busy for a while without parking (a flood): the control server and the
                # client writers get their turn.
                await trio.lowlevel.checkpoint()
                yielded_at = now
        return done

    async def _report_backlogs(self, now: float) -> int | None:
        changed = list(self._backlog_changed.values())
        self._backlog_changed.clear()
        done = None
        for conn in changed:
            queued = 0 if conn.closed else conn.queued_bytes
            effects = self.node.handle(
                ClientBacklog(conn=conn.conn, queued_bytes=queued, drained_at=conn.drained_at), now)
            if effects:
                done = await self.execute(effects) or done
        return done

    def _next_event(self) -> Any:
        """The next event without blocking: datagrams already read, then events other tasks
        queued, then a new batch of waiting datagrams."""
        ready = self._ready
        if ready:
            return ready.popleft()
        inbox = self.inbox_send
        if inbox.queued:
            inbox.queued -= 1
            return self.inbox_recv.receive_nowait()
        batch = self.transport.receive_ready(self.codec)
        if not batch:
            return None
        ready.extend(batch)
        return ready.popleft()

    def _relay(self, dest: str, msg: Any) -> None:
        """Send a keyring op or answer straight to ``dest`` (see :mod:`ringd.runtime.keys`);
        with the inbox full it is not sent, and the op's resend covers it."""
        try:
            self.inbox_send.send_nowait(RelayInternal(dest=dest, msg=msg))
        except trio.WouldBlock:
            pass

    def wake(self) -> None:
        """Another task queued an event: end the driver's park."""
        self.alarm.ring()

    async def execute(self, effects: list[Any]) -> int | None:
        """Run the node core's effects in order; an exit code means the daemon must stop."""
        conns = self.api_connections
        transport = self.transport
        for effect in effects:
            tp = type(effect)
            if tp is ToClient:
                conn = conns.get(effect.conn)
                if conn is not None:
                    conn.push(effect.frame, effect.size)  # a full buffer drops that client
            elif tp is Multicast:
                data = self._encode(effect.msg)
                if data is not None:
                    await transport.multicast(data)
            elif tp is Send:
                data = self._encode(effect.msg)
                if data is not None:
                    await transport.send(effect.dest, data)
            elif tp is Reply:
                reply = self._replies.pop(effect.request_id, None)
                if reply is not None:
                    reply(effect.body)
            elif tp is ConfigChange:
                self.log.info("%s configuration %s: %s", effect.kind.value, effect.ring_id,
                              ",".join(effect.members))
                if effect.kind is ConfigKind.REGULAR:
                    self.ring_changed_wall = time.time()
            elif tp is Persist:
                self._persist(effect.key, effect.value)
            elif tp is QuorumStatus:
                # Parsed by ringd.lab_quorum: a change within a configuration names its reason.
                self.log.log(logging.INFO if effect.primary else logging.WARNING, "quorum: %s%s",
                             effect.describe(),
                             "" if effect.reason == REASON_CONFIGURATION else f" ({effect.reason})")
            elif tp is MemberChanged:
                self.log.info("%s", describe_member_change(effect))
                if effect.old_state != effect.new_state:
                    self.view_changed_wall = time.time()
            elif tp is Log:
                extra = "".join(f" {k}={v}" for k, v in effect.fields.items())
                self.log.log(level_number(effect.level), "%s%s", effect.text, extra)
            elif tp is KeyMessageDelivered:
                if self.keys is None:  # a keyless ring: some member's bug or mischief
                    self.log.warning("keyring op from %s ignored: this daemon has no key", effect.origin)
                    continue
                ack = self.keys.on_delivered(effect)
                if ack is not None:
                    # Answer at the next turn of the driver (we are inside one now), the way
                    # the op came: through the ring, or straight back to a relaying member.
                    self._ready.append(RelayInternal(dest=effect.origin, msg=ack) if effect.relayed
                                       else PublishInternal(payload=encode_payload(ack)))
            elif tp is UserEventDelivered:
                self.log.debug("user event %s from %s (ltime %d)", effect.name, effect.origin, effect.ltime)
                self.recent_events.append({"origin": effect.origin, "ltime": effect.ltime,
                                           "name": effect.name, "payload": effect.payload})
            elif tp is Fatal:
                self.log.error("fatal: %s", effect.reason)
                return 1
            elif tp is LeaveDone:
                self.log.info("left the cluster")
                return 0
        return None

    def _persist(self, key: str, value: int) -> None:
        path = self.cfg.state_path / _STATE_FILES[key]
        try:
            write_counter(path, value)
        except OSError as exc:
            self.log.error("cannot persist %s in %s: %s", key, path, exc)

    def _encode(self, msg: Any) -> bytes | None:
        try:
            return self.codec.encode(self.node.name, msg)
        except ValueError as exc:
            # Our own bug (the core built an oversized message): say so, keep running.
            self.log.error("cannot encode %s: %s", type(msg).__name__, exc)
            return None


def describe_member_change(change: MemberChanged) -> str:
    old = change.old_state.lower() if change.old_state else "new"
    return (
        f"member {change.node} {old} -> {change.new_state.lower()} "
        f"(inc {change.incarnation}, {change.address})"
    )


def startup_line(cfg: Config, address: Address) -> str:
    net = cfg.net
    if net.multicast_enabled:
        disc = f"multicast {net.multicast_group}:{net.multicast_port} on {net.multicast_interface}"
    else:
        disc = "multicast off"
    if net.seeds:
        disc += f", seeds {' '.join(net.seeds)}"
    return (
        f"ringd {cfg.node_name} listening on {address} (cluster {cfg.cluster_name}, {disc}), "
        f"control socket {cfg.socket_path}"
    )


async def _signal_watcher(daemon: Daemon, *, task_status: trio.TaskStatus[None]) -> None:
    """First SIGTERM/SIGINT: graceful leave. A second one: exit now."""
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        task_status.started()
        async for signum in signals:
            sig_name = signal.Signals(signum).name
            if daemon.leaving:
                daemon.log.info("%s again: exiting now", sig_name)
                daemon.stop(0)
                return
            await daemon.request_leave(sig_name)


async def run_daemon(cfg: Config, *, embedded: bool = False,
                     task_status: trio.TaskStatus[Daemon] = trio.TASK_STATUS_IGNORED) -> int:
    """Run a daemon until it leaves, is signalled, or fails. Returns the process exit code.

    Startup errors are logged as one line and give exit code 1. ``task_status.started``
    receives the :class:`Daemon` once the UDP and control sockets are serving.

    ``embedded``: inside an application's own Trio loop (``ringd.embedded``). The
    application's signals and logging configuration stay its own (lines go to the
    ``ringd.<name>`` logger, unconfigured), and a startup error is raised as
    :class:`StartupError` instead of being logged.
    """
    log = (embedded_logger if embedded else setup_logging)(cfg.node_name, cfg.log_level)
    control = ControlServer(cfg.socket_path, log, cfg.control_allow_users)
    transport: UdpTransport | None = None
    metrics: MetricsServer | None = None
    daemon: Daemon | None = None
    try:
        state_dir = cfg.state_path
        prepare_state_dir(state_dir)
        keyring = load_keyring(cfg, state_dir, log)
        try:
            await control.bind()
        except ControlSocketError as exc:
            raise StartupError(str(exc)) from None
        try:
            transport = await open_udp_transport(cfg.net)
        except OSError as exc:
            net = cfg.net
            where = f"{net.bind_host}:{net.port}"
            if net.multicast_enabled:
                where += f" / multicast port {net.multicast_port}"
            raise StartupError(f"cannot open UDP sockets ({where}): {exc.strerror or exc}") from None

        if cfg.metrics_port != 0:
            # Imported only when enabled: prometheus_client costs ~3 MiB in every daemon.
            from ringd.runtime.metrics import MetricsServer

            metrics = MetricsServer(cfg.metrics_host, cfg.metrics_port, log)
            try:
                await metrics.bind()
            except OSError as exc:
                raise StartupError(f"cannot open the metrics port {cfg.metrics_host}:{cfg.metrics_port}: "
                                   f"{exc.strerror or exc}") from None

        previous = read_incarnation(state_dir, log)
        incarnation = 0 if previous is None else previous + 1
        try:
            write_incarnation(state_dir, incarnation)
        except OSError as exc:
            raise StartupError(f"cannot write {state_dir / INCARNATION_FILE}: {exc.strerror}") from None
        codec = Codec(cfg.cluster_name, keyring=keyring, auth_only=cfg.key_mode == "auth_only",
                      epoch=next_epoch(state_dir, log), datagram_bytes_max=cfg.net.datagram_bytes_max)
        bound = transport.local_address
        seeds = [parse_hostport(s) for s in cfg.net.seeds]
        try:
            address = Address(host=advertised_host(cfg.net, seeds), port=bound.port)
        except OSError as exc:
            raise StartupError(f"cannot tell which address peers should use to reach us (bound to "
                               f"{cfg.net.bind_host}): {exc.strerror or exc}; set net.advertise_host "
                               f"(--advertise)") from None
        node = NodeCore(cfg, address=address, seeds=seeds, incarnation=incarnation,
                        ring_seq=read_ring_seq(state_dir, log), rng=random.Random(),
                        expected_votes=read_expected_votes(state_dir, log),
                        size_of=codec.size_of, encode_payload=encode_payload,
                        decode_payload=decode_payload, now=trio.current_time())
        inbox_send, inbox_recv = trio.open_memory_channel[Any](cfg.net.inbox_len_max)
        daemon = Daemon(cfg, node, transport, codec, inbox_send, inbox_recv, log, control.stats, address)
        if metrics is not None:
            metrics.register(daemon)
            daemon.metrics_url = metrics.url
        async with trio.open_nursery() as nursery:
            daemon._nursery = nursery
            daemon.control = control
            if not embedded:
                await nursery.start(_signal_watcher, daemon)
            await nursery.start(control.serve, daemon)
            nursery.start_soon(daemon.alarm.run_timer)
            if metrics is not None:
                await nursery.start(metrics.serve)
            if embedded:
                log.info("%s", startup_line(cfg, address))
            else:
                print(startup_line(cfg, address), flush=True)
            if previous is not None:
                log.info("restarted with incarnation %d", incarnation)
            task_status.started(daemon)
            code = await daemon.drive()
            daemon.stop(code)
        return daemon.exit_code
    except StartupError as exc:
        if embedded:
            raise
        log.error("%s", exc)
        return 1
    finally:
        if daemon is not None:
            daemon.alarm.close()
        control.close()
        if transport is not None:
            transport.close()
        if metrics is not None:
            metrics.close()
