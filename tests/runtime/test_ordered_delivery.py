"""Ordered delivery with real daemon processes on loopback: `ringd subscribe` / `ringd send`,
every subscriber sees the same sequence, and the simulator's EVS checker passes on the real
subscriber logs across kill -9, restart, SIGSTOP/SIGCONT."""

from __future__ import annotations

import hashlib
import os
import signal
import socket
import subprocess
import sys
import time

import pytest
from ordered_helpers import (
    RING_TIMEOUT_S,
    Subscriber,
    check_evs,
    payloads,
    process_log,
    ring_members,
    send_lines,
    wait_ring,
    wait_subscribers,
)

from helpers import RINGD, DaemonProcess, ProcessRegistry, wait_until
from ringd.client import BlockingRingClient, TryAgain
from ringd.wire import FrameReader, pack_frame

# Generous Totem timings for tests that are not about failover: a loaded 2-core machine
# must not reform the ring in the middle of an identical-sequence check.
STEADY = ("--set", "totem.token_timeout_s=2.0", "--set", "totem.consensus_s=2.4")
SEND_TIMEOUT_S = 60.0
DELIVERY_TIMEOUT_S = 60.0


def finish(proc: subprocess.Popen[bytes], timeout_s: float = SEND_TIMEOUT_S) -> None:
    out, err = proc.communicate(timeout=timeout_s)
    assert proc.returncode == 0, f"ringd send failed ({proc.returncode}): {err.decode()}"


@pytest.mark.parametrize("n", [3, 5])
def test_concurrent_senders_every_subscriber_sees_the_same_sequence(daemons: ProcessRegistry, n: int) -> None:
    nodes = daemons.start_cluster(n, *STEADY)
    wait_ring(nodes)
    subs = [Subscriber(daemons, d, "chat") for d in nodes]
    wait_subscribers(subs, n)
    per_node = 300
    sent = {d.name: payloads(d.name, 0, per_node) for d in nodes}
    senders = [send_lines(daemons, d, "chat", sent[d.name]) for d in nodes]
    for proc in senders:
        finish(proc)
    total = n * per_node
    wait_until(lambda: all(len(s.messages()) >= total for s in subs), DELIVERY_TIMEOUT_S,
               f"{total} messages at every subscriber")
    sequences = [[(m["sender"], m["data"]) for m in s.messages()] for s in subs]
    assert all(seq == sequences[0] for seq in sequences), "subscribers disagree on the order"
    assert len(sequences[0]) == total
    assert sorted(d for _, d in sequences[0]) == sorted(x for v in sent.values() for x in v)
    # Each sender's own messages stay in the order it sent them (FIFO per sender).
    for d in nodes:
        mine = [data for sender, data in sequences[0] if sender == d.name]
        assert mine == sent[d.name]
    first = subs[0].messages()
    positions = [(m["ring"], m["seq"]) for m in first]
    assert len(set(positions)) == len(positions), "(ring, seq) must identify a message"
    # Then the ring goes quiet again: its token is held, not spun round (which would cost
    # every daemon about a thousand wake-ups a second with nothing to send).
    wait_until(QuietRing(nodes[0]), DELIVERY_TIMEOUT_S, "the ring to hold its token once idle")


class QuietRing:
    """Predicate: the daemon's token visits over the last half second or more come to fewer
    than IDLE_VISITS_PER_S a second (an idle ring hands its token on about 5 times a second)."""

    IDLE_VISITS_PER_S = 50.0

    def __init__(self, daemon: DaemonProcess) -> None:
        self.daemon = daemon
        self.since: tuple[float, int] | None = None

    def __call__(self) -> bool:
        now, visits = time.monotonic(), self.daemon.status()["totem"]["stats"]["token_rx"]
        if self.since is None or now - self.since[0] > 2.0:
            self.since = (now, visits)  # (re)start the window
            return False
        elapsed = now - self.since[0]
        return elapsed >= 0.5 and (visits - self.since[1]) / elapsed < self.IDLE_VISITS_PER_S


def test_kill9_under_load_then_restart_checker_passes(daemons: ProcessRegistry) -> None:
    nodes = daemons.start_cluster(3)
    wait_ring(nodes)
    subs = {d.name: Subscriber(daemons, d, "load") for d in nodes}
    wait_subscribers(list(subs.values()), 3)
    sent: dict[str, tuple[int, list[str]]] = {}
    senders = []
    for d in nodes:
        lines = payloads(d.name, 0, 20000)
        sent[d.name] = (1, lines)
        senders.append(send_lines(daemons, d, "load", lines))
    victim, survivors = nodes[2], nodes[:2]
    # Kill once messages are flowing.
    wait_until(lambda: len(subs[survivors[0].name].messages()) >= 2000, DELIVERY_TIMEOUT_S,
               "load to reach the subscribers")
    victim.kill9()
    for proc in senders[:2]:
        finish(proc)
    wait_ring(survivors)

    want_members = sorted(x.name for x in survivors)

    def settled(name: str) -> bool:
        last = subs[name].configs()[-1]
        return last["kind"] == "regular" and sorted(last["members"]) == want_members

    wait_until(lambda: all(settled(d.name) for d in survivors), DELIVERY_TIMEOUT_S,
               "the survivors' subscribers to show the new ring")
    for s in survivors:
        kinds = [(c["kind"], sorted(c["members"])) for c in subs[s.name].configs()]
        assert kinds[0] == ("regular", sorted(d.name for d in nodes)), kinds
        after = kinds[1:]
        # Every change is a transitional configuration (who moves on together) followed by
        # the regular one; under this load the survivors may briefly split before they merge,
        # so the pair may come more than once, but the last regular one is the two of them.
        assert after and len(after) % 2 == 0, kinds
        for t, r in zip(after[::2], after[1::2], strict=True):
            assert t[0] == "transitional" and r[0] == "regular" and set(t[1]) <= set(r[1]), kinds
            assert victim.name not in t[1], kinds
        assert after[-1] == ("regular", want_members), kinds
    survivor_logs = [process_log(subs[d.name], 1, crashed=False) for d in survivors]
    victim_log = process_log(subs[victim.name], 1, crashed=True)
    violations = check_evs([*survivor_logs, victim_log], sent)
    assert violations == []

    # The killed daemon restarts (same state dir) and rejoins the ring.
    victim.start()
    victim.wait_ready()
    wait_ring(nodes)
    resub = Subscriber(daemons, victim, "load", tag="-again")
    wait_subscribers([resub, subs[survivors[0].name]], 3)
    more = payloads(survivors[0].name, 100000, 50)
    finish(send_lines(daemons, survivors[0], "load", more))
    wait_until(lambda: resub.data()[-50:] == more, DELIVERY_TIMEOUT_S, "the restarted daemon to deliver")


def test_sigstop_past_token_timeout_is_excluded_then_merged(daemons: ProcessRegistry) -> None:
    nodes = daemons.start_cluster(3)
    wait_ring(nodes)
    subs = {d.name: Subscriber(daemons, d, "g") for d in nodes}
    wait_subscribers(list(subs.values()), 3)
    paused, others = nodes[1], [nodes[0], nodes[2]]
    before = {d.name: payloads(d.name, 0, 100) for d in nodes}
    for d in nodes:
        finish(send_lines(daemons, d, "g", before[d.name]))
    wait_until(lambda: all(len(s.messages()) >= 300 for s in subs.values()), DELIVERY_TIMEOUT_S, "300 messages")
    os.kill(paused.pid, signal.SIGSTOP)
    try:
        wait_ring(others)
        during = {d.name: payloads(d.name, 1000, 100) for d in others}
        for d in others:
            finish(send_lines(daemons, d, "g", during[d.name]))
    finally:
        os.kill(paused.pid, signal.SIGCONT)
    wait_ring(nodes)
    after = {d.name: payloads(d.name, 2000, 50) for d in nodes}
    for d in nodes:
        finish(send_lines(daemons, d, "g", after[d.name]))
    wait_until(lambda: all(set(x for v in after.values() for x in v) <= set(s.data()) for s in subs.values()),
               DELIVERY_TIMEOUT_S, "messages after the merge everywhere")
    # The survivors saw it leave and come back.
    for d in others:
        regulars = [sorted(c["members"]) for c in subs[d.name].configs() if c["kind"] == "regular"]
        assert sorted(x.name for x in others) in regulars
        assert regulars[-1] == sorted(x.name for x in nodes)
    sent = {d.name: (1, before[d.name] + during.get(d.name, []) + after[d.name]) for d in nodes}
    logs = [process_log(s, 1, crashed=False) for s in subs.values()]
    assert check_evs(logs, sent) == []


def test_safe_send_waits_for_every_member(daemons: ProcessRegistry) -> None:
    # Neither Totem nor gossip may give up on the stopped member during the check: a new
    # configuration without it would (rightly) allow safe delivery among the others.
    slow = ("--set", "totem.token_timeout_s=20", "--set", "totem.consensus_s=24",
            "--set", "gossip.probe_interval_s=10", "--set", "gossip.probe_timeout_s=5")
    nodes = daemons.start_cluster(3, *slow, fast=False)
    wait_ring(nodes)
    subs = [Subscriber(daemons, d, "s") for d in nodes]
    wait_subscribers(subs, 3)
    stopped = nodes[2]
    os.kill(stopped.pid, signal.SIGSTOP)
    try:
        proc = send_lines(daemons, nodes[0], "s", ["n-1"], "--safe")
        # While a member cannot have it, safe delivery cannot be confirmed.
        with pytest.raises(subprocess.TimeoutExpired):
            proc.wait(timeout=2.0)
        assert "n-1" not in subs[2].data()
    finally:
        os.kill(stopped.pid, signal.SIGCONT)
    finish(proc)
    wait_until(lambda: "n-1" in subs[2].data(), DELIVERY_TIMEOUT_S, "the stopped member to deliver it")


def test_one_mebibyte_message_arrives_intact(daemons: ProcessRegistry) -> None:
    nodes = daemons.start_cluster(2, *STEADY)
    wait_ring(nodes)
    subs = [Subscriber(daemons, d, "big") for d in nodes]
    wait_subscribers(subs, 2)
    big = "".join(chr(0x61 + (i * 7) % 26) for i in range(1 << 20))
    finish(send_lines(daemons, nodes[0], "big", [big]))
    digest = hashlib.sha256(big.encode()).hexdigest()
    for s in subs:
        wait_until(lambda s=s: len(s.messages()) == 1, DELIVERY_TIMEOUT_S, "the 1 MiB message")
        got = s.messages()[0]["data"]
        assert len(got) == 1 << 20 and hashlib.sha256(got.encode()).hexdigest() == digest


def test_subscriber_that_stops_reading_is_dropped_others_keep_up(daemons: ProcessRegistry) -> None:
    nodes = daemons.start_cluster(2, *STEADY)
    wait_ring(nodes)
    good = Subscriber(daemons, nodes[1], "flood")
    stalled = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    stalled.connect(str(nodes[1].socket))
    stalled.sendall(pack_frame({"op": "group_join", "group": "flood", "id": 1}))
    try:
        wait_subscribers([good], 2)
        lines = [f"{nodes[0].name}-{i}-" + "y" * 900 for i in range(40000)]
        finish(send_lines(daemons, nodes[0], "flood", lines), timeout_s=120)
        wait_until(lambda: len(good.messages()) >= len(lines), DELIVERY_TIMEOUT_S, "the reading subscriber")
        assert good.data() == lines
        status = nodes[1].status()
        assert status["control"]["slow_dropped"] >= 1
    finally:
        stalled.close()


def test_a_subscriber_that_stopped_reading_holds_no_token_before_it_is_dropped(
        daemons: ProcessRegistry) -> None:
    """Between the 4 MiB at which a reader's backlog slows the ring and the 32 MiB at which
    its daemon drops it, a subscriber that stopped reading must not hold up token visits
    (each would wait for it in vain, and at a low rate it would never reach 32 MiB)."""
    nodes = daemons.start_cluster(2, *STEADY)
    wait_ring(nodes)
    stalled = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    stalled.connect(str(nodes[1].socket))
    stalled.sendall(pack_frame({"op": "group_join", "group": "flood", "id": 1}))
    try:
        wait_until(lambda: nodes[1].status()["groups"]["groups"].get("flood"), RING_TIMEOUT_S,
                   "the stalled subscriber's join")
        lines = [f"{i}-" + "y" * 900 for i in range(8000)]  # about 7.5 MB queued for it
        with BlockingRingClient(nodes[0].socket, timeout_s=SEND_TIMEOUT_S) as ring:
            for start in range(0, len(lines), 500):
                ring.send("flood", lines[start:start + 500])

            def rotations_without_holds() -> bool:
                before = nodes[1].status()["totem"]["driver"]["backpressure_holds"]
                for _ in range(10):
                    ring.send("other", b"x", safe=True)  # safe: the token passes node 2 twice
                return nodes[1].status()["totem"]["driver"]["backpressure_holds"] == before

            wait_until(rotations_without_holds, 30, "token visits that do not wait for the stopped subscriber")
        assert nodes[1].status()["control"]["slow_dropped"] == 0  # still there: under 32 MiB
    finally:
        stalled.close()


# A subscriber on a raw socket that reads 64 KiB, then naps: a few MB/s, far below what a
# loopback ring carries. It writes each message's data as one line.
SLOW_READER = (
    "import socket, sys, time\n"
    "from ringd.wire import FrameReader, pack_frame\n"
    "s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)\n"
    "s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)\n"
    "s.connect(sys.argv[1])\n"
    "s.sendall(pack_frame({'op': 'group_join', 'group': sys.argv[2], 'id': 1}))\n"
    "reader, out = FrameReader(), open(sys.argv[3], 'w', buffering=1)\n"
    "while data := s.recv(65536):\n"
    "    for frame in reader.feed(data):\n"
    "        if frame.get('ev') == 'message':\n"
    "            out.writelines(d.decode() + '\\n' for d in frame['data'])\n"
    "    time.sleep(0.03)  # poll: 64 KiB per pause, a reader slow on purpose\n"
)


def test_a_subscriber_that_reads_slowly_slows_the_ring_and_is_not_dropped(daemons: ProcessRegistry) -> None:
    # A short retransmit timeout keeps each token visit's hold for slow readers short (see
    # BACKPRESSURE_HOLD_MAX_FRACTION): it is throttling the ring that keeps up with this one.
    nodes = daemons.start_cluster(2, *STEADY, "--set", "totem.token_retransmit_s=0.005")
    wait_ring(nodes)
    fast = Subscriber(daemons, nodes[0], "flood")
    slow_path = daemons.workdir / "slow.txt"
    daemons.others.append(subprocess.Popen(
        [sys.executable, "-c", SLOW_READER, str(nodes[1].socket), "flood", str(slow_path)]))
    wait_subscribers([fast], 2)
    # More than a subscriber's 32 MiB buffer: outrun, the slow one would be dropped.
    lines = [f"{nodes[0].name}-{i}-" + "z" * 900 for i in range(40000)]
    with BlockingRingClient(nodes[0].socket, timeout_s=SEND_TIMEOUT_S) as ring:
        for start in range(0, len(lines), 500):
            ring.send("flood", lines[start:start + 500])
    wait_until(lambda: slow_path.read_bytes().count(b"\n") >= len(lines), 120, "the slow subscriber")
    assert slow_path.read_text().splitlines() == lines
    assert fast.data() == lines
    status = nodes[1].status()
    assert status["control"]["slow_dropped"] == 0
    assert status["totem"]["stats"]["throttled_visits"] > 0
    assert status["totem"]["driver"]["backpressure_holds"] > 0  # its token visits waited for it too


def test_bad_client_frames_get_an_error_and_the_daemon_keeps_serving(daemons: ProcessRegistry) -> None:
    nodes = daemons.start_cluster(1, *STEADY)
    wait_ring(nodes)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.connect(str(nodes[0].socket))
        s.settimeout(10)
        s.sendall(pack_frame({"op": "send", "group": 5, "data": "x", "id": 7}))
        reader = FrameReader()
        replies: list = []
        while not replies:
            replies = reader.feed(s.recv(65536))
        assert replies[0]["ok"] is False and replies[0]["id"] == 7 and "group" in replies[0]["error"]
        s.sendall(b"\x00\x00\x00\x03abc")  # not CBOR: an error frame, then the daemon hangs up
        received = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            received += chunk
    assert b"error" in received
    out = subprocess.run([*RINGD, "send", "ok", "hello", "--socket", str(nodes[0].socket)],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    status = nodes[0].status()
    assert status["control"]["errors"].get("malformed", 0) >= 1
    assert status["control"]["errors"].get("bad_request", 0) >= 1
    # `ringd send` to a daemon that is not there: one line, non-zero exit.
    gone = subprocess.run([*RINGD, "send", "g", "m", "--socket", str(nodes[0].socket) + ".nope"],
                          capture_output=True, text=True, timeout=30)
    assert gone.returncode != 0 and len(gone.stderr.strip().splitlines()) == 1


def test_send_beyond_the_window_waits_or_gets_try_again(daemons: ProcessRegistry) -> None:
    slow = ("--set", "totem.token_timeout_s=20", "--set", "totem.consensus_s=24",
            "--set", "gossip.probe_interval_s=10", "--set", "gossip.probe_timeout_s=5")
    nodes = daemons.start_cluster(2, *slow, fast=False)
    wait_ring(nodes)
    os.kill(nodes[1].pid, signal.SIGSTOP)  # the ring stalls: nothing gets ordered
    try:
        chunk = [b"z" * (256 * 1024)]
        with BlockingRingClient(nodes[0].socket, timeout_s=10) as ring:
            accepted = 0
            with pytest.raises(TryAgain):
                for _ in range(200):
                    ring.send("bp", chunk, wait=False)
                    accepted += 1
            assert 0 < accepted < 200  # a bounded window, not an unbounded queue
        # A waiting send blocks until the ring moves again.
        proc = send_lines(daemons, nodes[0], "bp", ["after"])
        with pytest.raises(subprocess.TimeoutExpired):
            proc.wait(timeout=1.5)
    finally:
        os.kill(nodes[1].pid, signal.SIGCONT)
    finish(proc)


def test_a_flapping_member_is_held_out_of_the_ring_until_stable(daemons: ProcessRegistry) -> None:
    flap = ("--set", "totem.flap_window_s=60", "--set", "totem.flap_count=3",
            "--set", "totem.flap_stable_s=4")
    nodes = daemons.start_cluster(3, *flap)
    wait_ring(nodes)
    flapper, steady = nodes[2], nodes[:2]

    def gossip_state(observer: DaemonProcess) -> str:
        return observer.members().get(flapper.name, {}).get("state", "")

    # Stop it until gossip declares it dead, let it come back alive: twice is enough
    # for three alive/dead changes within the window.
    for _ in range(2):
        os.kill(flapper.pid, signal.SIGSTOP)
        try:
            wait_until(lambda: all(gossip_state(d) == "dead" for d in steady), 30, "declared dead")
        finally:
            os.kill(flapper.pid, signal.SIGCONT)
        wait_until(lambda: all(gossip_state(d) == "alive" for d in steady), 30, "alive again")
    held = [d.status()["totem"]["held_out"] for d in steady]
    assert all(flapper.name in h for h in held), held
    assert all(ring_members(d) == [d.name for d in steady] or flapper.name not in ring_members(d)
               for d in steady)
    out = daemons.run_cli("status", "--socket", str(steady[0].socket))
    assert flapper.name in out.stdout and "held out" in out.stdout
    # Once stable for flap_stable_s it is welcomed back.
    wait_ring(nodes, timeout_s=40)
    assert all(d.status()["totem"]["held_out"] == [] for d in steady)


def test_members_beyond_ring_size_max_are_observers_until_there_is_room(daemons: ProcessRegistry) -> None:
    nodes = daemons.start_cluster(4, *STEADY, "--set", "totem.ring_size_max=3")
    ring, observer = nodes[:3], nodes[3]
    wait_ring(ring)
    wait_until(lambda: observer.status()["totem"]["state"] == "observer", 30, "node4 to be an observer")
    out = subprocess.run([*RINGD, "send", "g", "m", "--socket", str(observer.socket)],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode != 0 and "observer" in out.stderr and len(out.stderr.strip().splitlines()) == 1
    # A ring member dies: the observer takes its place.
    nodes[0].kill9()
    wait_ring([*nodes[1:3], observer])
