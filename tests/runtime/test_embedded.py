"""The embedded node (ringd.embedded) in the test's own Trio loop, on one ring with a real
daemon process: the same groups API, one order for both, status over its control socket, a
graceful leave, and one-line startup errors."""

from __future__ import annotations

import subprocess
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import trio

from helpers import FAST_SETTINGS, RINGD, ProcessRegistry
from ringd.client import MessageEvent, RingClient
from ringd.embedded import EmbeddedNodeError, open_node

pytestmark = pytest.mark.integration

STEADY = ("totem.token_timeout_s=2.0", "totem.consensus_s=2.4")
TIMEOUT_S = 30.0  # a loaded 2-core machine: interpreter start, ring formation
POLL_S = 0.05
PER_SIDE = 50


def embedded_settings(daemons: ProcessRegistry, name: str) -> dict[str, Any]:
    """Settings that put an embedded node in the test's cluster, like its daemons."""
    settings: dict[str, Any] = dict(item.split("=", 1) for item in (*FAST_SETTINGS, *STEADY))
    settings.update({"name": name, "cluster_name": daemons.cluster_name, "net.port": 0,
                     "net.multicast_port": daemons.multicast_port,
                     "socket": str(daemons.workdir / f"{name}.sock"),
                     "state_dir": str(daemons.workdir / name)})
    return settings


async def poll(condition: Callable[[], Awaitable[bool]], what: str,
               timeout_s: float = TIMEOUT_S) -> None:
    """Poll ``await condition()`` until it is true, or fail after ``timeout_s``."""
    with trio.move_on_after(timeout_s) as scope:
        while not await condition():
            await trio.sleep(POLL_S)  # poll
    if scope.cancelled_caught:
        raise AssertionError(f"timed out after {timeout_s:g} s waiting for {what}")


async def collect(ring: RingClient, count: int, into: list[tuple[str, bytes]]) -> None:
    async for event in ring.events():
        if isinstance(event, MessageEvent):
            into.append((event.sender, event.data))
            if len(into) == count:
                return


async def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return await trio.to_thread.run_sync(lambda: subprocess.run(
        [*RINGD, *args], capture_output=True, text=True, timeout=TIMEOUT_S, stdin=subprocess.DEVNULL))


async def test_embedded_node_shares_a_ring_and_its_order_with_a_daemon(daemons: ProcessRegistry) -> None:
    args = [a for item in STEADY for a in ("--set", item)]
    daemon = daemons.daemon("d1", *args).start()
    daemon.wait_ready()
    async with open_node(embedded_settings(daemons, "e1")) as node:
        assert await node.wait_ring(2, TIMEOUT_S) == ["d1", "e1"]
        async with await node.connect() as mine, await RingClient.connect(daemon.socket) as theirs:
            member = await mine.join("chat")
            assert member.startswith("e1:")
            await theirs.join("chat")
            await poll(_group_size(mine, 2), "both in the group")
            got: dict[str, list[tuple[str, bytes]]] = {"e1": [], "d1": []}
            total = 2 * PER_SIDE
            with trio.fail_after(TIMEOUT_S):
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(collect, mine, total, got["e1"])
                    nursery.start_soon(collect, theirs, total, got["d1"])
                    for i in range(PER_SIDE):  # interleaved, one message per call
                        await mine.send("chat", b"e%d" % i, safe=i % 10 == 0)
                        await theirs.send("chat", b"d%d" % i)
            assert got["e1"] == got["d1"], "the embedded node and the daemon disagree on the order"
            assert sorted(got["e1"]) == sorted([("e1", b"e%d" % i) for i in range(PER_SIDE)]
                                               + [("d1", b"d%d" % i) for i in range(PER_SIDE)])
            # Its control socket answers the CLI like a daemon's.
            status = await cli("status", "--socket", str(daemons.workdir / "e1.sock"), "--json")
            assert status.returncode == 0, status.stderr
            assert '"e1"' in status.stdout and '"d1"' in status.stdout
    assert not node.running
    # Leaving the block left the cluster gracefully: the daemon sees e1 as left, not failed.
    await poll(lambda: trio.to_thread.run_sync(lambda: daemon.members().get("e1", {}).get("state") == "left"),
               "d1 to see e1 left")


def _group_size(ring: RingClient, size: int) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return len((await ring.members("chat"))["chat"]) == size
    return check


async def test_embedded_node_startup_errors_are_one_line(daemons: ProcessRegistry) -> None:
    with pytest.raises(EmbeddedNodeError, match=r"^config error: totem.token_timeout_s: must be > 0"):
        async with open_node({**embedded_settings(daemons, "e1"), "totem.token_timeout_s": -1}):
            pass
    async with open_node(embedded_settings(daemons, "e1")) as node:
        with pytest.raises(EmbeddedNodeError) as caught:
            async with open_node(embedded_settings(daemons, "e1")):
                pass
        assert "control socket" in str(caught.value) and "\n" not in str(caught.value)
        assert node.running


async def test_an_error_in_the_block_stops_the_node_and_propagates_as_raised(
        daemons: ProcessRegistry) -> None:
    with pytest.raises(KeyError, match="boom"):
        async with open_node(embedded_settings(daemons, "e1")) as node:
            ring = await node.connect()
            async with ring:
                await ring.join("chat")
                raise KeyError("boom")
    assert not node.running
    with pytest.raises(EmbeddedNodeError, match="not running"):
        await node.connect()
