"""The ``lan`` preset on a real (virtual) LAN: three daemons, each in a network namespace of
its own with one Ethernet interface on a bridge (198.18.0.0/24, addresses that exist only
inside the namespaces this test creates), bound to 0.0.0.0 as on a real host. They must find
each other by multicast, advertise their LAN address (not 0.0.0.0), form one ring and
deliver in order. The host's own interfaces are never touched; the namespaces and daemons
are removed even when the test fails.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator

import pytest
from ordered_helpers import wait_ring

from helpers import DaemonProcess, ProcessRegistry, wait_until
from ringd.client import BlockingRingClient, MessageEvent

SUBNET = "198.18.0"
NODES = 3
IP_TIMEOUT_S = 10
LAN_RING_TIMEOUT_S = 60.0  # lan timings are slower than local ones (1 s token timeout)


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=IP_TIMEOUT_S)


@pytest.fixture
def lan_namespaces() -> Iterator[list[str]]:
    """Namespaces ``<prefix>n1..n3`` on a bridge in ``<prefix>b``; deleted at teardown."""
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("needs root and iproute2 to create network namespaces")
    prefix = f"rgd{os.getpid() % 100000}"
    bridge = f"{prefix}b"
    nodes = [f"{prefix}n{k}" for k in range(1, NODES + 1)]
    created: list[str] = []
    try:
        _ip("netns", "add", bridge)
        created.append(bridge)
        _ip("-n", bridge, "link", "set", "lo", "up")
        # Snooping off: no querier here, and the group must reach every port.
        _ip("-n", bridge, "link", "add", "br0", "type", "bridge", "mcast_snooping", "0")
        _ip("-n", bridge, "link", "set", "br0", "up")
        for k, ns in enumerate(nodes, start=1):
            _ip("netns", "add", ns)
            created.append(ns)
            _ip("-n", ns, "link", "set", "lo", "up")
            _ip("-n", bridge, "link", "add", f"v{k}", "type", "veth", "peer", "name", "eth0", "netns", ns)
            _ip("-n", bridge, "link", "set", f"v{k}", "master", "br0", "up")
            _ip("-n", ns, "addr", "add", f"{SUBNET}.{k}/24", "dev", "eth0")
            _ip("-n", ns, "link", "set", "eth0", "up")
            _ip("-n", ns, "route", "add", "224.0.0.0/4", "dev", "eth0")  # inside the namespace only
        yield nodes
    finally:
        for ns in reversed(created):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=IP_TIMEOUT_S)


class NamespacedDaemon(DaemonProcess):
    """A daemon started inside a network namespace (``ip netns exec`` keeps the PID)."""

    def __init__(self, namespace: str, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.namespace = namespace

    def command(self) -> list[str]:
        return ["ip", "netns", "exec", self.namespace, *super().command()]


def test_lan_preset_forms_a_ring_over_multicast_between_namespaces(
        daemons: ProcessRegistry, lan_namespaces: list[str]) -> None:
    nodes: list[DaemonProcess] = []
    for k, ns in enumerate(lan_namespaces, start=1):
        d = NamespacedDaemon(ns, f"lan{k}", daemons.workdir, daemons.cluster_name,
                             daemons.multicast_port, ["--preset", "lan"])
        daemons.daemons.append(d)
        nodes.append(d.start())
    for d in nodes:
        d.wait_ready()
    names = [d.name for d in nodes]
    wait_ring(nodes, names, timeout_s=LAN_RING_TIMEOUT_S)

    # Everyone is known by its LAN address (bound to 0.0.0.0), found without seeds.
    members = nodes[0].members()
    assert {name: members[name]["address"].rsplit(":", 1)[0] for name in names} == {
        f"lan{k}": f"{SUBNET}.{k}" for k in range(1, NODES + 1)}

    with BlockingRingClient(nodes[2].socket, timeout_s=20) as sub:
        sub.join("lan")
        with BlockingRingClient(nodes[0].socket, timeout_s=20) as sender:
            sender.send("lan", [f"m{i}".encode() for i in range(20)], safe=True)

        def delivered() -> list[bytes] | None:
            got = [e.data for e in sub.events(timeout=0.5) if isinstance(e, MessageEvent)]
            seen.extend(got)
            return seen if len(seen) >= 20 else None

        seen: list[bytes] = []
        wait_until(delivered, 30.0, "20 messages delivered over the LAN")
    assert seen == [f"m{i}".encode() for i in range(20)]
