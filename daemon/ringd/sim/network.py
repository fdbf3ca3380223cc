"""A seeded fake LAN: per-path delays, loss, duplication, reordering, partitions.

The network does not hold packets itself: :meth:`SimNetwork.transmit` decides, for one
datagram, which destinations get a copy and when, and the cluster puts those arrivals on
its event heap. Everything random comes from the one ``rng`` handed in, so a run is
reproduced exactly by its seed.

Delays are LAN-like (TigerBeetle's packet simulator has the same shape): a fixed minimum,
an exponential part scaled per path (some links are slower than others), and rare
"spikes" that hold a packet back long enough to reorder it behind later ones.
"""

from __future__ import annotations

import enum
import random
from collections.abc import Sequence
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True, kw_only=True)
class NetworkOptions:
    """Shape of the simulated network (probabilities are per datagram copy)."""

    delay_min_s: float = 0.0001  # switch + stack latency floor
    delay_mean_s: float = 0.0004  # mean of the exponential part on an average path
    delay_max_s: float = 0.002  # clamp of the normal part: a LAN, not a WAN
    spike_probability: float = 0.01  # a packet held back long enough to be reordered
    spike_max_s: float = 0.02
    loss_probability: float = 0.0
    duplicate_probability: float = 0.0
    self_delay_s: float = 0.00002  # multicast loopback to the sender: never lost


class PartitionShape(enum.Enum):
    """How a partition splits the nodes (TigerBeetle ``PartitionMode`` plus one-way cuts)."""

    ISOLATE_SINGLE = "isolate_single"  # one node cut off from all others
    HALVES = "halves"  # two random non-empty groups
    GROUPS = "groups"  # 2..4 random groups
    ONE_WAY = "one_way"  # one node cannot hear (or cannot be heard by) the others
    FLAKY_LINKS = "flaky_links"  # a random subset of directed links is cut
    MULTICAST_DEAF = "multicast_deaf"  # one node gets unicast (tokens) but no multicast
    MULTICAST_MUTE = "multicast_mute"  # one node's multicasts reach nobody (unicast works)


@dataclass(slots=True)
class NetworkStats:
    """Plain counters of what the network did."""

    sent: int = 0  # datagrams handed to the network (a broadcast counts once)
    copies: int = 0  # copies scheduled for delivery
    lost: int = 0  # copies dropped at random
    cut: int = 0  # copies dropped by a partition
    duplicated: int = 0
    spiked: int = 0
    partitions: int = 0
    shapes: dict[str, int] = field(default_factory=dict)


class SimNetwork:
    """Decides the fate of every datagram between the named nodes."""

    def __init__(self, nodes: Sequence[str], rng: random.Random,
                 options: NetworkOptions = NetworkOptions()) -> None:
        self.nodes = tuple(nodes)
        self.options = options
        self.loss_probability = options.loss_probability
        self.duplicate_probability = options.duplicate_probability
        self.stats = NetworkStats()
        self._rng = rng
        # Per-path speed: some cables/switch ports are slower. Drawn once, in a fixed
        # order, so that a seed fixes the topology.
        self._path_mean_s: dict[tuple[str, str], float] = {
            (a, b): options.delay_mean_s * rng.uniform(0.5, 2.0)
            for a in self.nodes for b in self.nodes if a != b
        }
        self._blocked: frozenset[tuple[str, str]] = frozenset()
        self._multicast_deaf: frozenset[str] = frozenset()
        self._multicast_mute: frozenset[str] = frozenset()
        self.partition_shape: PartitionShape | None = None

    # --- Partitions -------------------------------------------------------------------

    @property
    def partitioned(self) -> bool:
        return bool(self._blocked or self._multicast_deaf or self._multicast_mute)

    def reachable(self, src: str, dst: str) -> bool:
        """True if a datagram from ``src`` can currently reach ``dst``."""
        return src == dst or (src, dst) not in self._blocked

    def partition(self, shape: PartitionShape | None = None) -> str:
        """Cut the network in a random way (replacing any current cut); returns a description."""
        rng = self._rng
        nodes = self.nodes
        if shape is None:
            shape = rng.choice(list(PartitionShape))
        blocked: set[tuple[str, str]] = set()
        mcast_deaf: frozenset[str] = frozenset()
        mcast_mute: frozenset[str] = frozenset()
        description: str
        if shape is PartitionShape.ISOLATE_SINGLE or len(nodes) < 3:
            shape = PartitionShape.ISOLATE_SINGLE
            lone = rng.choice(nodes)
            groups = [[lone], [n for n in nodes if n != lone]]
            blocked = _cut_between(groups)
            description = _describe_groups(groups)
        elif shape is PartitionShape.HALVES:
            order = list(nodes)
            rng.shuffle(order)
            split = rng.randint(1, len(order) - 1)
            groups = [sorted(order[:split]), sorted(order[split:])]
            blocked = _cut_between(groups)
            description = _describe_groups(groups)
        elif shape is PartitionShape.GROUPS:
            count = rng.randint(2, min(4, len(nodes)))
            order = list(nodes)
            rng.shuffle(order)
            buckets: list[list[str]] = [[order[i]] for i in range(count)]  # none empty
            for node in order[count:]:
                buckets[rng.randrange(count)].append(node)
            groups = [sorted(b) for b in buckets]
            blocked = _cut_between(groups)
            description = _describe_groups(groups)
        elif shape is PartitionShape.ONE_WAY:
            lone = rng.choice(nodes)
            deaf = rng.random() < 0.5
            for other in nodes:
                if other != lone:
                    blocked.add((other, lone) if deaf else (lone, other))
            description = f"{lone} {'cannot hear' if deaf else 'is not heard by'} the others"
        elif shape is PartitionShape.MULTICAST_DEAF:
            lone = rng.choice(nodes)
            mcast_deaf = frozenset((lone,))
            description = f"{lone} receives no multicast from the others (unicast works)"
        elif shape is PartitionShape.MULTICAST_MUTE:
            lone = rng.choice(nodes)
            mcast_mute = frozenset((lone,))
            description = f"{lone}'s multicasts reach nobody else (unicast works)"
        else:
            for a in nodes:
                for b in nodes:
                    if a != b and rng.random() < 0.3:
                        blocked.add((a, b))
            description = "cut links " + " ".join(f"{a}->{b}" for a, b in sorted(blocked))
        self._blocked = frozenset(blocked)
        self._multicast_deaf = mcast_deaf
        self._multicast_mute = mcast_mute
        self.partition_shape = shape
        self.stats.partitions += 1
        self.stats.shapes[shape.value] = self.stats.shapes.get(shape.value, 0) + 1
        return f"{shape.value}: {description}"

    def split(self, groups: Sequence[Sequence[str]]) -> str:
        """Cut the network between ``groups`` (scripted scenarios); returns a description."""
        parts = [sorted(g) for g in groups]
        self._blocked = frozenset(_cut_between(parts))
        self._multicast_deaf = self._multicast_mute = frozenset()
        self.partition_shape = PartitionShape.GROUPS
        self.stats.partitions += 1
        return _describe_groups(parts)

    def heal(self) -> None:
        """Remove every cut."""
        self._blocked = frozenset()
        self._multicast_deaf = frozenset()
        self._multicast_mute = frozenset()
        self.partition_shape = None

    # --- Datagrams --------------------------------------------------------------------

    def transmit(self, now: float, src: str, dests: Sequence[str],
                 multicast: bool = False) -> list[tuple[float, str]]:
        """Arrival (time, destination) of each copy of one datagram sent by ``src`` at ``now``.

        ``dests`` is every node for a multicast (including ``src``) or one node for unicast.
        A copy to the sender itself is the loopback: never lost, nearly instant.
        """
        rng = self._rng
        opts = self.options
        stats = self.stats
        stats.sent += 1
        out: list[tuple[float, str]] = []
        loss = self.loss_probability
        dup = self.duplicate_probability
        blocked = self._blocked
        deaf = self._multicast_deaf if multicast else None
        if multicast and src in self._multicast_mute:
            dests = (src,) if src in dests else ()
        for dst in dests:
            if dst == src:
                out.append((now + opts.self_delay_s, dst))
                continue
            if (blocked and (src, dst) in blocked) or (deaf and dst in deaf):
                stats.cut += 1
                continue
            if loss and rng.random() < loss:
                stats.lost += 1
                continue
            mean = self._path_mean_s[(src, dst)]
            copies = 2 if dup and rng.random() < dup else 1
            if copies == 2:
                stats.duplicated += 1
            for _ in range(copies):
                delay = opts.delay_min_s + rng.expovariate(1.0 / mean)
                if delay > opts.delay_max_s:
                    delay = opts.delay_max_s
                if rng.random() < opts.spike_probability:
                    delay += rng.uniform(0.0, opts.spike_max_s)
                    stats.spiked += 1
                out.append((now + delay, dst))
        stats.copies += len(out)
        return out


def _cut_between(groups: list[list[str]]) -> set[tuple[str, str]]:
    where = {node: i for i, group in enumerate(groups) for node in group}
    return {(a, b) for a in where for b in where if where[a] != where[b]}


def _describe_groups(groups: list[list[str]]) -> str:
    return " | ".join(",".join(g) for g in groups)
