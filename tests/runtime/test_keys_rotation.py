"""Online key rotation on a live loopback cluster, run as an operator would: `ringd keys
generate / install / list / use / remove` while a client sends a steady stream of
messages. Nothing is lost or delivered twice, the ring never reconfigures, no datagram
is refused for its key, and a restarted daemon comes back with the rotated keyring."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest
from ordered_helpers import Subscriber, wait_ring, wait_subscribers

from helpers import DaemonProcess, ProcessRegistry, wait_until
from ringd.client import BlockingRingClient

pytestmark = pytest.mark.integration

# Generous Totem timings: a loaded 2-core machine must not reform the ring for its own
# reasons while we check that the rotation does not.
STEADY = ("--set", "totem.token_timeout_s=2.0", "--set", "totem.consensus_s=2.4")
SEND_RATE_PER_S = 200
DELIVERY_TIMEOUT_S = 60.0


class SteadySender(threading.Thread):
    """Sends numbered messages to ``group`` at a steady rate until stopped."""

    def __init__(self, daemon: DaemonProcess, group: str) -> None:
        super().__init__(daemon=True)
        self.socket = daemon.socket
        self.group = group
        self.sent: list[str] = []
        self.error: BaseException | None = None
        self._halt = threading.Event()

    def run(self) -> None:
        try:
            with BlockingRingClient(self.socket, timeout_s=30.0) as ring:
                start = time.monotonic()
                while not self._halt.is_set():
                    data = f"m-{len(self.sent)}"
                    ring.send(self.group, data)
                    self.sent.append(data)
                    pause = start + len(self.sent) / SEND_RATE_PER_S - time.monotonic()
                    if pause > 0:
                        self._halt.wait(pause)  # pacing, not waiting for a condition
        except BaseException as exc:  # reported by the test
            self.error = exc

    def finish(self) -> list[str]:
        self._halt.set()
        self.join(timeout=30)
        assert self.error is None, f"sender failed: {self.error}"
        return self.sent


def cli_ok(daemons: ProcessRegistry, *args: str) -> str:
    result = daemons.run_cli(*args)
    assert result.returncode == 0, f"ringd {' '.join(args)}: {result.stderr}"
    return result.stdout


def keys_list(daemons: ProcessRegistry, node: DaemonProcess) -> dict[str, dict]:
    out = json.loads(cli_ok(daemons, "keys", "list", "--json", "--socket", str(node.socket)))
    assert out["missing"] == {}
    return out["members"]


def test_rotation_under_load_loses_nothing_and_causes_no_reconfiguration(
        daemons: ProcessRegistry, short_tmp: Path) -> None:
    old_path, new_path = short_tmp / "old.key", short_tmp / "new.key"
    old = cli_ok(daemons, "keys", "generate", str(old_path)).strip()
    new = cli_ok(daemons, "keys", "generate", str(new_path)).strip()
    assert len(old) == 8 and old != new and old_path.stat().st_mode & 0o777 == 0o600
    nodes = daemons.start_cluster(3, "--key-file", str(old_path), *STEADY)
    wait_ring(nodes)
    subs = [Subscriber(daemons, d, "load") for d in nodes]
    wait_subscribers(subs, 3)
    rings = [d.status()["totem"]["ring"] for d in nodes]
    configs = [len(s.configs()) for s in subs]
    assert all(m == {"primary": old, "keys": [old], "error": ""} for m in keys_list(daemons, nodes[0]).values())

    # (A daemon may drop a datagram or two as `replayed` while the cluster forms: one that
    # arrives reordered behind the first it gets of a sender's run. Hence deltas below.)
    dropped_before = [d.status()["transport"]["dropped"] for d in nodes]
    sender = SteadySender(nodes[1], "load")
    sender.start()
    wait_until(lambda: len(sender.sent) >= SEND_RATE_PER_S // 2, 10, "the load to start")
    via = ("--socket", str(nodes[2].socket))
    assert f"install {new}: applied by 3 member(s)" in cli_ok(daemons, "keys", "install", str(new_path), *via)
    listed = keys_list(daemons, nodes[0])
    assert all(m["primary"] == old and m["keys"] == sorted([old, new]) for m in listed.values()), (old, new, listed)
    refused = daemons.run_cli("keys", "remove", old, *via)  # the primary key
    assert refused.returncode != 0 and "node1 (key" in refused.stderr and "primary key" in refused.stderr
    assert f"use {new}: applied by 3 member(s)" in cli_ok(daemons, "keys", "use", new, *via)
    assert f"remove {old}: applied by 3 member(s)" in cli_ok(daemons, "keys", "remove", old, *via)
    listed = keys_list(daemons, nodes[1])
    assert all(m["primary"] == new and m["keys"] == [new] for m in listed.values()), listed
    mark = len(sender.sent)
    wait_until(lambda: len(sender.sent) >= mark + 100, 10, "more load under the new key alone")
    sent = sender.finish()

    wait_until(lambda: all(len(s.messages()) >= len(sent) for s in subs), DELIVERY_TIMEOUT_S,
               f"{len(sent)} messages at every subscriber")
    for s in subs:
        assert s.data() == sent, f"{s.daemon.name} lost, duplicated or reordered messages"
    assert [len(s.configs()) for s in subs] == configs, "a subscriber saw a reconfiguration"
    assert [d.status()["totem"]["ring"] for d in nodes] == rings
    for d, before in zip(nodes, dropped_before, strict=True):
        dropped = d.status()["transport"]["dropped"]
        for reason in ("unknown_key", "bad_tag", "replayed", "auth_failed"):
            assert dropped.get(reason, 0) == before.get(reason, 0), (d.name, before, dropped)

    # A restarted daemon keeps the rotated keyring (its key_file still names the old key).
    nodes[0].terminate()
    nodes[0].wait_exit()
    nodes[0].start()
    nodes[0].wait_ready()
    wait_ring(nodes)
    assert "is not in the keyring" in nodes[0].log()
    assert keys_list(daemons, nodes[0])["node1"] == {"primary": new, "keys": [new], "error": ""}


def test_keys_without_a_key_and_unknown_key_ids_are_one_line_errors(
        daemons: ProcessRegistry, short_tmp: Path) -> None:
    plain = daemons.daemon("node1").start()
    plain.wait_ready()
    result = daemons.run_cli("keys", "list", "--socket", str(plain.socket))
    assert result.returncode != 0 and "runs without a key" in result.stderr
    key_path = short_tmp / "k.key"
    cli_ok(daemons, "keys", "generate", str(key_path))
    again = daemons.run_cli("keys", "generate", str(key_path))
    assert again.returncode != 0 and "already exists" in again.stderr
    keyed = daemons.daemon("node2", "--key-file", str(key_path), cluster_name="other").start()
    keyed.wait_ready()
    wait_until(lambda: keyed.status()["totem"]["state"] == "operational", 30, "a ring of one")
    result = daemons.run_cli("keys", "use", "0badc0de", "--socket", str(keyed.socket))
    assert result.returncode != 0 and "not installed on" in result.stderr and "node2" in result.stderr


def test_a_gossip_only_observer_rotates_with_the_ring(
        daemons: ProcessRegistry, short_tmp: Path) -> None:
    """A daemon beyond totem.ring_size_max is not in the ring, so keyring ops go to it
    straight; after the rotation its gossip still reaches the members (under the new key)."""
    old_path, new_path = short_tmp / "old.key", short_tmp / "new.key"
    old = cli_ok(daemons, "keys", "generate", str(old_path)).strip()
    new = cli_ok(daemons, "keys", "generate", str(new_path)).strip()
    nodes = daemons.start_cluster(3, "--key-file", str(old_path),
                                  "--set", "totem.ring_size_max=2", *STEADY)
    wait_ring(nodes[:2])
    observer = nodes[2]
    wait_until(lambda: observer.status()["totem"]["state"] == "observer", 30, "node3 an observer")
    via = ("--socket", str(nodes[0].socket))
    assert f"install {new}: applied by 3 member(s)" in cli_ok(daemons, "keys", "install", str(new_path), *via)
    assert f"use {new}: applied by 3 member(s)" in cli_ok(daemons, "keys", "use", new, *via)
    assert f"remove {old}: applied by 3 member(s)" in cli_ok(daemons, "keys", "remove", old, *via)
    listed = keys_list(daemons, nodes[1])
    assert set(listed) == {"node1", "node2", "node3"}
    assert all(m == {"primary": new, "keys": [new], "error": ""} for m in listed.values()), listed

    # The observer now sends under the new key alone, and the members still accept it.
    dropped = [d.status()["transport"]["dropped"].get("unknown_key", 0) for d in nodes]
    acks = nodes[0].status()["gossip"]["msgs_received"].get("Ack", 0)
    wait_until(lambda: nodes[0].status()["gossip"]["msgs_received"].get("Ack", 0) >= acks + 6,
               30, "more probe rounds after the rotation")
    assert [d.status()["transport"]["dropped"].get("unknown_key", 0) for d in nodes] == dropped
    view = json.loads(cli_ok(daemons, "members", "--json", *via))
    assert {m["name"]: m["state"] for m in view}["node3"] == "alive", view
