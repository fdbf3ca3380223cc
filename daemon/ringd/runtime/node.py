"""Run one ringd daemon: sockets, the driver loop, the control socket, signals.

One nursery per daemon. The driver loop is the only task that calls the cores' ``handle``:
it reads the UDP sockets itself and takes what the control server puts in a bounded inbox
channel. It parks on the sockets and an :class:`~ringd.runtime.alarm.Alarm` that rings at
the earliest ``next_deadline()`` of the cores (its only timer) or when the inbox gets an
event; a passed deadline gives the core a :class:`Tick`. Effects are executed in order
right after each ``handle`` call.
"""

from __future__ import annotations

import collections
import logging
import os
import random
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import trio

from ringd.config import Config
from ringd.core.events import (
    Effect,
    Fatal,
    Input,
    LeaveCluster,
    LeaveDone,
    Log,
    MemberChanged,
    Multicast,
    Received,
    Send,
    Start,
    Tick,
    UserEventDelivered,
)
from ringd.core.gossip import GossipCore
from ringd.core.groups import GroupsCore
from ringd.core.histogram import Histogram
from ringd.core.totem import TotemCore
from ringd.messages import Address
from ringd.runtime.alarm import Alarm
from ringd.runtime.api_types import ApiConnection, ApiDisconnect, ApiRequest
from ringd.runtime.control import ControlServer, ControlSocketError, ControlStats
from ringd.runtime.logs import level_number, setup_logging
from ringd.runtime.ordering import TOTEM_MESSAGE_TYPES, OrderedDelivery
from ringd.runtime.state_files import read_counter, write_counter
from ringd.runtime.udp import UdpTransport, advertised_host, open_udp_transport
from ringd.wire import Codec, KeyFileError, load_key

if TYPE_CHECKING:
    from ringd.runtime.metrics import MetricsServer

# After a leave request (signal or control op) the daemon exits at the latest this long
# later, even if the core never reports LeaveDone (e.g. alone, or the network is gone).
LEAVE_WAIT_S = 2.0
INCARNATION_FILE = "incarnation"


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

    def __init__(self, channel: trio.MemorySendChannel[Input], wake: Callable[[], None]) -> None:
        self._channel = channel
        self._wake = wake

    async def send(self, event: Input) -> None:
        try:
            self._channel.send_nowait(event)  # no scheduler round before the driver sees it
        except trio.WouldBlock:
            await self._channel.send(event)
        self._wake()

    def send_nowait(self, event: Input) -> None:
        self._channel.send_nowait(event)
        self._wake()


class Daemon:
    """Everything one running daemon owns. The control server reads it; only the
    driver loop mutates the core."""

    def __init__(
        self,
        cfg: Config,
        core: GossipCore,
        transport: UdpTransport,
        codec: Codec,
        inbox_send: trio.MemorySendChannel[Input],
        inbox_recv: trio.MemoryReceiveChannel[Input],
        log: logging.Logger,
        control_stats: ControlStats,
        own_address: Address,
    ) -> None:
        self.cfg = cfg
        self.core = core
        self.transport = transport
        self.codec = codec
        self.inbox_send = WakingInbox(inbox_send, self.wake)
        self.inbox_recv = inbox_recv
        # Datagrams read in one batch and not handled yet.
        self._ready: collections.deque[Input] = collections.deque()
        # Wakes the driver parked on the sockets; its timer task runs in our nursery.
        self.alarm = Alarm()
        transport.watch(self.alarm.fd)
        self._gossip_handled = False  # the gossip core's next deadline may have moved
        # Our own multicast comes back from the kernel with our bound address as source
        # (or the advertised one when bound to a wildcard address): the transport drops it
        # unread.
        transport.ignored_sources.update((a.host, a.port) for a in (transport.local_address, own_address))
        self.log = log
        self.control_stats = control_stats
        self.own_address = own_address
        self.started_at = trio.current_time()
        self.started_wall = time.time()
        self.leaving = False
        self.exit_code = 0
        self.persisted_incarnation = core.incarnation
        # URL of the /metrics endpoint, None when disabled (reported by status).
        self.metrics_url: str | None = None
        # Wall-clock time a member state in our view last changed: a convergence signal
        # for metrics, kept here because cores know no wall clock.
        self.view_changed_wall = self.started_wall
        # Recent gossip user events, for `ringd events` style queries; bounded on purpose.
        self.recent_events: collections.deque[dict[str, object]] = collections.deque(maxlen=RECENT_EVENTS_MAX)
        # Client connections of the API, registered by the control server.
        self.api_connections: dict[int, ApiConnection] = {}
        self.ordering = OrderedDelivery(cfg=cfg, transport=transport, codec=codec,
                                        api_connections=self.api_connections,
                                        control_stats=control_stats, log=log,
                                        now=trio.current_time(), gossip_view=core.members)
        self._nursery: trio.Nursery | None = None

    # Read by metrics and status: the ordering side of the daemon.
    @property
    def totem(self) -> TotemCore:
        return self.ordering.totem

    @property
    def groups(self) -> GroupsCore:
        return self.ordering.groups

    @property
    def latency_agreed(self) -> Histogram:
        return self.ordering.latency_agreed

    @property
    def latency_safe(self) -> Histogram:
        return self.ordering.latency_safe

    @property
    def ring_changed_wall(self) -> float:
        return self.ordering.ring_changed_wall

    def ring_info(self) -> dict[str, object]:
        """Totem state, ring id, ring members and held-out (flapping) members, for status."""
        return self.ordering.ring_info(trio.current_time())

    @property
    def uptime_s(self) -> float:
        return trio.current_time() - self.started_at

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
        """Feed datagrams, inbox events and timer ticks to the cores; execute their effects.
        Returns the exit code when the gossip core says we are done (LeaveDone) or cannot go
        on (Fatal)."""
        core = self.core
        ordering = self.ordering
        now = trio.current_time()
        done = await self.execute(core.handle(Start(), now))
        gossip_at = core.next_deadline()
        await ordering.tick(now)
        overdue_events = 0  # events handled while a timer was already due
        yielded_at = now
        while done is None:
            now = trio.current_time()
            if self._gossip_handled:
                # Only the gossip core's own handle() moves its timers: ask it only then
                # (the token path never touches gossip).
                self._gossip_handled = False
                gossip_at = core.next_deadline()
            totem_at = ordering.next_deadline()
            due = gossip_at <= now or totem_at <= now
            event = self._next_event()
            # A due timer waits for what is already queued (up to a bound): under load the
            # token may be waiting in a socket, and firing token loss first would reform a
            # healthy ring. Gossip timers are seconds long; a few ms here change nothing.
            if due and (event is None or overdue_events >= OVERDUE_EVENTS_MAX):
                if event is not None:
                    self._ready.appendleft(event)
                overdue_events = 0
                if gossip_at <= now:
                    self._gossip_handled = True
                    done = await self.execute(core.handle(Tick(), now))
                else:
                    await ordering.tick(now)
                # A timer can be due again at once (a singleton ring passes the token to
                # itself) and sends do not yield: let the other tasks run.
                await trio.lowlevel.checkpoint()
                yielded_at = now
                continue
            if event is None:
                # Nothing to do: park until a datagram arrives, another task puts an event
                # in the inbox, or the next timer is due (both ring the alarm).
                self.alarm.park(min(gossip_at, totem_at))
                await self.transport.wait_readable()
                self.alarm.unpark()
                yielded_at = trio.current_time()
                continue
            overdue_events += due
            done = await self._handle(event, now)
            if now - yielded_at >= DRIVER_TURN_S:
                # Busy for a while without parking (a flood): the control server and the
                # client writers get their turn.
                await trio.lowlevel.checkpoint()
                yielded_at = now
        return done

    def _next_event(self) -> Input | None:
        """The next event without blocking: datagrams already read, then events other tasks
        queued, then a new batch of waiting datagrams."""
        ready = self._ready
        if ready:
            return ready.popleft()
        try:
            return self.inbox_recv.receive_nowait()
        except trio.WouldBlock:
            pass
        batch = self.transport.receive_ready(self.codec)
        if not batch:
            return None
        ready.extend(batch)
        return ready.popleft()

    def wake(self) -> None:
        """Another task queued an event: end the driver's park."""
        self.alarm.ring()

    async def _handle(self, event: Input, now: float) -> int | None:
        tp = type(event)
        if tp is Received:
            if type(event.msg) in TOTEM_MESSAGE_TYPES:  # type: ignore[union-attr]
                await self.ordering.received(event, now)  # type: ignore[arg-type]
                return None
        elif tp is ApiRequest:
            await self.ordering.api_request(event, now)  # type: ignore[arg-type]
            return None
        elif tp is ApiDisconnect:
            await self.ordering.api_disconnect(event, now)  # type: ignore[arg-type]
            return None
        core = self.core
        self._gossip_handled = True
        done = await self.execute(core.handle(event, now))
        if core.incarnation != self.persisted_incarnation:
            self.persist_incarnation()
        return done

    def persist_incarnation(self) -> None:
        try:
            write_incarnation(self.cfg.state_path, self.core.incarnation)
        except OSError as exc:
            self.log.error("cannot persist incarnation in %s: %s", self.cfg.state_path, exc)
        self.persisted_incarnation = self.core.incarnation

    async def execute(self, effects: list[Effect]) -> int | None:
        """Run effects in order; an exit code means the daemon must stop."""
        name = self.core.name
        for effect in effects:
            match effect:
                case Send(dest=dest, msg=msg):
                    data = self._encode(name, msg)
                    if data is not None:
                        await self.transport.send(dest, data)
                case Multicast(msg=msg):
                    data = self._encode(name, msg)
                    if data is not None:
                        await self.transport.multicast(data)
                case MemberChanged():
                    self.log.info("%s", describe_member_change(effect))
                    if effect.old_state != effect.new_state:
                        self.view_changed_wall = time.time()
                    await self.ordering.member_changed(effect, trio.current_time())
                case Log(level=level, text=text, fields=fields):
                    extra = "".join(f" {k}={v}" for k, v in fields.items())
                    self.log.log(level_number(level), "%s%s", text, extra)
                case UserEventDelivered(origin=origin, ltime=ltime, name=ev_name):
                    self.log.debug("user event %s from %s (ltime %d)", ev_name, origin, ltime)
                    self.recent_events.append(
                        {"origin": origin, "ltime": ltime, "name": ev_name, "payload": effect.payload}
                    )
                case Fatal(reason=reason):
                    self.log.error("fatal: %s", reason)
                    return 1
                case LeaveDone():
                    self.log.info("left the cluster")
                    return 0
        return None

    def _encode(self, sender: str, msg: object) -> bytes | None:
        try:
            return self.codec.encode(sender, msg)  # type: ignore[arg-type]
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


async def run_daemon(cfg: Config, *, task_status: trio.TaskStatus[Daemon] = trio.TASK_STATUS_IGNORED) -> int:
    """Run a daemon until it leaves, is signalled, or fails. Returns the process exit code.

    Startup errors are logged as one line and give exit code 1. ``task_status.started``
    receives the :class:`Daemon` once the UDP and control sockets are serving.
    """
    log = setup_logging(cfg.node_name, cfg.log_level)
    control = ControlServer(cfg.socket_path, log)
    transport: UdpTransport | None = None
    metrics: MetricsServer | None = None
    daemon: Daemon | None = None
    try:
        try:
            key = load_key(cfg.key_file) if cfg.key_file else None
        except KeyFileError as exc:
            raise StartupError(str(exc)) from None
        state_dir = cfg.state_path
        prepare_state_dir(state_dir)
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
        codec = Codec(cfg.cluster_name, key=key, datagram_bytes_max=cfg.net.datagram_bytes_max)
        bound = transport.local_address
        seeds = [parse_hostport(s) for s in cfg.net.seeds]
        try:
            address = Address(host=advertised_host(cfg.net, seeds), port=bound.port)
        except OSError as exc:
            raise StartupError(f"cannot tell which address peers should use to reach us (bound to "
                               f"{cfg.net.bind_host}): {exc.strerror or exc}; set net.advertise_host "
                               f"(--advertise)") from None
        core = GossipCore(
            name=cfg.node_name,
            address=address,
            config=cfg.gossip,
            rng=random.Random(),
            tags=cfg.tags_dict,
            seeds=seeds,
            incarnation=incarnation,
            multicast=cfg.net.multicast_enabled,
            size_of=codec.size_of,
            datagram_bytes_max=cfg.net.datagram_bytes_max,
        )
        inbox_send, inbox_recv = trio.open_memory_channel[Input](cfg.net.inbox_len_max)
        daemon = Daemon(cfg, core, transport, codec, inbox_send, inbox_recv, log, control.stats, address)
        if metrics is not None:
            metrics.register(daemon)
            daemon.metrics_url = metrics.url
        async with trio.open_nursery() as nursery:
            daemon._nursery = nursery
            await nursery.start(_signal_watcher, daemon)
            await nursery.start(control.serve, daemon)
            nursery.start_soon(daemon.alarm.run_timer)
            if metrics is not None:
                await nursery.start(metrics.serve)
            print(startup_line(cfg, address), flush=True)
            if previous is not None:
                log.info("restarted with incarnation %d", incarnation)
            task_status.started(daemon)
            code = await daemon.drive()
            daemon.stop(code)
        return daemon.exit_code
    except StartupError as exc:
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
