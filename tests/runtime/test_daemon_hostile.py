"""Hostile input at a real daemon: garbage and forged datagrams on its unicast and
multicast ports, malformed control-socket frames. The daemon keeps running, its view is
unharmed, and every drop is counted by reason."""

from __future__ import annotations

import os
import secrets
import socket
import struct
from pathlib import Path

import pytest

from helpers import DaemonProcess, ProcessRegistry, all_see, wait_until
from ringd.messages import Address, Alive, Dead, Gossip, Suspect
from ringd.wire import Codec, FrameReader, pack_frame

pytestmark = pytest.mark.integration

CONVERGE_S = 25.0
GARBAGE_COUNT = 20
MULTICAST_GROUP = "239.255.77.77"  # the default group; the port is the test's own


def _sender() -> socket.socket:
    """A loopback-only UDP socket (multicast pinned to lo, TTL 1)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton("127.0.0.1"))
    sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 1)
    return sock


def _garbage() -> list[bytes]:
    # Never starting with the magic "RG", so every one is 'malformed'.
    return [b"\x00" + os.urandom(secrets.randbelow(1400) + 1) for _ in range(GARBAGE_COUNT)]


def _dropped(node: DaemonProcess) -> dict[str, int]:
    return node.status()["transport"]["dropped"]


def _write_key(path: Path) -> bytes:
    key = secrets.token_bytes(32)
    path.write_text(key.hex() + "\n")
    path.chmod(0o600)
    return key


@pytest.mark.parametrize("mode", ["", "encrypt", "auth_only"], ids=["no-key", "encrypt", "auth-only"])
def test_garbage_and_forged_datagrams_are_counted_and_harmless(
        daemons: ProcessRegistry, short_tmp: Path, mode: str) -> None:
    args: list[str] = []
    key = None
    keyed = bool(mode)
    auth_only = mode == "auth_only"
    if keyed:
        key_path = short_tmp / "cluster.key"
        key = _write_key(key_path)
        args = ["--key-file", str(key_path), "--set", f"key_mode={mode}"]
    nodes = daemons.start_cluster(2, *args)
    target, other = nodes
    wait_until(lambda: all_see(nodes, {"node1": "alive", "node2": "alive"}), CONVERGE_S, "convergence")
    unicast_port = int(target.status()["bind"].rpartition(":")[2])
    other_inc = target.members()["node2"]["incarnation"]

    # Forged 'node2 is dead' / 'suspect' claims that a naive daemon would believe.
    dead = Dead(node="node2", incarnation=other_inc + 5, source="node1")
    suspect = Suspect(node="node2", incarnation=other_inc + 5, source="node1")
    forged: dict[str, list[bytes]] = {
        "wrong_cluster": [Codec("not-" + daemons.cluster_name, key=key).encode("node1", m)
                          for m in (dead, suspect)],
    }
    if keyed:
        good = Codec(daemons.cluster_name, key=key, auth_only=auth_only).encode("node1", dead)
        forged["auth_failed"] = [
            Codec(daemons.cluster_name).encode("node1", dead),  # not protected at all
            # protected the other way (encrypted vs authenticated only)
            Codec(daemons.cluster_name, key=key, auth_only=not auth_only).encode("node1", dead),
        ]
        forged["unknown_key"] = [Codec(daemons.cluster_name, key=secrets.token_bytes(32),
                                       auth_only=auth_only).encode("node1", dead)]
        forged["bad_tag"] = [good[:-1] + bytes([good[-1] ^ 1])]  # tampered tag or MAC

    before = _dropped(target)
    destinations = [("127.0.0.1", unicast_port), (MULTICAST_GROUP, daemons.multicast_port)]
    with _sender() as sock:
        for dest in destinations:
            for data in _garbage():
                sock.sendto(data, dest)
            for datagrams in forged.values():
                for data in datagrams:
                    sock.sendto(data, dest)

    expected = {"malformed": 2 * GARBAGE_COUNT} | {r: 2 * len(d) for r, d in forged.items()}

    def all_counted() -> bool:
        after = _dropped(target)
        return all(after.get(r, 0) - before.get(r, 0) >= n for r, n in expected.items())

    wait_until(all_counted, 15.0, f"drops {expected} to be counted (have {_dropped(target)})")
    assert target.running() and other.running()
    view = target.members()
    assert view["node2"]["incarnation"] < other_inc + 5  # the forged incarnation never landed
    assert view["node2"]["state"] in ("alive", "suspect")  # never dead; a slow probe may suspect it
    # (a loaded machine can delay a real probe answer: then node2 refutes and is alive again)
    wait_until(lambda: all_see(nodes, {"node1": "alive", "node2": "alive"}), CONVERGE_S, "both alive")


def _frame(obj: bytes) -> bytes:
    return struct.pack(">I", len(obj)) + obj


def _read_frames(sock: socket.socket) -> list[dict]:
    """Everything the daemon sends until it closes the connection (or 5 s pass)."""
    reader, frames = FrameReader(), []
    sock.settimeout(5.0)
    while True:
        try:
            data = sock.recv(65536)
        except TimeoutError:
            return frames
        if not data:
            return frames
        frames.extend(reader.feed(data))


def test_malformed_control_frames_get_an_error_and_are_counted(daemons: ProcessRegistry) -> None:
    node = daemons.daemon("node1").start()
    node.wait_ready()

    # Unknown op and a non-map request: an error reply each, the connection stays usable.
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.connect(str(node.socket))
        sock.sendall(pack_frame({"op": "frobnicate"}) + pack_frame([1, 2]) + pack_frame({"op": "status"}))
        reader = FrameReader()
        replies: list[dict] = []
        sock.settimeout(5.0)
        while len(replies) < 3:
            data = sock.recv(65536)
            assert data, "daemon closed a connection that sent well-formed frames"
            replies.extend(reader.feed(data))
    assert replies[0]["ok"] is False and "unknown op" in replies[0]["error"]
    assert replies[1]["ok"] is False
    assert replies[2]["ok"] is True and replies[2]["name"] == "node1"

    # Malformed CBOR: one error frame, then the daemon hangs up.
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.connect(str(node.socket))
        sock.sendall(_frame(b"\xff\xff\xff"))
        frames = _read_frames(sock)
    assert len(frames) == 1 and frames[0]["ok"] is False and "malformed" in frames[0]["error"]

    # An absurd length prefix: refused without waiting for 4 GiB.
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.connect(str(node.socket))
        sock.sendall(struct.pack(">I", 0xFFFFFFF0))
        frames = _read_frames(sock)
    assert len(frames) == 1 and frames[0]["ok"] is False

    status = node.status()
    errors = status["control"]["errors"]
    assert errors["unknown_op"] >= 1 and errors["bad_request"] >= 1 and errors["malformed"] >= 2
    assert node.running() and node.members()["node1"]["state"] == "alive"


@pytest.mark.parametrize("address", [
    Address(host="127.0.0.1", port=70000),  # sendto(): OverflowError, not OSError
    Address(host="127.0.0.1\x00", port=7946),  # sendto(): TypeError (NUL in the host)
    Address(host="ringd.invalid", port=7946),  # a name: a blocking DNS lookup per send
], ids=["port-out-of-range", "nul-in-host", "host-name"])
def test_forged_member_address_is_refused_at_decoding(daemons: ProcessRegistry,
                                                      address: Address) -> None:
    """A peer's claim that a member lives at an address no socket can send to is dropped
    as malformed by the decoder (found while writing the fuzz targets: the codec took any
    int port and any host, and the first probe of such a member ended the daemon)."""
    node = daemons.daemon("node1").start()
    node.wait_ready()
    port = int(node.status()["bind"].rpartition(":")[2])
    alive = Alive(node="evil", incarnation=1, address=address)
    data = Codec(daemons.cluster_name).encode("evil", Gossip(piggyback=(alive,)))
    before = _dropped(node).get("malformed", 0)
    with _sender() as sock:
        sock.sendto(data, ("127.0.0.1", port))
    wait_until(lambda: _dropped(node).get("malformed", 0) > before, 15.0, "the drop to be counted")
    assert node.running()
    assert "evil" not in node.members()
