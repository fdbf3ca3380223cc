"""NodeSimCluster: the whole node (:class:`~ringd.core.node.NodeCore`) on every simulated host.

:class:`~ringd.sim.cluster.SimCluster` drives bare Totem cores and fakes what gossip would
tell them. Here every host runs the daemon's own node core: real SWIM/Lifeguard gossip
(announces by multicast, probes, suspicion, push-pull) finds the members and feeds Totem
its hints, ring eligibility and the start grace decide who joins, and simulated client
applications use the groups API as real ones do:

* every process of a node has an application (connection 1) that joins group ``g0`` at
  start and sends the load's agreed and safe messages to it, and a second one (connection
  2) that joins and leaves ``g0``/``g1`` now and then;
* now and then an application is a slow reader for a while: the node is told its backlog
  (``ClientBacklog``), as the daemon's runtime would, so flow control and the token hold
  for slow readers run; a stopped reader reports no progress.

Fault classes on top of the base scenario's (loss, duplication, reordering, partitions of
every shape including one-way and single directed links, crashes and restarts, pauses
past the token timeout):

* **CPU starvation**: for a while a node handles its events late and in bursts (short
  pauses back to back), as a daemon on an overloaded host does;
* **clock drift**: every node's clock runs at its own rate and offset; the core only ever
  sees its local clock.

The history has, per process, Totem's deliveries and configurations (the EVS checker's
input) and, per client connection, every frame it received (the group checker's input).
One seed still reproduces a run exactly.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field, replace
from typing import Any

from ringd.config import Config
from ringd.core.events import (
    ClientBacklog,
    Fatal,
    LeaveDone,
    Log,
    MemberChanged,
    Multicast,
    Persist,
    Reply,
    Send,
    Start,
    UserEventDelivered,
)
from ringd.core.groups import ToClient
from ringd.core.node import INCARNATION, RING_SEQ, NodeCore
from ringd.core.quorum import EXPECTED_VOTES, QuorumStatus
from ringd.core.requests import ClientGone, JoinGroup, LeaveGroup, SendMessages
from ringd.core.totem import TOTEM_MESSAGE_TYPES
from ringd.core.totem_events import ConfigChange, ConfigKind, Deliver, Publish, SendRefused
from ringd.group_messages import GroupSync
from ringd.sim.checkers import FinalNode, Published, Violation
from ringd.sim.cluster import SimCluster, SimNode, SimRun
from ringd.sim.options import SimOptions
from ringd.sim.quorum_checker import PrimaryExit, PrimaryInstall, QuorumReport
from ringd.sim.schedule import FAULT, HINT, UNDO
from ringd.sim.trace import short_repr
from ringd.wire import Codec, decode_payload, encode_payload

GROUPS = ("g0", "g1")
PUBLISHER, CHURNER = 1, 2  # client connections of every process
# Connection ids of one process: its incarnation in the high bits keeps them unique.
_CONN_STRIDE = 1 << 8
# Chance per load burst that an application joins or leaves a group.
CHURN_PROBABILITY = 0.5
# Chance per load burst that one node's application reads slowly for a while.
SLOW_READER_PROBABILITY = 0.15
EXPECTED_REFUSALS = ("observer", "not a member", "already joined", "not quorate")
SLOW_BACKLOG_BYTES = 6 << 20  # above the node core's 4 MiB threshold
# Chance that a fault event starves a node of CPU for a while instead.
STARVATION_PROBABILITY = 0.2
UNDO_STARVE, STARVE_AGAIN = 3, 4  # beside schedule.UNDO_PARTITION/CRASH/PAUSE


def sim_config(name: str, options: SimOptions, nodes: int, votes: int = 1,
               total_votes: int | None = None) -> Config:
    """The daemon's ``local`` preset with the simulation's Totem settings; the ring takes
    every node unless ``options.ring_size_max`` makes some of them observers. ``votes``:
    this node's quorum votes, ``total_votes`` the whole cluster's (default: one each)."""
    base = Config.local()
    ring_size_max = options.ring_size_max or max(nodes, options.totem.ring_size_max)
    # Every node knows the cluster's votes (as a corosync nodelist does): the setting under
    # which one primary component is guaranteed from the very first configuration.
    quorum = options.quorum or replace(base.quorum, expected_votes=total_votes or nodes)
    quorum = replace(quorum, votes=votes)
    return replace(base, name=name, cluster_name="ringd-sim",
                   totem=replace(options.totem, ring_size_max=ring_size_max), quorum=quorum)


@dataclass(slots=True)
class ClientLog:
    """Every frame one client connection of one process received, in order."""

    node: str
    incarnation: int
    conn: int
    frames: list[dict[str, Any]] = field(default_factory=list)
    crashed: bool = False

    @property
    def pid(self) -> str:
        return f"{self.node}#{self.incarnation}/c{self.conn}"

    @property
    def member(self) -> str:
        return f"{self.node}:{1000 + self.conn}"


@dataclass(slots=True)
class _Clock:
    """A node's local clock: ``local = offset + rate * t`` (t: virtual time)."""

    offset: float = 0.0
    rate: float = 1.0

    def local(self, t: float) -> float:
        return self.offset + self.rate * t

    def virtual(self, local: float) -> float:
        """The first virtual time at which the local clock reads at least ``local``."""
        t = (local - self.offset) / self.rate
        while self.offset + self.rate * t < local:
            t = math.nextafter(t, math.inf)
        return t


class NodeSimCluster(SimCluster):
    """A seeded run of ``n`` whole nodes. Build it, call :meth:`run` once."""

    def __init__(self, seed: int, n: int, options: SimOptions) -> None:
        # Gossip is real here, and slow readers are applications (not ReadersBehind).
        self._slow_readers = options.slow_readers
        options = replace(options, gossip_hints=False, slow_readers=False)
        super().__init__(seed, n, options)
        # Drawn after every stream of the base class, so those stay what they were.
        node_rng = random.Random(self._core_seeds.getrandbits(64))
        self._app_rng = random.Random(node_rng.getrandbits(64))
        drift = options.clock_drift_max
        self._clocks = [
            _Clock(offset=node_rng.uniform(0.0, 1000.0) if drift else 0.0,
                   rate=1.0 + node_rng.uniform(-drift, drift))
            for _ in self.nodes]
        self._codec_sizes = Codec("ringd-sim")
        self.client_logs: list[ClientLog] = []
        self.sent: dict[tuple[str, str], set[bytes]] = {}  # (group, member) -> items sent
        # Regular configuration (ring id) -> nodes that published a group sync in it.
        self.syncs_published: dict[Any, set[str]] = {}
        self._regular_ring: list[Any] = [None] * n
        self._clients: dict[tuple[int, int], ClientLog] = {}  # (node index, conn id) -> log
        self._request_ids = [0] * n
        self._incarnation_stored = [-1] * n
        self._joined: dict[tuple[int, str], bool] = {}  # (node index, group) -> churner in it
        self._churner = [CHURNER] * n  # the churning application's current connection
        # Totem processors of a node so far (a restart or a stay as observer ends one).
        self._process_no = [-1] * n
        self._active = [True] * n
        self._starving_until = [0.0] * n
        self._starve_rng = random.Random(node_rng.getrandbits(64))
        # Quorum: what each process decided, when it stopped acting in a primary
        # configuration, and the members of every regular configuration.
        self._expected_stored = [0] * n
        # Quorum votes per node: 1 each, or drawn from the seed (its own stream, so the
        # other streams stay what they were).
        votes_rng = random.Random(seed * 7919 + 17)
        self.votes = tuple(votes_rng.randint(1, 3) if options.weighted_votes else 1
                           for _ in range(n))
        # The ring a node's Totem is committed to (Commit, Recovery) or Operational in.
        self._attached: list[Any] = [None] * n
        # The regular configuration a node is in when it is primary (else None), safe
        # messages delivered in each primary one, and (process, its log length) at every
        # install of a primary configuration: the primary-history check's input.
        self._primary_regular: list[Any] = [None] * n
        self.safe_in_primary: dict[Any, set[tuple[str, int]]] = {}
        self.primary_installs: list[PrimaryInstall] = []
        self.quorum_reports: list[QuorumReport] = []
        self.primary_exits: list[PrimaryExit] = []
        self.regular_members: dict[Any, frozenset[str]] = {}
        self._config_members: list[frozenset[str]] = [frozenset()] * n
        self.gossip_messages = 0
        self.totem_messages = 0
        self.group_events = 0
        self.client_messages_delivered = 0
        self.sends_refused_not_quorate = 0

    # --- time -------------------------------------------------------------------------

    def _core_now(self, node: SimNode) -> float:
        return self._clocks[node.index].local(self.now)

    def _virtual_at(self, node: SimNode, deadline: float) -> float:
        return self._clocks[node.index].virtual(deadline)

    def _observe(self, node: SimNode) -> None:
        core = node.core
        if core.active is not self._active[node.index]:
            self._totem_process_changed(node, core.active)
        attached = _attachment(core)
        if attached != self._attached[node.index]:
            self._detach(node, f"went to {core.state.name}" if core.active else "became an observer")
            self._attached[node.index] = attached

    def _detach(self, node: SimNode, why: str) -> None:
        """The node left the ring it was committed to or Operational in (for the quorum
        checker: a configuration stops being whole at the first member that does)."""
        index = node.index
        ring = self._attached[index]
        if ring is None:
            return
        self._attached[index] = None
        self.primary_exits.append(PrimaryExit(at=self.now, pid=self._pid(node), node=node.name,
                                              ring_id=ring, why=why))

    def _pid(self, node: SimNode) -> str:
        return f"{node.name}#{self._process_no[node.index]}"

    # --- lifecycle ----------------------------------------------------------------------

    def _totem_process_changed(self, node: SimNode, active: bool) -> None:
        """The node left the ring as an observer, or took a place in it again. For the
        checkers its Totem processor ended like a crash (what it had accepted and not
        delivered may be lost), and a new one starts: a new process log."""
        self._active[node.index] = active
        self._trace_add(node.name, "joins the ring" if active else "becomes an observer")
        if node.log is not None:
            node.log.crashed = True
        self._new_process_log(node, -1)

    def _new_process_log(self, node: SimNode, process: int) -> None:
        # Numbered per node across restarts and stays as an observer, not by incarnation.
        self._process_no[node.index] += 1
        super()._new_process_log(node, self._process_no[node.index])

    def _make_core(self, node: SimNode, rng: random.Random) -> NodeCore:
        index = node.index
        self._active[index] = True
        incarnation = self._incarnation_stored[index] + 1
        self._incarnation_stored[index] = incarnation
        return NodeCore(
            sim_config(node.name, self.options, len(self.nodes), self.votes[index], sum(self.votes)),
            address=node.address, seeds=[],
            incarnation=incarnation, ring_seq=node.ring_seq_stored, rng=rng,
            size_of=self._codec_sizes.size_of, encode_payload=encode_payload,
            decode_payload=decode_payload, now=self._core_now(node), record_deliveries=True,
            msg_id_base=node.incarnation << 32, expected_votes=self._expected_stored[index])

    def _started(self, node: SimNode) -> None:
        index = node.index
        self._churner[index] = CHURNER
        for conn in (PUBLISHER, CHURNER):
            self._new_client(node, conn)
        for group in GROUPS:
            self._joined[(index, group)] = False
        self._handle(node, Start())
        if node.core is not None:
            self._request(node, JoinGroup, PUBLISHER, group=GROUPS[0])
        if self.now < self.options.starve_all_until_s and node.up and not node.paused:
            # Many daemons starting at once on one host: all of them short of CPU.
            self._starving_until[index] = self.options.starve_all_until_s
            self._starve_step(node)

    def _crash(self, node: SimNode) -> None:
        self._detach(node, "crashed")
        for log in self._clients.values():
            if log.node == node.name and log.incarnation == node.incarnation:
                log.crashed = True
        super()._crash(node)

    # --- client applications --------------------------------------------------------------

    def _conn_id(self, node: SimNode, conn: int) -> int:
        return node.incarnation * _CONN_STRIDE + conn

    def _new_client(self, node: SimNode, conn: int) -> None:
        log = ClientLog(node.name, node.incarnation, conn)
        self.client_logs.append(log)
        self._clients[(node.index, self._conn_id(node, conn))] = log

    def _request(self, node: SimNode, kind: Any, conn: int, **fields: Any) -> list[Any]:
        self._request_ids[node.index] += 1
        request = kind(conn=self._conn_id(node, conn), pid=1000 + conn,
                       request_id=self._request_ids[node.index], **fields)
        return self._handle(node, request)

    def _publish(self, node: SimNode, safe: bool, size: int,
                 probe: bool) -> tuple[str, int] | None:
        if not node.up or node.paused:
            return None
        rng = self._load_rng
        start = rng.randrange(len(self._payload_block) - size + 1)
        data = self._payload_block[start:start + size]
        self.stats.published += 1
        self.sent.setdefault((GROUPS[0], f"{node.name}:{1000 + PUBLISHER}"), set()).add(data)
        effects = self._request(node, SendMessages, PUBLISHER, group=GROUPS[0], data=(data,),
                                safe=safe)
        for eff in effects:
            if type(eff) is Publish and probe:
                key = (node.name, eff.msg_id)
                pub = self._published.get(key)
                if pub is not None:
                    self._published[key] = replace(pub, probe=True)
                return key
        return None

    def _burst(self) -> None:
        super()._burst()
        if self._phase_liveness:
            return
        if self._slow_readers and self._slow_rng.random() < SLOW_READER_PROBABILITY:
            self._slow_reader()
        rng = self._app_rng
        if rng.random() < CHURN_PROBABILITY:
            node = rng.choice(self.nodes)
            group = rng.choice(GROUPS)
            if node.up and not node.paused:
                churner = self._churner[node.index]
                joined = self._joined.get((node.index, group), False)
                if joined:
                    self._request(node, LeaveGroup, churner, group=group)
                else:
                    self._request(node, JoinGroup, churner, group=group,
                                  self_discard=rng.random() < 0.3)
                self._joined[(node.index, group)] = not joined
        if rng.random() < 0.05:
            # The churning application goes away: its memberships end as "disconnect",
            # and a new one (a new connection) takes its place.
            node = rng.choice(self.nodes)
            if node.up and not node.paused:
                index = node.index
                old = self._churner[index]
                self._handle(node, ClientGone(conn=self._conn_id(node, old)))
                log = self._clients.get((index, self._conn_id(node, old)))
                if log is not None:
                    log.crashed = True  # gone without a word: it misses what follows
                for group in GROUPS:
                    self._joined[(index, group)] = False
                self._churner[index] = old + 1
                self._new_client(node, old + 1)

    def _slow_reader(self) -> None:
        """One node's publisher application reads slowly (or stops) for a while."""
        rng = self._slow_rng
        node = rng.choice(self.nodes)
        if not node.up or node.paused:
            return
        reading = rng.random() < 0.7
        now_local = self._clocks[node.index].local(self.now)
        conn = self._conn_id(node, PUBLISHER)
        self._trace_add(node.name, f"reader {'slow' if reading else 'stopped'}")
        self._handle(node, ClientBacklog(conn=conn, queued_bytes=SLOW_BACKLOG_BYTES,
                                         drained_at=now_local if reading else now_local - 10.0))
        self._push(self.now + rng.uniform(0.05, 0.5), HINT, node.index,
                   ClientBacklog(conn=conn, queued_bytes=0, drained_at=0.0))

    def _hint_still_true(self, node: SimNode, hint: Any) -> bool:
        # The only hints here are this module's slow readers catching up.
        self._readers_caught_up(node, hint)
        return False

    def _heal(self) -> None:
        super()._heal()
        # Liveness is judged with applications that keep up: slow readers end with the chaos.
        for node in self.nodes:
            if node.up and node.core is not None:
                self._handle(node, ClientBacklog(conn=self._conn_id(node, PUBLISHER), queued_bytes=0,
                                                 drained_at=self._core_now(node)))

    def _readers_caught_up(self, node: SimNode, event: Any) -> None:
        if not node.up or event.conn != self._conn_id(node, PUBLISHER):
            return  # a restarted process has a new connection
        if node.paused:
            self._push(self.now + 0.1, HINT, node.index, event)
            return
        self._trace_add(node.name, "reader caught up")
        self._handle(node, replace(event, drained_at=self._clocks[node.index].local(self.now)))

    # --- CPU starvation -------------------------------------------------------------------

    def _fault(self) -> None:
        rng = self._starve_rng
        if (self.options.starvation and not self._phase_liveness
                and rng.random() < STARVATION_PROBABILITY):
            node = rng.choice(self.nodes)
            if node.up and not node.paused:
                until = self.now + rng.uniform(0.3, 3.0)
                self._starving_until[node.index] = until
                self._trace_add(node.name, f"STARVED until {until:.3f}")
                self._starve_step(node)
            self._push(self.now + self._fault_rng.expovariate(1.0 / self.options.fault_interval_s),
                       FAULT, -1)
            return
        super()._fault()

    def _starve_step(self, node: SimNode) -> None:
        """The process gets no CPU for a slice; then it runs what piled up, in one go."""
        rng = self._starve_rng
        node.paused = True
        self._push(self.now + rng.uniform(0.001, self.options.starve_slice_max_s), UNDO, node.index,
                   (UNDO_STARVE, node.incarnation))

    def _undo(self, index: int, data: tuple[int, int]) -> None:
        what, incarnation = data
        if what not in (UNDO_STARVE, STARVE_AGAIN):
            super()._undo(index, data)
            return
        node = self.nodes[index]
        if node.incarnation != incarnation or not node.up:
            return
        if what == STARVE_AGAIN:
            if not node.paused and not self._phase_liveness and self.now < self._starving_until[index]:
                self._starve_step(node)
            return
        if not node.paused:
            return
        self._resume(node)
        # It runs for a moment: what piled up (above), its due timers, then new events.
        if node.up and node.core is not None and node.core.next_deadline() <= self._local_now(node):
            self._tick(node)
        if node.up and not node.paused:
            self._push(self.now + self._starve_rng.uniform(0.0005, 0.003), UNDO, index,
                       (STARVE_AGAIN, node.incarnation))

    def _local_now(self, node: SimNode) -> float:
        return self._clocks[node.index].local(self.now)

    # --- effects --------------------------------------------------------------------------

    def _apply(self, node: SimNode, effects: list[Any]) -> None:
        log = node.log
        index = node.index
        for eff in effects:
            tp = type(eff)
            if tp is ToClient:
                client = self._clients.get((index, eff.conn))
                if client is not None:
                    client.frames.append(eff.frame)
                    ev = eff.frame.get("ev")
                    if ev == "message":
                        self.client_messages_delivered += len(eff.frame.get("data", ()))
                    elif ev == "group":
                        self.group_events += 1
            elif tp is Multicast:
                self._count(eff.msg)
                self._send(node, eff.msg, self._names, True)
            elif tp is Send:
                self._count(eff.msg)
                self._send(node, eff.msg, (self._names[eff.dest.port],), False)
            elif tp is Deliver or tp is ConfigChange:
                self._record(node, log, eff)  # type: ignore[arg-type]
                if tp is Deliver and eff.safe and self._primary_regular[index] is not None:
                    self.safe_in_primary.setdefault(self._primary_regular[index], set()).add(
                        (eff.origin, eff.msg_id))
                if tp is ConfigChange:
                    self._config_members[index] = frozenset(eff.members)
                    if eff.kind is ConfigKind.REGULAR:
                        self._regular_ring[index] = eff.ring_id
                        self.regular_members[eff.ring_id] = frozenset(eff.members)
            elif tp is QuorumStatus:
                self._quorum_status(node, eff)
            elif tp is Publish:
                if type(decode_payload(eff.payload)) is GroupSync:
                    # The group sync of the configuration the node just installed.
                    self.syncs_published.setdefault(self._regular_ring[index], set()).add(node.name)
                self._published[(node.name, eff.msg_id)] = Published(
                    origin=node.name, msg_id=eff.msg_id, payload=eff.payload, safe=eff.safe,
                    incarnation=self._process_no[index])
            elif tp is SendRefused:
                self._refused(node, eff, self._process_no[index])
            elif tp is Persist:
                if eff.key == RING_SEQ:
                    self._ring_seq_persisted(node, eff.value)
                elif eff.key == INCARNATION:
                    self._incarnation_stored[index] = max(self._incarnation_stored[index], eff.value)
                elif eff.key == EXPECTED_VOTES:
                    self._expected_stored[index] = eff.value
            elif tp is MemberChanged:
                self._trace_add(node.name, f"gossip {eff.node} {eff.old_state} -> {eff.new_state}")
            elif tp is Reply:
                # Every request of the simulated applications is well-formed: the only
                # refusals are a full window, an observer, or a join/leave raced by churn.
                error = str(eff.body.get("error", ""))
                if "not quorate" in error:
                    self.sends_refused_not_quorate += 1
                if not eff.body.get("ok") and not eff.body.get("again") and not any(
                        reason in error for reason in EXPECTED_REFUSALS):
                    self._violation("client-reply", f"{node.name}: {eff.body}")
            elif tp is Fatal or tp is LeaveDone:
                self._violation("node-stopped", f"{node.name}#{node.incarnation}: {short_repr(eff)}")
            elif tp is Log or tp is UserEventDelivered:
                pass
            else:
                self._violation("unknown-effect", f"{node.name} returned {short_repr(eff)}")

    @property
    def primary_configurations(self) -> int:
        """Regular configurations some member decided primary."""
        return len({r.ring_id for r in self.quorum_reports if r.kind == "regular" and r.primary})

    @property
    def nonprimary_configurations(self) -> int:
        """Regular configurations some member decided not primary."""
        return len({r.ring_id for r in self.quorum_reports if r.kind == "regular" and not r.primary})

    def _quorum_status(self, node: SimNode, status: QuorumStatus) -> None:
        index = node.index
        members = self._config_members[index] if status.ring_id is not None else frozenset()
        self.quorum_reports.append(QuorumReport(
            at=self.now, pid=self._pid(node), ring_id=status.ring_id, kind=status.kind,
            members=members, primary=status.primary, votes=status.votes,
            expected_votes=status.expected_votes, reason=status.reason))
        self._trace_add(node.name, f"quorum: {status.describe()}")
        primary_regular = status.primary and status.kind == ConfigKind.REGULAR.value
        if (primary_regular and status.reason == "configuration" and node.log is not None
                and status.ring_id != self._primary_regular[index]):
            self.primary_installs.append(PrimaryInstall(log=node.log, index=len(node.log.entries),
                                                        ring_id=status.ring_id))
        self._primary_regular[index] = status.ring_id if primary_regular else None
        if (not status.primary and status.reason != "configuration"
                and status.ring_id is not None and status.ring_id == self._attached[index]):
            # Its configuration stopped being primary within it (expected votes raised).
            self.primary_exits.append(PrimaryExit(at=self.now, pid=self._pid(node), node=node.name,
                                                  ring_id=status.ring_id, why=status.reason))

    def _count(self, msg: Any) -> None:
        if type(msg) in TOTEM_MESSAGE_TYPES:
            self.totem_messages += 1
        else:
            self.gossip_messages += 1

    @staticmethod
    def _stop_reason_failed(run: SimRun) -> bool:
        """The run did not settle (the liveness checker reports that itself)."""
        return run.stats.converged_at_s is None or any(
            v.prop in ("core-exception", "event-budget", "timer-loop") for v in run.violations)

    def _send(self, node: SimNode, msg: Any, dests: tuple[str, ...], multicast: bool) -> None:
        if multicast:
            dests = tuple(d for d in dests if d != node.name)  # the core loops its own back
        super()._send(node, msg, dests, multicast)

    # --- result -------------------------------------------------------------------------

    def result(self) -> SimRun:
        run = super().result()
        final: dict[str, FinalNode] = {}
        for node in self.nodes:
            if node.up and node.core is not None:
                core = node.core
                final[node.name] = FinalNode(node=node.name, incarnation=self._process_no[node.index],
                                             state=core.state.name if core.active else "OBSERVER",
                                             ring_id=core.ring_id, members=tuple(core.members))
        run.history.final = final
        if self.options.liveness and not self._stop_reason_failed(run):
            # After the heal every node is in one configuration with all its group syncs
            # delivered: they must hold one view of every group.
            views = {node.name: node.core.groups.members() for node in self.nodes
                     if node.up and node.core is not None and node.core.active}
            distinct = {repr(sorted(v.items())) for v in views.values()}
            if len(distinct) > 1:
                detail = "; ".join(f"{name}: {view}" for name, view in sorted(views.items()))
                run.violations.append(Violation("group-final-views", f"live nodes end with "
                                                f"different group views: {detail}"))
        core_stats: dict[str, Any] = {}
        for node in self.nodes:
            if node.core is not None:
                core_stats[node.name] = {"node": vars_of(node.core.stats)}
        run.core_stats = core_stats
        return run


def _attachment(core: NodeCore) -> Any:
    """The ring ``core``'s Totem belongs to now: committed to it or Operational in it."""
    return core.totem.attached_ring() if core.active else None


def vars_of(obj: Any) -> dict[str, Any]:
    return {name: getattr(obj, name) for name in obj.__slots__}


__all__ = ["ClientLog", "NodeSimCluster", "sim_config"]
