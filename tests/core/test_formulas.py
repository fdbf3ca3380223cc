"""Table tests of the pure formulas (memberlist util.go / suspicion.go semantics)."""

from __future__ import annotations

import pytest

from ringd.core.awareness import Awareness
from ringd.core.broadcasts import retransmit_limit
from ringd.core.suspicion import (
    Suspicion,
    expected_confirmations,
    remaining_suspicion_time,
    suspicion_timeout,
    suspicion_timeout_after,
)


@pytest.mark.parametrize(
    ("mult", "n", "interval_s", "expected_s"),
    [
        (4, 1, 1.0, 4.0),  # log10 floored at 1
        (4, 5, 1.0, 4.0),
        (4, 10, 1.0, 4.0),
        (4, 100, 1.0, 8.0),
        (4, 1000, 1.0, 12.0),
        (4, 10000, 1.0, 16.0),  # memberlist LAN at 10k: 16 s min, 96 s max
        (2, 20, 0.4, 2 * 1.3010299956639813 * 0.4),
        (2, 50, 0.4, 2 * 1.6989700043360187 * 0.4),
        (3, 0, 0.5, 1.5),
    ],
)
def test_suspicion_timeout(mult: float, n: int, interval_s: float, expected_s: float) -> None:
    assert suspicion_timeout(mult, n, interval_s) == pytest.approx(expected_s)


@pytest.mark.parametrize(
    ("configured", "n", "k"),
    [(3, 1, 0), (3, 4, 0), (3, 5, 3), (3, 50, 3), (0, 50, 0), (2, 3, 0), (2, 4, 2)],
)
def test_expected_confirmations(configured: int, n: int, k: int) -> None:
    assert expected_confirmations(configured, n) == k


# min 2 s, max 30 s, k = 3 (memberlist suspicion_test.go uses the same shape)
@pytest.mark.parametrize(
    ("c", "k", "elapsed_s", "remaining_s"),
    [
        (0, 3, 0.0, 30.0),
        (1, 3, 2.0, 14.0),  # 30 - ln2/ln4 * 28 = 16 total
        (2, 3, 3.0, 30 - 28 * 0.7924812503605781 - 3.0),
        (3, 3, 4.0, -2.0),  # fully confirmed: the min, already overdue
        (4, 3, 0.0, 2.0),  # more than k never goes below the min
        (0, 0, 1.0, 1.0),  # no confirmations expected: the min
        (5, 0, 0.0, 2.0),
        (1, 1, 0.0, 2.0),  # k = 1: one confirmation reaches the min
    ],
)
def test_remaining_suspicion_time(c: int, k: int, elapsed_s: float, remaining_s: float) -> None:
    assert remaining_suspicion_time(c, k, elapsed_s, 2.0, 30.0) == pytest.approx(remaining_s)


def test_timeout_after_is_monotonic_and_bounded() -> None:
    values = [suspicion_timeout_after(c, 5, 1.0, 6.0) for c in range(8)]
    assert values[0] == 6.0 and values[5] == pytest.approx(1.0)
    assert all(a > b for a, b in zip(values[:5], values[1:6], strict=True))
    assert values[6] == values[7] == 1.0


def test_suspicion_counts_only_independent_confirmations() -> None:
    s = Suspicion(source="a", k=3, min_s=2.0, max_s=30.0, start=100.0)
    assert s.deadline == 130.0
    assert not s.confirm("a")  # the first suspecter is not a confirmation
    assert s.confirm("b") and s.deadline == pytest.approx(116.0)
    assert not s.confirm("b")  # same source twice
    assert s.confirm("c") and s.confirm("d")
    assert s.deadline == pytest.approx(102.0)
    assert not s.confirm("e")  # k reached
    assert s.confirmations == 3


@pytest.mark.parametrize(
    ("mult", "n", "limit"),
    [(4, 0, 1), (4, 1, 4), (4, 3, 4), (4, 9, 4), (4, 10, 8), (4, 99, 8), (4, 100, 12),
     (3, 5, 3), (3, 20, 6), (3, 50, 6), (3, 1000, 12), (2, 10000, 10)],
)
def test_retransmit_limit(mult: int, n: int, limit: int) -> None:
    assert retransmit_limit(mult, n) == limit


def test_awareness_saturates_and_scales() -> None:
    a = Awareness(8)
    assert a.scale(0.5) == 0.5
    assert a.apply_delta(3) == 3 and a.scale(0.5) == 2.0
    assert a.apply_delta(100) == 7 and a.scale(1.0) == 8.0
    assert a.apply_delta(-100) == 0
