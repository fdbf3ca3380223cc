"""The ordered-delivery client library (Trio RingClient and BlockingRingClient) against the
real control server with a fake driver (fake_api.py)."""

from __future__ import annotations

import itertools
import os
from pathlib import Path

import pytest
import trio
import trio.testing
from fake_api import NODE, RING, serving

from ringd import client
from ringd.client import (
    BlockingRingClient,
    ConfigEvent,
    ConnectionLost,
    DaemonNotRunning,
    GroupEvent,
    MessageBatch,
    MessageEvent,
    RequestFailed,
    RingClient,
    TryAgain,
    decode_event,
    event_json,
    open_client,
)
from ringd.runtime import api_types
from ringd.runtime.stream import IMMEDIATE_READS_MAX, SocketConnection

ME = f"{NODE}:{os.getpid()}"


def message_frame(seq: int, size: int) -> dict[str, object]:
    """The event frame of one message of ``size`` bytes to group "g"."""
    return {"ev": "message", "group": "g", "sender": NODE, "member": ME, "ring": RING, "seq": seq,
            "safe": False, "data": [b"y" * size]}


async def small_buffer_client(path: Path, frames: int) -> RingClient:
    """A client that keeps at most ``frames`` unconsumed event frames (enter it with ``async with``)."""
    ring = await RingClient.connect(path)
    ring.__init__(ring._stream, ring.path, events_buffered=frames)  # type: ignore[misc]
    return ring


async def test_trio_client_join_send_and_events(short_tmp: Path) -> None:
    async with serving(short_tmp / "api.sock") as s, open_client(s.path) as ring:
        assert await ring.join("chat") == ME
        assert await ring.send("chat", "héllo") == 1  # str is sent as UTF-8
        assert await ring.send("chat", [b"a", "b", b"c"], safe=True) == 3  # one request, one frame
        assert [list(r.request.data) for r in s.driver.requests if r.op == "send"] == [
            ["héllo".encode()], [b"a", b"b", b"c"]]
        got = []
        async for event in ring.events():
            got.append(event)
            if len(got) == 5:
                break
        assert got[0] == GroupEvent(group="chat", members=(ME,), joined=(ME,), left=(), reason="join")
        assert got[1] == MessageEvent("chat", NODE, ME, RING, 0, "héllo".encode(), False)
        assert [(e.seq, e.data, e.safe) for e in got[2:]] == [(1, b"a", True), (2, b"b", True), (3, b"c", True)]
        assert await ring.members() == {"chat": [ME]}
        assert await ring.members("none") == {"none": []}
        assert (await ring.ring()) == {"state": "operational", "ring": RING, "members": [NODE], "held_out": []}


async def test_trio_client_batches_errors_and_pipelining(short_tmp: Path) -> None:
    async with serving(short_tmp / "api.sock") as s, await RingClient.connect(s.path) as ring:
        await ring.join("g", self_discard=False)
        with pytest.raises(TryAgain, match="again"):
            await ring.send("full", b"x", wait=False)
        with pytest.raises(RequestFailed, match="group_join: 'group' must be a non-empty string"):
            await ring.join("")
        counts: list[int] = []

        async def one(i: int) -> None:
            counts.append(await ring.send("g", [b"%d" % i] * (i + 1)))

        async with trio.open_nursery() as nursery:  # 20 requests in flight on one connection
            for i in range(20):
                nursery.start_soon(one, i)
        assert sorted(counts) == list(range(1, 21))
        frames = []
        with trio.fail_after(10):
            async for batch in ring.batches():
                frames.append(batch)
                if sum(len(b.data) for b in frames if isinstance(b, MessageBatch)) == sum(range(1, 21)):
                    break
        assert isinstance(frames[0], GroupEvent)
        batches = frames[1:]
        assert all(isinstance(b, MessageBatch) for b in batches)
        # Sends made while others were in flight went out coalesced: fewer frames than calls.
        assert len(batches) < 20 and ring.stats.send_calls == 21 and ring.stats.send_requests < 21
        seqs = [m.seq for b in batches for m in b.messages()]  # type: ignore[union-attr]
        assert seqs == list(range(len(seqs)))
        # Each call's messages are consecutive (its own count of its own payload).
        items = [m.data for b in batches for m in b.messages()]  # type: ignore[union-attr]
        for i in range(20):
            start = items.index(b"%d" % i)
            assert items[start:start + i + 1] == [b"%d" % i] * (i + 1)


async def test_trio_client_reports_a_lost_connection(short_tmp: Path) -> None:
    async with serving(short_tmp / "api.sock") as s, open_client(s.path) as ring:
        await ring.join("g")
        s.driver.hold_sends = True
        async with trio.open_nursery() as nursery:

            async def unanswered_send() -> None:
                with pytest.raises(ConnectionLost, match="closed the connection"):
                    await ring.send("g", b"never answered")

            nursery.start_soon(unanswered_send)
            await s.driver.wait_for(lambda: len(s.driver.held) == 1)
            s.stop()  # the daemon goes away
        events = []
        with pytest.raises(ConnectionLost):
            async for event in ring.events():  # what arrived before is still delivered
                events.append(event)
        assert [type(e) for e in events] == [GroupEvent]
        with pytest.raises(ConnectionLost):
            await ring.ring()


async def test_an_app_that_stops_reading_is_dropped_by_the_daemon(
        short_tmp: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(api_types, "API_OUTGOING_FRAMES_MAX", 16)
    async with serving(short_tmp / "api.sock") as s:
        async with await small_buffer_client(s.path, 8) as ring:
            await ring.join("g")
            pushed = 0
            with trio.fail_after(10):
                while s.server.stats.slow_dropped == 0:  # the app reads nothing meanwhile
                    s.driver.push_group("g", message_frame(pushed, 8192))
                    pushed += 1
                    await trio.lowlevel.checkpoint()  # let the server's writer task run
            seqs = []
            with pytest.raises(ConnectionLost):
                async for event in ring.events():
                    if isinstance(event, MessageEvent):
                        seqs.append(event.seq)
            # What the daemon sent before dropping us arrives complete and in order.
            assert seqs == list(range(len(seqs))) and 0 < len(seqs) < pushed


async def test_trio_client_hands_the_reading_over(short_tmp: Path) -> None:
    """Whoever waits reads: when the event consumer (reading for everyone) is cancelled,
    a request parked behind it takes the reading over and still gets its reply."""
    async with serving(short_tmp / "api.sock") as s, open_client(s.path) as ring:
        await ring.join("g")
        s.driver.hold_sends = True
        got: list[object] = []
        counts: list[int] = []
        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                consumer = trio.CancelScope()

                async def consume() -> None:
                    with consumer:
                        async for event in ring.events():
                            got.append(event)

                async def send() -> None:
                    counts.append(await ring.send("g", b"m"))

                nursery.start_soon(consume)
                await trio.testing.wait_all_tasks_blocked()
                assert [type(e) for e in got] == [GroupEvent]  # and the consumer reads on
                nursery.start_soon(send)
                await s.driver.wait_for(lambda: len(s.driver.held) == 1)
                consumer.cancel()
                await trio.testing.wait_all_tasks_blocked()
                s.driver.deliver(s.driver.held.pop())  # the reply, then the message
            assert counts == [1]
            async for event in ring.events():  # read by the send, kept for the next consumer
                got.append(event)
                break
        assert [type(e) for e in got] == [GroupEvent, MessageEvent]


async def test_a_request_reads_ahead_only_a_bounded_number_of_events(short_tmp: Path) -> None:
    """A reply behind many unconsumed events: the request reads until the event buffer is
    full, then waits for the consumer to make room (memory stays bounded)."""
    async with serving(short_tmp / "api.sock") as s:
        async with await small_buffer_client(s.path, 4) as ring:
            await ring.join("g")
            for seq in range(40):
                s.driver.push_group("g", message_frame(seq, 8192))
            answered: list[dict[str, object]] = []
            seqs: list[int] = []
            with trio.fail_after(10):
                async with trio.open_nursery() as nursery:

                    async def ask() -> None:
                        answered.append(await ring.ring())

                    nursery.start_soon(ask)
                    await trio.testing.wait_all_tasks_blocked()
                    assert answered == []  # stuck behind the events nobody consumed
                    assert len(ring._conn.events) < 40
                    async for event in ring.events():
                        if isinstance(event, MessageEvent):
                            seqs.append(event.seq)
                            if event.seq == 39:
                                break
            assert seqs == list(range(40))
            assert answered and answered[0]["ring"] == RING


async def test_the_consumer_may_make_requests_while_events_pile_up(short_tmp: Path) -> None:
    """A consumer that answers each event with a request: its own request reads past the
    event bound (nobody else would read, and waiting for itself would hang)."""
    async with serving(short_tmp / "api.sock") as s:
        async with await small_buffer_client(s.path, 2) as ring:
            await ring.join("g")
            for seq in range(30):
                s.driver.push_group("g", message_frame(seq, 4096))
            seqs = []
            with trio.fail_after(10):
                async for event in ring.events():
                    if isinstance(event, MessageEvent):
                        seqs.append(event.seq)
                        assert (await ring.ring())["ring"] == RING
                        if event.seq == 29:
                            break
            assert seqs == list(range(30))


async def test_a_request_cancelled_half_way_through_its_frame_does_not_break_the_stream() -> None:
    """The rest of a frame whose writer was cancelled goes out before the next request, so
    the daemon reads whole frames (the cancelled send may still be delivered)."""
    import socket

    from ringd.wire import FrameReader, pack_frame

    ours, theirs = socket.socketpair()  # the "daemon" does not read at first
    with ours, theirs:
        ring = RingClient(SocketConnection(ours), Path("test.sock"))
        async with ring:
            with trio.move_on_after(0.2) as scope:
                await ring.send("g", b"x" * (1 << 20))
            assert scope.cancelled_caught  # the kernel took part of the frame only
            daemon = SocketConnection(theirs)
            frames: list[dict[str, object]] = []
            answer: list[dict[str, object]] = []
            with trio.fail_after(10):
                async with trio.open_nursery() as nursery:

                    async def ask() -> None:
                        answer.append(await ring.ring())

                    nursery.start_soon(ask)
                    reader = FrameReader()
                    while len(frames) < 2:
                        frames += reader.feed(await daemon.receive_some(1 << 16))
                    await daemon.send_all(pack_frame({"ok": True, "id": frames[1]["id"], "state": "x"}))
            assert [f["op"] for f in frames] == ["send", "ring"]
            assert frames[0]["data"] == [b"x" * (1 << 20)]
            assert answer == [{"state": "x"}]


async def test_a_cancelled_read_loses_no_bytes() -> None:
    import socket

    ours, theirs = socket.socketpair()
    with ours, theirs:
        theirs.sendall(bytes(range(100)))
        conn = SocketConnection(ours)
        got = b""
        for _ in range(IMMEDIATE_READS_MAX - 1):
            got += await conn.receive_some(1)
        with trio.CancelScope() as scope:
            scope.cancel()
            got += await conn.receive_some(1)  # the read that also lets other tasks run
        with trio.move_on_after(5):
            while len(got) < 100:
                got += await conn.receive_some(100)
        assert got == bytes(range(100))


def test_blocking_client(short_tmp: Path) -> None:
    path = short_tmp / "api.sock"

    def app() -> None:
        with BlockingRingClient(path, timeout_s=10) as ring:
            assert ring.join("chat", self_discard=True) == ME
            with BlockingRingClient(path, timeout_s=10) as other:
                other.join("chat")
                assert ring.send("chat", ["x", b"\xff"]) == 2
                events = list(itertools.islice(other.events(timeout=10), 3))
                assert events[0] == GroupEvent("chat", (ME, f"{NODE}:{os.getpid()}"),
                                               (f"{NODE}:{os.getpid()}",), (), "join")
                assert events[1:] == [MessageEvent("chat", NODE, ME, RING, 0, b"x", False),
                                      MessageEvent("chat", NODE, ME, RING, 1, b"\xff", False)]
                with pytest.raises(TryAgain):
                    other.send("full", b"x", wait=False)
                assert other.members("chat") == {"chat": sorted([ME, ME])}
                assert other.ring()["ring"] == RING
            # self_discard: our own messages did not come back; the other's leave did.
            # Events are in delivery order, so the messages would come before the leave.
            seen = []
            for batch in ring.batches(timeout=10):
                seen.append(batch)
                if isinstance(batch, GroupEvent) and batch.reason == "disconnect":
                    break
            assert [(type(b), b.reason) for b in seen] == [  # type: ignore[union-attr]
                (GroupEvent, "join"), (GroupEvent, "join"), (GroupEvent, "disconnect")]
            assert list(ring.events(timeout=0.05)) == []  # nothing else is pending

    async def main() -> None:
        async with serving(path):
            await trio.to_thread.run_sync(app)

    trio.run(main)


def test_blocking_client_errors(short_tmp: Path) -> None:
    with pytest.raises(DaemonNotRunning):
        BlockingRingClient(short_tmp / "missing.sock")
    path = short_tmp / "api.sock"

    async def main() -> None:
        async with serving(path) as s:
            ring = await trio.to_thread.run_sync(BlockingRingClient, path)
            await trio.to_thread.run_sync(ring.join, "g")
            s.stop()
            with pytest.raises(ConnectionLost):
                await trio.to_thread.run_sync(lambda: list(ring.events()))
            ring.close()

    trio.run(main)


def test_event_decoding_and_json() -> None:
    batch = decode_event({"ev": "message", "group": "g", "sender": "n1", "member": "n1:9", "ring": "3.n1",
                          "seq": 10, "safe": True, "data": [b"ok", b"\x00\xff"]})
    first, second = batch.messages()  # type: ignore[union-attr]
    assert event_json(first) == {"type": "message", "group": "g", "sender": "n1", "ring": "3.n1",
                                 "seq": 10, "data": "ok"}
    assert event_json(second) == {"type": "message", "group": "g", "sender": "n1", "ring": "3.n1",
                                  "seq": 11, "data_b64": "AP8="}
    config = decode_event({"ev": "config", "kind": "regular", "ring": "3.n1", "members": ["n1", "n2"]})
    assert config == ConfigEvent("regular", "3.n1", ("n1", "n2"))
    assert event_json(config) == {"type": "config", "kind": "regular", "ring": "3.n1", "members": ["n1", "n2"]}
    group = decode_event({"ev": "group", "group": "g", "members": [], "joined": [], "left": ["n2:1"],
                          "reason": "nodedown"})
    assert event_json(group) == {"type": "group", "group": "g", "members": [], "joined": [],
                                 "left": ["n2:1"], "reason": "nodedown"}
    marked = decode_event({"ev": "message", "group": "g", "sender": "n1", "member": "n1:9", "ring": "3.n1",
                           "seq": 10, "safe": False, "primary": False, "data": [b"x"]})
    assert event_json(marked.messages()[0])["primary"] is False  # type: ignore[union-attr]
    quorate = decode_event({"ev": "config", "kind": "regular", "ring": "3.n1", "members": ["n1", "n2"],
                            "primary": True, "votes": 2, "expected": 3})
    assert event_json(quorate) == {"type": "config", "kind": "regular", "ring": "3.n1",
                                   "members": ["n1", "n2"], "primary": True, "votes": 2, "expected": 3}
    change = decode_event({"ev": "quorum", "ring": "3.n1", "kind": "regular", "primary": True,
                           "votes": 2, "expected": 2, "reason": "operator"})
    assert change == client.QuorumEvent("3.n1", "regular", True, 2, 2, "operator")
    assert event_json(change)["type"] == "quorum"
    with pytest.raises(client.ProtocolError, match="field 'primary'"):
        decode_event({"ev": "config", "kind": "regular", "ring": "3.n1", "members": [], "primary": 1})
    with pytest.raises(client.ProtocolError, match="field 'seq'"):
        decode_event({"ev": "message", "group": "g", "sender": "n", "member": "m", "ring": "r",
                      "seq": "1", "safe": False, "data": []})
    with pytest.raises(client.ProtocolError, match="unknown event type"):
        decode_event({"ev": "surprise"})


async def test_concurrent_sends_coalesce_and_errors_reach_their_callers(short_tmp: Path) -> None:
    """Sends made while another is unanswered go out as one request per (group, safe, wait);
    a refused request fails every call in it and no other; a too-large call fails alone."""
    async with serving(short_tmp / "api.sock") as s, open_client(s.path) as ring:
        s.driver.hold_sends = True
        outcomes: dict[str, object] = {}

        async def send(name: str, group: str, data: bytes, wait: bool = True) -> None:
            try:
                outcomes[name] = await ring.send(group, data, wait=wait)
            except client.ClientError as exc:
                outcomes[name] = exc

        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(send, "first", "g", b"first")
                await s.driver.wait_for(lambda: len(s.driver.held) == 1)  # in flight, unanswered
                # Only consecutive sends with one key merge, and the tasks of one scheduler
                # round run in any order: one key per round.
                for i in range(5):
                    nursery.start_soon(send, f"full{i}", "full", b"%d" % i, False)
                await s.driver.wait_for(lambda: len(s.driver.requests) == 2)
                for i in range(5):
                    nursery.start_soon(send, f"g{i}", "g", b"%d" % i)
                nursery.start_soon(send, "huge", "g", b"x" * (client.SEND_BYTES_MAX + 1))
                await s.driver.wait_for(lambda: len(s.driver.held) == 2)
                s.driver.hold_sends = False
                for req in s.driver.held:
                    s.driver.deliver(req)
        assert [(r.request.group, len(r.request.data)) for r in s.driver.requests if r.op == "send"] == [
            ("g", 1), ("full", 5), ("g", 5)]
        assert all(isinstance(outcomes[f"full{i}"], TryAgain) for i in range(5))
        assert len({id(outcomes[f"full{i}"]) for i in range(5)}) == 5  # one exception per caller
        assert [outcomes[f"g{i}"] for i in range(5)] == [1] * 5 and outcomes["first"] == 1
        assert isinstance(outcomes["huge"], RequestFailed) and "exceed" in str(outcomes["huge"])
        assert ring.stats.send_calls == 11 and ring.stats.send_requests == 3


async def test_submit_and_flush_from_one_task(short_tmp: Path) -> None:
    async with serving(short_tmp / "api.sock") as s, open_client(s.path) as ring:
        await ring.join("g")
        tickets = [await ring.submit("g", b"%d" % i) for i in range(3000)]
        assert await ring.flush() == 3000
        assert all(t.done and t.count == 1 for t in tickets)
        requests = [list(r.request.data) for r in s.driver.requests if r.op == "send"]
        assert len(requests) < 30  # coalesced (64 KiB or 1024 calls per request at most)
        assert [x for d in requests for x in d] == [b"%d" % i for i in range(3000)]
        with pytest.raises(TryAgain):  # the first error, once all were answered
            for i in range(3):
                await ring.submit("full" if i == 1 else "g", b"x", wait=False)
            await ring.flush()
        seqs = []
        with trio.fail_after(10):
            async for event in ring.events():
                if isinstance(event, MessageEvent):
                    seqs.append(event.seq)
                    if len(seqs) == 3002:
                        break
        assert seqs == list(range(3002))


def test_blocking_submit_flush_and_send_order(short_tmp: Path) -> None:
    path = short_tmp / "api.sock"

    def app() -> tuple[int, int, list[bytes]]:
        with BlockingRingClient(path, timeout_s=10) as ring:
            ring.join("g")
            for i in range(2000):
                ring.submit("g", b"%d" % i)
            assert ring.send("g", b"after") == 1  # a send goes out after what was submitted
            flushed = ring.flush()
            got = [e.data for e in itertools.islice(ring.events(timeout=10), 2002)
                   if isinstance(e, MessageEvent)]
            return flushed, ring.stats.send_requests, got

    async def main() -> None:
        async with serving(path) as s:
            flushed, requests, got = await trio.to_thread.run_sync(app)
            assert flushed == 2000
            assert requests == sum(1 for r in s.driver.requests if r.op == "send") < 30
            assert got == [b"%d" % i for i in range(2000)] + [b"after"]

    trio.run(main)


async def test_a_send_cancelled_before_it_went_out_is_never_sent(short_tmp: Path) -> None:
    async with serving(short_tmp / "api.sock") as s, open_client(s.path) as ring:
        s.driver.hold_sends = True
        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(ring.send, "g", b"first")
                await s.driver.wait_for(lambda: len(s.driver.held) == 1)
                with trio.CancelScope() as scope:
                    scope.cancel()  # it queues, then waits a scheduler round for company
                    await ring.send("g", b"never")
                s.driver.hold_sends = False
                s.driver.deliver(s.driver.held.pop())
            assert await ring.send("g", b"after") == 1
        assert [list(r.request.data) for r in s.driver.requests if r.op == "send"] == [[b"first"], [b"after"]]
