"""The EVS checker on hand-made histories: a correct one passes, each broken one is caught."""

from __future__ import annotations

import copy

import pytest

from ringd.core.totem_events import ConfigChange, ConfigKind, Deliver
from ringd.sim.checkers import (
    FinalNode,
    History,
    ProcessLog,
    Published,
    check_liveness,
    check_safety,
)
from ringd.totem_messages import RingId

R1 = RingId(seq=1, rep="a")  # {a,b,c}
R2 = RingId(seq=2, rep="a")  # {a,b} after c is partitioned away
R3 = RingId(seq=3, rep="c")  # {c}
R4 = RingId(seq=4, rep="a")  # {a,b,c} after the merge


def payload(origin: str, msg_id: int) -> bytes:
    return f"{origin}/{msg_id}".encode()


def reg(ring: RingId, *members: str) -> ConfigChange:
    return ConfigChange(kind=ConfigKind.REGULAR, ring_id=ring, members=members)


def trans(ring: RingId, *members: str) -> ConfigChange:
    return ConfigChange(kind=ConfigKind.TRANSITIONAL, ring_id=ring, members=members)


def dl(ring: RingId, seq: int, origin: str, msg_id: int, safe: bool = False) -> Deliver:
    return Deliver(ring_id=ring, seq=seq, origin=origin, msg_id=msg_id,
                   payload=payload(origin, msg_id), safe=safe)


def pub(origin: str, msg_id: int, safe: bool = False, incarnation: int = 0,
        probe: bool = False) -> Published:
    return Published(origin=origin, msg_id=msg_id, payload=payload(origin, msg_id), safe=safe,
                     incarnation=incarnation, probe=probe)


def good_history() -> History:
    """a,b,c on R1; c is cut off (a,b -> R2, c -> R3), then all merge into R4.

    c/1 was ordered on R1 at seq 3 after a hole-free prefix but only delivered in the
    transitional configurations; b/1 is safe and delivered in R1 by everyone.
    """
    ab_prefix = [reg(R1, "a", "b", "c"), dl(R1, 1, "a", 1), dl(R1, 2, "b", 1, safe=True),
                 trans(R2, "a", "b"), dl(R1, 3, "c", 1), reg(R2, "a", "b"),
                 dl(R2, 1, "a", 2), trans(R4, "a", "b")]
    a = ProcessLog("a", 0, ab_prefix + [reg(R4, "a", "b", "c"), dl(R4, 1, "b", 2, safe=True)])
    b = ProcessLog("b", 0, copy.copy(ab_prefix) + [reg(R4, "a", "b", "c"),
                                                   dl(R4, 1, "b", 2, safe=True)])
    c = ProcessLog("c", 0, [reg(R1, "a", "b", "c"), dl(R1, 1, "a", 1),
                            dl(R1, 2, "b", 1, safe=True), trans(R3, "c"), dl(R1, 3, "c", 1),
                            reg(R3, "c"), trans(R4, "c"), reg(R4, "a", "b", "c"),
                            dl(R4, 1, "b", 2, safe=True)])
    published = {(p.origin, p.msg_id): p for p in (
        pub("a", 1), pub("b", 1, safe=True), pub("c", 1), pub("a", 2), pub("b", 2, safe=True))}
    final = {n: FinalNode(node=n, incarnation=0, state="OPERATIONAL", ring_id=R4,
                          members=("a", "b", "c")) for n in "abc"}
    return History(processes=[a, b, c], published=published, final=final)


def props(history: History) -> set[str]:
    return {v.prop for v in check_safety(history)}


def test_correct_history_passes() -> None:
    h = good_history()
    assert check_safety(h) == []
    assert check_liveness(h, ["a", "b", "c"]) == []


def test_crashed_sender_is_exempt_from_self_delivery() -> None:
    h = good_history()
    h.published[("c", 9)] = pub("c", 9)
    h.processes[2].crashed = True
    assert check_safety(h) == []


def test_no_creation_unknown_message() -> None:
    h = good_history()
    h.processes[0].entries.append(dl(R4, 2, "b", 77))
    violations = check_safety(h)
    assert [v.prop for v in violations] == ["no-creation"]
    assert "a#0" in violations[0].detail and "b/77" in violations[0].detail


def test_no_creation_altered_payload() -> None:
    h = good_history()
    bad = Deliver(ring_id=R4, seq=1, origin="b", msg_id=2, payload=b"corrupt", safe=True)
    h.processes[2].entries[-1] = bad
    assert props(h) == {"no-creation"}


def test_no_duplication() -> None:
    h = good_history()
    h.processes[1].entries.append(dl(R4, 1, "b", 2, safe=True))
    violations = check_safety(h)
    assert "no-duplication" in {v.prop for v in violations}
    assert any("b#0" in v.detail and "b/2" in v.detail for v in violations)


def test_same_configuration() -> None:
    h = good_history()
    # c says c/1 was ordered at seq 4 of R1: a different slot than a and b saw.
    c = h.processes[2].entries
    c[4] = dl(R1, 4, "c", 1)
    violations = check_safety(h)
    assert {v.prop for v in violations} == {"same-configuration"}
    assert "c/1" in violations[0].detail


def test_delivery_ring_tag() -> None:
    h = good_history()
    # a tags a message of the transitional configuration with the new ring id.
    h.processes[0].entries[4] = dl(R2, 3, "c", 1)
    assert "delivery-ring" in props(h)


def test_outside_configuration() -> None:
    h = good_history()
    h.processes[0].entries.insert(0, dl(R1, 1, "a", 1))
    assert "outside-configuration" in props(h)


def test_total_order() -> None:
    h = good_history()
    b = h.processes[1].entries
    b[1], b[2] = b[2], b[1]  # b delivers b/1 before a/1; a and c the other way round
    violations = check_safety(h)
    assert "total-order" in {v.prop for v in violations}
    text = " ".join(v.detail for v in violations if v.prop == "total-order")
    assert "a/1" in text and "b/1" in text


def test_total_order_configuration_position() -> None:
    h = good_history()
    # b delivers a/2 after the transitional configuration instead of before it.
    b = h.processes[1].entries
    b[6], b[7] = b[7], b[6]
    assert "total-order" in props(h)


def test_failure_atomicity() -> None:
    h = good_history()
    del h.processes[1].entries[1]  # b never delivers a/1 although it moved R1 -> T(a,b) with a
    violations = check_safety(h)
    assert {v.prop for v in violations} == {"failure-atomicity"}
    assert "a#0" in violations[0].detail and "b#0" in violations[0].detail
    assert "a/1" in violations[0].detail


def test_self_delivery() -> None:
    h = good_history()
    h.published[("a", 3)] = pub("a", 3)
    violations = check_safety(h)
    assert [v.prop for v in violations] == ["self-delivery"]
    assert "a#0" in violations[0].detail and "a/3" in violations[0].detail


def test_safe_delivery() -> None:
    h = good_history()
    del h.processes[2].entries[2]  # c (member of R1, not crashed) never delivers safe b/1
    violations = check_safety(h)
    assert {v.prop for v in violations} == {"safe-delivery"}
    assert "c#0" in violations[0].detail and "b/1" in violations[0].detail


def test_safe_delivery_excuses_a_crashed_member() -> None:
    h = good_history()
    c = h.processes[2]
    c.entries = c.entries[:2]  # c crashes right after delivering a/1
    c.crashed = True
    h.processes[2] = c
    h.published.pop(("c", 1))
    for p in h.processes[:2]:
        p.entries = [e for e in p.entries if not (type(e) is Deliver and e.origin == "c")]
    # a and b's later configurations no longer include c: rebuild them without it.
    for p in h.processes[:2]:
        p.entries = [e for e in p.entries if not (type(e) is ConfigChange and e.ring_id == R4)
                     and not (type(e) is Deliver and e.ring_id == R4)]
    h.published.pop(("b", 2))
    assert check_safety(h) == []


def test_transitional_subset() -> None:
    h = good_history()
    h.processes[0].entries[3] = trans(R2, "a", "b", "c")
    h.processes[1].entries[3] = trans(R2, "a", "b", "c")
    assert "transitional-subset" in props(h)


def test_config_sequence() -> None:
    h = good_history()
    c = h.processes[2].entries
    del c[6]  # c goes from regular R3 straight to regular R4
    assert props(h) == {"config-sequence"}


def test_self_inclusion() -> None:
    h = good_history()
    h.processes[2].entries[3] = trans(R3, "a")
    assert "self-inclusion" in props(h)


def test_config_identity() -> None:
    h = good_history()
    c = h.processes[2].entries
    c[5] = reg(R2, "c")  # c reuses ring id R2 for a different member set
    c[6] = trans(R4, "c")
    assert "config-identity" in props(h)


def test_ring_seq_monotonic_across_restarts() -> None:
    h = good_history()
    h.processes[2].crashed = True
    h.processes.append(ProcessLog("c", 1, [reg(RingId(seq=2, rep="c"), "c")]))
    assert "ring-seq-monotonic" in props(h)


def test_liveness_split_rings() -> None:
    h = good_history()
    h.final["c"] = FinalNode(node="c", incarnation=0, state="OPERATIONAL", ring_id=R3,
                             members=("c",))
    violations = check_liveness(h, ["a", "b", "c"])
    assert violations and all(v.prop == "liveness" for v in violations)
    assert any("different rings" in v.detail for v in violations)


def test_liveness_not_operational() -> None:
    h = good_history()
    h.final["b"] = FinalNode(node="b", incarnation=0, state="GATHER", ring_id=R4,
                             members=("a", "b", "c"))
    assert any("GATHER" in v.detail for v in check_liveness(h, ["a", "b", "c"]))


def test_liveness_probe_not_delivered() -> None:
    h = good_history()
    h.published[("a", 5)] = pub("a", 5, probe=True)
    for p in h.processes[:2]:
        p.entries.append(dl(R4, 2, "a", 5))
    violations = check_liveness(h, ["a", "b", "c"])
    assert [v.prop for v in violations] == ["liveness", "final-agreement"]
    assert "c#0" in violations[0].detail and "a/5" in violations[1].detail


@pytest.mark.parametrize("count", [3, 20])
def test_violations_are_capped_per_property(count: int) -> None:
    h = good_history()
    for i in range(count):
        h.published[("a", 100 + i)] = pub("a", 100 + i)
    violations = check_safety(h)
    assert 1 <= len(violations) <= 6


def test_unsettled_history_skips_eventual_properties() -> None:
    h = good_history()
    h.published[("a", 3)] = pub("a", 3)  # still in a's send queue when the run was cut off
    assert check_safety(h, eventual=False) == []
    assert [v.prop for v in check_safety(h)] == ["self-delivery"]


def test_safe_member_may_deliver_in_another_configuration() -> None:
    """A member of C whose recovery token was lost never installs C, but still delivers
    the safe message (in its own transitional configuration): that satisfies safe delivery."""
    r5 = RingId(seq=5, rep="a")
    r6 = RingId(seq=6, rep="b")
    a = ProcessLog("a", 0, [reg(R1, "a", "b"), trans(r5, "a", "b"), dl(R1, 1, "b", 1, safe=True),
                            reg(r5, "a", "b", "c")])
    b = ProcessLog("b", 0, [reg(R1, "a", "b"), trans(r6, "b"), dl(R1, 1, "b", 1, safe=True),
                            reg(r6, "b", "c")])
    h = History(processes=[a, b], published={("b", 1): pub("b", 1, safe=True)})
    assert check_safety(h) == []
    b.entries.pop(2)  # now b never delivers it and never crashes: a violation
    assert "safe-delivery" in props(h)


def test_transitional_agreement() -> None:
    h = good_history()
    # b claims it moved R2 -> R4 alone, a says a and b moved together.
    b = h.processes[1].entries
    b[7] = trans(R4, "b")
    violations = check_safety(h)
    assert {v.prop for v in violations} == {"transitional-agreement"}
    assert "a#0" in violations[0].detail and "b#0" in violations[0].detail


def test_final_agreement_catches_a_skipped_message() -> None:
    h = good_history()
    h.published[("a", 3)] = pub("a", 3)
    h.published[("c", 2)] = pub("c", 2)
    for p in h.processes:
        p.entries.append(dl(R4, 2, "a", 3))
        p.entries.append(dl(R4, 3, "c", 2))
    assert check_liveness(h, ["a", "b", "c"]) == []
    del h.processes[1].entries[-2]  # b skips a/3 and goes on: order and atomicity stay silent
    assert check_safety(h) == []
    violations = check_liveness(h, ["a", "b", "c"])
    assert [v.prop for v in violations] == ["final-agreement"]
    assert "b#0" in violations[0].detail and "a/3" in violations[0].detail


def test_regular_transitional_split_allowed_across_partition() -> None:
    """EVS case (i): c delivers c/1 in R1 and is then cut off; a and b only get it past a
    gap during recovery and deliver it in their transitional configuration. Legal: c does
    not move on with them, so nothing ties its configuration to theirs."""
    h = good_history()
    c = h.processes[2].entries
    c[3], c[4] = c[4], c[3]  # c: c/1 in R1 (regular), then its transitional T(R3, {c})
    assert check_safety(h) == []


def test_transitional_split_between_members_moving_together() -> None:
    """EVS case (ii): a and b both go R1 -> T(R2, {a,b}) but a delivers c/1 in R1 and b in
    T. Recovery gives both the same datagrams, so this is a core bug. (Failure atomicity on
    the R1 -> T edge and the total order of configuration changes catch it too; the strict
    check names it.)"""
    h = good_history()
    a = h.processes[0].entries
    a[3], a[4] = a[4], a[3]  # a delivers c/1 before installing T; b still after
    violations = check_safety(h)
    found = {v.prop for v in violations}
    assert "transitional-split" in found
    assert found <= {"transitional-split", "failure-atomicity", "total-order"}
    detail = next(v.detail for v in violations if v.prop == "transitional-split")
    assert "c/1" in detail and "a#0" in detail and "b#0" in detail
