"""A plain cumulative histogram the cores and runtime fill and the metrics collector reads.

Kept free of prometheus_client so cores stay importable without it; the collector turns
``buckets``/``counts``/``sum``/``count`` into a Prometheus histogram at scrape time.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence

# Seconds: from sub-millisecond deliveries on loopback up to multi-second token rotations.
LATENCY_BUCKETS_S: tuple[float, ...] = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
)


class Histogram:
    """Counts of observations per upper bound (non-cumulative internally), plus sum and count."""

    __slots__ = ("buckets", "_counts", "sum", "count")

    def __init__(self, buckets: Sequence[float] = LATENCY_BUCKETS_S) -> None:
        self.buckets: tuple[float, ...] = tuple(sorted(buckets))
        self._counts = [0] * (len(self.buckets) + 1)  # the last slot is +Inf
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self._counts[bisect.bisect_left(self.buckets, value)] += 1
        self.sum += value
        self.count += 1

    def cumulative(self) -> list[tuple[float, int]]:
        """``[(upper_bound, observations <= upper_bound), ...]`` ending with ``(inf, count)``."""
        out: list[tuple[float, int]] = []
        running = 0
        for bound, n in zip((*self.buckets, float("inf")), self._counts, strict=True):
            running += n
            out.append((bound, running))
        return out
