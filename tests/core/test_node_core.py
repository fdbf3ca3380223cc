"""NodeCore alone: the decisions that used to live in the runtime, driven with a fake clock."""

from __future__ import annotations

import math
from dataclasses import replace
from random import Random
from typing import Any

import pytest

from ringd.config import Config
from ringd.core.events import (
    ClientBacklog,
    KeyMessageDelivered,
    Log,
    Multicast,
    Persist,
    PublishInternal,
    Received,
    RelayInternal,
    Reply,
    Send,
    Start,
    Tick,
)
from ringd.core.groups import ToClient
from ringd.core.node import (
    BACKPRESSURE_HOLD_MAX_FRACTION,
    SUBSCRIBER_BACKLOG_HIGH_BYTES,
    TOTEM_START_GRACE_S,
    NodeCore,
)
from ringd.core.requests import (
    BadRequest,
    ClientGone,
    JoinGroup,
    QueryRing,
    SendMessages,
    parse_request,
)
from ringd.core.totem_state import State
from ringd.key_messages import KeyAck, KeyOp
from ringd.messages import Address, Alive, Gossip, MemberState
from ringd.totem_messages import Chunk, Mcast, Token
from ringd.wire import Codec, decode_payload, encode_payload


def make_node(name: str = "a", **totem: Any) -> NodeCore:
    cfg = Config(name=name, cluster_name="t")
    if totem:
        cfg = replace(cfg, totem=replace(cfg.totem, **totem))
    return NodeCore(cfg, address=Address(host="127.0.0.1", port=1), seeds=[], incarnation=0,
                    ring_seq=0, rng=Random(1), size_of=Codec("t").size_of,
                    encode_payload=encode_payload, decode_payload=decode_payload, now=0.0)


def run_until(node: NodeCore, now: float, until: float, out: list[Any]) -> float:
    """Tick the node at each of its deadlines up to ``until``; collect its effects."""
    while True:
        deadline = node.next_deadline()
        if deadline > until:
            return now
        now = max(now, deadline)
        out.extend(node.handle(Tick(), now))


def alone_and_operational() -> tuple[NodeCore, float, list[Any]]:
    node = make_node()
    out = node.handle(Start(), 0.0)
    now = run_until(node, 0.0, TOTEM_START_GRACE_S + 2.0, out)
    assert node.state is State.OPERATIONAL and node.members == ("a",)
    return node, now, out


def test_what_clients_send_during_the_start_grace_is_not_lost() -> None:
    node = make_node()
    node.handle(Start(), 0.0)
    assert not node.started
    effects = node.handle(JoinGroup(conn=1, pid=7, request_id=1, group="g"), 0.1)
    assert Reply(request_id=1, body={"ok": True, "member": "a:7"}) in effects
    effects = node.handle(SendMessages(conn=1, pid=7, request_id=2, group="g", data=(b"early",)), 0.2)
    assert Reply(request_id=2, body={"ok": True, "count": 1}) in effects  # agreed: queued
    out: list[Any] = []
    run_until(node, 0.2, 3.0, out)
    # The ring that formed after the grace ordered both: the member got its own message.
    assert node.groups.members("g") == {"g": ["a:7"]}
    frames = [e.frame for e in out if type(e) is ToClient and e.frame["ev"] == "message"]
    assert [f["data"] for f in frames] == [[b"early"]]


def test_own_broadcasts_go_out_and_come_back_without_the_network() -> None:
    node, now, out = alone_and_operational()
    assert any(type(e) is Multicast for e in out)  # the Joins of the ring's formation
    effects = node.handle(SendMessages(conn=1, pid=7, request_id=2, group="g", data=(b"x",),
                                       safe=True), now)
    assert not any(type(e) is Reply for e in effects)  # safe: answered once delivered
    more: list[Any] = list(effects)
    run_until(node, now, now + 1.0, more)
    replies = [e for e in more if type(e) is Reply]
    assert replies == [Reply(request_id=2, body={"ok": True, "count": 1})]
    assert node.latency_safe.count == 1


@pytest.mark.parametrize("data", [(b"",), (b"", b"x"), (b"x", b"", b"")], ids=["one", "first", "later"])
def test_empty_messages_are_ordered_and_delivered(data: tuple[bytes, ...]) -> None:
    """An empty first message used to crash the daemon (IndexError while packing)."""
    node, now, _ = alone_and_operational()
    node.handle(JoinGroup(conn=1, pid=7, request_id=1, group="g"), now)
    effects = node.handle(SendMessages(conn=1, pid=7, request_id=2, group="g", data=data), now)
    assert Reply(request_id=2, body={"ok": True, "count": len(data)}) in effects
    out: list[Any] = list(effects)
    run_until(node, now, now + 1.0, out)
    frames = [e.frame for e in out if type(e) is ToClient and e.frame["ev"] == "message"]
    assert [m for f in frames for m in f["data"]] == list(data)


def test_ring_seq_and_incarnation_are_persisted_as_effects() -> None:
    node, _, out = alone_and_operational()
    seqs = [e.value for e in out if type(e) is Persist and e.key == "ring_seq"]
    assert seqs and seqs == sorted(seqs) and seqs[-1] == node.ring_id.seq


def test_a_slow_reader_holds_the_token_as_a_deadline_then_lets_it_go() -> None:
    node = make_node("a")
    node.handle(Start(), 0.0)
    node.addresses["b"] = Address(host="127.0.0.1", port=2)
    # A reader that still reads but has 6 MiB waiting.
    node.handle(ClientBacklog(conn=5, queued_bytes=SUBSCRIBER_BACKLOG_HIGH_BYTES + (2 << 20),
                              drained_at=0.0), 0.0)
    node.started = True
    node.eligible = frozenset({"a", "b"})
    # A two-member ring's token arriving from b: our visit must wait for the reader.
    node.totem.state = State.OPERATIONAL
    from ringd.core.totem_ring import Ring
    from ringd.totem_messages import RingId

    ring = Ring(ring_id=RingId(seq=4, rep="a"), members=("a", "b"), me="a", config=node.totem.config,
                stats=node.totem.stats)
    node.totem.ring = ring
    token = Token(ring_id=ring.ring_id, token_seq=1, seq=0, aru=0, aru_id="", rtr=(), fcc=0,
                  backlog=0, retrans_flg=False, install=1)
    from ringd.core.events import Received

    effects = node.handle(Received(msg=token, sender="b", source=node.addresses["b"]), 0.01)
    assert not any(type(e) is Send and type(e.msg) is Token for e in effects)
    assert not node.accepting_input and node.stats.backpressure_holds == 1
    hold_end = 0.01 + BACKPRESSURE_HOLD_MAX_FRACTION * node.cfg.totem.token_retransmit_s
    assert node.next_deadline() <= 0.01 + 0.002  # it looks again soon
    # Anything but a backlog report or a tick waits inside the core.
    assert node.handle(QueryRing(conn=1, pid=1, request_id=9), 0.011) == []
    # The reader catches up: the token goes on at once, then the queued request is answered.
    effects = node.handle(ClientBacklog(conn=5, queued_bytes=1000, drained_at=0.012), 0.012)
    kinds = [type(e) for e in effects]
    assert Send in kinds and Reply in kinds and kinds.index(Send) < kinds.index(Reply)
    assert node.accepting_input and node.next_deadline() < math.inf
    assert 0.012 < hold_end


def test_a_hold_ends_at_its_deadline_when_the_reader_stays_behind() -> None:
    node = make_node("a")
    node.handle(ClientBacklog(conn=5, queued_bytes=SUBSCRIBER_BACKLOG_HIGH_BYTES * 2, drained_at=0.0), 0.0)
    node._hold_until = 0.04  # as set by a held visit (see the test above)
    node._hold_poll_at = 0.001
    now = 0.0
    while not node.accepting_input:
        now = node.next_deadline()
        node.handle(ClientBacklog(conn=5, queued_bytes=SUBSCRIBER_BACKLOG_HIGH_BYTES * 2,
                                  drained_at=now), now)
        node.handle(Tick(), now)
        assert now <= 0.04
    assert now == pytest.approx(0.04)


def test_a_stopped_reader_holds_nothing_up() -> None:
    node = make_node("a")
    # Nothing drained for a second: it stopped reading, it will be dropped, nobody waits.
    node.handle(ClientBacklog(conn=5, queued_bytes=SUBSCRIBER_BACKLOG_HIGH_BYTES * 2, drained_at=0.0), 1.0)
    assert node._reader_backlog(1.0) == 0
    node.handle(ClientGone(conn=5), 1.0)
    assert node._backlogs == {}


def test_an_observer_refuses_group_requests_with_a_clear_error() -> None:
    node = make_node("z", ring_size_max=1)
    node.started, node.active = True, False
    effects = node.handle(JoinGroup(conn=1, pid=7, request_id=3, group="g"), 0.0)
    (reply,) = [e for e in effects if type(e) is Reply]
    assert reply.body["ok"] is False and "observer" in reply.body["error"]
    assert node.ring_info(0.0)["state"] == "observer"


@pytest.mark.parametrize(("op", "body", "error"), [
    ("send", {"group": "g", "data": []}, "holds no message"),
    ("send", {"group": "g", "data": "text"}, "'data' must be bytes or a list of bytes"),
    ("send", {"group": "g", "data": b"x", "wait": 1}, "'wait' must be a bool"),
    ("group_join", {"group": ""}, "'group' must be a non-empty string"),
    ("group_join", {"group": "x" * 256}, "longer than 255"),
    ("group_leave", {}, "'group' must be a non-empty string"),
    ("bogus", {}, "unknown op 'bogus'"),
])
def test_requests_are_validated_once_with_one_line_errors(op: str, body: dict[str, Any],
                                                         error: str) -> None:
    with pytest.raises(BadRequest, match=error) as info:
        parse_request(op, body, conn=1, pid=2, request_id=3)
    assert "\n" not in str(info.value)


def test_parsed_requests_fill_in_defaults() -> None:
    req = parse_request("send", {"group": "g", "data": b"x"}, conn=1, pid=2, request_id=3)
    assert req == SendMessages(conn=1, pid=2, request_id=3, group="g", data=(b"x",), safe=False,
                               wait=True)


def test_keyring_payloads_go_to_the_runtime_in_ring_order_not_to_groups() -> None:
    node, now, _ = alone_and_operational()
    op = KeyOp(request="a/1", op="use", key_id="0011aabb", wrapped=b"", wrap_key_id="")
    ack = KeyAck(request="a/1", node="a", error="", primary="0011aabb", keys=("0011aabb",))
    out = node.handle(PublishInternal(payload=encode_payload(op)), now)
    out += node.handle(PublishInternal(payload=encode_payload(ack)), now)
    run_until(node, now, now + 1.0, out)
    delivered = [e for e in out if type(e) is KeyMessageDelivered]
    assert [e.msg for e in delivered] == [op, ack]  # in the order published, once each
    assert all(e.origin == "a" and e.members == ("a",) for e in delivered)
    assert node.groups.stats.bad_payloads == 0 and not any(type(e) is ToClient for e in out)

    observer = make_node("b")  # not started: not in any ring
    observer.active = False
    effects = observer.handle(PublishInternal(payload=encode_payload(op)), 0.0)
    assert any(type(e) is Log and "not in the ring" in e.text for e in effects)


def test_keyring_messages_sent_straight_reach_observers_and_come_back() -> None:
    """The way to gossip-only observers: a KeyOp or KeyAck datagram from a member gossip
    knows goes to the runtime as relayed; one from a stranger is dropped and counted, and so
    is a relay to a name gossip does not know."""
    observer = make_node("c")
    observer.handle(Start(), 0.0)
    observer.active = False
    b_at = Address(host="127.0.0.2", port=7)
    alive = Alive(node="b", incarnation=1, address=b_at, tags={})
    observer.handle(Received(msg=Gossip(piggyback=(alive,)), sender="b", source=b_at), 0.1)
    assert any(v.name == "b" and v.state is MemberState.ALIVE for v in observer.gossip.members())
    op = KeyOp(request="b/x/1", op="use", key_id="0011aabb", wrapped=b"", wrap_key_id="")
    effects = observer.handle(Received(msg=op, sender="b", source=b_at), 0.2)
    assert effects == [KeyMessageDelivered(origin="b", msg=op, members=(), relayed=True)]
    assert observer.gossip.stats.msgs_received.get("KeyOp", 0) == 0  # not gossip's business

    ack = KeyAck(request="b/x/1", node="c", error="", primary="0011aabb", keys=("0011aabb",))
    assert observer.handle(RelayInternal(dest="b", msg=ack), 0.3) == [Send(dest=b_at, msg=ack)]

    stranger = Address(host="127.0.0.9", port=9)
    assert observer.handle(Received(msg=op, sender="x", source=stranger), 0.4) == []
    assert observer.handle(RelayInternal(dest="x", msg=ack), 0.5) == []
    assert observer.stats.key_relays_dropped == 2


def test_totem_datagrams_that_name_us_as_sender_are_dropped() -> None:
    """Our own multicasts come back through the loopback, never as input. A forged one on
    our ring of one was stored, and the ring's token, never quiet again, spun without end."""
    node, now, _ = alone_and_operational()
    forged = Address(host="127.0.0.9", port=9)
    for seq in (1, 2, 3):
        mcast = Mcast(ring_id=node.ring_id, seq=seq, origin="a", safe=False,
                      chunks=(Chunk(msg_id=seq, safe=False, index=0, count=1, data=b"x"),))
        assert node.handle(Received(msg=mcast, sender="a", source=forged), now) == []
    assert node.stats.own_name_dropped == 3
    ticks = 0
    while node.next_deadline() <= now + 5.0 and ticks < 10_000:
        node.handle(Tick(), max(now, node.next_deadline()))
        ticks += 1
    assert ticks < 10_000, "the token of our ring of one spins"
    assert node.totem.stats.token_held >= 1


@pytest.mark.parametrize(("sender", "origin"), [("b", "b"), ("b", "a")],
                         ids=["non-member", "relayed-by-non-member"])
def test_multicasts_on_our_ring_from_non_members_are_dropped(sender: str, origin: str) -> None:
    """Only members multicast on a ring: stored, such a datagram spun a ring of one's token
    like the forged own-name one above (found by fuzzing)."""
    node, now, _ = alone_and_operational()
    mcast = Mcast(ring_id=node.ring_id, seq=1, origin=origin, safe=False,
                  chunks=(Chunk(msg_id=1, safe=False, index=0, count=1, data=b"x"),))
    node.handle(Received(msg=mcast, sender=sender, source=Address(host="127.0.0.9", port=9)), now)
    assert node.totem.stats.nonmember_rx == 1
    ticks = 0
    while node.next_deadline() <= now + 5.0 and ticks < 10_000:
        node.handle(Tick(), max(now, node.next_deadline()))
        ticks += 1
    assert ticks < 10_000, "the token of our ring of one spins"
