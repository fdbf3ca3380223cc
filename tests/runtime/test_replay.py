"""Replay at a live encrypted cluster: every datagram the daemons exchange on loopback for a
minute is captured while clients send messages, one per call, each once the ring is idle
again after the one before, and one member restarts half-way (so the capture holds
gossip of an older incarnation, Totem tokens, joins and commit tokens of older rings, and
a whole earlier run of one sender). Sent back at the cluster, none of it has any effect:
the ring and every view stay as they were, nothing is delivered twice, and the daemons
count the copies as replayed.

The capture reads the loopback interface with an AF_PACKET socket (CAP_NET_RAW), keeping
only datagrams between this test's own daemons; everything is sent back on loopback."""

from __future__ import annotations

import socket
import struct
import threading
import time
from pathlib import Path

import pytest
from ordered_helpers import Subscriber, wait_ring, wait_subscribers

from helpers import DaemonProcess, ProcessRegistry, all_see, wait_until
from ringd import client
from ringd.client import BlockingRingClient

pytestmark = pytest.mark.integration

# Generous timings: a loaded 2-core machine must not suspect a member or reform the ring
# for its own reasons while we check that the replays do neither.
STEADY = ("--set", "totem.token_timeout_s=2.0", "--set", "totem.consensus_s=2.4",
          "--set", "gossip.probe_interval_s=1.0", "--set", "gossip.probe_timeout_s=0.5",
          "--set", "gossip.suspicion_mult=4")
MULTICAST_GROUP = "239.255.77.77"  # the default group; the port is the test's own
ETH_P_ALL = 0x0003
PACKET_OUTGOING = 4  # <linux/if_packet.h>: our own transmission, seen again on lo
CAPTURE_RCVBUF_BYTES = 16 << 20
DELIVERY_TIMEOUT_S = 60.0
# Replays go out in bursts this long; before the next burst the daemons must have counted
# most of the previous ones, so their socket buffers take them all.
REPLAY_BURST = 100
# The capture: a minute of traffic, two halves of steady sends with node3's restart between.
CAPTURE_S = 60.0


def unicast_port(node: DaemonProcess) -> int:
    return int(node.status()["bind"].rpartition(":")[2])


class LoopbackCapture(threading.Thread):
    """Every UDP datagram on lo from one of ``sources`` (ports) to one of ``ports``."""

    def __init__(self, sources: set[int], ports: set[int]) -> None:
        super().__init__(daemon=True)
        try:
            self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
        except PermissionError:
            pytest.skip("capturing loopback traffic needs CAP_NET_RAW")
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, CAPTURE_RCVBUF_BYTES)
        self.sock.bind(("lo", 0))
        self.sock.settimeout(0.1)
        self.sources, self.ports = sources, ports  # the test adds a restarted daemon's port
        self.datagrams: list[tuple[str, int, bytes]] = []  # (destination host, port, payload)
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            try:
                frame, address = self.sock.recvfrom(1 << 17)
            except TimeoutError:
                continue
            if address[2] == PACKET_OUTGOING or frame[12:14] != b"\x08\x00":
                continue  # the second copy of a loopback packet, or not IPv4
            ip = frame[14:]
            if ip[9] != socket.IPPROTO_UDP:
                continue
            udp = ip[(ip[0] & 0x0F) * 4:]
            source, dest, length = struct.unpack_from(">HHH", udp)
            if source in self.sources and dest in self.ports:
                self.datagrams.append((socket.inet_ntoa(ip[16:20]), dest, bytes(udp[8:length])))

    def finish(self) -> list[tuple[str, int, bytes]]:
        self._halt.set()
        self.join(timeout=5)
        self.sock.close()
        return self.datagrams


def dropped_replayed(nodes: list[DaemonProcess]) -> int:
    return sum(n.status()["transport"]["dropped"].get("replayed", 0) for n in nodes)


def token_holds(nodes: list[DaemonProcess]) -> int:
    return sum(n.status()["totem"]["stats"]["token_held"] for n in nodes)


def send_until(nodes: list[DaemonProcess], node: DaemonProcess, prefix: str, until: float) -> list[str]:
    """Messages ``prefix-i`` to "chat" from ``node``, one per call, until ``until``
    (monotonic). Each goes out once the ring is idle again after the one before (a member
    held the token), so the traffic is steady and paced by the ring itself: every message
    makes its own multicast and its own token rotations."""
    sent: list[str] = []
    with BlockingRingClient(str(node.socket)) as ring:
        while time.monotonic() < until:
            held = token_holds(nodes)
            sent.append(f"{prefix}-{len(sent)}")
            ring.send("chat", sent[-1])
            wait_until(lambda held=held: token_holds(nodes) > held, 10, "the token held again after a send")
    return sent


def views(nodes: list[DaemonProcess]) -> list[dict[str, tuple[str, int]]]:
    return [{name: (m["state"], m["incarnation"]) for name, m in n.members().items()} for n in nodes]


def test_replayed_traffic_changes_nothing(daemons: ProcessRegistry, short_tmp: Path) -> None:
    key_path = short_tmp / "cluster.key"
    assert daemons.run_cli("keys", "generate", str(key_path)).returncode == 0
    nodes = daemons.start_cluster(3, "--key-file", str(key_path), "--tag", "secret=TAGMARK42", *STEADY,
                                  fast=False)
    wait_ring(nodes)
    subs = [Subscriber(daemons, d, "chat") for d in nodes]
    wait_subscribers(subs, 3)
    ports = {unicast_port(n) for n in nodes}
    capture = LoopbackCapture(set(ports), ports | {daemons.multicast_port})
    capture.start()

    assert daemons.run_cli("event", "EVENTMARK42", "PAYLOADMARK42",
                           "--socket", str(nodes[0].socket)).returncode == 0
    started = time.monotonic()
    first = send_until(nodes, nodes[0], "node1", started + CAPTURE_S / 2)
    # node3 restarts: a new incarnation, a new run of its sender, a new ring.
    nodes[2].terminate()
    assert nodes[2].wait_exit() == 0
    nodes[2].start()
    nodes[2].wait_ready()
    new_port = unicast_port(nodes[2])
    capture.sources.add(new_port)
    capture.ports.add(new_port)
    wait_ring(nodes)
    subs[2] = Subscriber(daemons, nodes[2], "chat", tag="-after")
    wait_subscribers(subs, 3)
    # The second half fills the minute, whatever the restart took.
    second = send_until(nodes, nodes[1], "node2", started + CAPTURE_S)
    wait_until(lambda: len(subs[0].messages()) >= len(first) + len(second)
               and len(subs[1].messages()) >= len(first) + len(second)
               and len(subs[2].messages()) >= len(second), DELIVERY_TIMEOUT_S, "every message delivered")
    wait_until(lambda: all_see(nodes, {n.name: "alive" for n in nodes}), 30, "all alive")
    captured_s = time.monotonic() - started
    assert captured_s >= CAPTURE_S
    datagrams = capture.finish()
    multicast = sum(1 for _, port, _ in datagrams if port == daemons.multicast_port)
    # The capture holds real traffic of both kinds: each message went out on an idle ring,
    # in a multicast of its own.
    assert multicast >= len(first) + len(second) and len(datagrams) - multicast > 1000, (
        len(datagrams), multicast)
    wire = b"".join(d for _, _, d in datagrams)
    for marker in (b"node1-1", b"TAGMARK42", b"EVENTMARK42", b"PAYLOADMARK42"):
        assert marker not in wire, f"{marker!r} readable on the wire"
    # ... though they did cross it: the others know node1's tag and got its event.
    assert nodes[1].members()["node1"]["tags"] == {"secret": "TAGMARK42"}
    wait_until(lambda: any(e["name"] == "EVENTMARK42" for e in client.events(nodes[1].socket)),
               10, "the user event at node2")

    rings = [n.status()["totem"]["ring"] for n in nodes]
    before_views = views(nodes)
    before_events = [len(s.events()) for s in subs]
    before_replayed = dropped_replayed(nodes)
    live = {unicast_port(n) for n in nodes}
    expected = 0
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton("127.0.0.1"))
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 1)
        for _ in range(2):
            for i, (_host, port, data) in enumerate(datagrams):
                if i and i % REPLAY_BURST == 0:
                    wait_until(lambda sent=expected: dropped_replayed(nodes) - before_replayed
                               >= 0.95 * sent, 30, "a burst of replays to be counted")
                if port == daemons.multicast_port:
                    sock.sendto(data, (MULTICAST_GROUP, port))
                    expected += len(nodes)
                elif port in live:  # not node3's port of its first run
                    sock.sendto(data, ("127.0.0.1", port))
                    expected += 1

    # Counted (a few may be lost in full socket buffers, which is no effect either).
    wait_until(lambda: dropped_replayed(nodes) - before_replayed >= 0.95 * expected, 60,
               f"{expected} replays to be counted")
    # A few token rotations later, still nothing has changed.
    visits = [n.status()["totem"]["stats"]["token_rx"] for n in nodes]
    wait_until(lambda: all(n.status()["totem"]["stats"]["token_rx"] >= v + 5 for n, v in zip(nodes, visits, strict=True)),
               30, "a few more token rotations")
    assert [n.status()["totem"]["ring"] for n in nodes] == rings, "the ring reconfigured"
    assert views(nodes) == before_views, "a membership view changed"
    assert [len(s.events()) for s in subs] == before_events, "something was delivered again"
    for s in subs[:2]:
        assert s.data() == first + second
    assert subs[2].data() == second
    for n in nodes:
        dropped = n.status()["transport"]["dropped"]
        assert dropped.get("bad_tag", 0) == 0 and dropped.get("unknown_key", 0) == 0, dropped
    print(f"captured {captured_s:.0f} s: {len(datagrams)} datagrams ({multicast} multicast), replayed {expected} "
          f"deliveries of them, {dropped_replayed(nodes) - before_replayed} counted as replayed")
