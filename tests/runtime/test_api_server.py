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

from ringd.core.requests import SendMessages
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
        assert s.driver.requests[0].request.pid == os.getpid()
        assert await sub.next() == {"ev": "group", "group": "chat", "members": [f"{NODE}:{os.getpid()}"],
                                    "joined": [f"{NODE}:{os.getpid()}"], "left": [], "reason": "join"}

        # A single bytes value is wrapped; defaults are filled in before the driver sees it.
        assert await pub.call({"op": "send", "group": "chat", "data": b"one", "id": 1}) == \
            {"ok": True, "count": 1, "id": 1}
        last = s.driver.requests[-1]
        assert last.op == "send" and last.request == SendMessages(
            conn=last.conn, pid=os.getpid(), request_id=last.request.request_id, group="chat",
            data=(b"one",), safe=False, wait=True)
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

        # A frame within the byte limit but of 2 million one-byte items (180 MB decoded)
        # is refused without decoding it.
        flood = await RawConn.open(s.path)
        await flood.stream.send_all(pack_frame({"op": "send", "group": "g", "data": [b""] * (2 << 20)}))
        assert "CBOR items" in (await flood.next())["error"]
        await flood.expect_eof()
        assert s.server.stats.errors["malformed"] == 3


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
        assert [list(r.request.data) for r in s.driver.held] == [[b"aaaa"], [b"bbbb"]]
        s.driver.deliver(s.driver.held.pop(0))
        assert await busy.next() == {"ok": True, "count": 1, "id": 1}
        await s.driver.wait_for(lambda: len(s.driver.held) == 2)
        assert list(s.driver.held[1].request.data) == [b"cccc"]
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


def test_status_shows_the_ring_and_groups_of_the_node_core() -> None:
    from stand_in import StandInDaemon

    from ringd.core.requests import JoinGroup
    from ringd.runtime.control import status_reply

    daemon = StandInDaemon()
    node = daemon.node
    effects = node.handle(JoinGroup(conn=1, pid=42, request_id=7, group="g"), 0.0)
    assert effects[-1].body == {"ok": True, "member": "node1:42"}  # type: ignore[union-attr]

    async def main() -> dict[str, Any]:
        return status_reply(daemon)  # type: ignore[arg-type]

    out = trio.run(main)
    assert out["name"] == "node1"
    assert out["totem"]["state"] in ("gather", "commit") and out["totem"]["members"] == []
    assert out["totem"]["driver"] == {"backpressure_holds": 0, "observer_dropped": 0,
                                      "unknown_destination": 0, "key_relays_dropped": 0,
                                      "own_name_dropped": 0}
    assert out["totem"]["stats"]["app_sent"] == 1  # the join's payload went to Totem
    # Not delivered yet (no ring): the group view is still empty, the local request is not.
    assert out["groups"]["groups"] == {} and out["control"]["subscribers"] == 0
