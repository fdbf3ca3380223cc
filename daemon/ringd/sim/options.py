"""Options and counters of a simulated run (see :mod:`ringd.sim.cluster`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ringd.config import QuorumConfig, TotemConfig
from ringd.sim.network import NetworkOptions

SIM_TOTEM = TotemConfig(mtu_bytes=1400, flap_stable_s=2.0)
"""Totem settings for simulation: the ``local`` preset timings and the daemon's token hold
rule, a LAN MTU so that multi-fragment messages are common, and a short flap hold so
liveness stays bounded."""

# Whole nodes: time gossip may take, after the heal, to see every node alive again
# (announces, push-pull and refutations at the local preset's intervals).
WHOLE_NODE_GOSSIP_ALLOWANCE_S = 8.0

CoreFactory = Callable[..., Any]  # (*, name, config, rng, ring_seq, now) -> core


@dataclass(frozen=True, slots=True, kw_only=True)
class SimOptions:
    """Everything that shapes a run besides the seed and node count.

    ``None`` for ``loss``/``duplication`` means "drawn from the seed" (uniform in
    ``[0, loss_max]`` / ``[0, duplication_max]``), so sweeps cover a range.
    """

    duration_s: float = 10.0  # chaos phase, virtual seconds
    loss: float | None = None
    loss_max: float = 0.3
    duplication: float | None = None
    duplication_max: float = 0.05
    partitions: bool = True
    crashes: bool = True
    pauses: bool = True
    gossip_hints: bool = True  # PeerAlive/PeerDead as the gossip layer would report them
    fault_interval_s: float = 1.5  # mean time between fault events in the chaos phase
    fault_duration_max_s: float = 3.0  # partitions heal and crashed nodes restart within this
    load: bool = True
    slow_readers: bool = True  # now and then a node's readers fall behind (ReadersBehind) a while
    burst_interval_s: float = 0.5  # mean time between load bursts (idle rings hold the token)
    burst_messages_max: int = 6  # per node per burst
    safe_fraction: float = 0.3
    flood_probability: float = 0.05  # a burst is a flood of small messages from one node
    flood_messages_max: int = 400
    large_fraction: float = 0.05  # messages larger than mtu_bytes (2..4 fragments)
    stagger_start_s: float = 0.3  # nodes start at random times in [0, this]
    liveness: bool = True
    liveness_loss: float = 0.0
    liveness_network: NetworkOptions = NetworkOptions()  # delays after the heal
    liveness_s: float | None = None  # None: derived from the Totem timeouts
    socket_buffer_datagrams: int = 512  # a paused node's queue; later datagrams are dropped
    codec: bool = False  # pass every datagram through ringd.wire.Codec
    whole_node: bool = False  # run NodeCore (gossip, groups, client apps), not bare Totem
    starvation: bool = True  # whole node: a node now and then handles events late, in bursts
    clock_drift_max: float = 0.0  # whole node: each clock's rate is 1 +- up to this
    ring_size_max: int | None = None  # whole node: None = every node may be in the ring
    starve_all_until_s: float = 0.0  # whole node: every node is CPU-starved from its start until then
    starve_slice_max_s: float = 0.06  # whole node: longest a starved node waits for the CPU
    quorum: QuorumConfig | None = None  # whole node: None = defaults with expected_votes = nodes
    weighted_votes: bool = False  # whole node: each node has 1-3 quorum votes (drawn from the seed)
    totem: TotemConfig = SIM_TOTEM
    network: NetworkOptions = NetworkOptions()
    trace_len: int = 300
    trace_digest: bool = False  # hash every processed event (determinism tests)
    events_max: int = 3_000_000  # a run that needs more is reported, not waited for
    core_factory: CoreFactory | None = None  # default: ringd.core.totem.TotemCore

    @classmethod
    def hostile(cls, **overrides: Any) -> SimOptions:
        """Harsher chaos for bug hunting: faults three times as often, up to 40 % loss, and
        1 in 20 datagrams held back up to 0.4 s (spurious token loss, stale messages)."""
        base: dict[str, Any] = dict(
            fault_interval_s=0.5, loss_max=0.4, duplication_max=0.1,
            network=NetworkOptions(spike_probability=0.05, spike_max_s=0.4))
        base.update(overrides)
        return cls(**base)

    def liveness_bound_s(self, nodes: int = 2) -> float:
        """Virtual time allowed after the heal for a ring of ``nodes`` to re-form and drain
        probes."""
        if self.liveness_s is not None:
            return self.liveness_s
        t = self.totem
        # Token loss, then a few Gather/Commit rounds (each bounded by consensus), then
        # recovery; a member held out as flapping waits flap_stable_s first. Both timeouts
        # grow with the ring (token_coefficient_s).
        token = t.token_timeout_s + t.token_coefficient_s * max(0, nodes - 2)
        consensus = t.consensus_s * token / t.token_timeout_s
        bound = t.flap_stable_s + 4 * (token + consensus) + 2.0
        if self.whole_node:
            # Real gossip must first see the restarted and the healed nodes alive again.
            bound += WHOLE_NODE_GOSSIP_ALLOWANCE_S
        return bound


DEFAULT_OPTIONS = SimOptions()


@dataclass(slots=True)
class SimStats:
    """Plain counters of one run."""

    events: int = 0
    handled: int = 0  # core.handle() calls
    ticks: int = 0
    datagrams_delivered: int = 0
    datagrams_dropped_down: int = 0  # arrived at a crashed node
    datagrams_dropped_paused: int = 0  # socket buffer of a paused node overflowed
    published: int = 0
    refused: int = 0
    delivered: int = 0  # Deliver effects, all nodes
    config_changes: int = 0  # ConfigChange effects, all nodes
    regular_configs: int = 0
    crashes: int = 0
    restarts: int = 0
    pauses: int = 0
    partitions: int = 0
    states: dict[str, int] = field(default_factory=dict)  # entries into each core state
    heal_at_s: float | None = None
    converged_at_s: float | None = None  # first time all live nodes shared one full ring
    probe_rounds: int = 0  # >1: the ring reconfigured again after converging
    finished_at_s: float = 0.0
