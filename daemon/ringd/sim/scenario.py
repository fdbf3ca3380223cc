"""The scenario a simulated run plays: chaos load, the fault schedule, then heal and liveness.

Mixed into :class:`ringd.sim.cluster.SimCluster` (split out to keep each module short);
it only uses attributes and helpers that class defines.
"""

from __future__ import annotations

import random
from dataclasses import replace
from typing import TYPE_CHECKING

from ringd.core.totem_events import (
    ConfigChange,
    ConfigKind,
    Deliver,
    PeerAlive,
    PeerDead,
    Publish,
    ReadersBehind,
)
from ringd.sim.checkers import Published
from ringd.sim.schedule import (
    BURST,
    CHECK,
    DEADLINE,
    FAULT,
    HINT,
    PUBLISH,
    UNDO,
    UNDO_CRASH,
    UNDO_PARTITION,
    FalseHint,
)

if TYPE_CHECKING:
    from ringd.sim.cluster import SimCluster, SimNode


# Chance per load burst that one node's readers fall behind for a while (flow control).
SLOW_READERS_PROBABILITY = 0.2


class ScenarioMixin:
    """Load, faults and the liveness phase of :class:`SimCluster`."""

    # --- Load ---------------------------------------------------------------------------

    def _burst(self: SimCluster) -> None:
        """A burst of application messages from a random subset of nodes."""
        if self._phase_liveness:
            return
        opts = self.options
        rng = self._load_rng
        if rng.random() < opts.flood_probability:
            # One node floods: exercises flow control, packing and the send queue limit.
            node = rng.choice(self.nodes)
            for _ in range(rng.randint(50, opts.flood_messages_max)):
                self._push(self.now + rng.uniform(0.0, 0.05), PUBLISH, node.index,
                           (rng.random() < opts.safe_fraction, rng.randint(1, 300), False))
        for node in self.nodes:
            if rng.random() < 0.6:
                for _ in range(rng.randint(1, opts.burst_messages_max)):
                    safe = rng.random() < opts.safe_fraction
                    size = self._message_size(rng)
                    self._push(self.now + rng.uniform(0.0, 0.02), PUBLISH, node.index,
                               (safe, size, False))
        slow = self._slow_rng
        if opts.slow_readers and slow.random() < SLOW_READERS_PROBABILITY:
            # Flow control throttles the whole ring while one node's readers catch up.
            node = slow.choice(self.nodes)
            if node.up and not node.paused:
                self._trace_add(node.name, "readers behind")
                self._handle(node, ReadersBehind(behind=True))
                self._push(self.now + slow.uniform(0.05, 0.5), HINT, node.index,
                           ReadersBehind(behind=False))
        self._push(self.now + rng.expovariate(1.0 / opts.burst_interval_s), BURST, -1)

    def _readers_caught_up(self: SimCluster, node: SimNode, event: ReadersBehind) -> None:
        if not node.up:
            return  # a restarted core starts with readers that are not behind
        if node.paused:  # its readers catch up once the daemon runs again
            self._push(self.now + 0.1, HINT, node.index, event)
            return
        self._trace_add(node.name, "readers caught up")
        self._handle(node, event)

    def _message_size(self: SimCluster, rng: random.Random) -> int:
        mtu = self.options.totem.mtu_bytes
        roll = rng.random()
        if roll < self.options.large_fraction:
            return rng.randint(mtu + 1, min(4 * mtu, len(self._payload_block) - 8))
        if roll < 0.3:
            return rng.randint(200, min(mtu - 100, 4000))
        return rng.randint(1, 200)

    def _publish(self: SimCluster, node: SimNode, safe: bool, size: int,
                 probe: bool) -> tuple[str, int] | None:
        """Publish one message at ``node``; its key, or None if it was not offered."""
        if not node.up or node.paused:
            return None  # the application cannot reach a stopped daemon
        msg_id = node.msg_id_next
        node.msg_id_next += 1
        start = self._load_rng.randrange(len(self._payload_block) - size + 1)
        payload = msg_id.to_bytes(8, "big") + self._payload_block[start:start + size]
        key = (node.name, msg_id)
        self._published[key] = Published(origin=node.name, msg_id=msg_id, payload=payload,
                                         safe=safe, incarnation=node.incarnation, probe=probe)
        self.stats.published += 1
        self._handle(node, Publish(msg_id=msg_id, payload=payload, safe=safe))
        return key

    # --- Faults -------------------------------------------------------------------------

    def _fault(self: SimCluster) -> None:
        if self._phase_liveness:
            return
        opts = self.options
        rng = self._fault_rng
        kinds = [k for k, on in (("partition", opts.partitions), ("crash", opts.crashes),
                                 ("pause", opts.pauses),
                                 ("suspicion", opts.gossip_hints and opts.partitions)) if on]
        kind = rng.choice(kinds)
        duration = rng.uniform(0.3, opts.fault_duration_max_s)
        if kind == "partition":
            if not self.network.partitioned:
                what = self.network.partition()
                self.stats.partitions += 1
                self._trace_add("-", f"PARTITION {what} for {duration:.3f}s")
                if opts.gossip_hints:
                    self._hint_partition()
                self._push(self.now + duration, UNDO, -1, (UNDO_PARTITION, 0))
        elif kind == "crash":
            node = rng.choice(self.nodes)
            if node.up:
                self._crash(node)
                roll = rng.random()
                if roll < 0.2:  # back before the others notice: its old self is still in the ring
                    duration = rng.uniform(0.005, 0.15)
                if roll < 0.85:  # else it stays down until the heal
                    self._push(self.now + duration, UNDO, node.index, (UNDO_CRASH, node.incarnation))
        elif kind == "pause":
            node = rng.choice(self.nodes)
            if node.up and not node.paused:
                # Mostly longer than the token timeout (the ring must re-form), sometimes a
                # short stall it should ride out.
                token_timeout = opts.totem.token_timeout_s
                self._pause(node, rng.uniform(0.2 * token_timeout, 4 * token_timeout))
        elif len(self.nodes) > 1:
            # Gossip wrongly reports a live, reachable node dead to one node, then refutes it.
            node, other = rng.sample(self.nodes, 2)
            if node.up and other.up:
                self._trace_add(node.name, f"FALSE SUSPICION of {other.name}")
                self._push(self.now, HINT, node.index, FalseHint(PeerDead(node=other.name)))
                self._push(self.now + rng.uniform(0.2, 1.0), HINT, node.index,
                           PeerAlive(node=other.name))
        self._push(self.now + rng.expovariate(1.0 / opts.fault_interval_s), FAULT, -1)

    def _hint_partition(self: SimCluster) -> None:
        """Gossip on each side eventually calls the unreachable nodes dead."""
        net = self.network
        for a in self.nodes:
            for b in self.nodes:
                if a is not b and a.up and b.up and not net.reachable(b.name, a.name):
                    self._push(self.now + self._fault_rng.uniform(0.2, 1.5), HINT, a.index,
                               PeerDead(node=b.name))

    def _undo(self: SimCluster, index: int, data: tuple[int, int]) -> None:
        what, incarnation = data
        if what == UNDO_PARTITION:
            if self.network.partitioned and not self._phase_liveness:
                self.network.heal()
                self._trace_add("-", "PARTITION healed")
                if self.options.gossip_hints:
                    for node in self.nodes:
                        self._hint_all(PeerAlive(node=node.name), exclude=node)
            return
        node = self.nodes[index]
        if what == UNDO_CRASH:
            if not node.up and node.incarnation == incarnation:
                self.stats.restarts += 1
                self._start(node)
        elif node.incarnation == incarnation:
            self._resume(node)

    # --- Liveness phase -----------------------------------------------------------------

    def _heal(self: SimCluster) -> None:
        """End of chaos: heal everything, then demand convergence within the bound."""
        self._phase_liveness = True
        self.stats.heal_at_s = self.now
        self._trace_add("-", "HEAL: partitions removed, crashed nodes restarted, pauses ended")
        self.network.heal()
        # Liveness is judged on a healthy LAN: the chaos-phase delay spikes end too.
        self.network.options = replace(self.options.liveness_network,
                                       loss_probability=self.options.liveness_loss)
        self.network.loss_probability = self.options.liveness_loss
        for node in self.nodes:
            if not node.up:
                self.stats.restarts += 1
                self._start(node)
            elif node.paused:
                self._resume(node)
        if self.options.gossip_hints:
            for node in self.nodes:
                self._hint_all(PeerAlive(node=node.name), exclude=node)
        if not self.options.liveness:
            self._stop = True
            return
        self._push(self.now + self.options.liveness_bound_s(len(self.nodes)), DEADLINE, -1)
        self._push(self.now + 0.05, CHECK, -1)

    def _converged(self: SimCluster, names: tuple[str, ...] | None = None) -> bool:
        ring = None
        everyone = set(names or self._names)
        for name in names or self._names:
            node = self._by_name[name]
            core = node.core
            if core is None or core.state.name != "OPERATIONAL" or set(core.members) != everyone:
                return False
            if ring is None:
                ring = core.ring_id
            elif core.ring_id != ring:
                return False
            entries = node.log.entries  # type: ignore[union-attr]
            last = next((e for e in reversed(entries) if type(e) is ConfigChange), None)
            if last is None or last.kind is not ConfigKind.REGULAR or last.ring_id != ring:
                return False
        return True

    def _check_liveness_progress(self: SimCluster) -> None:
        """Once converged, publish a round of probes; done when a round is delivered by
        every node with no reconfiguration in between. A reconfiguration may legitimately
        leave a probe undelivered somewhere (it went to a configuration without that
        node), so such a round is demoted to ordinary messages and a new one starts."""
        stats = self.stats
        if self._probe_keys and stats.regular_configs != self._probe_configs_at:
            for key in self._probe_keys:
                pub = self._published.get(key)
                if pub is not None:
                    self._published[key] = replace(pub, probe=False)
            self._probe_keys = []
        if not self._probe_keys:
            if self._converged():
                if stats.converged_at_s is None:
                    stats.converged_at_s = self.now
                stats.probe_rounds += 1
                self._probe_configs_at = stats.regular_configs
                self._trace_add("-", f"CONVERGED: publishing probe round {stats.probe_rounds}")
                mtu = self.options.totem.mtu_bytes
                for node in self.nodes:
                    for safe, size in ((False, 10), (True, 10), (False, mtu + 100)):
                        key = self._publish(node, safe, size, True)
                        if key is not None:
                            self._probe_keys.append(key)
        elif self._probes_delivered() and self._converged():
            self._trace_add("-", "probes delivered everywhere: done")
            self._stop = True
            return
        self._push(self.now + 0.05, CHECK, -1)

    def _probes_delivered(self: SimCluster) -> bool:
        probes = self._probe_keys
        for node in self.nodes:
            got = {(e.origin, e.msg_id) for e in node.log.entries  # type: ignore[union-attr]
                   if type(e) is Deliver}
            if any(k not in got for k in probes):
                return False
        return True

    def _liveness_deadline(self: SimCluster) -> None:
        # The checker explains what is missing; here we only stop the run.
        self._trace_add("-", f"LIVENESS DEADLINE after {self.options.liveness_bound_s(len(self.nodes)):.1f}s")
        self._stop = True
