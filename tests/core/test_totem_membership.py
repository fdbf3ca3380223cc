"""Totem membership: join merging and consensus, merges after partitions, crashes, restarts."""

from __future__ import annotations

from totem_harness import Harness

from ringd.config import TotemConfig
from ringd.core.events import Received
from ringd.core.totem import State
from ringd.core.totem_events import ConfigKind
from ringd.core.totem_membership import JoinOutcome, Membership
from ringd.totem_messages import CommitToken, Join


def test_join_merging_rules_reach_consensus_on_conflicting_sets() -> None:
    a = Membership("a")
    a.start({"a", "b"}, set())
    # c knows more processors: we merge and start consensus over (c already holds our view).
    out = a.on_join("c", Join(proc=("a", "b", "c"), fail=(), ring_seq=0), current=True)
    assert out is JoinOutcome.MERGED and a.proc == {"a", "b", "c"} and a.consensus == {"a", "c"}
    # A join contained in our sets tells us nothing.
    assert a.on_join("b", Join(proc=("a", "b"), fail=(), ring_seq=0), current=True) \
        is JoinOutcome.IGNORED
    # b gave up on d: its fail set is merged (and d joins proc).
    out = a.on_join("b", Join(proc=("a", "b", "c"), fail=("d",), ring_seq=0), current=True)
    assert out is JoinOutcome.MERGED and a.fail == {"d"} and a.members == ("a", "b", "c")
    for sender in ("b", "c"):
        assert a.on_join(sender, Join(proc=("a", "b", "c", "d"), fail=("d",), ring_seq=0),
                         current=True) is JoinOutcome.AGREES
    assert a.agreed() and a.is_rep()
    # A processor that failed us is failed in turn (failure is mutual)...
    e = Membership("e")
    e.start({"e", "f"}, set())
    e.on_join("f", Join(proc=("e", "f"), fail=("e",), ring_seq=5), current=True)
    assert e.fail == {"f"} and e.members == ("e",)
    # ...unless its fail set predates our ring (a stale verdict is not merged).
    g = Membership("g")
    g.start({"g"}, set())
    g.on_join("h", Join(proc=("g", "h"), fail=("g",), ring_seq=1), current=False)
    assert g.fail == set() and g.members == ("g", "h")


def test_conflicting_views_converge_to_one_ring() -> None:
    h = Harness(["a", "b", "c", "d"], start=False)
    # Nodes start one after another, each first forming a ring of its own.
    for i, name in enumerate(h.names):
        h.start(name)
        h.run_for(0.01 * (i + 1))
    h.run_until(h.operational_ring, timeout_s=5.0)
    assert all(c.members == ("a", "b", "c", "d") for c in h.cores.values())
    assert sum(c.stats.consensus_timeouts for c in h.cores.values()) == 0


def split_into_two_rings() -> Harness:
    """Five cores in one ring, then partitioned into operational rings {a, b, c} and {d, e}."""
    h = Harness(["a", "b", "c", "d", "e"])
    h.run_until(h.operational_ring, timeout_s=3.0)
    h.partition({"a", "b", "c"}, {"d", "e"})
    h.run_until(lambda: h.operational_ring(["a", "b", "c"]) and h.operational_ring(["d", "e"]),
                timeout_s=5.0)
    return h


def test_partitioned_rings_merge_with_a_commit_token_from_two_old_rings() -> None:
    h = split_into_two_rings()
    left = h.cores["a"].ring_id
    right = h.cores["d"].ring_id
    assert left != right
    for i in range(5):
        h.publish("b", i, b"left")
        h.publish("e", i, b"right")
    h.run_until(lambda: h.delivered_everywhere([("b", 4)], ["a", "b", "c"])
                and h.delivered_everywhere([("e", 4)], ["d", "e"]), timeout_s=2.0)
    commit_tokens: list[CommitToken] = []
    original = h._send

    def spy(src: str, dst: str, msg: object) -> None:
        if type(msg) is CommitToken:
            commit_tokens.append(msg)
        original(src, dst, msg)

    h._send = spy  # type: ignore[method-assign]
    h.heal()
    h.run_until(h.operational_ring, timeout_s=5.0)  # merge detection on the idle rings
    full = [t for t in commit_tokens if len(t.entries) == 5]
    assert full and {e.old_ring_id for e in full[-1].entries} == {left, right}
    # Each side's transitional configuration is the part of the new ring from its old ring.
    for name, side in [("a", ("a", "b", "c")), ("e", ("d", "e"))]:
        configs = h.logs[name].configs
        trans = [c for c in configs if c.kind is ConfigKind.TRANSITIONAL]
        assert trans[-1].members == side
        assert configs[-1].kind is ConfigKind.REGULAR and len(configs[-1].members) == 5
    # Messages of each side were delivered only there, in their own ring.
    assert ("e", 0) not in h.logs["a"].delivered_keys()
    assert {d.ring_id for d in h.logs["a"].deliveries if d.origin == "b"} == {left}
    keys = [("a", 100), ("e", 100)]
    h.publish("a", 100, b"together")
    h.publish("e", 100, b"together")
    h.run_until(lambda: h.delivered_everywhere(keys), timeout_s=2.0)
    h.assert_consistent_order()


def test_a_join_that_fails_us_does_not_reform_our_ring() -> None:
    # Two rings side by side (a partition). A leftover Join of the other side that lists us
    # as failed would only make us gather, fail its sender and form the same ring again; with
    # many members on a loaded host the two halves did that to each other every second.
    h = split_into_two_rings()
    a = h.cores["a"]
    ring = a.ring_id
    hostile = Join(proc=("a", "b", "c", "d", "e"), fail=("a", "b", "c"),
                   ring_seq=a.highest_ring_seq + 8)
    h._input("a", Received(sender="d", msg=hostile, source=("127.0.0.1", 0)))
    assert a.state is State.OPERATIONAL and a.ring_id == ring
    assert a.stats.joins_failing_us_ignored == 1
    # A Join that lists us as alive is a merge: we gather for it.
    friendly = Join(proc=("a", "d", "e"), fail=(), ring_seq=a.highest_ring_seq)
    h._input("a", Received(sender="d", msg=friendly, source=("127.0.0.1", 0)))
    assert a.state is State.GATHER and a.stats.joins_failing_us_ignored == 1
    h.heal()
    h.run_until(h.operational_ring, timeout_s=5.0)
    assert len(a.members) == 5


def test_crash_installs_transitional_then_regular_within_the_bound() -> None:
    config = TotemConfig()
    h = Harness(["a", "b", "c", "d"], config=config)
    h.run_until(h.operational_ring, timeout_s=3.0)
    h.publish("b", 1, b"before crash")
    h.run_until(lambda: h.delivered_everywhere([("b", 1)]), timeout_s=1.0)
    old_ring = h.cores["a"].ring_id
    marks = {n: len(h.logs[n].configs) for n in h.names}
    left_before = {n: len(h.left[n]) for n in h.names}
    h.crash("c")
    survivors = ["a", "b", "d"]
    took = h.run_until(lambda: h.operational_ring(survivors), timeout_s=5.0)
    rotation_s = 0.01  # a generous bound for two loss-free rotations here
    assert took <= config.token_timeout_s + config.consensus_s + 2 * rotation_s
    for name in survivors:
        new = h.logs[name].configs[marks[name]:]
        assert [c.kind for c in new] == [ConfigKind.TRANSITIONAL, ConfigKind.REGULAR]
        assert new[0].members == tuple(survivors) and new[1].members == tuple(survivors)
        assert new[1].ring_id.seq > old_ring.seq
    assert sum(h.cores[n].stats.token_lost.get("OPERATIONAL", 0) for n in survivors) >= 1
    # Each survivor said it left the old ring (what the lab's one-primary check reads), and
    # left no other ring: the new one is Operational.
    for name in survivors:
        left = h.left[name][left_before[name]:]
        assert [e.ring_id for e in left] == [old_ring]
        assert left[0].reason in ("token_loss", "join", "foreign_ring")


def test_gossip_peer_dead_fails_the_member_at_once() -> None:
    config = TotemConfig()
    h = Harness(["a", "b", "c"], config=config)
    h.run_until(h.operational_ring, timeout_s=3.0)
    h.crash("c")
    for name in ("a", "b"):
        h.peer_dead(name, "c")
    took = h.run_until(lambda: h.operational_ring(["a", "b"]), timeout_s=2.0)
    assert took < config.token_timeout_s / 2  # no token-loss or consensus wait
    assert h.cores["a"].stats.gather_entered.get("peer_dead", 0) == 1


def test_restart_uses_persisted_ring_seq_and_ring_ids_only_grow() -> None:
    h = Harness(["a", "b", "c"])
    h.run_until(h.operational_ring, timeout_s=3.0)
    first = h.cores["c"].ring_id
    assert h.persisted["c"] >= first.seq
    h.crash("c")
    h.run_until(lambda: h.operational_ring(["a", "b"]), timeout_s=5.0)
    h.restart("c")
    assert h.cores["c"].state is not State.OPERATIONAL
    h.run_until(h.operational_ring, timeout_s=5.0)
    for name in h.names:
        seqs = [c.ring_id.seq for c in h.logs[name].configs if c.kind is ConfigKind.REGULAR]
        assert seqs == sorted(set(seqs))
    # The restarted process starts with a regular configuration (no old ring to leave).
    kinds = [c.kind for c in h.logs["c"].configs]
    assert kinds[0] is ConfigKind.REGULAR and kinds[-1] is ConfigKind.REGULAR
    assert all(x is not y for x, y in zip(kinds, kinds[1:], strict=False))  # alternating
    assert h.cores["c"].ring_id.seq > h.persisted["c"] - 1 >= first.seq
    h.publish("c", 1, b"back")
    h.run_until(lambda: h.delivered_everywhere([("c", 1)]), timeout_s=1.0)


def test_lone_restart_with_persisted_seq_forms_a_higher_ring() -> None:
    h = Harness(["z"], start=False)
    h.persisted["z"] = 1000
    h.start("z")
    h.run_until(lambda: h.cores["z"].state is State.OPERATIONAL, timeout_s=2.0)
    assert h.cores["z"].ring_id.seq > 1000
    assert h.persisted["z"] == h.cores["z"].ring_id.seq


def test_a_flapping_member_is_kept_out_until_it_is_stable() -> None:
    config = TotemConfig(flap_window_s=10.0, flap_count=3, flap_stable_s=1.0)
    h = Harness(["a", "b", "c"], config=config)
    h.run_until(h.operational_ring, timeout_s=3.0)
    # c crashes and comes back twice; gossip reports each change: c is flapping.
    for _ in range(2):
        h.crash("c")
        for name in ("a", "b"):
            h.peer_dead(name, "c")
        h.run_until(lambda: h.operational_ring(["a", "b"]), timeout_s=2.0)
        h.restart("c")
        for name in ("a", "b"):
            h.peer_alive(name, "c")
        h.run_for(0.05)
    held_at = h.now
    assert h.cores["a"].flaps.held_out("c", h.now)
    h.run_for(0.5)  # c keeps sending Joins, but stays out while not stable
    assert h.operational_ring(["a", "b"]) and h.cores["c"].members == ("c",)
    h.run_until(h.operational_ring, timeout_s=3.0)
    assert h.now - held_at >= config.flap_stable_s - 0.06
    h.publish("c", 1, b"back for good")
    h.run_until(lambda: h.delivered_everywhere([("c", 1)]), timeout_s=1.0)
    h.assert_consistent_order()


def test_a_member_held_out_by_one_member_only_does_not_make_the_ring_churn() -> None:
    """Members see different flaps (the sides of a partition saw different deaths): here only
    a holds d out. Were b and c to take d's Joins while a fails d in every gather, the ring
    {a, b, c} would form and break again every few milliseconds until a's hold ends (seen in
    the lab: about 10 s of churn after a partition heal). The hold travels in a's Joins
    instead: b and c hold d out until it ends at a, then d merges once."""
    config = TotemConfig(flap_window_s=10.0, flap_count=3, flap_stable_s=1.0)
    h = Harness(["a", "b", "c", "d"], config=config)
    h.run_until(h.operational_ring, timeout_s=3.0)
    for _ in range(2):
        h.crash("d")
        h.peer_dead("a", "d")
        h.run_until(lambda: h.operational_ring(["a", "b", "c"]), timeout_s=2.0)
        h.restart("d")
        h.peer_alive("a", "d")
        h.run_for(0.05)
    held_at = h.now
    assert h.cores["a"].flaps.held_out("d", h.now)
    # b and c had no hint about d at all: they hold it out because a's Joins say so.
    assert all(h.cores[n].flaps.held_out("d", h.now) for n in ("b", "c"))
    assert all(h.cores[n].stats.flap_holds_adopted >= 1 for n in ("b", "c"))
    h.run_until(lambda: h.operational_ring(["a", "b", "c"]), timeout_s=2.0)
    marks = {n: len(h.logs[n].configs) for n in h.names}
    h.run_for(0.6)  # d keeps sending Joins while a holds it out
    assert h.operational_ring(["a", "b", "c"]) and h.cores["d"].members == ("d",)
    regular = {n: sum(c.kind is ConfigKind.REGULAR for c in h.logs[n].configs[marks[n]:])
               for n in ("a", "b", "c")}
    assert regular == {"a": 0, "b": 0, "c": 0}, h.describe()
    # Once a's hold ends, d merges, and the ring of four holds.
    h.run_until(h.operational_ring, timeout_s=3.0)
    assert h.now - held_at >= config.flap_stable_s - 0.06
    marks = {n: len(h.logs[n].configs) for n in h.names}
    h.run_for(1.0)
    assert h.operational_ring() and all(len(h.logs[n].configs) == marks[n] for n in h.names)


def test_an_adopted_hold_ends_without_reforming_the_ring() -> None:
    """a's gossip saw x (an observer, say: never in the ring) flap and end dead, so a holds
    x out with no end and says so in its Joins; b and c adopt the hold. When their adopted
    holds run out, nothing tells them x is alive: the ring must not reform for it (it did,
    every flap_stable_s, with 64 daemons on one host)."""
    config = TotemConfig(flap_window_s=10.0, flap_count=3, flap_stable_s=0.5)
    h = Harness(["a", "b", "c"], config=config)
    h.run_until(h.operational_ring, timeout_s=3.0)
    for alive in (False, True, False, True, False):
        (h.peer_alive if alive else h.peer_dead)("a", "x")
        h.run_until(h.operational_ring, timeout_s=3.0)
    assert h.cores["a"].flaps.held_out("x", h.now + 100.0)  # held while reported dead
    h.crash("c")  # a gather, so that a's Joins carry its hold
    h.run_until(lambda: h.operational_ring(["a", "b"]), timeout_s=3.0)
    h.restart("c")
    h.run_until(h.operational_ring, timeout_s=3.0)
    assert h.cores["b"].stats.flap_holds_adopted >= 1
    marks = {n: len(h.logs[n].configs) for n in h.names}
    h.run_for(4 * config.flap_stable_s)
    assert h.operational_ring() and all(len(h.logs[n].configs) == marks[n] for n in h.names), \
        h.describe()
