"""Totem recovery: old-ring messages survive ring changes, token loss in Commit and Recovery."""

from __future__ import annotations

from totem_harness import Harness

from ringd.config import TotemConfig
from ringd.core.totem import State
from ringd.core.totem_events import ConfigChange, ConfigKind, Deliver
from ringd.totem_messages import CommitToken, Mcast, Token


def position(h: Harness, node: str, key: tuple[str, int]) -> int:
    return next(i for i, e in enumerate(h.logs[node].entries)
                if type(e) is Deliver and (e.origin, e.msg_id) == key)


def last_transitional(h: Harness, node: str) -> int:
    return max(i for i, e in enumerate(h.logs[node].entries)
               if type(e) is ConfigChange and e.kind is ConfigKind.TRANSITIONAL)


def only_a_survivor_holds(h: Harness) -> None:
    """c sends an agreed then a safe message that b never gets; then c crashes."""
    h.drop = lambda src, dst, msg: dst == "b" and type(msg) is Mcast
    h.publish("c", 1, b"agreed, only a has it")
    h.run_for(0.02)
    h.publish("c", 2, b"safe, only a has it", safe=True)
    h.run_for(0.02)
    assert ("c", 1) in h.logs["a"].delivered_keys()
    assert ("c", 1) not in h.logs["b"].delivered_keys()
    assert ("c", 2) not in h.logs["a"].delivered_keys()  # b lacks it: not safe yet
    h.crash("c")
    h.drop = None


NO_FAIL_TO_RECEIVE = TotemConfig(fail_recv_const=100_000)  # b must stay in the ring while starved


def test_recovery_when_only_one_survivor_holds_the_messages() -> None:
    h = Harness(["a", "b", "c"], config=NO_FAIL_TO_RECEIVE)
    h.run_until(h.operational_ring, timeout_s=3.0)
    old_ring = h.cores["a"].ring_id
    only_a_survivor_holds(h)
    for name in ("a", "b"):
        h.peer_dead(name, "c")
    h.run_until(lambda: h.operational_ring(["a", "b"]), timeout_s=3.0)
    assert h.cores["a"].stats.recovery_tx >= 2
    for name in ("a", "b"):
        trans = last_transitional(h, name)
        # The agreed one was already delivered by a in the old configuration: b too.
        assert position(h, name, ("c", 1)) < trans
        # The safe one is delivered after the transitional configuration, by both.
        assert position(h, name, ("c", 2)) > trans
        got = {(d.origin, d.msg_id): d for d in h.logs[name].deliveries}
        assert got[("c", 1)].ring_id == old_ring and got[("c", 2)].ring_id == old_ring
        assert got[("c", 2)].payload == b"safe, only a has it"
        configs = h.logs[name].configs[-2:]
        assert [c.members for c in configs] == [("a", "b"), ("a", "b")]
    h.assert_consistent_order()


def test_token_loss_during_commit_goes_back_to_gather_and_recovers() -> None:
    h = Harness(["a", "b", "c"])
    h.run_until(h.operational_ring, timeout_s=3.0)
    h.drop = lambda src, dst, msg: type(msg) is CommitToken
    h.crash("c")
    h.run_until(lambda: any(c.stats.token_lost.get("COMMIT", 0) for c in h.cores.values()),
                timeout_s=5.0)
    assert all(c.state is not State.OPERATIONAL or c.members != ("a", "b")
               for c in h.cores.values())
    h.drop = None
    h.run_until(lambda: h.operational_ring(["a", "b"]), timeout_s=5.0)
    h.publish("b", 1, b"after")
    h.run_until(lambda: h.delivered_everywhere([("b", 1)]), timeout_s=1.0)
    h.assert_consistent_order()


def test_token_loss_during_recovery_restores_the_old_ring_state() -> None:
    h = Harness(["a", "b", "c"], config=NO_FAIL_TO_RECEIVE)
    h.run_until(h.operational_ring, timeout_s=3.0)
    for i in range(5):
        h.publish("a", 10 + i, b"old ring, everyone has it")
    h.run_until(lambda: h.delivered_everywhere([("a", 14)]), timeout_s=1.0)
    only_a_survivor_holds(h)
    # Recovery starts but its tokens never arrive until somebody gives up.
    h.drop = lambda src, dst, msg: (type(msg) is Token and dst in h.cores
                                    and h.cores[dst].state is State.RECOVERY)
    attempted = set()

    def lost_in_recovery() -> bool:
        for core in h.cores.values():
            if core.state is State.RECOVERY and core.new_ring is not None:
                attempted.add(core.new_ring.ring_id)
        return any(c.stats.token_lost.get("RECOVERY", 0) for c in h.cores.values())

    h.run_until(lost_in_recovery, timeout_s=5.0)
    h.drop = None
    h.publish("b", 1, b"queued while the ring was down")
    h.run_until(lambda: h.operational_ring(["a", "b"]), timeout_s=5.0)
    h.run_until(lambda: h.delivered_everywhere([("b", 1)], ["b"]), timeout_s=1.0)
    assert attempted
    for name in ("a", "b"):
        keys = h.logs[name].delivered_keys()
        assert len(keys) == len(set(keys))
        assert {("c", 1), ("c", 2), ("a", 14)} <= set(keys)
        configs = h.logs[name].configs
        kinds = [c.kind for c in configs]
        assert all(x is not y for x, y in zip(kinds, kinds[1:], strict=False))
        # The ring whose recovery failed was never installed.
        assert not attempted & {c.ring_id for c in configs}
    h.assert_consistent_order()


def test_queued_and_partly_sent_messages_go_out_on_the_next_ring() -> None:
    config = TotemConfig(max_messages=2, mtu_bytes=1400)
    h = Harness(["a", "b", "c"], config=config)
    h.run_until(h.operational_ring, timeout_s=3.0)
    big = bytes(range(256)) * 80  # ~15 fragments, 2 per token visit
    h.publish("a", 1, big)
    h.publish("a", 2, b"small, queued behind it")
    # Let a send a few fragments, then cut c off before the rest goes out.
    h.run_until(lambda: h.cores["a"].stats.fragments_tx >= 3, timeout_s=1.0)
    assert h.cores["a"].stats.fragments_tx < 15
    h.partition({"a", "b"}, {"c"})
    for name in ("a", "b"):
        h.peer_dead(name, "c")
    h.run_until(lambda: h.operational_ring(["a", "b"])
                and h.delivered_everywhere([("a", 1), ("a", 2)], ["a", "b"]), timeout_s=3.0)
    new_ring = h.cores["a"].ring_id
    for name in ("a", "b"):
        got = [d for d in h.logs[name].deliveries if d.origin == "a"]
        assert [d.msg_id for d in got] == [1, 2]
        assert got[0].payload == big and got[0].ring_id == new_ring
    assert ("a", 1) not in h.logs["c"].delivered_keys()


def test_messages_published_before_any_ring_are_delivered_in_a_configuration() -> None:
    h = Harness(["a", "b"])
    h.publish("a", 1, b"early")  # before any ring exists
    h.run_until(lambda: h.operational_ring() and h.delivered_everywhere([("a", 1)], ["a"]),
                timeout_s=3.0)
    entries = h.logs["a"].entries
    first_deliver = next(i for i, e in enumerate(entries) if type(e) is Deliver)
    regular = [e for e in entries[:first_deliver] if type(e) is ConfigChange]
    assert regular and entries[first_deliver].ring_id == regular[-1].ring_id
