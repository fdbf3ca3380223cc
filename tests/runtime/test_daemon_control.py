"""The control server and the client library in one Trio process, against a stand-in
daemon (no UDP, no protocol core): socket file handling, replies, limits, client errors."""

from __future__ import annotations

import logging
import os
import socket
import stat
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import trio
from stand_in import StandInDaemon

from ringd import client
from ringd.client import ControlClient, DaemonNotRunning, RequestFailed
from ringd.config import Config
from ringd.messages import Address, MemberState
from ringd.runtime import control
from ringd.runtime.control import ControlServer, ControlSocketError

LOG = logging.getLogger("test")


@dataclass
class FakeView:
    name: str
    state: MemberState
    incarnation: int
    address: Address
    tags: dict[str, str] = field(default_factory=dict)


@dataclass
class FakeCore:
    name: str = "node1"
    incarnation: int = 3
    health_score: int = 0
    broadcast_queue_len: int = 0
    stats: dict[str, int] = field(default_factory=lambda: {"probes": 7})
    views: list[FakeView] = field(default_factory=list)

    def members(self) -> list[FakeView]:
        return self.views


class FakeDaemon(StandInDaemon):
    """A real node core whose gossip view is a fixed list (one member suspect)."""

    def __init__(self, path: Path) -> None:
        super().__init__(Config(name="node1", socket=str(path), cluster_name="tc"))
        self.node.gossip = FakeCore(views=[  # type: ignore[assignment]
            FakeView("node2", MemberState.SUSPECT, 1, Address(host="127.0.0.1", port=2002), {"r": "x"}),
            FakeView("node1", MemberState.ALIVE, 3, Address(host="127.0.0.1", port=2001)),
        ])
        self.transport = type("T", (), {"local_address": Address(host="127.0.0.1", port=2001),
                                        "stats": {"datagrams_in": 1, "dropped": {"malformed": 2}}})()


async def _serving(path: Path, nursery: trio.Nursery) -> tuple[ControlServer, FakeDaemon]:
    server = ControlServer(path, LOG)
    await server.bind()
    daemon = FakeDaemon(path)
    daemon.control_stats = server.stats
    await nursery.start(server.serve, daemon)
    return server, daemon


async def test_replies_and_socket_file_lifecycle(short_tmp: Path) -> None:
    path = short_tmp / "run" / "ctl.sock"
    async with trio.open_nursery() as nursery:
        server, daemon = await _serving(path, nursery)
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o660
        assert stat.S_IMODE(os.stat(path.parent).st_mode) == 0o700

        async with await ControlClient.connect(path) as ctl:
            status = await ctl.request("status")
            members = await ctl.request("members")
            with pytest.raises(RequestFailed, match="unknown op 'bogus'"):
                await ctl.request("bogus")
            assert (await ctl.request("leave"))["name"] == "node1"
        assert status["name"] == "node1" and status["members_alive"] == 1 and status["members_total"] == 2
        assert status["address"] == "127.0.0.1:2001" and status["transport"]["dropped"] == {"malformed": 2}
        assert [m["name"] for m in members["members"]] == ["node1", "node2"]
        assert members["members"][1] == {"name": "node2", "state": "suspect", "incarnation": 1,
                                         "address": "127.0.0.1:2002", "tags": {"r": "x"}}
        assert daemon.leave_requests == ["control socket request"]

        # A second server on the same path is refused while the first one answers.
        with pytest.raises(ControlSocketError, match="in use by a running daemon"):
            await ControlServer(path, LOG).bind()
        nursery.cancel_scope.cancel()
    server.close()
    assert not path.exists()


async def test_stale_socket_is_replaced_and_other_files_are_not(short_tmp: Path) -> None:
    path = short_tmp / "ctl.sock"
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(path))
    stale.close()  # the file stays, nobody listens: a crashed daemon's leftover
    server = ControlServer(path, LOG)
    await server.bind()
    server.close()
    assert not path.exists()

    path.write_text("not a socket")
    with pytest.raises(ControlSocketError, match="not a socket"):
        await ControlServer(path, LOG).bind()
    assert path.read_text() == "not a socket"


async def test_connection_limit(short_tmp: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(control, "CONTROL_CONNECTIONS_MAX", 2)
    path = short_tmp / "ctl.sock"
    async with trio.open_nursery() as nursery:
        server, _ = await _serving(path, nursery)
        held = [await ControlClient.connect(path) for _ in range(2)]
        for ctl in held:  # both are being served
            assert (await ctl.request("status"))["ok"]
        async with await ControlClient.connect(path) as extra:
            with pytest.raises(RequestFailed, match="too many control connections"):
                await extra.request("status")
        assert server.stats.connections_rejected == 1
        for ctl in held:
            await ctl.aclose()
        nursery.cancel_scope.cancel()
    server.close()


async def test_client_errors_are_one_line(short_tmp: Path) -> None:
    with pytest.raises(DaemonNotRunning, match="no ringd daemon is running at") as info:
        await ControlClient.connect(short_tmp / "missing.sock")
    assert "\n" not in str(info.value)
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(str(short_tmp / "dead.sock"))
    dead.close()
    with pytest.raises(DaemonNotRunning, match="connection refused"):
        await ControlClient.connect(short_tmp / "dead.sock")


def test_blocking_helpers_report_a_missing_daemon(short_tmp: Path) -> None:
    for fn in (client.status, client.members, client.leave):
        with pytest.raises(DaemonNotRunning):
            fn(short_tmp / "missing.sock")
