"""Quorum decisions (pure) and the node's quorum state: votequorum's rules, table-tested."""

from __future__ import annotations

from dataclasses import replace

import pytest

from ringd.config import QuorumConfig
from ringd.core.events import Log, Persist
from ringd.core.quorum import EXPECTED_VOTES, QuorumCore, QuorumStatus, decide
from ringd.core.totem_events import ConfigChange, ConfigKind, Deliver
from ringd.quorum_messages import QuorumExpected
from ringd.totem_messages import CommitEntry, RingId


def entry(node: str, votes: int = 1, expected: int = 0, waiting: bool = False,
          two_node: bool = False) -> CommitEntry:
    return CommitEntry(node=node, old_ring_id=RingId(seq=4, rep="a"), fresh=False, aru=0,
                       high_delivered=0, high_received=0, votes=votes, expected_votes=expected,
                       waiting=waiting, two_node=two_node)


@pytest.mark.parametrize(("entries", "primary", "votes", "expected", "quorum"), [
    # A majority of 5 expected votes: 3 is primary, 2 is not.
    ([entry("a", expected=5), entry("b", expected=5), entry("c", expected=5)], True, 3, 5, 3),
    ([entry("d", expected=5), entry("e", expected=5)], False, 2, 5, 3),
    # An even split of 4 is primary on neither side.
    ([entry("a", expected=4), entry("b", expected=4)], False, 2, 4, 3),
    # Expected is the highest any member brings, and never below the votes present.
    ([entry("a", expected=3), entry("b", expected=7)], False, 2, 7, 4),
    ([entry("a", expected=1), entry("b", expected=1), entry("c", expected=1)], True, 3, 3, 2),
    # A fresh node with no expected votes alone is primary (why expected_votes should be set).
    ([entry("a")], True, 1, 1, 1),
    # Votes weigh: one node of 3 votes against four of 1 each, out of 7.
    ([entry("a", votes=3, expected=7), entry("b", expected=7)], True, 4, 7, 4),
    ([entry("c", expected=7), entry("d", expected=7), entry("e", expected=7)], False, 3, 7, 4),
    # two_node: either alone is primary, but only if both are so configured.
    ([entry("a", expected=2, two_node=True)], True, 1, 2, 1),
    ([entry("a", expected=2, two_node=False)], False, 1, 2, 2),
    # wait_for_all: waiting members only, not all votes present: not primary...
    ([entry("a", expected=3, waiting=True), entry("b", expected=3, waiting=True)], False, 2, 3, 2),
    # ... all present: primary; or one member comes from a primary component: primary.
    ([entry(n, expected=3, waiting=True) for n in "abc"], True, 3, 3, 2),
    ([entry("a", expected=3, waiting=True), entry("b", expected=3)], True, 2, 3, 2),
])
def test_decide(entries: list[CommitEntry], primary: bool, votes: int, expected: int,
                quorum: int) -> None:
    d = decide(entries)
    assert (d.primary, d.votes, d.expected_votes, d.quorum) == (primary, votes, expected, quorum)


def regular(seq: int, *entries: CommitEntry) -> ConfigChange:
    return ConfigChange(kind=ConfigKind.REGULAR, ring_id=RingId(seq=seq, rep=entries[0].node),
                        members=tuple(e.node for e in entries), votes=entries)


def statuses(effects: list[object]) -> list[QuorumStatus]:
    return [e for e in effects if type(e) is QuorumStatus]


def test_expected_votes_follow_the_highest_total_seen_and_are_persisted() -> None:
    q = QuorumCore(QuorumConfig(), name="a", expected_persisted=0)
    assert q.vote_info.expected_votes == 0
    out = q.on_config(regular(4, entry("a"), entry("b"), entry("c")), now=0.0)
    assert Persist(key=EXPECTED_VOTES, value=3) in out
    assert statuses(out)[0].primary and q.vote_info.expected_votes == 3
    # A smaller configuration does not lower it: {a} alone is not primary any more.
    out = q.on_config(regular(8, entry("a", expected=3)), now=1.0)
    assert not any(type(e) is Persist for e in out)
    assert not q.status.primary and q.status.expected_votes == 3 and q.status.quorum == 2
    # A restart reads it back.
    assert QuorumCore(QuorumConfig(), name="a", expected_persisted=3).vote_info.expected_votes == 3
    # Not below the highest seen, either.
    q.on_config(regular(12, entry("a", expected=3), entry("b", expected=3)), now=2.0)
    assert q.vote_info.expected_votes == 3
    # A configured value is a floor.
    assert QuorumCore(QuorumConfig(expected_votes=5), name="a",
                      expected_persisted=3).vote_info.expected_votes == 5


def test_wait_for_all_clears_once_primary_and_two_node_implies_it() -> None:
    q = QuorumCore(QuorumConfig(wait_for_all=True, expected_votes=3), name="a", expected_persisted=0)
    assert q.vote_info.waiting
    q.on_config(regular(4, entry("a", expected=3, waiting=True), entry("b", expected=3, waiting=True)), 0.0)
    assert not q.status.primary and q.waiting
    q.on_config(regular(8, *(entry(n, expected=3, waiting=True) for n in "abc")), 1.0)
    assert q.status.primary and not q.vote_info.waiting
    assert QuorumCore(QuorumConfig(two_node=True), name="a", expected_persisted=0).vote_info == \
        replace(q.vote_info, votes=1, expected_votes=2, waiting=True, two_node=True)


def test_an_ordered_override_changes_every_members_decision_alike() -> None:
    ring = RingId(seq=4, rep="d")
    members = (entry("d", expected=5), entry("e", expected=5))
    d, e = (QuorumCore(QuorumConfig(), name=n, expected_persisted=5) for n in "de")
    for q in (d, e):
        q.on_config(regular(4, *members), 0.0)
        assert not q.status.primary
    msg = QuorumExpected(expected=2, reason="operator", ring_id=ring, by="d")
    delivered = Deliver(ring_id=ring, seq=7, origin="d", msg_id=1, payload=b"", safe=False)
    for q in (d, e):
        out = q.on_expected(msg, delivered, 1.0)
        assert not any(type(x) is Persist for x in out)  # a restart goes back to 5
        assert any(type(x) is Log and "operator" in x.text for x in out)
        (status,) = statuses(out)
        assert status.primary and status.expected_votes == 2 and status.reason == "operator"
    assert d.stats.transitions == {"operator": 1} and d.stats.overrides == 1


def test_last_man_standing_proposes_the_votes_present_after_its_window() -> None:
    cfg = QuorumConfig(last_man_standing=True, last_man_standing_window_s=10.0)
    q = QuorumCore(cfg, name="a", expected_persisted=5)
    q.on_config(regular(4, *(entry(n, expected=5) for n in "abc")), now=100.0)
    assert q.status.primary and q.next_deadline() == 110.0
    assert q.due(109.0) is None
    proposal = q.due(110.0)
    assert proposal is not None and proposal.expected == 3 and proposal.reason == "last_man_standing"
    assert q.next_deadline() == float("inf")
    # Delivered in the configuration it was decided in: applied.
    ring = q.status.ring_id
    assert ring is not None
    q.on_expected(proposal, Deliver(ring_id=ring, seq=9, origin="a", msg_id=3, payload=b"",
                                    safe=False), 111.0)
    assert q.status.expected_votes == 3 and q.vote_info.expected_votes == 3
    # The same proposal from another member changes nothing more.
    assert q.on_expected(replace(proposal, by="b"), Deliver(ring_id=ring, seq=10, origin="b", msg_id=4,
                                                            payload=b"", safe=False), 111.0) == []
    # A stale proposal delivered in a later configuration is void.
    q.on_config(regular(8, entry("a", expected=3), entry("b", expected=3)), now=120.0)
    stale = QuorumExpected(expected=1, reason="last_man_standing", ring_id=ring, by="b")
    assert q.on_expected(stale, Deliver(ring_id=RingId(seq=8, rep="a"), seq=1, origin="b", msg_id=1,
                                        payload=b"", safe=False), 121.0) == []
    assert q.vote_info.expected_votes == 3


@pytest.mark.parametrize(("policy", "group_policy", "refuse_safe", "refuse_agreed"), [
    ("safe", (), True, False),
    ("all", (), True, True),
    ("none", (), False, False),
    ("safe", (("g", "all"),), True, True),
    ("all", (("g", "none"),), False, False),
])
def test_send_policy_of_a_non_primary_component(policy: str, group_policy: tuple[tuple[str, str], ...],
                                                refuse_safe: bool, refuse_agreed: bool) -> None:
    q = QuorumCore(QuorumConfig(nonprimary_sends=policy, group_policy=group_policy), name="d",
                   expected_persisted=5)
    q.on_config(regular(4, entry("d", expected=5), entry("e", expected=5)), 0.0)
    assert (q.refuses("g", True), q.refuses("g", False)) == (refuse_safe, refuse_agreed)
    assert "not quorate" in q.refusal("g", True) and "2 of 5" in q.refusal("g", True)
    q.on_config(regular(8, *(entry(n, expected=5) for n in "cde")), 1.0)
    assert not q.refuses("g", True) and not q.refuses("g", False)
