"""Process groups: several GroupsCore instances fed the same ordered events by a fake ring."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ringd.core.groups import SEQ_STRIDE, GroupOpError, GroupsCore, ToClient
from ringd.core.totem_events import ConfigChange, ConfigKind, Deliver
from ringd.group_messages import GroupJoin, GroupMember, GroupSend, GroupSync
from ringd.totem_messages import RingId
from ringd.wire import decode_payload, encode_payload


@dataclass
class _Component:
    """One ring: its id, members, and the payloads published on it not yet delivered."""

    ring_id: RingId
    members: list[str]
    pending: list[tuple[str, bytes, bool]] = field(default_factory=list)
    seq: int = 0


class FakeRing:
    """Totem stand-in: total order per component, EVS-style configuration changes.

    Every member of a component gets exactly the same Deliver/ConfigChange sequence; the
    payloads a core returns from on_config are published on its new ring at once.
    """

    def __init__(self, *components: list[str]) -> None:
        names = [n for comp in components for n in comp]
        self.cores = {n: GroupsCore(n, encode_payload, decode_payload) for n in names}
        self.out: dict[str, list[ToClient]] = {n: [] for n in names}
        self.ring_seq = 0
        self.comps: list[_Component] = []
        self._msg_id = 0
        self.reconfigure(*components)

    def comp_of(self, node: str) -> _Component:
        return next(c for c in self.comps if node in c.members)

    def publish(self, node: str, *payloads: bytes, safe: bool = False) -> None:
        self.comp_of(node).pending.extend((node, p, safe) for p in payloads)

    def flush(self) -> None:
        for comp in self.comps:
            while comp.pending:
                origin, payload, safe = comp.pending.pop(0)
                comp.seq += 1
                self._msg_id += 1
                d = Deliver(ring_id=comp.ring_id, seq=comp.seq, origin=origin,
                            msg_id=self._msg_id, payload=payload, safe=safe)
                for n in comp.members:
                    self.out[n].extend(self.cores[n].on_deliver(d))

    def reconfigure(self, *components: list[str], flush: bool = True) -> None:
        """Install new rings. Old messages are delivered first unless ``flush`` is False,
        in which case they are carried over (still in sender order) to the new ring."""
        if flush:
            self.flush()
        old = {n: c for c in self.comps for n in c.members}
        new_comps = []
        for members in components:
            self.ring_seq += 4
            comp = _Component(RingId(seq=self.ring_seq, rep=min(members)), sorted(members))
            for n in comp.members:
                if n in old:  # carried-over messages of our own not yet ordered
                    comp.pending.extend(p for p in old[n].pending if p[0] == n)
            new_comps.append(comp)
        self.comps = new_comps
        for comp in new_comps:
            for n in comp.members:
                core = self.cores[n]
                if n in old:
                    trans = tuple(m for m in old[n].members if m in comp.members)
                    frames, payloads = core.on_config(ConfigChange(
                        kind=ConfigKind.TRANSITIONAL, ring_id=old[n].ring_id, members=trans))
                    assert payloads == []
                    self.out[n].extend(frames)
                frames, payloads = core.on_config(ConfigChange(
                    kind=ConfigKind.REGULAR, ring_id=comp.ring_id, members=tuple(comp.members)))
                self.out[n].extend(frames)
                self.publish(n, *payloads)

    def frames(self, node: str, conn: int, ev: str | None = None) -> list[dict[str, Any]]:
        return [t.frame for t in self.out[node] if t.conn == conn and ev in (None, t.frame["ev"])]

    def clear(self) -> None:
        for frames in self.out.values():
            frames.clear()


def group_frame(group: str, members: list[str], joined: list[str], left: list[str],
                reason: str) -> dict[str, Any]:
    return {"ev": "group", "group": group, "members": members, "joined": joined, "left": left,
            "reason": reason}


def test_join_and_leave_are_delivered_in_order_to_local_members() -> None:
    ring = FakeRing(["a", "b"])
    a, b = ring.cores["a"], ring.cores["b"]
    ring.publish("a", a.join(1, 100, "g"))
    ring.publish("b", b.join(7, 200, "g"))
    ring.flush()
    first = group_frame("g", ["a:100"], ["a:100"], [], "join")
    second = group_frame("g", ["a:100", "b:200"], ["b:200"], [], "join")
    # A new member first learns the configuration it is in, then the group.
    config = {"ev": "config", "kind": "regular", "ring": str(ring.comp_of("a").ring_id),
              "members": ["a", "b"]}
    assert ring.frames("a", 1) == [config, first, second]
    assert ring.frames("b", 7) == [config, second]  # not a member yet when a:100 joined
    assert a.members() == b.members() == {"g": ["a:100", "b:200"]}
    assert a.subscribers() == b.subscribers() == 1
    ring.clear()

    ring.publish("a", a.leave(1, "g"))
    ring.flush()
    left = group_frame("g", ["b:200"], [], ["a:100"], "leave")
    assert ring.frames("a", 1) == [left]  # the leaver sees itself leave
    assert ring.frames("b", 7) == [left]
    assert a.members() == b.members() == {"g": ["b:200"]}
    assert a.members("nope") == {"nope": []}
    assert a.subscribers() == 0
    ring.clear()

    # A former member gets nothing more, and may join again.
    ring.publish("b", b.send(7, 200, "g", [b"x"]))
    ring.flush()
    assert ring.frames("a", 1) == []
    ring.publish("a", a.join(1, 100, "g"))
    ring.flush()
    assert ring.frames("a", 1, "group")[-1]["members"] == ["a:100", "b:200"]
    assert ring.frames("a", 1, "config")  # told the configuration again
    assert a.stats.joins == 3 and a.stats.leaves == 1 and a.stats.group_events == 4


def test_messages_reach_members_only_and_self_discard_skips_the_sender() -> None:
    ring = FakeRing(["a", "b", "c"])
    a, b, c = (ring.cores[n] for n in "abc")
    ring.publish("a", a.join(1, 10, "g", self_discard=True))
    ring.publish("a", a.join(2, 11, "g"))
    ring.publish("b", b.join(1, 20, "g"))
    ring.publish("b", b.join(2, 21, "other"))
    ring.flush()
    ring.clear()
    first_seq = (ring.comp_of("a").seq + 1) * SEQ_STRIDE
    ring.publish("a", a.send(1, 10, "g", [b"m1", b"m2"]))
    ring.publish("c", c.send(5, 30, "g", [b"m3"]))  # c:30 is not a member: still delivered
    ring.publish("a", a.send(1, 10, "other", [b"m4"]))
    ring.flush()

    def data(node: str, conn: int) -> list[bytes]:
        return [x for f in ring.frames(node, conn, "message") for x in f["data"]]

    assert data("a", 1) == [b"m3"]  # self_discard: not its own
    assert data("a", 2) == [b"m1", b"m2", b"m3"]  # same process, other conn, no discard
    assert data("b", 1) == [b"m1", b"m2", b"m3"]
    assert data("b", 2) == [b"m4"]
    assert ring.out["c"] == []  # c has no member: no frames at all
    msg = ring.frames("b", 1, "message")[0]
    assert msg == {"ev": "message", "group": "g", "sender": "a", "member": "a:10",
                   "ring": str(ring.comp_of("a").ring_id), "seq": first_seq, "safe": False,
                   "data": [b"m1", b"m2"]}
    assert ring.frames("b", 1, "message")[1]["member"] == "c:30"
    assert a.stats.messages_delivered == c.stats.messages_delivered == 4


def test_seq_is_the_datagram_seq_and_the_place_of_the_item_in_it() -> None:
    ring = FakeRing(["a", "b"])
    a, b = ring.cores["a"], ring.cores["b"]
    ring.publish("a", a.join(1, 1, "g"), a.join(2, 2, "h"))
    ring.flush()
    base = ring.comp_of("a").seq
    ring.publish("b", b.send(9, 9, "g", [b"1", b"2", b"3"]))
    ring.publish("b", b.send(9, 9, "h", [b"4", b"5"]), safe=True)
    ring.publish("b", b.send(9, 9, "g", [b"6"]))
    ring.flush()
    g_seqs = [(f["seq"], f["data"]) for f in ring.frames("a", 1, "message")]
    assert g_seqs == [((base + 1) * SEQ_STRIDE, [b"1", b"2", b"3"]), ((base + 3) * SEQ_STRIDE, [b"6"])]
    h = ring.frames("a", 2, "message")
    assert [(f["seq"], f["safe"]) for f in h] == [((base + 2) * SEQ_STRIDE, True)]
    # Two payloads packed in one datagram (same Totem seq): the second continues the count.
    ring_id = ring.comp_of("a").ring_id
    for payload in (b.send(9, 9, "g", [b"7", b"8"]), b.send(9, 9, "g", [b"9"])):
        a.on_deliver(Deliver(ring_id=ring_id, seq=100, origin="b", msg_id=1, payload=payload, safe=False))
    ring.clear()
    more = [a.on_deliver(Deliver(ring_id=ring_id, seq=101, origin="b", msg_id=2,
                                 payload=b.send(9, 9, "g", [b"x"]), safe=False))]
    assert more[0][0].frame["seq"] == 101 * SEQ_STRIDE


def test_a_large_batch_is_delivered_as_one_frame() -> None:
    ring = FakeRing(["a"])
    a = ring.cores["a"]
    ring.publish("a", a.join(1, 1, "g"))
    ring.flush()
    items = [i.to_bytes(4, "big") for i in range(1000)]
    ring.publish("a", a.send(1, 1, "g", items))
    ring.flush()
    [frame] = ring.frames("a", 1, "message")
    assert frame["data"] == items and frame["seq"] == ring.comp_of("a").seq * SEQ_STRIDE
    assert a.stats.messages_delivered == 1000


def test_disconnect_leaves_every_group_and_silences_the_connection() -> None:
    ring = FakeRing(["a", "b"])
    a, b = ring.cores["a"], ring.cores["b"]
    ring.publish("a", a.join(3, 30, "g"), a.join(3, 30, "h"))
    ring.publish("b", b.join(4, 40, "g"), b.join(4, 40, "h"))
    ring.flush()
    ring.clear()
    payloads = a.disconnect(3)
    assert len(payloads) == 2 and a.disconnect(3) == []
    assert a.subscribers() == 0  # forgotten at once, before the leaves are delivered
    ring.publish("b", b.send(4, 40, "g", [b"x"]))
    ring.publish("a", *payloads)
    ring.flush()
    assert ring.out["a"] == []
    assert ring.frames("b", 4, "group") == [
        group_frame("g", ["b:40"], [], ["a:30"], "disconnect"),
        group_frame("h", ["b:40"], [], ["a:30"], "disconnect"),
    ]
    assert a.members() == b.members() == {"g": ["b:40"], "h": ["b:40"]}
    # The same process may join again on a new connection.
    ring.publish("a", a.join(5, 30, "g"))
    ring.flush()
    assert a.members("g") == {"g": ["a:30", "b:40"]}


def test_disconnect_before_the_join_is_delivered() -> None:
    ring = FakeRing(["a", "b"])
    a, b = ring.cores["a"], ring.cores["b"]
    ring.publish("b", b.join(1, 1, "g"))
    ring.publish("a", a.join(3, 30, "g"))
    ring.publish("a", *a.disconnect(3))
    ring.flush()
    assert ring.out["a"] == []
    assert [f["reason"] for f in ring.frames("b", 1, "group")] == ["join", "join", "disconnect"]
    assert a.members() == b.members() == {"g": ["b:1"]}


def test_transitional_config_removes_members_of_departed_nodes() -> None:
    ring = FakeRing(["a", "b", "c"])
    for i, n in enumerate("abc"):
        ring.publish(n, ring.cores[n].join(1, i, "g"))
        ring.publish(n, ring.cores[n].join(2, i, "solo" + n))
    ring.flush()
    old_ring = str(ring.comp_of("a").ring_id)
    ring.clear()
    ring.reconfigure(["a", "b"], ["c"])
    new_ab, new_c = (str(ring.comp_of(n).ring_id) for n in "ac")
    expected_ab = [
        {"ev": "config", "kind": "transitional", "ring": old_ring, "members": ["a", "b"]},
        group_frame("g", ["a:0", "b:1"], [], ["c:2"], "nodedown"),
        {"ev": "config", "kind": "regular", "ring": new_ab, "members": ["a", "b"]},
    ]
    assert ring.frames("a", 1) == expected_ab
    assert ring.frames("b", 1) == expected_ab
    assert ring.frames("c", 1) == [
        {"ev": "config", "kind": "transitional", "ring": old_ring, "members": ["c"]},
        group_frame("g", ["c:2"], [], ["a:0", "b:1"], "nodedown"),
        {"ev": "config", "kind": "regular", "ring": new_c, "members": ["c"]},
    ]
    # Nobody new appeared: no sync published.
    assert all(not comp.pending for comp in ring.comps)
    assert ring.cores["a"].members() == {"g": ["a:0", "b:1"], "soloa": ["a:0"], "solob": ["b:1"]}
    assert ring.cores["c"].members() == {"g": ["c:2"], "soloc": ["c:2"]}


def test_merge_syncs_both_sides_and_drops_stale_members() -> None:
    ring = FakeRing(["a", "b"], ["c"])
    a, b, c = (ring.cores[n] for n in "abc")
    ring.flush()  # the first-ring syncs (empty)
    ring.publish("a", a.join(1, 1, "g"))
    ring.publish("b", b.join(1, 2, "g"))
    ring.publish("c", c.join(1, 3, "g"), c.join(2, 4, "h"))
    ring.flush()
    # A stale member of b's that only a believes in (as if b's leave had been lost):
    # b stays in a's configuration, so only b's sync can correct it.
    a.on_deliver(Deliver(ring_id=ring.comp_of("a").ring_id, seq=99, origin="b", msg_id=99,
                         payload=encode_payload(GroupJoin(group="g", member="b:99")),
                         safe=False))
    assert a.members() == {"g": ["a:1", "b:2", "b:99"]}
    ring.clear()

    ring.reconfigure(["a", "b", "c"])
    assert [ring.cores[n].stats.syncs_sent for n in "abc"] == [2, 2, 2]
    ring.flush()
    want = {"g": ["a:1", "b:2", "c:3"], "h": ["c:4"]}
    assert a.members() == b.members() == c.members() == want
    assert a.stats.syncs_received == 5  # first ring: a and b; merge: a, b and c
    # On a: a's sync changes nothing, b's drops b:99, c's adds c:3 (and c:4 to h).
    assert ring.frames("a", 1, "group") == [
        group_frame("g", ["a:1", "b:2"], [], ["b:99"], "leave"),
        group_frame("g", ["a:1", "b:2", "c:3"], ["c:3"], [], "join"),
    ]
    assert ring.frames("b", 1, "group") == [
        group_frame("g", ["a:1", "b:2", "c:3"], ["c:3"], [], "join")]
    # c learns a:1 and b:2 one sync at a time, in ring order; h gets nothing new.
    assert ring.frames("c", 1, "group") == [
        group_frame("g", ["a:1", "c:3"], ["a:1"], [], "join"),
        group_frame("g", ["a:1", "b:2", "c:3"], ["b:2"], [], "join"),
    ]
    assert ring.frames("c", 2, "group") == []


def test_a_join_in_flight_across_a_merge_is_not_undone_by_the_sync() -> None:
    ring = FakeRing(["a"], ["b"])
    a, b = ring.cores["a"], ring.cores["b"]
    ring.flush()
    ring.publish("a", a.join(1, 1, "g"))  # accepted, not yet ordered when the ring changes
    ring.publish("a", a.join(2, 2, "g"))
    ring.flush()
    ring.publish("a", a.leave(2, "g"))  # and a leave in flight
    ring.reconfigure(["a", "b"], flush=False)
    ring.flush()
    assert a.members() == b.members() == {"g": ["a:1"]}
    assert all(f["reason"] != "leave" or f["left"] == ["a:2"]
               for f in ring.frames("a", 1, "group"))


def test_rejoin_while_a_leave_is_in_flight() -> None:
    ring = FakeRing(["a", "b"])
    a = ring.cores["a"]
    ring.publish("a", a.join(1, 1, "g"))
    ring.flush()
    ring.clear()
    ring.publish("a", a.leave(1, "g"))
    ring.publish("a", a.join(1, 1, "g"))
    ring.flush()
    assert [f["reason"] for f in ring.frames("a", 1, "group")] == ["leave", "join"]
    assert a.members() == ring.cores["b"].members() == {"g": ["a:1"]}
    assert a.subscribers() == 1
    with pytest.raises(GroupOpError):
        a.join(1, 1, "g")


def test_bad_payloads_are_counted_and_change_nothing() -> None:
    ring = FakeRing(["a", "b"])
    a = ring.cores["a"]
    ring.publish("a", a.join(1, 1, "g"))
    ring.flush()
    ring.clear()
    before = a.members()
    bad = [
        b"\xff\x00garbage",
        encode_payload(GroupMember(group="g", member="a:1")),  # registered, wrong type
        encode_payload(RingId(seq=1, rep="a")),  # not a group payload
        encode_payload(GroupJoin(group="g", member="b:5")),  # origin a claims b's member
        encode_payload(GroupJoin(group="", member="a:5")),
        encode_payload(GroupJoin(group="g", member="a:notapid")),
        encode_payload(GroupSend(group="g", member="zz:1", items=(b"x",))),
        encode_payload(GroupSync(node="b", members=())),
        encode_payload(GroupSync(node="a", members=(GroupMember(group="g", member="b:1"),))),
    ]
    ring.publish("a", *bad)
    ring.flush()
    assert a.stats.bad_payloads == ring.cores["b"].stats.bad_payloads == len(bad)
    assert ring.out["a"] == [] and a.members() == before
    assert a.stats.messages_delivered == 0


def test_local_requests_that_cannot_be_done_raise() -> None:
    a = GroupsCore("a", encode_payload, decode_payload)
    for name in ["", "x" * 256, "é" * 128, 5, "\ud800"]:
        with pytest.raises(GroupOpError):
            a.join(1, 1, name)  # type: ignore[arg-type]
        with pytest.raises(GroupOpError):
            a.send(1, 1, name, [b"x"])  # type: ignore[arg-type]
    a.join(1, 1, "x" * 255)
    a.join(1, 1, "g")
    with pytest.raises(GroupOpError, match="already joined"):
        a.join(1, 1, "g")
    with pytest.raises(GroupOpError, match="already joined"):
        a.join(2, 1, "g")  # same process, other connection
    a.join(2, 2, "g")  # another process is fine
    with pytest.raises(GroupOpError, match="not a member"):
        a.leave(1, "h")
    with pytest.raises(GroupOpError, match="not a member"):
        a.leave(9, "g")
    a.leave(1, "g")
    with pytest.raises(GroupOpError, match="not a member"):
        a.leave(1, "g")
    with pytest.raises(GroupOpError):
        a.send(1, 1, "g", [])
    with pytest.raises(GroupOpError):
        a.send(1, 1, "g", ["text"])  # type: ignore[list-item]
    assert decode_payload(a.send(3, 4, "g", [b"x"])) == GroupSend(
        group="g", member="a:4", items=(b"x",))
    assert a.members() == {}  # nothing delivered: the view has not changed


_OPS = st.lists(
    st.tuples(
        st.sampled_from(["join", "leave", "disconnect", "send", "flush", "split", "heal"]),
        st.sampled_from("abc"),
        st.integers(0, 3),  # conn (its process id is conn + 100)
        st.sampled_from(["g", "h"]),
        st.booleans(),
    ),
    max_size=40,
)


@settings(max_examples=200, deadline=None)
@given(ops=_OPS)
def test_random_operations_leave_every_node_of_a_ring_with_the_same_view(ops: list[Any]) -> None:
    ring = FakeRing(["a", "b", "c"])
    for n, core in ring.cores.items():  # observers on conn 9, process 999
        ring.publish(n, core.join(9, 999, "g"), core.join(9, 999, "h"))
    ring.flush()
    ring.clear()
    wanted: set[tuple[str, str, int]] = set()  # (group, node, pid) that asked to be in
    for op, node, conn, group, flag in ops:
        core = ring.cores[node]
        pid = conn + 100
        try:
            if op == "join":
                ring.publish(node, core.join(conn, pid, group, self_discard=flag))
                wanted.add((group, node, pid))
            elif op == "leave":
                ring.publish(node, core.leave(conn, group))
                wanted.discard((group, node, pid))
            elif op == "disconnect":
                ring.publish(node, *core.disconnect(conn))
                wanted -= {(g, node, pid) for g in "gh"}
            elif op == "send":
                ring.publish(node, core.send(conn, pid, group, [b"m"]), safe=flag)
            elif op == "flush":
                ring.flush()
            elif op == "split":
                ring.reconfigure([node], [n for n in "abc" if n != node], flush=flag)
            else:
                ring.reconfigure(["a", "b", "c"], flush=flag)
        except GroupOpError:
            pass
    ring.reconfigure(["a", "b", "c"])
    ring.flush()
    views = {n: ring.cores[n].members() for n in "abc"}
    assert views["a"] == views["b"] == views["c"]
    expected: dict[str, list[str]] = {}
    for g, n, pid in sorted(wanted) + [(g, n, 999) for g in "gh" for n in "abc"]:
        expected.setdefault(g, []).append(f"{n}:{pid}")
    assert views["a"] == {g: sorted(ms) for g, ms in sorted(expected.items())}
    if not any(op[0] == "split" for op in ops):
        # One ring all along: every observer saw the same frames, in the same order.
        seen = {n: ring.frames(n, 9) for n in "abc"}
        assert seen["a"] == seen["b"] == seen["c"]
    assert all(core.stats.bad_payloads == 0 for core in ring.cores.values())


def test_a_merge_whose_syncs_were_never_ordered_is_synced_again() -> None:
    """The ring broke before the syncs of a merge were ordered, and the same members went
    on together: a subset, so no merge is seen, yet their views still differ. Every member
    whose syncs were not all delivered syncs again."""
    ring = FakeRing(["a"], ["b"])
    a, b = ring.cores["a"], ring.cores["b"]
    ring.publish("a", a.join(1, 1, "g"))
    ring.publish("b", b.join(1, 2, "g"))
    ring.flush()
    ring.reconfigure(["a", "b"])  # the merge: both publish a sync...
    for comp in ring.comps:
        comp.pending.clear()  # ...that is never ordered: the ring breaks first
    assert a.members() == {"g": ["a:1"]} and b.members() == {"g": ["b:2"]}
    ring.reconfigure(["a", "b"], flush=False)  # the same two, together: no merge
    ring.flush()
    assert a.members() == b.members() == {"g": ["a:1", "b:2"]}
    ring.reconfigure(["a", "b"])  # once synced, a plain reconfiguration sends none
    assert all(not comp.pending for comp in ring.comps)


def test_a_member_answers_another_members_sync_with_its_own() -> None:
    """A member that saw no reason to sync (nothing new to it) still syncs once another
    member does in the same configuration: that member's view of it may be stale."""
    ring = FakeRing(["a", "b"])
    a, b = ring.cores["a"], ring.cores["b"]
    ring.publish("b", b.join(1, 2, "g"))
    ring.flush()
    ring.reconfigure(["a", "b"])  # nothing new: nobody syncs
    assert all(not comp.pending for comp in ring.comps)
    comp = ring.comp_of("a")
    sent = a.stats.syncs_sent
    # b syncs in this configuration (as after an unfinished merge): a answers once.
    ring.publish("b", encode_payload(b._sync_payload()))
    ring.flush()
    assert a.stats.syncs_sent == sent + 1 and len(a.to_publish) == 1
    assert comp.ring_id == ring.comp_of("a").ring_id
    a.to_publish.clear()
    ring.publish("b", encode_payload(b._sync_payload()))
    ring.flush()
    assert a.to_publish == []  # once per configuration
