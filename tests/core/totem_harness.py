"""A tiny synchronous in-memory harness wiring N TotemCores with a fake clock.

Loss-free and in order by default (every datagram takes ``latency_s``). Tests can drop
messages with a filter, partition the nodes, crash and restart a node (only its persisted
ring seq survives), and run until a condition holds or a virtual deadline passes.
"""

from __future__ import annotations

import heapq
import itertools
import math
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from ringd.config import TotemConfig
from ringd.core.events import Received, Tick
from ringd.core.totem import State, TotemCore
from ringd.core.totem_events import (
    Broadcast,
    ConfigChange,
    ConfigKind,
    Deliver,
    PeerAlive,
    PeerDead,
    PersistRingSeq,
    Publish,
    RingLeft,
    SendRefused,
    SendTo,
)
from ringd.messages import Address

SOURCE = Address(host="127.0.0.1", port=0)  # the core ignores Received.source
DropFilter = Callable[[str, str, Any], bool]  # (sender, dest, msg) -> drop?


@dataclass
class NodeLog:
    entries: list[Deliver | ConfigChange] = field(default_factory=list)
    refused: list[SendRefused] = field(default_factory=list)

    @property
    def deliveries(self) -> list[Deliver]:
        return [e for e in self.entries if type(e) is Deliver]

    @property
    def configs(self) -> list[ConfigChange]:
        return [e for e in self.entries if type(e) is ConfigChange]

    def delivered_keys(self) -> list[tuple[str, int]]:
        return [(d.origin, d.msg_id) for d in self.deliveries]

    def last_regular(self) -> ConfigChange | None:
        regs = [c for c in self.configs if c.kind is ConfigKind.REGULAR]
        return regs[-1] if regs else None


class Harness:
    """N cores, one virtual clock, a heap of datagram arrivals."""

    def __init__(self, names: Iterable[str], *, config: TotemConfig | None = None, seed: int = 0,
                 latency_s: float = 0.0002, start: bool = True) -> None:
        self.config = config or TotemConfig()
        self.rng = random.Random(seed)
        self.latency_s = latency_s
        self.now = 0.0
        self.names = sorted(names)
        self.cores: dict[str, TotemCore] = {}
        self.logs: dict[str, NodeLog] = {n: NodeLog() for n in self.names}
        self.persisted: dict[str, int] = {n: 0 for n in self.names}
        self.left: dict[str, list[RingLeft]] = {n: [] for n in self.names}  # rings each left
        self.down: set[str] = set()
        self.groups: list[set[str]] | None = None  # partition; None = fully connected
        self.drop: DropFilter | None = None
        self.sent: dict[str, int] = {}  # message type name -> datagrams sent
        self._heap: list[tuple[float, int, str, str, Any]] = []
        self._seq = itertools.count()
        if start:
            for name in self.names:
                self.start(name)

    # --- Topology -----------------------------------------------------------------------

    def start(self, name: str) -> TotemCore:
        core = TotemCore(name=name, config=self.config, rng=random.Random(self.rng.random()),
                         ring_seq=self.persisted[name], now=self.now)
        self.cores[name] = core
        self.down.discard(name)
        self._apply(name, core.handle(Tick(), self.now))
        return core

    def crash(self, name: str) -> None:
        self.down.add(name)
        self.cores.pop(name, None)

    def restart(self, name: str) -> TotemCore:
        self.logs[name] = NodeLog()
        return self.start(name)

    def partition(self, *groups: Iterable[str]) -> None:
        self.groups = [set(g) for g in groups]

    def heal(self) -> None:
        self.groups = None

    def reachable(self, src: str, dst: str) -> bool:
        if dst in self.down or src in self.down:
            return False
        if self.groups is None:
            return True
        return any(src in g and dst in g for g in self.groups)

    # --- Inputs -------------------------------------------------------------------------

    def publish(self, name: str, msg_id: int, payload: bytes, safe: bool = False) -> None:
        self._input(name, Publish(msg_id=msg_id, payload=payload, safe=safe))

    def peer_dead(self, name: str, node: str) -> None:
        self._input(name, PeerDead(node=node))

    def peer_alive(self, name: str, node: str) -> None:
        self._input(name, PeerAlive(node=node))

    def _input(self, name: str, event: Any) -> None:
        self._apply(name, self.cores[name].handle(event, self.now))

    # --- Running ------------------------------------------------------------------------

    def step(self, until: float) -> bool:
        """Process the next event at or before ``until``; False if there is none."""
        deadline, who = math.inf, None
        for name, core in self.cores.items():
            d = core.next_deadline()
            if d < deadline:
                deadline, who = d, name
        arrival = self._heap[0][0] if self._heap else math.inf
        if min(deadline, arrival) > until:
            return False
        if arrival <= deadline:
            at, _, dst, src, msg = heapq.heappop(self._heap)
            self.now = max(self.now, at)
            core = self.cores.get(dst)
            if core is not None and dst not in self.down:
                self._apply(dst, core.handle(Received(msg=msg, sender=src, source=SOURCE), self.now))
        else:
            assert who is not None
            self.now = max(self.now, deadline)
            self._apply(who, self.cores[who].handle(Tick(), self.now))
        return True

    def run_for(self, duration_s: float, steps_max: int = 2_000_000) -> None:
        until = self.now + duration_s
        for _ in range(steps_max):
            if not self.step(until):
                break
        else:
            raise AssertionError(f"more than {steps_max} steps before t={until}")
        self.now = max(self.now, until)

    def run_until(self, condition: Callable[[], bool], timeout_s: float,
                  steps_max: int = 2_000_000) -> float:
        """Run until ``condition()`` holds; returns the virtual time it took."""
        start = self.now
        until = start + timeout_s
        for _ in range(steps_max):
            if condition():
                return self.now - start
            if not self.step(until):
                break
        if condition():
            return self.now - start
        raise AssertionError(f"condition not met within {timeout_s}s (t={self.now:.3f}); "
                             f"states: {self.describe()}")

    # --- Observations -------------------------------------------------------------------

    def describe(self) -> str:
        return "; ".join(f"{n}:{c.state.name} {c.ring_id} {','.join(c.members)}"
                         for n, c in sorted(self.cores.items()))

    def operational_ring(self, names: Iterable[str] | None = None) -> bool:
        """All given live nodes are Operational on one ring made of exactly them."""
        group = sorted(names) if names is not None else sorted(self.cores)
        cores = [self.cores[n] for n in group]
        if not all(c.state is State.OPERATIONAL for c in cores):
            return False
        if len({c.ring_id for c in cores}) != 1:
            return False
        return all(list(c.members) == group for c in cores)

    def delivered_everywhere(self, keys: Iterable[tuple[str, int]],
                             names: Iterable[str] | None = None) -> bool:
        want = set(keys)
        return all(want <= set(self.logs[n].delivered_keys())
                   for n in (names if names is not None else self.cores))

    def assert_consistent_order(self) -> None:
        """No node delivered a message twice; every pair delivers common messages in one order."""
        orders = {n: log.delivered_keys() for n, log in self.logs.items()}
        for name, order in orders.items():
            assert len(order) == len(set(order)), f"{name} delivered a message twice"
        names = sorted(orders)
        for i, a in enumerate(names):
            for b in names[i + 1:]:
                common = set(orders[a]) & set(orders[b])
                ours = [k for k in orders[a] if k in common]
                theirs = [k for k in orders[b] if k in common]
                assert ours == theirs, f"{a} and {b} disagree on the order"

    # --- Effects ------------------------------------------------------------------------

    def _apply(self, name: str, effects: list[Any]) -> None:
        for eff in effects:
            tp = type(eff)
            if tp is SendTo:
                self._send(name, eff.dest, eff.msg)
            elif tp is Broadcast:
                for dst in self.names:
                    self._send(name, dst, eff.msg)
            elif tp is Deliver or tp is ConfigChange:
                self.logs[name].entries.append(eff)
            elif tp is PersistRingSeq:
                assert eff.seq >= self.persisted[name], "persisted ring seq went down"
                self.persisted[name] = eff.seq
            elif tp is SendRefused:
                self.logs[name].refused.append(eff)
            elif tp is RingLeft:
                self.left[name].append(eff)
            else:
                raise AssertionError(f"unknown effect {eff!r}")

    def _send(self, src: str, dst: str, msg: Any) -> None:
        kind = type(msg).__name__
        self.sent[kind] = self.sent.get(kind, 0) + 1
        if not self.reachable(src, dst):
            return
        if self.drop is not None and self.drop(src, dst, msg):
            return
        heapq.heappush(self._heap, (self.now + self.latency_s, next(self._seq), dst, src, msg))
