"""Trio UDP transport: one unicast socket, plus one multicast socket when enabled.

Unicast: bound to ``(net.bind_host, net.port)`` without SO_REUSEPORT, so two daemons can
never share a unicast port. Multicast is *sent* from the unicast socket (receivers see
our unicast address as the source, so they can answer us directly) with
IP_MULTICAST_IF / IP_MULTICAST_TTL from the config and IP_MULTICAST_LOOP on (several
daemons on one host must hear each other; the driver drops its own datagrams).
Multicast is *received* on a second socket bound to ``(group, multicast_port)`` with
SO_REUSEADDR + SO_REUSEPORT, so every daemon of a host can share that port, and joined
to the group on ``net.multicast_interface``.

The receive loops follow trio's ``dtls_receive_loop``: receive, decode with
``Codec.decode_untrusted``, hand on with ``send_nowait`` into the bounded inbox, and
count (never raise) whatever is dropped. IPv4 only.
"""

from __future__ import annotations

import collections
import errno
import socket
import struct
import sys
from dataclasses import dataclass, field

import trio

from ringd.config import NetConfig
from ringd.core.events import Received
from ringd.messages import Address
from ringd.wire import Codec, WireError

RECV_BYTES_MAX = 65536  # above the largest UDP payload, so oversized datagrams are seen whole
RCVBUF_BYTES = 4 << 20
SNDBUF_BYTES = 1 << 20
# Linux only (value from <linux/in.h>; Python 3.11 lacks the constant): deliver to the
# multicast socket only the groups it joined itself, not every group the host joined.
IP_MULTICAST_ALL: int | None = getattr(socket, "IP_MULTICAST_ALL",
                                       49 if sys.platform.startswith("linux") else None)


@dataclass(slots=True)
class TransportStats:
    """Counters of one transport; ``dropped`` keys are DropReason values,
    "inbox_full" and "send_error"."""

    datagrams_in: int = 0
    datagrams_out: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    dropped: collections.Counter[str] = field(default_factory=collections.Counter)


class UdpTransport:
    """Bound UDP sockets of one daemon. Create with :func:`open_udp_transport`."""

    def __init__(self, net: NetConfig, unicast: trio.socket.SocketType,
                 multicast: trio.socket.SocketType | None) -> None:
        self._net = net
        self._unicast = unicast
        self._multicast = multicast
        self._group = (net.multicast_group, net.multicast_port)
        host, port = unicast.getsockname()[:2]
        self.local_address = Address(host=host, port=port)
        self.stats = TransportStats()

    @property
    def multicast_enabled(self) -> bool:
        return self._multicast is not None

    async def send(self, dest: Address, data: bytes) -> None:
        """Unicast ``data`` to ``dest``; network errors are counted as "send_error"."""
        await self._send_to((dest.host, dest.port), data)

    async def multicast(self, data: bytes) -> None:
        """Send ``data`` to the multicast group (from the unicast socket); no-op if disabled."""
        if self._multicast is not None:
            await self._send_to(self._group, data)

    async def _send_to(self, dest: tuple[str, int], data: bytes) -> None:
        try:
            await self._unicast.sendto(data, dest)
        except (OSError, trio.ClosedResourceError):
            # unreachable peers, full buffers, oversized datagrams, shutdown: the protocols
            # above tolerate loss, so a failed send is a lost datagram, not a crash
            self.stats.dropped["send_error"] += 1
            return
        self.stats.datagrams_out += 1
        self.stats.bytes_out += len(data)

    async def serve(self, codec: Codec, inbox: trio.MemorySendChannel[Received], *,
                    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Receive on every socket until closed or cancelled, feeding ``inbox``."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._receive_loop, self._unicast, codec, inbox)
            if self._multicast is not None:
                nursery.start_soon(self._receive_loop, self._multicast, codec, inbox)
            task_status.started()

    async def _receive_loop(self, sock: trio.socket.SocketType, codec: Codec,
                            inbox: trio.MemorySendChannel[Received]) -> None:
        stats = self.stats
        while True:
            try:
                data, source = await sock.recvfrom(RECV_BYTES_MAX)
            except trio.ClosedResourceError:
                return
            except OSError as exc:
                if exc.errno == errno.EBADF:
                    return
                # e.g. ECONNREFUSED from an ICMP port-unreachable for an earlier send
                continue
            stats.datagrams_in += 1
            stats.bytes_in += len(data)
            try:
                sender, msg = codec.decode_untrusted(data)
            except WireError as exc:
                stats.dropped[exc.reason.value] += 1
                continue
            received = Received(msg=msg, sender=sender, source=Address(host=source[0], port=source[1]))
            try:
                inbox.send_nowait(received)
            except trio.WouldBlock:
                stats.dropped["inbox_full"] += 1
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return  # nobody reads any more: the daemon is shutting down

    def close(self) -> None:
        """Close the sockets; receive loops blocked on them end."""
        self._unicast.close()
        if self._multicast is not None:
            self._multicast.close()


def _set_buffer(sock: trio.socket.SocketType, option: int, size: int) -> None:
    try:
        sock.setsockopt(socket.SOL_SOCKET, option, size)
    except OSError:
        pass  # the kernel caps it (net.core.rmem_max); the default still works, less burst-proof


async def open_udp_transport(net: NetConfig) -> UdpTransport:
    """Bind the unicast socket (and join the multicast group when enabled).

    Raises OSError (e.g. EADDRINUSE) when a socket cannot be set up.
    """
    unicast = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    multicast: trio.socket.SocketType | None = None
    try:
        _set_buffer(unicast, socket.SO_RCVBUF, RCVBUF_BYTES)
        _set_buffer(unicast, socket.SO_SNDBUF, SNDBUF_BYTES)
        await unicast.bind((net.bind_host, net.port))
        if net.multicast_enabled:
            interface = socket.inet_aton(net.multicast_interface)
            unicast.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, interface)
            unicast.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, net.multicast_ttl)
            unicast.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 1)

            multicast = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            multicast.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            multicast.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            _set_buffer(multicast, socket.SO_RCVBUF, RCVBUF_BYTES)
            if IP_MULTICAST_ALL is not None:
                multicast.setsockopt(socket.IPPROTO_IP, IP_MULTICAST_ALL, 0)
            await multicast.bind((net.multicast_group, net.multicast_port))
            membership = struct.pack("4s4s", socket.inet_aton(net.multicast_group), interface)
            multicast.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, membership)
    except BaseException:
        unicast.close()
        if multicast is not None:
            multicast.close()
        raise
    return UdpTransport(net, unicast, multicast)
