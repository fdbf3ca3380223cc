"""In-memory network + fake clock wiring N GossipCores together (seeded, synchronous).

One heap of ``(time, seq, kind, node, generation, payload)`` drives everything: datagram
arrivals and core deadlines. ``seq`` breaks ties in insertion order, so one seed gives
one run. Links can lose packets (per directed link) or be blocked; nodes can be killed
(they stop answering) and restarted (a new core at the same address).
"""

from __future__ import annotations

import heapq
import itertools
import math
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from ringd.config import GossipConfig
from ringd.core.events import (
    Fatal,
    Input,
    MemberChanged,
    Multicast,
    Received,
    Send,
    Start,
    Tick,
)
from ringd.core.gossip import GossipCore, MemberView
from ringd.messages import Address, MemberState, Message


@dataclass
class SimNode:
    key: str  # unique in the net (the name, or name@port for a duplicate name)
    name: str
    address: Address
    core: GossipCore
    multicast: bool
    up: bool = True
    generation: int = 0
    ticks: int = 0
    effects: list[tuple[float, Any]] = field(default_factory=list)  # non-network effects


class GossipNet:
    """A fake network of gossip cores. All times are virtual seconds."""

    def __init__(
        self,
        seed: int = 0,
        config: GossipConfig | None = None,
        *,
        latency_s: float = 0.0005,
        jitter_s: float = 0.0005,
        loss: float = 0.0,
        codec: Any = None,
    ) -> None:
        self.rng = random.Random(seed)
        self.config = config or GossipConfig()
        self.latency_s = latency_s
        self.jitter_s = jitter_s
        self.loss = loss
        self.codec = codec  # a ringd.wire.Codec: every datagram is encoded and decoded
        self.now = 0.0
        self.nodes: dict[str, SimNode] = {}
        self._by_address: dict[Address, SimNode] = {}
        self._heap: list[tuple[float, int, str, str, int, Any]] = []
        self._seq = itertools.count()
        self._link_loss: dict[tuple[str, str], float] = {}
        self.datagrams = 0

    # --- topology -----------------------------------------------------------------------

    def add(
        self,
        name: str,
        *,
        port: int | None = None,
        seeds: Iterable[Address] = (),
        incarnation: int = 0,
        multicast: bool = True,
        tags: dict[str, str] | None = None,
        start: bool = True,
        config: GossipConfig | None = None,
    ) -> SimNode:
        address = Address(host="127.0.0.1", port=port or 10000 + len(self._by_address))
        core = self._make_core(name, address, seeds, incarnation, multicast, tags, config)
        key = name if name not in self.nodes else f"{name}@{address.port}"
        node = SimNode(key, name, address, core, multicast)
        self.nodes[key] = node
        self._by_address[address] = node
        if start:
            self.inject(key, Start())
        return node

    def _make_core(self, name: str, address: Address, seeds: Iterable[Address], incarnation: int,
                   multicast: bool, tags: dict[str, str] | None, config: GossipConfig | None) -> GossipCore:
        return GossipCore(
            name=name,
            address=address,
            config=config or self.config,
            rng=random.Random(self.rng.getrandbits(64)),
            tags=tags,
            seeds=list(seeds),
            incarnation=incarnation,
            multicast=multicast,
            size_of=self.codec.size_of if self.codec else None,
            datagram_bytes_max=self.codec.datagram_bytes_max if self.codec else 65000,
        )

    def kill(self, key: str) -> None:
        """The node stops processing anything (crash / hang); its peers must detect it."""
        self.nodes[key].up = False

    def restart(self, key: str, *, incarnation: int = 0, **kw: Any) -> SimNode:
        """A new core at the same address (a restarted daemon); starts it."""
        old = self.nodes[key]
        core = self._make_core(old.core.name, old.address, kw.get("seeds", ()), incarnation,
                               old.multicast, kw.get("tags"), None)
        old.core, old.up, old.generation = core, True, old.generation + 1
        self.inject(key, Start())
        return old

    def set_loss(self, a: str, b: str, loss: float, *, both: bool = True) -> None:
        self._link_loss[(a, b)] = loss
        if both:
            self._link_loss[(b, a)] = loss

    def block(self, a: str, b: str) -> None:
        self.set_loss(a, b, 1.0)

    # --- running ------------------------------------------------------------------------

    def inject(self, key: str, event: Input) -> None:
        """Hand ``event`` to a node now."""
        node = self.nodes[key]
        if node.up:
            self._handle(node, event)

    def run_for(self, duration_s: float) -> None:
        self.run_until(self.now + duration_s)

    def run_until(self, end: float, stop: Callable[[], bool] | None = None) -> bool:
        """Process events up to ``end``; with ``stop``, return True as soon as it holds."""
        while self._heap and self._heap[0][0] <= end:
            time, _, kind, key, generation, payload = heapq.heappop(self._heap)
            self.now = max(self.now, time)
            node = self.nodes[key]
            if not node.up:
                continue
            if kind == "tick":
                if generation != node.generation or node.core.next_deadline() > self.now + 1e-9:
                    continue  # stale timer entry
                node.ticks += 1
                self._handle(node, Tick())
            else:
                self._handle(node, payload)
            if stop is not None and stop():
                return True
        self.now = max(self.now, end)
        return stop is not None and stop()

    def run_until_true(self, cond: Callable[[], bool], timeout_s: float) -> bool:
        """Run until ``cond()`` holds (checked after every step) or ``timeout_s`` passes."""
        if cond():
            return True
        return self.run_until(self.now + timeout_s, cond)

    def _handle(self, node: SimNode, event: Input) -> None:
        before = node.core.next_deadline()
        for effect in node.core.handle(event, self.now):
            match effect:
                case Send(dest=dest, msg=msg):
                    target = self._by_address.get(dest)
                    if target is not None:
                        self._transmit(node, target, msg)
                case Multicast(msg=msg):
                    for target in self._by_address.values():
                        if target.multicast:
                            self._transmit(node, target, msg)
                case _:
                    node.effects.append((self.now, effect))
                    if isinstance(effect, Fatal):
                        node.up = False
        deadline = node.core.next_deadline()
        if math.isfinite(deadline) and (deadline != before or isinstance(event, Tick | Start)):
            heapq.heappush(self._heap, (max(deadline, self.now), next(self._seq), "tick",
                                        node.key, node.generation, None))

    def _transmit(self, src: SimNode, dst: SimNode, msg: Message) -> None:
        self.datagrams += 1
        loss = self._link_loss.get((src.key, dst.key), self.loss)
        if loss and self.rng.random() < loss:
            return
        if self.codec is not None:
            sender, msg = self.codec.decode_untrusted(self.codec.encode(src.core.name, msg))
            assert sender == src.core.name
        at = self.now + self.latency_s + self.rng.uniform(0.0, self.jitter_s)
        event = Received(msg=msg, sender=src.core.name, source=src.address)
        heapq.heappush(self._heap, (at, next(self._seq), "rx", dst.key, dst.generation, event))

    # --- observation --------------------------------------------------------------------

    def up_nodes(self) -> list[SimNode]:
        return [n for n in self.nodes.values() if n.up]

    def view(self, observer: str, member: str) -> MemberView | None:
        return next((v for v in self.nodes[observer].core.members() if v.name == member), None)

    def state(self, observer: str, member: str) -> MemberState | None:
        v = self.view(observer, member)
        return None if v is None else v.state

    def all_see(self, member: str, states: Iterable[MemberState], observers: Iterable[str] | None = None) -> bool:
        wanted = set(states)
        keys = list(observers) if observers is not None else [k for k, n in self.nodes.items() if n.up and k != member]
        return all(self.state(k, member) in wanted for k in keys)

    def converged(self) -> bool:
        """Every up node sees every up node alive."""
        up = self.up_nodes()
        names = [n.core.name for n in up]
        return all(
            {v.name for v in n.core.members() if v.state is MemberState.ALIVE} >= set(names) for n in up
        )

    def changes(self, key: str, member: str | None = None) -> list[tuple[float, MemberChanged]]:
        return [(t, e) for t, e in self.nodes[key].effects
                if isinstance(e, MemberChanged) and (member is None or e.node == member)]

    def first_time(self, key: str, member: str, state: MemberState) -> float | None:
        return next((t for t, e in self.changes(key, member) if e.new_state == state.name), None)


def make_cluster(n: int, seed: int = 0, config: GossipConfig | None = None, *, settle_s: float = 3.0,
                 **kw: Any) -> GossipNet:
    """``n`` nodes named n00.. discovering each other by multicast, run until converged."""
    net = GossipNet(seed, config, **kw)
    for i in range(n):
        net.add(f"n{i:02d}")
    assert net.run_until_true(net.converged, settle_s), f"no convergence of {n} nodes (seed {seed})"
    return net
