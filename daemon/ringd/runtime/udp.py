"""Trio UDP transport: one unicast socket, plus one multicast socket when enabled.

Unicast: bound to ``(net.bind_host, net.port)`` without SO_REUSEPORT, so two daemons can
never share a unicast port. Multicast is *sent* from the unicast socket (receivers see
our unicast address as the source, so they can answer us directly) with
IP_MULTICAST_IF / IP_MULTICAST_TTL from the config and IP_MULTICAST_LOOP on (several
daemons on one host must hear each other; the driver drops its own datagrams).
Multicast is *received* on a second socket bound to ``(group, multicast_port)`` with
SO_REUSEADDR + SO_REUSEPORT, so every daemon of a host can share that port, and joined
to the group on ``net.multicast_interface``.

Receiving decodes with ``Codec.decode_untrusted`` and counts (never raises) whatever is
dropped. IPv4 only.

Why the sockets are driven by hand: every datagram on the token's path costs a hop, and a
trio socket call costs a trip through the scheduler even when it succeeds at once (plus an
address resolution per ``sendto``). So a send first tries the plain non-blocking socket and
only waits in trio when the kernel buffer is full. The daemon's driver reads the sockets
itself (:meth:`UdpTransport.receive_ready`) after waiting on one epoll fd that covers both
(:meth:`UdpTransport.wait_readable`): a datagram wakes the task that handles it, not a
receive task that queues it for another task.
"""

from __future__ import annotations

import collections
import errno
import select
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
# Datagrams read from one socket per receive_ready call: the driver handles them and
# other tasks get a turn before the next batch.
RECV_BATCH_MAX = 32
SOURCE_ADDRESSES_CACHED = 1024
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

    def __init__(self, net: NetConfig, unicast: socket.socket,
                 multicast: socket.socket | None) -> None:
        self._net = net
        # The plain sockets do the work; their trio wrappers only wait (and close them).
        self._unicast_raw = unicast
        self._unicast = trio.socket.from_stdlib_socket(unicast)
        self._multicast_raw = multicast
        self._multicast = None if multicast is None else trio.socket.from_stdlib_socket(multicast)
        # Source (host, port) -> Address: the same few peers send every datagram.
        self._addresses: dict[tuple[str, int], Address] = {}
        # Multicast first: a token arrives by unicast right after the messages its sender
        # multicast before forwarding it, and a token handled before them makes us ask for
        # their retransmission (corosync likewise drains multicast before a token).
        self._sockets = [unicast] if multicast is None else [multicast, unicast]
        # One fd that is readable while any socket is: a single task can wait for both.
        self._poller = select.epoll()
        for sock in self._sockets:
            self._poller.register(sock.fileno(), select.EPOLLIN)
        self._socket_fds = [(sock.fileno(), sock) for sock in self._sockets]
        self._socket_of = dict(self._socket_fds)
        self._group = (net.multicast_group, net.multicast_port)
        host, port = unicast.getsockname()[:2]
        self.local_address = Address(host=host, port=port)
        self.stats = TransportStats()
        # Sources whose datagrams are counted and dropped unread: the daemon's own multicast,
        # looped back by the kernel. Decoding a full datagram only to discard it is a
        # sender's biggest receive cost under load.
        self.ignored_sources: set[tuple[str, int]] = set()

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
            try:
                self._unicast_raw.sendto(data, dest)
            except BlockingIOError:
                await self._unicast.sendto(data, dest)  # buffer full: wait for room
        except (OSError, trio.ClosedResourceError):
            # unreachable peers, full buffers, oversized datagrams, shutdown: the protocols
            # above tolerate loss, so a failed send is a lost datagram, not a crash
            self.stats.dropped["send_error"] += 1
            return
        self.stats.datagrams_out += 1
        self.stats.bytes_out += len(data)

    def watch(self, fd: int) -> None:
        """Also end :meth:`wait_readable` while ``fd`` is readable (e.g. a wake-up eventfd)."""
        self._poller.register(fd, select.EPOLLIN)

    async def wait_readable(self) -> None:
        """Return once a datagram waits on any of our sockets (at once if one already does)."""
        await trio.lowlevel.wait_readable(self._poller.fileno())

    def receive_ready(self, codec: Codec, limit: int = RECV_BATCH_MAX) -> list[Received]:
        """Read and decode, without blocking, up to ``limit`` waiting datagrams per socket.

        Undecodable datagrams are counted in ``stats.dropped`` and left out; those from
        :attr:`ignored_sources` are counted and left out unread."""
        # One epoll_wait says which sockets have data: cheaper than a failing read on each.
        ready = self._poller.poll(0)
        if not ready:
            return []
        if len(ready) == 1:  # the usual case: no set to build
            sock = self._socket_of.get(ready[0][0])
            if sock is None:
                return []  # only the watched wake-up fd
            order: list[socket.socket] = [sock]
        else:
            readable = {fd for fd, _ in ready}
            order = [sock for fd, sock in self._socket_fds if fd in readable]
        stats = self.stats
        addresses = self._addresses
        ignored = self.ignored_sources
        out: list[Received] = []
        for sock in order:
            for _ in range(limit):
                try:
                    data, source = sock.recvfrom(RECV_BYTES_MAX)
                except BlockingIOError:
                    break
                except OSError as exc:
                    if exc.errno == errno.EBADF:
                        break  # closed under us: the daemon is shutting down
                    # e.g. ECONNREFUSED from an ICMP port-unreachable for an earlier send
                    continue
                stats.datagrams_in += 1
                stats.bytes_in += len(data)
                if source in ignored:
                    continue
                try:
                    sender, msg = codec.decode_untrusted(data)
                except WireError as exc:
                    stats.dropped[exc.reason.value] += 1
                    continue
                address = addresses.get(source)
                if address is None:
                    if len(addresses) >= SOURCE_ADDRESSES_CACHED:
                        addresses.clear()  # a flood of forged sources: start over
                    address = addresses[source] = Address(host=source[0], port=source[1])
                out.append(Received(msg=msg, sender=sender, source=address))
        return out

    async def serve(self, codec: Codec, inbox: trio.MemorySendChannel[Received], *,
                    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Receive on every socket until closed or cancelled, feeding ``inbox`` (for users
        without their own loop; the daemon's driver calls :meth:`receive_ready` itself)."""
        task_status.started()
        while True:
            try:
                await self.wait_readable()
            except trio.ClosedResourceError:
                return
            for received in self.receive_ready(codec):
                try:
                    inbox.send_nowait(received)
                except trio.WouldBlock:
                    self.stats.dropped["inbox_full"] += 1
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    return  # nobody reads any more
            await trio.lowlevel.checkpoint()  # under a flood, let the reader of the inbox run

    def close(self) -> None:
        """Close the sockets; whoever waits in :meth:`wait_readable` gets ClosedResourceError."""
        if self._poller.closed:
            return
        trio.lowlevel.notify_closing(self._poller.fileno())
        self._poller.close()
        self._unicast.close()
        if self._multicast is not None:
            self._multicast.close()


def advertised_host(net: NetConfig, seeds: list[Address]) -> str:
    """The address peers should use to reach us: ``advertise_host``, else ``bind_host``;
    for a wildcard bind (the ``lan`` preset binds 0.0.0.0) the address this host sends
    from towards the multicast group (or the first seed).

    Peers unicast the token and gossip to what we advertise, and 0.0.0.0 would mean their
    own host. The kernel's route lookup answers: ``connect`` on a UDP socket sends nothing.
    Raises OSError when there is no route (the caller asks for ``advertise_host``).
    """
    host = net.advertise_host or net.bind_host
    if host != "0.0.0.0":
        return host
    if net.multicast_enabled and net.multicast_interface != "0.0.0.0":
        return net.multicast_interface  # the interface that sends our multicast
    if net.multicast_enabled:
        target = (net.multicast_group, net.multicast_port)
    elif seeds:
        target = (seeds[0].host, seeds[0].port)
    else:
        raise OSError("no multicast group and no seed to route towards")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.connect(target)
        return str(probe.getsockname()[0])


def _set_buffer(sock: socket.socket, option: int, size: int) -> None:
    try:
        sock.setsockopt(socket.SOL_SOCKET, option, size)
    except OSError:
        pass  # the kernel caps it (net.core.rmem_max); the default still works, less burst-proof


async def open_udp_transport(net: NetConfig) -> UdpTransport:
    """Bind the unicast socket (and join the multicast group when enabled).

    Raises OSError (e.g. EADDRINUSE) when a socket cannot be set up.
    """
    unicast = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    unicast.setblocking(False)
    multicast: socket.socket | None = None
    try:
        _set_buffer(unicast, socket.SO_RCVBUF, RCVBUF_BYTES)
        _set_buffer(unicast, socket.SO_SNDBUF, SNDBUF_BYTES)
        unicast.bind((net.bind_host, net.port))
        if net.multicast_enabled:
            interface = socket.inet_aton(net.multicast_interface)
            unicast.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, interface)
            unicast.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, net.multicast_ttl)
            unicast.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 1)

            multicast = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            multicast.setblocking(False)
            multicast.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            multicast.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            _set_buffer(multicast, socket.SO_RCVBUF, RCVBUF_BYTES)
            if IP_MULTICAST_ALL is not None:
                multicast.setsockopt(socket.IPPROTO_IP, IP_MULTICAST_ALL, 0)
            multicast.bind((net.multicast_group, net.multicast_port))
            membership = struct.pack("4s4s", socket.inet_aton(net.multicast_group), interface)
            multicast.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, membership)
    except BaseException:
        unicast.close()
        if multicast is not None:
            multicast.close()
        raise
    return UdpTransport(net, unicast, multicast)
