"""Coalescing of sends by the client library against real daemons: one message per call
from many tasks (Trio) or pipelined (blocking submit/flush) reaches the daemon as fewer
send requests, every subscriber sees every message, and each sender's order is kept."""

from __future__ import annotations

import trio
from ordered_helpers import Subscriber, wait_ring, wait_subscribers

from helpers import DaemonProcess, ProcessRegistry, wait_until
from ringd.client import BlockingRingClient, open_client

STEADY = ("--set", "totem.token_timeout_s=2.0", "--set", "totem.consensus_s=2.4")
DELIVERY_TIMEOUT_S = 60.0


def send_requests(d: DaemonProcess) -> int:
    """Send requests the daemon's control server has taken so far."""
    return int(d.status()["control"]["requests"].get("send", 0))


def test_sends_from_many_tasks_are_coalesced_in_order_per_task(daemons: ProcessRegistry) -> None:
    nodes = daemons.start_cluster(3, *STEADY)
    wait_ring(nodes)
    subs = [Subscriber(daemons, d, "chat") for d in nodes[1:]]
    wait_subscribers(subs, 2)
    tasks, per_task = 16, 40
    before = send_requests(nodes[0])
    stats = {}

    async def main() -> None:
        async with open_client(nodes[0].socket) as ring:

            async def sender(k: int) -> None:
                for i in range(per_task):
                    assert await ring.send("chat", f"t{k}-{i}") == 1

            with trio.fail_after(DELIVERY_TIMEOUT_S):
                async with trio.open_nursery() as nursery:
                    for k in range(tasks):
                        nursery.start_soon(sender, k)
            stats["requests"] = ring.stats.send_requests
            stats["calls"] = ring.stats.send_calls

    trio.run(main)
    total = tasks * per_task
    assert stats["calls"] == total
    assert stats["requests"] < total  # calls made while others were in flight went out together
    assert send_requests(nodes[0]) - before == stats["requests"]  # what the daemon took
    wait_until(lambda: all(len(s.messages()) >= total for s in subs), DELIVERY_TIMEOUT_S,
               f"{total} messages at every subscriber")
    sequences = [s.data() for s in subs]
    assert sequences[0] == sequences[1] and len(sequences[0]) == total
    for k in range(tasks):  # each task's messages in the order it sent them
        assert [m for m in sequences[0] if m.startswith(f"t{k}-")] == [f"t{k}-{i}" for i in range(per_task)]


def test_blocking_submit_flush_pipelines_into_few_requests(daemons: ProcessRegistry) -> None:
    [node] = daemons.start_cluster(1, *STEADY)
    wait_ring([node])
    sub = Subscriber(daemons, node, "bulk")
    wait_subscribers([sub], 1)
    before = send_requests(node)
    count = 5000
    with BlockingRingClient(node.socket, timeout_s=DELIVERY_TIMEOUT_S) as ring:
        for i in range(count):
            ring.submit("bulk", b"m%d" % i)
        assert ring.flush() == count
        requests = ring.stats.send_requests
    assert requests == send_requests(node) - before
    assert requests < count // 100  # 64 KiB or 1024 calls per request, not one per call
    wait_until(lambda: len(sub.messages()) >= count, DELIVERY_TIMEOUT_S, f"{count} messages")
    assert sub.data() == [f"m{i}" for i in range(count)]
