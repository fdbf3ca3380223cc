"""Shared vocabulary of the simulator's event heap (used by ``cluster`` and ``scenario``)."""

from __future__ import annotations

from dataclasses import dataclass

from ringd.core.events import Tick
from ringd.core.totem_events import PeerAlive, PeerDead

# Event kinds on the heap (small ints: cheap to compare and dispatch).
ARRIVE, TIMER, START, PUBLISH, FAULT, UNDO, HINT, BURST, HEAL, CHECK, DEADLINE = range(11)

UNDO_PARTITION, UNDO_CRASH, UNDO_PAUSE = range(3)

TICK = Tick()  # frozen and field-less: one instance serves every timer


@dataclass(frozen=True, slots=True)
class FalseHint:
    """A gossip hint delivered even though it is wrong (a false suspicion)."""

    hint: PeerDead | PeerAlive
