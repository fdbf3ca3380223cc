"""Retransmit-limited piggyback queue (memberlist ``queue.go`` idea, re-derived).

Each queued update rides on outgoing probes, acks and gossip packets, fewest
transmissions first (newest first among equals), until it has been sent
``retransmit_limit(mult, n)`` times. A newer update about a member invalidates the
queued ones it supersedes, so the queue never carries two versions of one member's state.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass

from ringd.messages import Alive, Dead, Left, Message, Suspect, Update, UserEvent

BROADCASTS_LEN_MAX = 4096  # queued updates; beyond it the most-sent ones are dropped


def retransmit_limit(mult: int, n: int) -> int:
    """How many times each update is sent: ``mult * ceil(log10(n + 1))`` (at least 1)."""
    return max(1, mult * math.ceil(math.log10(max(n, 0) + 1)))


def update_key(update: Update) -> tuple[str, ...]:
    """The slot an update occupies; a new update replaces the one in its slot."""
    match update:
        case UserEvent(origin=origin, ltime=ltime):
            return ("event", origin, str(ltime))
        case Suspect(node=node, source=source):
            # confirmations from distinct sources are independent news: keep each
            return ("suspect", node, source)
        case Alive(node=node) | Dead(node=node) | Left(node=node):
            return ("node", node)
    raise TypeError(f"not an update: {update!r}")


def update_node(update: Update) -> str | None:
    """The member an update is about (None for user events)."""
    return None if isinstance(update, UserEvent) else update.node


@dataclass(slots=True)
class _Item:
    update: Update
    key: tuple[str, ...]
    size_bytes: int
    order: int  # insertion order; newer = larger
    transmits: int = 0


class BroadcastQueue:
    """Bounded queue of updates waiting to be piggybacked."""

    def __init__(self, size_of: Callable[[Message], int], len_max: int = BROADCASTS_LEN_MAX) -> None:
        self._size_of = size_of
        self._len_max = len_max
        self._items: dict[tuple[str, ...], _Item] = {}
        self._by_node: dict[str, set[tuple[str, ...]]] = {}
        self._order = itertools.count()
        self.dropped = 0  # evicted by the length cap

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, update: Update) -> bool:
        item = self._items.get(update_key(update))
        return item is not None and item.update == update

    def queue(self, update: Update) -> None:
        """Add ``update``, invalidating the queued updates about the same member it supersedes."""
        key = update_key(update)
        node = update_node(update)
        if node is not None:
            for old in list(self._by_node.get(node, ())):
                # Alive/Dead/Left supersede everything about the node; a Suspect
                # supersedes the node's queued Alive (it only applies at >= incarnation).
                if not isinstance(update, Suspect) or old[0] == "node" or old == key:
                    self._remove(old)
        else:
            self._remove(key)
        self._items[key] = _Item(update, key, self._size_of(update), next(self._order))
        if node is not None:
            self._by_node.setdefault(node, set()).add(key)
        while len(self._items) > self._len_max:
            worst = max(self._items.values(), key=lambda i: (i.transmits, -i.order))
            self._remove(worst.key)
            self.dropped += 1

    def take(self, budget_bytes: int, limit: int, exclude: tuple[Update, ...] = ()) -> list[Update]:
        """Updates to piggyback on one packet, within ``budget_bytes``; counts a
        transmission for each and retires those that reached ``limit``."""
        if not self._items or budget_bytes <= 0:
            return []
        out: list[Update] = []
        for item in sorted(self._items.values(), key=lambda i: (i.transmits, -i.order)):
            if item.size_bytes > budget_bytes or item.update in exclude:
                continue
            budget_bytes -= item.size_bytes
            out.append(item.update)
            item.transmits += 1
            if item.transmits >= limit:
                self._remove(item.key)
            if budget_bytes <= 0:
                break
        return out

    def prune(self, limit: int) -> None:
        """Retire updates already sent ``limit`` times (the limit shrinks when n does)."""
        for item in [i for i in self._items.values() if i.transmits >= limit]:
            self._remove(item.key)

    def _remove(self, key: tuple[str, ...]) -> None:
        item = self._items.pop(key, None)
        if item is None:
            return
        node = update_node(item.update)
        if node is not None:
            keys = self._by_node.get(node)
            if keys is not None:
                keys.discard(key)
                if not keys:
                    del self._by_node[node]


def estimate_size(msg: object) -> int:
    """Crude encoded-size estimate of a message (used when no codec ``size_of`` is given):
    CBOR-like overheads, erring on the large side so packets stay under the budget."""
    match msg:
        case None | bool():
            return 1
        case int() | float():
            return 9
        case str():
            return len(msg.encode()) + 3
        case bytes():
            return len(msg) + 5
        case dict():
            return 3 + sum(estimate_size(k) + estimate_size(v) for k, v in msg.items())
        case tuple() | list():
            return 3 + sum(estimate_size(v) for v in msg)
        case Message():
            return 4 + sum(estimate_size(getattr(msg, f)) for f in msg.__dataclass_fields__)
    raise TypeError(f"cannot size {type(msg).__name__}")
