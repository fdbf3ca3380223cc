"""The client API side of the control server, against a fake driver (fake_api.py) and raw
frames: request ids, validation, pipelined sends, events, malformed
frames, slow subscribers, socket mode and peer pid."""

from __future__ import annotations

import os
import stat
import struct
from pathlib import Path
from typing import Any

import pytest
import trio
from fake_api import NODE, serving

from ringd.runtime import api_types, control
from ringd.wire import FrameReader, pack_frame

FRAME_TIMEOUT_S = 10.0


class RawConn:
    """A client speaking raw frames, to see exactly what the server sends."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.reader = FrameReader()
        self.frames: list[Any] = []

    @classmethod
    async def open(cls, path: Path) -> RawConn:
        return cls(await trio.open_unix_socket(os.fspath(path)))

    async def send(self, *requests: dict[str, Any]) -> None:
        await self.stream.send_all(b"".join(pack_frame(r) for r in requests))

    async def next(self) -> Any:
        """The next frame (fails the test if none comes in time or the stream ends)."""
        with trio.fail_after(FRAME_TIMEOUT_S):
            while not self.frames:
                data = await self.stream.receive_some(65536)
                assert data, "server closed the connection"
                self.frames.extend(self.reader.feed(data))
        return self.frames.pop(0)

    async def call(self, request: dict[str, Any]) -> Any:
        await self.send(request)
        return await self.next()

    async def expect_eof(self) -> None:
        with trio.fail_after(FRAME_TIMEOUT_S):
            while True:
                try:
                    data = await self.stream.receive_some(65536)
                except trio.BrokenResourceError:
                    return
                if not data:
                    return
                self.frames.extend(self.reader.feed(data))


async def test_join_send_events_and_reply_ids(short_tmp: Path) -> None:
    async with serving(short_tmp / "api.sock") as s:
        assert stat.S_IMODE(os.stat(s.path).st_mode) == 0o660
        sub = await RawConn.open(s.path)
        pub = await RawConn.open(s.path)
        joined = await sub.call({"op": "group_join", "group": "chat", "id": 7})
        # The member id carries the client's pid, read from SO_PEERCRED (we are the client).
        assert joined == {"ok": True, "member": f"{NODE}:{os.getpid()}", "id": 7}
        assert s.driver.requests[0].pid == os.getpid()
        assert await sub.next() == {"ev": "group", "group": "chat", "members": [f"{NODE}:{os.getpid()}"],
                                    "joined": [f"{NODE}:{os.getpid()}"], "left": [], "reason": "join"}

        # A single bytes value is wrapped; defaults are filled in before the driver sees it.
        assert await pub.call({"op": "send", "group": "chat", "data": b"one", "id": 1}) == \
            {"ok": True, "count": 1, "id": 1}
        assert s.driver.requests[-1].request == {"op": "send", "group": "chat", "data": [b"one"],
                                                 "safe": False, "wait": True}
        assert await pub.call({"op": "send", "group": "chat", "data": [b"two", b"three"], "safe": True}) == \
            {"ok": True, "count": 2}  # no id asked, none echoed
        first, second = await sub.next(), await sub.next()
        assert (first["seq"], first["data"], first["safe"]) == (0, [b"one"], False)
        assert (second["seq"], second["data"], second["safe"]) == (1, [b"two", b"three"], True)

        members = await pub.call({"op": "group_members", "id": 3})
        assert members == {"ok": True, "groups": {"chat": [f"{NODE}:{os.getpid()}"]}, "id": 3}
        assert (await pub.call({"op": "ring"}))["state"] == "operational"
        assert s.server.stats.connections_open == 2 and len(s.daemon.api_connections) == 2
        assert s.server.stats.requests["send"] == 2

        # Closing a connection that made requests tells the driver (it drops the memberships).
        sub_conn = s.driver.requests[0].conn
        await sub.stream.aclose()
        await s.driver.wait_for(lambda: sub_conn in s.driver.disconnects)
        assert sub_conn not in s.daemon.api_connections
        assert s.driver.members["chat"] == {}
        await pub.stream.aclose()
        await s.driver.wait_for(lambda: len(s.driver.disconnects) == 2)
        assert s.server.stats.connections_open == 0


@pytest.mark.parametrize(("request_", "error"), [
    ({"op": "group_join"}, "'group' must be a non-empty string"),
    ({"op": "group_join", "group": ""}, "'group' must be a non-empty string"),
    ({"op": "group_join", "group": "g", "self_discard": 1}, "'self_discard' must be a bool"),
    ({"op": "send", "group": "g", "data": "text"}, "'data' must be bytes or a list of bytes"),
    ({"op": "send", "group": "g", "data": [b"x", 5]}, "'data' must be bytes or a list of bytes"),
    ({"op": "send", "group": "g", "data": []}, "holds no message"),
    ({"op": "send", "group": "g", "data": b"x", "safe": "yes"}, "'safe' must be a bool"),
    ({"op": "send", "group": "g", "data": b"x", "wait": None}, "'wait' must be a bool"),
    ({"op": "send", "group": "g", "data": [b"x" * 600_000] * 2}, "exceed 1048576"),
    ({"op": "group_members", "group": 3}, "'group' must be a non-empty string"),
    ({"op": "ring", "id": "seven"}, "'id' must be an integer"),
])
async def test_bad_requests_get_an_error_and_the_connection_stays_usable(
        short_tmp: Path, request_: dict[str, Any], error: str) -> None:
    async with serving(short_tmp / "api.sock") as s:
        conn = await RawConn.open(s.path)
        reply = await conn.call({**request_, "id": 5} if "id" not in request_ else request_)
        assert reply["ok"] is False and error in reply["error"] and "\n" not in reply["error"]
        assert s.server.stats.errors["bad_request"] == 1
        assert s.driver.requests == []  # nothing reached the driver
        assert (await conn.call({"op": "ring", "id": 6}))["id"] == 6


async def test_a_full_send_of_one_mib_fits_in_a_frame(short_tmp: Path) -> None:
    async with serving(short_tmp / "api.sock") as s:
        conn = await RawConn.open(s.path)
        data = [b"x" * 1024] * 1024  # 1 MiB in 1024 items: per-item CBOR overhead included
        assert await conn.call({"op": "send", "group": "g", "data": data, "id": 1}) == \
            {"ok": True, "count": 1024, "id": 1}


async def test_daemon_without_ordered_delivery_refuses_group_ops(short_tmp: Path) -> None:
    async with serving(short_tmp / "api.sock", run_groups=False) as s:
        conn = await RawConn.open(s.path)
        reply = await conn.call({"op": "group_join", "group": "g", "id": 1})
        assert reply == {"ok": False, "error": "group_join: this daemon does not run ordered delivery", "id": 1}


async def test_malformed_frame_gets_an_error_then_disconnect(short_tmp: Path) -> None:
    async with serving(short_tmp / "api.sock") as s:
        conn = await RawConn.open(s.path)
        assert (await conn.call({"op": "group_join", "group": "g", "id": 1}))["ok"]
        await conn.stream.send_all(struct.pack(">I", 3) + b"\xff\xff\xff")  # not CBOR
        await conn.expect_eof()
        errors = [f for f in conn.frames if f.get("ok") is False]
        assert len(errors) == 1 and errors[0]["error"].startswith("malformed frame")
        assert s.server.stats.errors["malformed"] == 1
        await s.driver.wait_for(lambda: len(s.driver.disconnects) == 1)

        # A length prefix beyond the request limit is refused before reading the body.
        big = await RawConn.open(s.path)
        await big.stream.send_all(struct.pack(">I", 64 << 20))
        assert (await big.next())["error"].startswith("malformed frame: too")
        await big.expect_eof()


async def test_sends_are_pipelined_up_to_a_byte_bound_and_other_ops_wait_behind_them(
        short_tmp: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(control, "PIPELINED_SEND_BYTES_MAX", 10)
    async with serving(short_tmp / "api.sock") as s:
        s.driver.hold_sends = True
        busy = await RawConn.open(s.path)
        other = await RawConn.open(s.path)
        await busy.send({"op": "send", "group": "g", "data": b"a" * 4, "id": 1},
                        {"op": "send", "group": "g", "data": b"b" * 4, "id": 2},
                        {"op": "send", "group": "g", "data": b"c" * 4, "id": 3},
                        {"op": "ring", "id": 4})
        # Two unanswered sends fit the bound (8 bytes); the third is not read before room.
        await s.driver.wait_for(lambda: len(s.driver.held) == 2)
        # Another connection is served meanwhile.
        assert (await other.call({"op": "ring", "id": 9}))["id"] == 9
        assert [r.request["data"] for r in s.driver.held] == [[b"aaaa"], [b"bbbb"]]
        s.driver.deliver(s.driver.held.pop(0))
        assert await busy.next() == {"ok": True, "count": 1, "id": 1}
        await s.driver.wait_for(lambda: len(s.driver.held) == 2)
        assert s.driver.held[1].request["data"] == [b"cccc"]
        s.driver.deliver(s.driver.held.pop(0))
        assert await busy.next() == {"ok": True, "count": 1, "id": 2}
        # The ring request waits until every send before it is answered: never overtakes.
        assert [r.op for r in s.driver.requests if r.conn == s.driver.held[0].conn] == ["send"] * 3
        s.driver.deliver(s.driver.held.pop(0))
        assert await busy.next() == {"ok": True, "count": 1, "id": 3}
        assert (await busy.next())["id"] == 4


async def test_client_gone_during_an_unanswered_send_is_noticed_at_once(short_tmp: Path) -> None:
    async with serving(short_tmp / "api.sock") as s:
        s.driver.hold_sends = True
        client = await RawConn.open(s.path)
        assert (await client.call({"op": "group_join", "group": "g", "id": 1}))["ok"]
        await client.send({"op": "send", "group": "g", "data": b"x", "safe": True, "id": 2})
        await s.driver.wait_for(lambda: len(s.driver.held) == 1)
        conn_id = s.driver.held[0].conn
        await client.stream.aclose()
        # The daemon does not wait for the send's reply to see the client go: its
        # memberships end now, not when the ring has delivered the message.
        await s.driver.wait_for(lambda: conn_id in s.driver.disconnects)
        assert s.driver.members["g"] == {}
        s.driver.deliver(s.driver.held.pop())  # a late reply to a gone client is harmless
        again = await RawConn.open(s.path)
        assert (await again.call({"op": "ring", "id": 3}))["ok"]


async def test_slow_subscriber_is_dropped_and_others_keep_receiving(
        short_tmp: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(api_types, "API_OUTGOING_FRAMES_MAX", 64)
    async with serving(short_tmp / "api.sock") as s:
        slow = await RawConn.open(s.path)
        fast = await RawConn.open(s.path)
        assert (await slow.call({"op": "group_join", "group": "g"}))["ok"]
        assert (await fast.call({"op": "group_join", "group": "g"}))["ok"]
        slow_conn = s.driver.requests[0].conn
        await fast.next()  # the group event of its own join
        payload = b"x" * 4096
        sent = 0
        # Lock-step with the fast reader: it never falls behind, the slow one never reads,
        # so only the slow one's socket buffers and frame buffer fill up.
        while s.server.stats.slow_dropped == 0:
            assert sent < 20_000, "the slow subscriber was never dropped"
            s.driver.push_group("g", {"ev": "message", "group": "g", "sender": NODE, "member": "m",
                                      "ring": "1.n", "seq": sent, "safe": False, "data": [payload]})
            frame = await fast.next()
            assert frame["seq"] == sent
            sent += 1
        await s.driver.wait_for(lambda: slow_conn in s.driver.disconnects)
        assert slow_conn not in s.daemon.api_connections
        assert s.server.stats.slow_dropped == 1
        # The fast subscriber is still served, and saw the slow one leave the group.
        left = await fast.next()
        assert (left["ev"], left["reason"], left["members"]) == ("group", "disconnect", ["node1:" + str(os.getpid())])
        s.driver.push_group("g", {"ev": "message", "group": "g", "sender": NODE, "member": "m",
                                  "ring": "1.n", "seq": sent, "safe": False, "data": [payload]})
        assert (await fast.next())["seq"] == sent
        assert (await fast.call({"op": "ring", "id": 4}))["id"] == 4
        # The slow one finds its stream ended once it reads what the kernel kept.
        await slow.expect_eof()


def test_status_shows_totem_and_groups_of_the_ordering_driver() -> None:
    from collections import Counter
    from types import SimpleNamespace

    from ringd.core.totem_state import State
    from ringd.runtime.control import _ordered_delivery_status
    from ringd.totem_messages import RingId

    totem = SimpleNamespace(state=State.OPERATIONAL, ring_id=RingId(seq=4, rep="a"), members=("a", "b"),
                            flaps=SimpleNamespace(held=lambda now: {"c"}), stats={"tokens": Counter(x=1)})
    groups = SimpleNamespace(members=lambda: {"g": ["a:1"]}, subscribers=lambda: 1, stats={"joins": 1})

    async def main() -> dict[str, Any]:
        return _ordered_delivery_status(SimpleNamespace(ordering=SimpleNamespace(totem=totem, groups=groups)))

    out = trio.run(main)
    assert out == {"totem": {"state": "operational", "ring": str(RingId(seq=4, rep="a")), "members": ["a", "b"],
                             "held_out": ["c"], "stats": {"tokens": {"x": 1}}},
                   "groups": {"groups": {"g": ["a:1"]}, "subscribers": 1, "stats": {"joins": 1}}}
    assert _ordered_delivery_status(SimpleNamespace()) == {}  # a daemon without ordered delivery
