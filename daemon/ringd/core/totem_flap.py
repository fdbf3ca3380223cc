"""Flap damping of gossip hints: a member that keeps dying and coming back stays out of the ring.

DESIGN.md §3: "a member the gossip layer holds flapping (alive/dead repeatedly) is kept out
of the ring until it is stable, so one bad NIC does not reform the ring every few seconds".
A member is *flapping* once ``flap_count`` alive/dead changes fall within ``flap_window_s``;
it is then held out until gossip has reported it alive, without change, for
``flap_stable_s``. While held out its Joins and its rings' messages are ignored and it is
put in the fail set of any gather, so the others form and keep a ring without it.

Members see different flaps (during a partition each side saw only its own deaths), so one
member may hold a node out while the others do not. Then the others took its Joins, and the
holder failed it in every gather: the ring formed and broke again every few milliseconds
until the hold ended. So our holds travel in our Joins with the time they have left, and
a member that receives them holds the same nodes out as long (:meth:`FlapDamper.adopt`):
the ring keeps one view of who is out, and the node merges back once, when the holds end.
"""

from __future__ import annotations

import math
from collections import deque

from ringd.config import TotemConfig


class FlapDamper:
    """Per-node history of gossip alive/dead hints and who is held out."""

    def __init__(self, config: TotemConfig) -> None:
        self.window_s = config.flap_window_s
        self.count = config.flap_count
        self.stable_s = config.flap_stable_s
        self._alive: dict[str, bool] = {}
        self._changes: dict[str, deque[float]] = {}
        self._held_until: dict[str, float] = {}  # math.inf while it is reported dead

    def hint(self, node: str, alive: bool, now: float) -> None:
        """Record a PeerAlive (``alive``) or PeerDead hint."""
        before = self._alive.get(node)
        self._alive[node] = alive
        if before is None or before == alive:
            return
        changes = self._changes.setdefault(node, deque())
        changes.append(now)
        while changes and changes[0] < now - self.window_s:
            changes.popleft()
        if len(changes) >= self.count or node in self._held_until:
            self._held_until[node] = now + self.stable_s if alive else math.inf

    def adopt(self, node: str, remaining_s: float, now: float) -> bool:
        """Hold ``node`` out for ``remaining_s`` more (at most ``stable_s``) because another
        member does: True if that made or lengthened a hold."""
        until = now + min(remaining_s, self.stable_s)
        if until <= now or self._held_until.get(node, -math.inf) >= until:
            return False
        self._held_until[node] = until
        return True

    def remaining(self, now: float) -> dict[str, float]:
        """Each held node's time left, for our Joins; one held while reported dead (no end
        yet) goes out as ``stable_s``, renewed by every Join we send while it lasts."""
        return {n: min(until - now, self.stable_s) for n, until in self._held_until.items()
                if now < until}

    def held_out(self, node: str, now: float) -> bool:
        until = self._held_until.get(node)
        return until is not None and now < until

    def held(self, now: float) -> set[str]:
        return {n for n, until in self._held_until.items() if now < until}

    def next_release(self) -> float:
        if not self._held_until:
            return math.inf  # the common case, asked once per event
        return min((t for t in self._held_until.values() if t < math.inf), default=math.inf)

    def released(self, now: float) -> list[str]:
        """Nodes whose hold ended that gossip reports alive (stable long enough), to welcome
        back; forgets the history of every hold that ended. A hold adopted from another
        member's Joins ends without a welcome when our own gossip never said the node is
        alive (an observer, say): that member's Joins decide, and welcoming it here would
        reform the ring every ``stable_s`` for a node that cannot join."""
        done = sorted(n for n, until in self._held_until.items() if until <= now)
        for node in done:
            del self._held_until[node]
            self._changes.pop(node, None)
        return [n for n in done if self._alive.get(n)]
