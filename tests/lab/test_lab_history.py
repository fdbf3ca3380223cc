"""ringd.lab_history: real subscriber and sender logs in the checker's model (no root)."""

from __future__ import annotations

from typing import Any

from ringd.lab_history import (
    UNOBSERVED_INCARNATION,
    SentMessage,
    SubscriberLog,
    build_history,
    check_group_sync,
    make_payload,
    parse_payload,
    parse_ring,
)
from ringd.sim.checkers import check_safety
from ringd.totem_messages import RingId


def cfg(kind: str, ring: str, *members: str) -> dict[str, Any]:
    return {"ev": "config", "kind": kind, "ring": ring, "members": list(members), "t": 0}


def grp(members: list[str], joined: list[str], reason: str = "join") -> dict[str, Any]:
    return {"ev": "group", "group": "lab", "members": members, "joined": joined, "left": [],
            "reason": reason, "t": 0}


def msg(node: str, msg_id: int, ring: str, seq: int, safe: bool = False) -> dict[str, Any]:
    return {"ev": "message", "sender": node, "member": f"{node}:1", "ring": ring, "seq": seq,
            "safe": safe, "data": [make_payload(node, msg_id, 5)], "t": 10}


def sent(node: str, msg_id: int, inc: int = 0, acked: bool = True) -> SentMessage:
    return SentMessage(node, msg_id, make_payload(node, msg_id, 5).encode(), False, inc, acked)


def test_payload_and_ring_round_trip() -> None:
    assert parse_payload(make_payload("n1", 7, 123, probe=True)) == ("n1", 7, 123, True)
    assert parse_payload("hello") is None
    assert parse_ring("12.n3") == RingId(seq=12, rep="n3")


def test_agreeing_logs_pass_and_a_reordered_one_fails() -> None:
    a = [cfg("regular", "4.n1", "n1", "n2"), grp(["n1:1", "n2:1"], ["n2:1"]),
         msg("n1", 0, "4.n1", 65536), msg("n2", 0, "4.n1", 131072)]
    b = list(a)
    subs = [SubscriberLog("n1", 0, a), SubscriberLog("n2", 0, b)]
    lab = build_history(subs, [sent("n1", 0), sent("n2", 0)], {})
    assert check_safety(lab.history) == []
    assert check_group_sync(subs, settled=False) == []
    swapped = a[:2] + [a[3], a[2]]
    subs = [SubscriberLog("n1", 0, a), SubscriberLog("n2", 0, swapped)]
    props = {v.prop for v in check_safety(build_history(subs, [sent("n1", 0), sent("n2", 0)], {}).history)}
    assert "total-order" in props


def test_unacknowledged_send_counts_only_if_delivered() -> None:
    a = [cfg("regular", "4.n1", "n1"), msg("n1", 0, "4.n1", 65536)]
    lab = build_history([SubscriberLog("n1", 0, a)], [sent("n1", 0, acked=False), sent("n1", 1, acked=False)], {})
    assert set(lab.history.published) == {("n1", 0)}
    assert lab.unacked_delivered == 1
    assert check_safety(lab.history) == []


def test_restarted_subscriber_is_checked_from_the_first_change_it_saw_whole() -> None:
    # n2 restarted (incarnation 1) and joined ring 8 late: messages of ring 8 before its
    # join are missing from its log, so its log starts at the next regular configuration.
    n1 = [cfg("regular", "8.n1", "n1", "n2"), grp(["n1:1", "n2:2"], ["n2:2"]),
          msg("n1", 0, "8.n1", 65536), msg("n2", 0, "8.n1", 131072),
          cfg("transitional", "12.n1", "n1", "n2"), cfg("regular", "12.n1", "n1", "n2"),
          msg("n1", 1, "12.n1", 65536)]
    n2 = [cfg("regular", "8.n1", "n1", "n2"), grp(["n1:1", "n2:2"], ["n2:2"]),
          msg("n2", 0, "8.n1", 131072),
          cfg("transitional", "12.n1", "n1", "n2"), cfg("regular", "12.n1", "n1", "n2"),
          msg("n1", 1, "12.n1", 65536)]
    subs = [SubscriberLog("n1", 0, n1), SubscriberLog("n2", 1, n2)]
    lab = build_history(subs, [sent("n1", 0), sent("n2", 0, inc=1), sent("n1", 1)], {})
    assert check_safety(lab.history) == []
    assert lab.history.published[("n2", 0)].incarnation == UNOBSERVED_INCARNATION
    assert lab.cut_messages == 1


def test_group_sync_flags_a_missing_group_event_between_the_same_configurations() -> None:
    head = [cfg("regular", "4.n1", "n1", "n2"), grp(["n1:1", "n2:1"], ["n2:1"]),
            cfg("transitional", "8.n1", "n1", "n2"), cfg("regular", "8.n1", "n1", "n2")]
    full = head + [grp(["n1:1", "n2:1", "n2:9"], ["n2:9"]), msg("n1", 0, "8.n1", 65536),
                   cfg("transitional", "12.n1", "n1", "n2")]
    short = head + [msg("n1", 0, "8.n1", 65536), cfg("transitional", "12.n1", "n1", "n2")]
    violations = check_group_sync([SubscriberLog("n1", 0, full), SubscriberLog("n2", 0, short)])
    assert violations and {v.prop for v in violations} == {"group-sync"}, violations
    # The strict comparison names the segment; the view then stays different to the end.
    assert "between regular 8.n1 {n1,n2} (via transitional 8.n1 {n1,n2})" in violations[0].detail
    assert "end with different group views" in violations[-1].detail
