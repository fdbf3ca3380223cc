"""A trivially correct stand-in for TotemCore, to test the simulator without the real core.

A fixed sequencer (the first member) orders everything: a Publish goes to it by unicast,
it stamps the next seq and broadcasts; every node delivers in seq order. It is correct
only on a loss-free, fault-free network, which is all the simulator tests ask of it.
``flaw`` breaks it on purpose so end-to-end tests can show the checker catches the bug.
"""

from __future__ import annotations

import enum
import random
from dataclasses import dataclass
from typing import Any

from ringd.config import TotemConfig
from ringd.core.events import Received, Tick
from ringd.core.totem_events import (
    Broadcast,
    ConfigChange,
    ConfigKind,
    Deliver,
    PersistRingSeq,
    Publish,
    SendTo,
)
from ringd.messages import Message
from ringd.totem_messages import RingId

HEARTBEAT_S = 0.1


class FakeState(enum.Enum):
    OPERATIONAL = 1


@dataclass(frozen=True, slots=True, kw_only=True)
class Submit(Message):
    msg_id: int
    payload: bytes
    safe: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class Ordered(Message):
    ring_id: RingId
    seq: int
    origin: str
    msg_id: int
    payload: bytes
    safe: bool


@dataclass(slots=True)
class FakeStats:
    ticks: int = 0
    ordered: int = 0
    delivered: int = 0


class SequencerCore:
    """Implements the TotemCore interface; ``members`` is fixed at construction."""

    def __init__(self, *, name: str, config: TotemConfig, rng: random.Random, ring_seq: int = 0,
                 now: float = 0.0, members: tuple[str, ...] = (), flaw: str = "") -> None:
        self.name = name
        self.config = config
        self.rng = rng
        self.members = tuple(sorted(members))
        self.ring_id = RingId(seq=4, rep=self.members[0])
        self.state = FakeState.OPERATIONAL
        self.stats = FakeStats()
        self.flaw = flaw
        self._installed = False
        self._deadline = now  # install the configuration on the first tick
        self._next_seq = 1  # sequencer: next seq to stamp; everyone: next seq to deliver
        self._stamp = 1
        self._pending: dict[int, Ordered] = {}
        self._seen: set[tuple[str, int]] = set()

    def next_deadline(self) -> float:
        return self._deadline

    def handle(self, event: Any, now: float) -> list[Any]:
        if type(event) is Tick:
            self.stats.ticks += 1
            self._deadline = now + HEARTBEAT_S
            if not self._installed:
                self._installed = True
                install = ConfigChange(kind=ConfigKind.REGULAR, ring_id=self.ring_id,
                                       members=self.members)
                if self.flaw == "no_persist":  # uses a ring id it never made durable
                    return [install]
                return [PersistRingSeq(seq=self.ring_id.seq), install]
            return []
        if type(event) is Publish:
            submit = Submit(msg_id=event.msg_id, payload=event.payload, safe=event.safe)
            return [SendTo(dest=self.members[0], msg=submit)]
        if type(event) is Received:
            msg = event.msg
            if type(msg) is Submit:
                key = (event.sender, msg.msg_id)
                if key in self._seen:
                    return []
                self._seen.add(key)
                ordered = Ordered(ring_id=self.ring_id, seq=self._stamp, origin=event.sender, msg_id=msg.msg_id,
                                  payload=msg.payload, safe=msg.safe)
                self._stamp += 1
                self.stats.ordered += 1
                return [Broadcast(msg=ordered)]
            if type(msg) is Ordered:
                return self._on_ordered(msg)
        return []

    def _on_ordered(self, msg: Ordered) -> list[Any]:
        if self.flaw == "unordered":  # deliver on receipt: reordering breaks total order
            if msg.seq in self._pending:
                return []
            self._pending[msg.seq] = msg
            return [self._deliver(msg)]
        if msg.seq < self._next_seq:
            return []
        self._pending[msg.seq] = msg
        out = []
        while self._next_seq in self._pending:
            ready = self._pending.pop(self._next_seq)
            self._next_seq += 1
            if self.flaw == "no_self" and ready.origin == self.name:
                continue
            out.append(self._deliver(ready))
        return out

    def _deliver(self, msg: Ordered) -> Deliver:
        self.stats.delivered += 1
        return Deliver(ring_id=self.ring_id, seq=msg.seq, origin=msg.origin, msg_id=msg.msg_id,
                       payload=msg.payload, safe=msg.safe)

