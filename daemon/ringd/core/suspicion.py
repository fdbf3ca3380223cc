"""Lifeguard suspicion: a timeout that starts at a maximum and shrinks with independent
confirmations (memberlist ``suspicion.go`` and ``util.go``, re-derived; pure, no timers).

Formulas (also in :class:`ringd.config.GossipConfig`):

* ``min = suspicion_mult * max(1, log10(n)) * probe_interval_s``, ``max = suspicion_max_mult * min``
* ``k`` = configured confirmations, or 0 when fewer than ``k + 2`` members could confirm
* after ``c`` confirmations: ``timeout = max - (ln(c+1) / ln(k+1)) * (max - min)``, floored at ``min``
"""

from __future__ import annotations

import math


def suspicion_timeout(mult: float, n: int, interval_s: float) -> float:
    """Minimum suspicion timeout in seconds for a cluster of ``n`` members."""
    return mult * max(1.0, math.log10(max(n, 1))) * interval_s


def expected_confirmations(configured: int, n: int) -> int:
    """How many independent confirmations to expect: none when the cluster is too small
    for ``configured`` members besides the suspect and the first suspecter to exist."""
    return 0 if n - 2 < configured else configured


def suspicion_timeout_after(confirmations: int, k: int, min_s: float, max_s: float) -> float:
    """Total suspicion timeout (from its start) after ``confirmations`` of ``k``."""
    if k < 1:
        return min_s
    frac = math.log(confirmations + 1.0) / math.log(k + 1.0)
    return max(min_s, max_s - frac * (max_s - min_s))


def remaining_suspicion_time(
    confirmations: int, k: int, elapsed_s: float, min_s: float, max_s: float
) -> float:
    """Seconds left before the suspect is declared dead (negative: overdue)."""
    return suspicion_timeout_after(confirmations, k, min_s, max_s) - elapsed_s


class Suspicion:
    """One suspected member's timer. ``confirm`` counts distinct suspecters other than the
    first one; each new one pulls :attr:`deadline` closer (never before ``start + min``)."""

    __slots__ = ("start", "k", "min_s", "max_s", "confirmations", "_sources", "deadline")

    def __init__(self, *, source: str, k: int, min_s: float, max_s: float, start: float) -> None:
        self.start = start
        self.k = k
        self.min_s = min_s
        self.max_s = max_s
        self.confirmations = 0
        self._sources = {source}
        self.deadline = start + suspicion_timeout_after(0, k, min_s, max_s)

    def confirm(self, source: str) -> bool:
        """Record a suspicion from ``source``; True when it was a new independent one."""
        if self.confirmations >= self.k or source in self._sources:
            return False
        self._sources.add(source)
        self.confirmations += 1
        self.deadline = self.start + suspicion_timeout_after(
            self.confirmations, self.k, self.min_s, self.max_s
        )
        return True
