"""UDP transport on loopback: unicast, multicast, drops are counted and never fatal."""

from __future__ import annotations

import random
import select
import socket
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import pytest
import trio

from ringd.config import NetConfig
from ringd.core.events import Received
from ringd.messages import Address, Nack, Ping
from ringd.runtime.udp import UdpTransport, open_udp_transport
from ringd.wire import Codec

CODEC = Codec("test-cluster")
WAIT_S = 10  # generous: a loaded 2-core machine


def unicast_only() -> NetConfig:
    return NetConfig(bind_host="127.0.0.1", port=0, multicast_enabled=False)


Running = tuple[UdpTransport, trio.MemoryReceiveChannel[Received]]


@asynccontextmanager
async def running(net: NetConfig | UdpTransport, inbox_len: int = 16) -> AsyncIterator[Running]:
    """A transport serving into its own inbox until the block ends."""
    transport = net if isinstance(net, UdpTransport) else await open_udp_transport(net)
    send, receive = trio.open_memory_channel[Received](inbox_len)
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(transport.serve, CODEC, send)
            yield transport, receive
            nursery.cancel_scope.cancel()
    finally:
        transport.close()


async def next_received(inbox: trio.MemoryReceiveChannel[Received]) -> Received:
    with trio.fail_after(WAIT_S):
        return await inbox.receive()


async def wait_until(condition: Callable[[], bool]) -> None:
    with trio.fail_after(WAIT_S):
        while not condition():
            await trio.sleep(0.005)  # poll


async def test_unicast_exchange() -> None:
    async with running(unicast_only()) as (a, a_inbox), running(unicast_only()) as (b, b_inbox):
        assert a.local_address.host == "127.0.0.1" and a.local_address.port != 0
        assert a.local_address != b.local_address
        await a.send(b.local_address, CODEC.encode("a", Nack(seq=7)))
        got = await next_received(b_inbox)
        assert got == Received(msg=Nack(seq=7), sender="a", source=a.local_address)

        ping = Ping(seq=1, target="a")
        await b.send(got.source, CODEC.encode("b", ping))
        assert (await next_received(a_inbox)).msg == ping
        assert a.stats.datagrams_out == b.stats.datagrams_in == 1
        assert a.stats.bytes_out == b.stats.bytes_in > 0
        assert not a.stats.dropped and not b.stats.dropped
        await a.multicast(CODEC.encode("a", Nack(seq=1)))  # disabled: a no-op
        assert a.stats.datagrams_out == 1


async def test_two_daemons_cannot_share_a_unicast_port() -> None:
    async with running(unicast_only()) as (a, _):
        taken = NetConfig(bind_host="127.0.0.1", port=a.local_address.port, multicast_enabled=False)
        with pytest.raises(OSError):
            await open_udp_transport(taken)


async def open_multicast_pair() -> tuple[UdpTransport, UdpTransport]:
    """Two multicast transports on a random port, so concurrent test runs do not collide."""
    rng = random.Random()
    for _attempt in range(5):
        net = NetConfig(bind_host="127.0.0.1", port=0, multicast_enabled=True,
                        multicast_group="239.255.77.77", multicast_interface="127.0.0.1",
                        multicast_ttl=1, multicast_port=rng.randint(20000, 60000))
        opened: list[UdpTransport] = []
        try:
            opened.append(await open_udp_transport(net))
            opened.append(await open_udp_transport(net))
        except OSError:  # the random port is taken by a socket that does not share it
            for transport in opened:
                transport.close()
            continue
        return opened[0], opened[1]
    pytest.fail("no free multicast port found")


@asynccontextmanager
async def multicast_pair() -> AsyncIterator[tuple[Running, Running]]:
    first, second = await open_multicast_pair()
    async with running(first) as a, running(second) as b:
        yield a, b


@asynccontextmanager
async def idle_multicast_pair() -> AsyncIterator[tuple[UdpTransport, UdpTransport]]:
    """Like :func:`multicast_pair`, with nobody reading: tests call receive_ready."""
    first, second = await open_multicast_pair()
    try:
        yield first, second
    finally:
        first.close()
        second.close()


async def wait_both_sockets_readable(transport: UdpTransport) -> None:
    with trio.fail_after(WAIT_S):
        while len(select.select(transport._sockets, [], [], 0)[0]) < 2:
            await trio.sleep(0.005)  # poll


async def test_multicast_reaches_every_transport_from_the_unicast_address() -> None:
    async with multicast_pair() as ((a, a_inbox), (b, b_inbox)):
        await a.multicast(CODEC.encode("a", Nack(seq=3)))
        for inbox in (b_inbox, a_inbox):  # a hears itself too (IP_MULTICAST_LOOP)
            got = await next_received(inbox)
            assert got == Received(msg=Nack(seq=3), sender="a", source=a.local_address)
        assert a.stats.datagrams_out == 1


async def test_a_batch_holds_multicast_datagrams_before_unicast_ones() -> None:
    # A token (unicast) follows the messages its sender multicast just before it. Read
    # before them, it would make the receiver ask for their retransmission every time.
    async with idle_multicast_pair() as (a, b):
        await a.multicast(CODEC.encode("a", Nack(seq=1)))
        await a.send(b.local_address, CODEC.encode("a", Nack(seq=2)))
        await wait_both_sockets_readable(b)
        assert [r.msg for r in b.receive_ready(CODEC)] == [Nack(seq=1), Nack(seq=2)]


async def test_datagrams_from_ignored_sources_are_counted_and_not_decoded() -> None:
    # The daemon ignores its own multicast, which the kernel loops back to it.
    async with idle_multicast_pair() as (a, b):
        a.ignored_sources.add((a.local_address.host, a.local_address.port))
        await a.multicast(b"\x00not a datagram")  # decoded, it would count as malformed
        await b.send(a.local_address, CODEC.encode("b", Nack(seq=2)))
        await wait_both_sockets_readable(a)
        assert [(r.sender, r.msg) for r in a.receive_ready(CODEC)] == [("b", Nack(seq=2))]
        assert a.stats.datagrams_in == 2
        assert not a.stats.dropped  # a's own came back and was not decoded
        assert [r.msg for r in b.receive_ready(CODEC)] == []  # b decodes it: malformed
        assert b.stats.dropped == {"malformed": 1}


async def test_garbage_is_counted_and_the_transport_keeps_working() -> None:
    async with running(unicast_only()) as (b, b_inbox):
        with trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as raw:
            await raw.bind(("127.0.0.1", 0))
            dest = (b.local_address.host, b.local_address.port)
            await raw.sendto(b"\x00garbage", dest)
            await raw.sendto(CODEC.encode("x", Nack(seq=1))[:-1], dest)
            await raw.sendto(CODEC.encode("x", Nack(seq=2)), dest)
            got = await next_received(b_inbox)
        assert got.msg == Nack(seq=2)
        assert b.stats.dropped == {"malformed": 2}
        assert b.stats.datagrams_in == 3


async def test_wrong_cluster_and_oversized_datagrams_are_counted() -> None:
    async with running(unicast_only()) as (a, _), running(unicast_only()) as (b, _):
        await a.send(b.local_address, Codec("other-cluster").encode("a", Nack(seq=1)))
        await a.send(b.local_address, CODEC.encode("a", Nack(seq=1)) + bytes(65000))
        await wait_until(lambda: b.stats.datagrams_in == 2)
        assert b.stats.dropped == {"wrong_cluster": 1, "too_large": 1}


async def test_full_inbox_counts_drops() -> None:
    async with running(unicast_only(), inbox_len=1) as (b, b_inbox), running(unicast_only()) as (a, _):
        for seq in range(3):
            await a.send(b.local_address, CODEC.encode("a", Nack(seq=seq)))
        await wait_until(lambda: b.stats.datagrams_in == 3)
        assert b.stats.dropped == {"inbox_full": 2}
        assert (await next_received(b_inbox)).msg == Nack(seq=0)


async def test_send_errors_are_counted_not_raised() -> None:
    async with running(unicast_only()) as (a, _):
        await a.send(Address(host="127.0.0.1", port=9), bytes(70000))  # larger than UDP allows
        assert a.stats.dropped == {"send_error": 1}
        assert a.stats.datagrams_out == 0


async def test_close_ends_serve() -> None:
    transport = await open_udp_transport(unicast_only())
    send, _receive = trio.open_memory_channel[Received](1)
    with trio.fail_after(WAIT_S):
        async with trio.open_nursery() as nursery:
            await nursery.start(transport.serve, CODEC, send)
            transport.close()
    await transport.send(Address(host="127.0.0.1", port=9), b"x")
    assert transport.stats.dropped == {"send_error": 1}
