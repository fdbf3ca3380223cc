"""Totem on a lossy network: the token resend adapts to the rotation time, so random loss
alone does not look like a dead member (issue: 20 % loss on every link, 0 reconfigurations)."""

from __future__ import annotations

import random
from dataclasses import replace

import pytest
from totem_harness import Harness

from ringd.config import TotemConfig
from ringd.core.totem import State
from ringd.core.totem_events import ConfigKind
from ringd.totem_messages import CommitToken, Token

LOSS = 0.2
RATE_PER_S = 200
HOP_S = 0.001  # a LAN hop with its processing: the token is rarely idle at RATE_PER_S


def run_lossy(config: TotemConfig, seconds: float, seed: int = 1) -> tuple[Harness, int, list[tuple[str, int]]]:
    """A ring of three under LOSS on every datagram, 'a' publishing RATE_PER_S. Returns the
    harness, the regular configurations installed after the first, and what was sent."""
    h = Harness(["a", "b", "c"], config=config, seed=seed, latency_s=HOP_S)
    h.run_until(h.operational_ring, timeout_s=3.0)
    regular_before = sum(1 for log in h.logs.values() for c in log.configs
                         if c.kind is ConfigKind.REGULAR)
    lossy = random.Random(seed)
    h.drop = lambda src, dst, msg: lossy.random() < LOSS
    sent: list[tuple[str, int]] = []
    for i in range(int(seconds * RATE_PER_S)):
        h.publish("a", i, b"x" * 100)
        sent.append(("a", i))
        h.run_for(1.0 / RATE_PER_S)
    h.drop = None
    h.run_until(lambda: h.operational_ring() and h.delivered_everywhere(sent), timeout_s=10.0)
    regular_after = sum(1 for log in h.logs.values() for c in log.configs
                        if c.kind is ConfigKind.REGULAR)
    return h, regular_after - regular_before, sent


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_twenty_percent_loss_on_every_datagram_keeps_the_ring(seed: int) -> None:
    h, reconfigurations, sent = run_lossy(TotemConfig(), seconds=30.0, seed=seed)
    assert reconfigurations == 0, h.describe()
    assert sum(c.stats.token_retx for c in h.cores.values()) > 0  # the loss was real
    assert all(c.state is State.OPERATIONAL for c in h.cores.values())
    h.assert_consistent_order()


def test_a_fixed_resend_interval_loses_the_token_under_the_same_loss() -> None:
    """The control: resending only after token_retransmit_s (the former behaviour), the
    same loss makes members declare the token lost and reform the ring."""
    fixed = replace(TotemConfig(), token_retransmit_min_s=TotemConfig().token_retransmit_s)
    h, reconfigurations, _ = run_lossy(fixed, seconds=30.0, seed=2)
    assert reconfigurations > 0
    assert sum(c.stats.token_lost.get("OPERATIONAL", 0) for c in h.cores.values()) > 0


@pytest.mark.parametrize("rotation_s", [0.0002, 0.004])
def test_the_resend_wait_follows_the_fastest_recent_rotations(rotation_s: float) -> None:
    config = TotemConfig()
    h = Harness(["a", "b", "c"], config=config, latency_s=rotation_s / 3)
    h.run_until(h.operational_ring, timeout_s=3.0)
    for i in range(50):  # a busy ring: the token rotates instead of being held
        h.publish("b", i, b"y")
        h.run_for(rotation_s)
    core = h.cores["a"]
    ring_token = Token(ring_id=core.ring_id, token_seq=1, seq=0, aru=0, aru_id="", rtr=(),
                       fcc=0, backlog=0, retrans_flg=False, install=0)
    wait = core._token_retransmit_after(ring_token)
    assert config.token_retransmit_min_s <= wait <= config.token_retransmit_s
    assert wait == pytest.approx(max(config.token_retransmit_min_s, 3 * rotation_s), rel=0.2)


def test_the_commit_token_of_the_next_ring_is_resent_at_the_pace_of_the_last_one() -> None:
    """Ring changes are when losing a token costs most: the commit and recovery tokens of a
    new ring use the hop times measured on the old one (scaled to the new ring's size)."""
    config = TotemConfig()
    h = Harness(["a", "b", "c", "d"], config=config, latency_s=0.001)
    h.run_until(h.operational_ring, timeout_s=3.0)
    for i in range(50):
        h.publish("b", i, b"y")
        h.run_for(0.004)
    h.crash("d")
    core = h.cores["a"]
    h.run_until(lambda: core.state is State.COMMIT, timeout_s=5.0)
    commit = CommitToken(ring_id=core.ring_id, token_seq=0, members=("a", "b", "c"), entries=())
    assert core._token_retransmit_after(commit) < config.token_retransmit_s / 2
    h.run_until(lambda: h.operational_ring(["a", "b", "c"]), timeout_s=5.0)
