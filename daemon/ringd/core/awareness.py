"""Lifeguard local health (LHM): a saturating score that stretches our own probe timings
when we seem to be the slow one (memberlist ``awareness.go``, without its lock and gauge)."""

from __future__ import annotations


class Awareness:
    """Score in ``0 .. max_multiplier - 1``; timeouts are multiplied by ``score + 1``.

    Raised by failed probes (by the number of missing nacks, or 1 when no helper could
    nack) and by refuting a suspicion about ourselves; lowered by 1 on each successful probe.
    """

    __slots__ = ("max_multiplier", "score")

    def __init__(self, max_multiplier: int) -> None:
        self.max_multiplier = max(1, max_multiplier)
        self.score = 0

    def apply_delta(self, delta: int) -> int:
        """Move the score by ``delta``, saturating at both ends; returns the new score."""
        self.score = min(self.max_multiplier - 1, max(0, self.score + delta))
        return self.score

    def scale(self, duration_s: float) -> float:
        """``duration_s`` stretched by the current health multiplier."""
        return duration_s * (self.score + 1)
