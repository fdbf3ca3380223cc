"""SimCluster: drives N Totem cores over a :class:`SimNetwork` on a virtual clock.

One seed reproduces a whole run (TigerBeetle's VOPR): the seed feeds one master
``random.Random`` which draws the sub-seeds of every other generator (network, faults,
load, each core incarnation) in a fixed order. There is no other source of entropy, no
wall clock and no iteration over unordered sets where order matters.

A run has two phases:

1. **chaos** (``duration_s`` virtual seconds): bursts of agreed and safe messages of random
   sizes (some larger than ``mtu_bytes``, so they are fragmented) from every node, now and
   then a flood of small ones from one node (flow control, packing, send-queue limit),
   while a fault schedule partitions the network in random shapes (healing later),
   crashes and restarts nodes (a restarted node is a new core with only its persisted ring
   seq; some come back within milliseconds, before anyone noticed), pauses nodes (mostly
   longer than the token timeout; a paused node processes nothing, its datagrams wait in a
   bounded socket buffer, then it resumes) and makes gossip falsely suspect a live node.
   Gossip hints (PeerAlive/PeerDead) follow crashes, restarts and partitions after a
   detection delay, and are dropped if no longer true when they arrive.
2. **liveness**: every fault is healed at once (partitions removed, loss set to
   ``liveness_loss``, delays to ``liveness_network``, crashed nodes restarted, paused nodes
   resumed). Within ``liveness_bound_s()`` every live node must be Operational on one ring
   of all nodes; then a round of probe messages (agreed, safe, fragmented) is published on
   every node and must be delivered everywhere with no reconfiguration in between (if the
   ring changes, the round is demoted to ordinary messages and a new one starts). The run
   stops as soon as that holds.

The loop is a heap of ``(time, seq, kind, node index, data)``; ``seq`` breaks ties in
insertion order so equal times are deterministic.
"""

from __future__ import annotations

import hashlib
import heapq
import math
import random
import traceback
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, is_dataclass, replace
from typing import Any

from ringd.core.events import Received
from ringd.core.totem_events import (
    Broadcast,
    ConfigChange,
    ConfigKind,
    Deliver,
    PeerAlive,
    PeerDead,
    PersistRingSeq,
    ReadersBehind,
    RingLeft,
    SendRefused,
    SendTo,
)
from ringd.messages import Address
from ringd.sim.checkers import FinalNode, History, ProcessLog, Published, Violation
from ringd.sim.network import SimNetwork
from ringd.sim.options import (
    DEFAULT_OPTIONS,
    SIM_TOTEM,
    CoreFactory,
    SimOptions,
    SimStats,
)
from ringd.sim.scenario import ScenarioMixin
from ringd.sim.schedule import (
    ARRIVE,
    BURST,
    CHECK,
    DEADLINE,
    FAULT,
    HEAL,
    HINT,
    PUBLISH,
    START,
    TICK,
    TIMER,
    UNDO,
    UNDO_PAUSE,
    FalseHint,
)
from ringd.sim.trace import RECV, TraceEntry, format_trace, short_repr

# Clock rate error of whole simulated nodes (``ringd simulate`` without --totem-only).
WHOLE_NODE_CLOCK_DRIFT = 0.005

__all__ = ["DEFAULT_OPTIONS", "SIM_TOTEM", "WHOLE_NODE_CLOCK_DRIFT", "SimCluster", "SimNode", "SimOptions", "SimRun",
           "SimStats", "format_trace", "node_names"]

class SimNode:
    """One simulated host: the current core incarnation and its durable ring seq."""

    __slots__ = ("name", "index", "address", "core", "incarnation", "up", "paused",
                 "paused_queue", "timer_at", "log", "ring_seq_stored", "state",
                 "same_time_ticks", "last_tick_at", "msg_id_next")

    def __init__(self, name: str, index: int) -> None:
        self.name = name
        self.index = index
        # An IP literal, as the codec requires (TEST-NET-1: never a real host); the port is
        # the node's index.
        self.address = Address(host="192.0.2.1", port=index)
        self.core: Any = None
        self.incarnation = -1
        self.up = False
        self.paused = False
        self.paused_queue: deque[tuple[str, Any]] = deque()
        self.timer_at = math.inf
        self.log: ProcessLog | None = None
        self.ring_seq_stored = 0
        self.state: Any = None  # the core's state enum member, to trace changes
        self.same_time_ticks = 0
        self.last_tick_at = -1.0
        self.msg_id_next = 1  # unique per node name across restarts (the app's counter)


@dataclass(slots=True)
class SimRun:
    """What :meth:`SimCluster.run` returns: the history for the checkers and the rest."""

    seed: int
    nodes: int
    loss: float
    duplication: float
    history: History
    live_nodes: list[str]
    violations: list[Violation]  # found while running (exceptions, liveness, limits)
    stats: SimStats
    network: dict[str, Any]
    core_stats: dict[str, Any]
    trace: list[TraceEntry]  # the last ``trace_len`` notable events, unformatted
    digest: str  # of the logs, final states and counters: equal runs have equal digests


def node_names(n: int) -> list[str]:
    """``n0..n{n-1}``, zero-padded when needed so that sorted order is numeric order."""
    width = len(str(n - 1))
    return [f"n{i:0{width}d}" for i in range(n)]


class SimCluster(ScenarioMixin):
    """A seeded run of ``n`` Totem cores. Build it, call :meth:`run` once."""

    def __init__(self, seed: int, n: int, options: SimOptions = DEFAULT_OPTIONS) -> None:
        if n < 1:
            raise ValueError("a cluster needs at least one node")
        self.seed = seed
        self.options = options
        master = random.Random(seed)
        # Sub-seeds are drawn in this fixed order; add new ones at the end only.
        params = random.Random(master.getrandbits(64))
        self._net_rng = random.Random(master.getrandbits(64))
        self._fault_rng = random.Random(master.getrandbits(64))
        self._load_rng = random.Random(master.getrandbits(64))
        self._core_seeds = random.Random(master.getrandbits(64))
        self._slow_rng = random.Random(master.getrandbits(64))  # slow readers (drawn last: the
        # streams above, and so the runs of a seed, stay what they were before it existed)
        self.loss = options.loss if options.loss is not None else params.uniform(0, options.loss_max)
        self.duplication = (options.duplication if options.duplication is not None
                            else params.uniform(0, options.duplication_max))
        names = node_names(n)
        self.nodes = [SimNode(name, i) for i, name in enumerate(names)]
        self._by_name = {node.name: node for node in self.nodes}
        self._names = tuple(names)
        self.network = SimNetwork(names, self._net_rng, replace(
            options.network, loss_probability=self.loss, duplicate_probability=self.duplication))
        self.stats = SimStats()
        self.now = 0.0
        self._heap: list[tuple[float, int, int, int, Any]] = []
        self._seq = 0
        self._processes: list[ProcessLog] = []
        self._published: dict[tuple[str, int], Published] = {}
        self._violations: list[Violation] = []
        self._trace: deque[tuple[float, str, str, Any]] = deque(maxlen=options.trace_len)
        self._digest = hashlib.blake2b(digest_size=16) if options.trace_digest else None
        self._phase_liveness = False
        self._probe_keys: list[tuple[str, int]] = []  # the current round of probes
        self._probe_configs_at = 0  # stats.regular_configs when the round was published
        self._stop = False
        self._factory = options.core_factory or _default_core_factory()
        # A random block that payloads are sliced from: cheap, and corruption shows.
        self._payload_block = self._load_rng.randbytes(1 << 16)
        self._codec: Any = None
        if options.codec:
            from ringd.wire import Codec  # only when asked: keeps the default path lean

            self._codec = Codec("ringd-sim")

    # --- Scheduling ---------------------------------------------------------------------

    def _push(self, at: float, kind: int, index: int, data: Any = None) -> None:
        heapq.heappush(self._heap, (at, self._seq, kind, index, data))
        self._seq += 1

    def _trace_add(self, node: str, what: str, obj: Any = None) -> None:
        self._trace.append((self.now, node, what, obj))

    def _violation(self, prop: str, detail: str) -> None:
        self._violations.append(Violation(prop, f"t={self.now:.6f}s {detail}"))
        self._trace_add("-", "VIOLATION", f"[{prop}] {detail}")

    # --- Run ----------------------------------------------------------------------------

    def run(self) -> SimRun:
        """Run both phases to the end; returns the history and everything observed."""
        self.begin()
        self._loop(math.inf, None)
        return self.result()

    def begin(self) -> None:
        """Schedule the node starts, the load, the fault schedule and the heal."""
        opts = self.options
        load_rng = self._load_rng
        for node in self.nodes:
            self._push(load_rng.uniform(0.0, opts.stagger_start_s), START, node.index)
        if opts.load:
            self._push(load_rng.expovariate(1.0 / opts.burst_interval_s), BURST, -1)
        if opts.partitions or opts.crashes or opts.pauses:
            self._push(self._fault_rng.expovariate(1.0 / opts.fault_interval_s), FAULT, -1)
        self._push(opts.duration_s, HEAL, -1)

    def run_until(self, until_s: float, stop: Callable[[], bool] | None = None) -> bool:
        """Process events up to virtual time ``until_s``, or until ``stop()`` is true after an
        event. Returns True if ``stop`` ended it. For scripted scenarios in tests."""
        self._loop(until_s, stop)
        if self.now < until_s and not self._stop and (stop is None or not stop()):
            self.now = until_s
        return stop is not None and stop()

    def crash(self, name: str) -> None:
        """Crash ``name`` now (scripted scenarios)."""
        node = self._by_name[name]
        if node.up:
            self._crash(node)

    def restart(self, name: str) -> None:
        """Restart a crashed ``name`` now (scripted scenarios)."""
        node = self._by_name[name]
        if not node.up:
            self.stats.restarts += 1
            self._start(node)

    def core(self, name: str) -> Any:
        """The current core of ``name`` (None while crashed)."""
        return self._by_name[name].core

    def log(self, name: str) -> ProcessLog | None:
        """The log of the current (or last) process of ``name``."""
        return self._by_name[name].log

    def converged(self, names: Iterable[str] | None = None) -> bool:
        """True if ``names`` (default: all) are Operational on one ring of exactly them and
        have each installed its regular configuration."""
        return self._converged(self._names if names is None else tuple(names))

    def _loop(self, until_s: float, stop: Callable[[], bool] | None) -> None:
        heap = self._heap
        heappop = heapq.heappop
        stats = self.stats
        nodes = self.nodes
        events_max = self.options.events_max
        digest = self._digest
        while heap and not self._stop:
            if heap[0][0] > until_s:
                break
            at, _, kind, index, data = heappop(heap)
            self.now = at
            stats.events += 1
            if digest is not None:
                digest.update(f"{at!r} {kind} {index} {data!r}".encode())
            if kind == ARRIVE:
                self._arrive(nodes[index], data)
            elif kind == TIMER:
                node = nodes[index]
                incarnation, deadline = data
                if (node.up and not node.paused and node.incarnation == incarnation
                        and node.timer_at == deadline):
                    self._tick(node)
            elif kind == PUBLISH:
                self._publish(nodes[index], *data)
            elif kind == HINT:
                node = nodes[index]
                if type(data) is ReadersBehind:
                    self._readers_caught_up(node, data)
                elif node.up and not node.paused and self._hint_still_true(node, data):
                    self._handle(node, data)
            elif kind == START:
                self._start(nodes[index])
            elif kind == BURST:
                self._burst()
            elif kind == FAULT:
                self._fault()
            elif kind == UNDO:
                self._undo(index, data)
            elif kind == HEAL:
                self._heal()
            elif kind == CHECK:
                self._check_liveness_progress()
            elif kind == DEADLINE:
                self._liveness_deadline()
            if stats.events >= events_max:
                self._violation("event-budget", f"run needed more than {events_max} events "
                                "(a message storm or a timer loop)")
                break
            if stop is not None and stop():
                break
        stats.finished_at_s = self.now

    # --- Driving one core -----------------------------------------------------------------

    def _handle(self, node: SimNode, event: Any) -> list[Any]:
        """Hand ``event`` to the node's core, apply the effects, re-arm its timer."""
        if type(event) is FalseHint:
            event = event.hint
        core = node.core
        self.stats.handled += 1
        try:
            effects = core.handle(event, self._core_now(node))
        except Exception as exc:  # a core bug: report it with the trace, stop the run
            self._violation("core-exception",
                            f"{node.name}#{node.incarnation} raised {type(exc).__name__}: {exc} "
                            f"handling {short_repr(event)}\n{traceback.format_exc(limit=-6)}")
            self._stop = True
            return []
        if effects:
            self._apply(node, effects)
        if node.core is not core:
            return effects  # the effects ended the process
        self._observe(node)
        state = core.state
        if state is not node.state:  # enum members are singletons: identity is enough
            name = state.name
            self._trace_add(node.name, f"state {node.state.name if node.state else '-'} -> {name}",
                            getattr(core, "ring_id", None))
            node.state = state
            self.stats.states[name] = self.stats.states.get(name, 0) + 1
        self._arm(node)
        return effects

    def _core_now(self, node: SimNode) -> float:
        """The time ``node``'s core is told (its local clock: a subclass may drift it)."""
        return self.now

    def _virtual_at(self, node: SimNode, deadline: float) -> float:
        """The virtual time at which ``node``'s clock reads ``deadline``."""
        return deadline

    def _observe(self, node: SimNode) -> None:
        """After each input a node handled (a subclass watches its core here)."""

    def _arm(self, node: SimNode) -> None:
        deadline = node.core.next_deadline()
        if deadline != node.timer_at:
            node.timer_at = deadline
            if deadline < math.inf:
                at = self._virtual_at(node, deadline)
                self._push(at if at > self.now else self.now, TIMER, node.index,
                           (node.incarnation, deadline))

    def _tick(self, node: SimNode) -> None:
        self.stats.ticks += 1
        if self.now == node.last_tick_at:
            node.same_time_ticks += 1
            if node.same_time_ticks > 1000:
                self._violation("timer-loop", f"{node.name}#{node.incarnation} asked for more "
                                f"than 1000 ticks at t={self.now} (next_deadline never advances)")
                self._stop = True
                return
        else:
            node.last_tick_at = self.now
            node.same_time_ticks = 0
        node.timer_at = math.inf  # consumed; _arm re-reads next_deadline()
        self._handle(node, TICK)

    def _apply(self, node: SimNode, effects: list[Any]) -> None:
        log = node.log
        for eff in effects:
            tp = type(eff)
            if tp is Broadcast:
                self._send(node, eff.msg, self._names, True)
            elif tp is SendTo:
                self._send(node, eff.msg, (eff.dest,), False)
            elif tp is Deliver or tp is ConfigChange:
                self._record(node, log, eff)  # type: ignore[arg-type]
            elif tp is PersistRingSeq:
                self._ring_seq_persisted(node, eff.seq)
            elif tp is SendRefused:
                self._refused(node, eff, node.incarnation)
            elif tp is RingLeft:
                self._trace_add(node.name, f"left {eff.ring_id}: {eff.reason}")
            else:
                self._violation("unknown-effect", f"{node.name} returned {short_repr(eff)}")

    def _record(self, node: SimNode, log: ProcessLog, eff: Deliver | ConfigChange) -> None:
        """A delivery or configuration of ``node``'s process: the EVS checker's input."""
        log.entries.append(eff)
        log.times.append(self.now)
        if type(eff) is Deliver:
            self.stats.delivered += 1
            self._trace.append((self.now, node.name, "deliver", eff))
            return
        assert type(eff) is ConfigChange
        self.stats.config_changes += 1
        if eff.kind is ConfigKind.REGULAR:
            self.stats.regular_configs += 1
        self._trace_add(node.name, f"config {eff.kind.value} {eff.ring_id} "
                        f"{{{','.join(eff.members)}}}")

    def _ring_seq_persisted(self, node: SimNode, seq: int) -> None:
        if seq < node.ring_seq_stored:
            self._violation("ring-seq-monotonic",
                            f"{node.name}#{node.incarnation} persisted ring seq {seq} "
                            f"below the stored {node.ring_seq_stored}")
        node.ring_seq_stored = seq

    def _refused(self, node: SimNode, eff: SendRefused, process: int) -> None:
        """A publish the core refused is not an accepted message (if that process made it)."""
        key = (node.name, eff.msg_id)
        pub = self._published.get(key)
        if pub is not None and pub.incarnation == process:
            del self._published[key]
        self.stats.refused += 1
        self._trace_add(node.name, f"refused {eff.msg_id}: {eff.reason}")

    def _send(self, node: SimNode, msg: Any, dests: tuple[str, ...], multicast: bool) -> None:
        ring_id = getattr(msg, "ring_id", None)
        if ring_id is not None and ring_id.seq > node.ring_seq_stored:
            # A ring id must be durable before anyone hears of it, or a crash + restart
            # could reuse it for a different ring.
            self._violation("persist-before-use",
                            f"{node.name}#{node.incarnation} sent {type(msg).__name__} of ring "
                            f"{ring_id} with only ring seq {node.ring_seq_stored} persisted")
        data: Any = msg
        if self._codec is not None:
            try:
                data = self._codec.encode(node.name, msg)
            except Exception as exc:
                self._violation("wire-encode", f"{node.name} sent an unencodable "
                                f"{type(msg).__name__}: {exc}")
                return
        src = node.name
        by_name = self._by_name
        for at, dst in self.network.transmit(self.now, src, dests, multicast):
            self._push(at, ARRIVE, by_name[dst].index, (src, data))

    def _arrive(self, node: SimNode, data: tuple[str, Any]) -> None:
        if not node.up:
            self.stats.datagrams_dropped_down += 1
            return
        if node.paused:
            if len(node.paused_queue) >= self.options.socket_buffer_datagrams:
                self.stats.datagrams_dropped_paused += 1
            else:
                node.paused_queue.append(data)
            return
        self._receive(node, data)

    def _receive(self, node: SimNode, data: tuple[str, Any]) -> None:
        src, msg = data
        if self._codec is not None:
            try:
                sender, msg = self._codec.decode_untrusted(msg)
            except Exception as exc:
                self._violation("wire-decode", f"{node.name} could not decode a datagram from "
                                f"{src}: {exc}")
                return
            if sender != src:
                self._violation("wire-decode", f"datagram from {src} decoded as sent by {sender}")
                return
        self.stats.datagrams_delivered += 1
        self._trace.append((self.now, node.name, RECV, (src, msg)))
        self._handle(node, Received(msg=msg, sender=src, source=self._by_name[src].address))

    # --- Node lifecycle -----------------------------------------------------------------

    def _start(self, node: SimNode) -> None:
        """(Re)start a node: a new core incarnation that only knows the persisted ring seq."""
        node.incarnation += 1
        node.up = True
        node.paused = False
        node.paused_queue.clear()
        node.timer_at = math.inf
        node.state = None
        self._new_process_log(node, node.incarnation)
        rng = random.Random(self._core_seeds.getrandbits(64))
        try:
            node.core = self._make_core(node, rng)
        except Exception as exc:
            self._violation("core-exception", f"{node.name} constructor raised "
                            f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=-4)}")
            self._stop = True
            return
        self._trace_add(node.name, f"start #{node.incarnation} ring_seq={node.ring_seq_stored}")
        node.state = node.core.state
        self._arm(node)
        self._started(node)

    def _new_process_log(self, node: SimNode, process: int) -> None:
        node.log = ProcessLog(node.name, process)
        self._processes.append(node.log)

    def _make_core(self, node: SimNode, rng: random.Random) -> Any:
        return self._factory(name=node.name, config=self.options.totem, rng=rng,
                             ring_seq=node.ring_seq_stored, now=self.now)

    def _started(self, node: SimNode) -> None:
        """Right after a (re)start: gossip's hints about the others, here faked."""
        if self.options.gossip_hints:
            # Gossip discovers the others (and they us) a little later.
            for other in self.nodes:
                if other is not node and other.up:
                    delay = self._fault_rng.uniform(0.05, 0.5)
                    if self.network.reachable(node.name, other.name):
                        self._push(self.now + delay, HINT, node.index, PeerAlive(node=other.name))
                    if self.network.reachable(other.name, node.name):
                        self._push(self.now + delay, HINT, other.index, PeerAlive(node=node.name))

    def _hint_still_true(self, node: SimNode, hint: Any) -> bool:
        """Gossip reports what it can observe when the report arrives: a stale PeerDead
        about a node that is back and reachable (or PeerAlive about one that is down or
        cut off) is dropped. Deliberate false suspicions are wrapped in FalseHint."""
        if type(hint) is FalseHint:
            return True
        other = self._by_name[hint.node]
        alive = other.up and self.network.reachable(other.name, node.name)
        return alive if type(hint) is PeerAlive else not alive

    def _crash(self, node: SimNode) -> None:
        node.up = False
        node.paused = False
        node.paused_queue.clear()
        node.core = None
        node.timer_at = math.inf
        if node.log is not None:
            node.log.crashed = True
        self.stats.crashes += 1
        self._trace_add(node.name, f"CRASH #{node.incarnation}")
        if self.options.gossip_hints:
            self._hint_all(PeerDead(node=node.name), exclude=node)

    def _hint_all(self, hint: Any, exclude: SimNode, only: Callable[[SimNode], bool] | None = None,
                  ) -> None:
        """Gossip tells the other nodes about ``exclude`` after a detection delay."""
        for other in self.nodes:
            if other is exclude or not other.up or (only is not None and not only(other)):
                continue
            self._push(self.now + self._fault_rng.uniform(0.2, 1.5), HINT, other.index, hint)

    def _pause(self, node: SimNode, duration_s: float) -> None:
        node.paused = True
        self.stats.pauses += 1
        self._trace_add(node.name, f"PAUSE for {duration_s:.3f}s")
        self._push(self.now + duration_s, UNDO, node.index, (UNDO_PAUSE, node.incarnation))

    def _resume(self, node: SimNode) -> None:
        if not node.up or not node.paused:
            return
        node.paused = False
        queued = list(node.paused_queue)
        node.paused_queue.clear()
        self._trace_add(node.name, f"RESUME with {len(queued)} queued datagrams")
        node.timer_at = math.inf  # re-arm from scratch: timers did not fire while paused
        tick_first = self._fault_rng.random() < 0.5  # either order is what a real loop may do
        if tick_first and node.core.next_deadline() <= self.now:
            self._tick(node)
        for data in queued:
            if not node.up or self._stop:
                return
            self._receive(node, data)
        self._arm(node)

    # --- Result -------------------------------------------------------------------------

    def result(self) -> SimRun:
        """The history and observations so far (call once the run is over)."""
        final: dict[str, FinalNode] = {}
        live: list[str] = []
        for node in self.nodes:
            if node.up and node.core is not None:
                live.append(node.name)
                core = node.core
                final[node.name] = FinalNode(node=node.name, incarnation=node.incarnation,
                                             state=core.state.name, ring_id=core.ring_id,
                                             members=tuple(core.members))
        history = History(processes=self._processes, published=self._published, final=final)
        core_stats: dict[str, Any] = {}
        for node in self.nodes:
            stats = getattr(node.core, "stats", None)
            if stats is not None and is_dataclass(stats):
                core_stats[node.name] = asdict(stats)
        net = asdict(self.network.stats)
        digest = hashlib.blake2b(digest_size=16)
        for proc in self._processes:
            digest.update(f"{proc.pid} {proc.crashed} {proc.entries!r}".encode())
        digest.update(repr(sorted(final.items())).encode())
        digest.update(repr((asdict(self.stats), net)).encode())
        if self._digest is not None:
            digest.update(self._digest.digest())
        return SimRun(seed=self.seed, nodes=len(self.nodes), loss=self.loss,
                      duplication=self.duplication, history=history, live_nodes=live,
                      violations=list(self._violations), stats=self.stats, network=net,
                      core_stats=core_stats, trace=list(self._trace),
                      digest=digest.hexdigest())

    def trace_tail(self, limit: int | None = None) -> list[str]:
        """The last ``limit`` (default: all kept) notable events, formatted."""
        entries = list(self._trace)
        return format_trace(entries if limit is None else entries[-limit:])


def _default_core_factory() -> CoreFactory:
    from ringd.core.totem import TotemCore

    return TotemCore
