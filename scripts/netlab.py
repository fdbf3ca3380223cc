#!/usr/bin/env python3
"""A Jepsen-style faulty-LAN lab for real ringd daemons (needs root, iproute2, nftables).

Topology: N daemons (``--preset lan``), each in a network namespace of its own with one
interface on a bridge that lives in a namespace of its own too; addresses 198.18.0.K/24
exist only inside the lab. Every namespace, veth, bridge and process is created with a
per-run name prefix (parallel runs do not collide) and removed on exit, on failure and on
Ctrl-C / SIGTERM; a hard alarm bounds the whole run.

Nemeses (combinable, scheduled from ``--seed``): random loss on every link (``--loss``) or
per link (``link-loss``), partitions (``partition-halves``, ``partition-node``,
``partition-majorities-ring``), an asymmetric cut (``asymmetric``: A->B dropped, B->A fine;
``asymmetric-token-hop``: the same where B follows A in the ring, so the token cannot pass),
bridge flaps (``bridge-flap``), SIGSTOP/SIGCONT pauses (``pause``), kill -9 and restart
(``kill``). Packet drops are nftables rules in the bridge namespace's own ruleset:
``numgen random mod 10000 < P drop`` (the kernel here has no netem).

Workload: a subscriber on every node (``ringd.client`` inside the node's namespace) logs
every event with a timestamp; a sender on every node sends agreed and safe messages, one per
call and in batches, and logs each request and its reply. After the run: heal, wait for one
ring of all nodes, send a probe message from every node, and check the histories with the
simulator's EVS checker (``ringd.sim.checkers`` through ``ringd.lab_history``) plus
process-group virtual synchrony, liveness, and one primary component at a time (the
simulator's quorum checker on the daemons' own logs, through ``ringd.lab_quorum``).

    python scripts/netlab.py --nodes 3 --loss 0.1 --duration 30 --nemesis partition-halves \
        --seed 7 --json lab.json [--corosync]

``--corosync`` runs the same loss and partition schedule against Corosync (udp multicast,
default timings; ``shared/anchors/corosync``: ``lib.sh`` writes the configs, ``cpgbench.c``
is the workload) on an identical lab and adds its rows.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

GROUP = "lab"
SUBNET = "198.18.0"  # 198.18.0.0/15: benchmarking addresses, never routed; only inside the lab
CMD_TIMEOUT_S = 15
NEMESES = ("partition-halves", "partition-node", "partition-majorities-ring", "asymmetric",
           "asymmetric-token-hop",
           "link-loss", "bridge-flap", "pause", "kill")
PARTITIONS = {"partition-halves", "partition-node", "partition-majorities-ring", "asymmetric",
              "asymmetric-token-hop"}
RING_FORM_TIMEOUT_S = 60.0
SETTLE_TIMEOUT_S = 60.0
PROBE_TIMEOUT_S = 30.0
SENDER_STOP_TIMEOUT_S = 40.0  # a safe send waits for every ring member; give a late reply time
DEFAULT_ANCHORS = Path(__file__).resolve().parents[2] / "shared" / "anchors" / "corosync"


class LabError(Exception):
    """A one-line reason the lab cannot run or finish."""


def log(msg: str) -> None:
    print(f"[netlab {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def run(*cmd: str, check: bool = True, input_text: str | None = None) -> subprocess.CompletedProcess[str]:
    r = subprocess.run(list(cmd), capture_output=True, text=True, timeout=CMD_TIMEOUT_S, input=input_text)
    if check and r.returncode != 0:
        why = (r.stderr.strip() or f"exit {r.returncode}").splitlines()[0]
        raise LabError(f"{' '.join(cmd)}: {why}")
    return r


# --- the network ---------------------------------------------------------------------------


class Net:
    """The namespaces, bridge and nftables table of one run. ``down()`` is idempotent."""

    def __init__(self, prefix: str, nodes: int) -> None:
        self.prefix = prefix
        self.bridge_ns = f"{prefix}b"
        self.node_ns = [f"{prefix}n{k}" for k in range(1, nodes + 1)]
        self.created: list[str] = []
        # Packets forwarded and dropped by rules since replaced (a flush resets counters).
        self.seen = 0
        self.dropped = 0

    def addr(self, k: int) -> str:  # k: 0-based node index
        return f"{SUBNET}.{k + 1}"

    def port(self, k: int) -> str:  # the node's veth end on the bridge
        return f"v{k + 1}"

    def up(self) -> None:
        b = self.bridge_ns
        run("ip", "netns", "add", b)
        self.created.append(b)
        run("ip", "-n", b, "link", "set", "lo", "up")
        # Snooping off: there is no querier, and multicast must reach every port.
        run("ip", "-n", b, "link", "add", "br0", "type", "bridge", "mcast_snooping", "0")
        run("ip", "-n", b, "link", "set", "br0", "up")
        for k, ns in enumerate(self.node_ns):
            run("ip", "netns", "add", ns)
            self.created.append(ns)
            run("ip", "-n", ns, "link", "set", "lo", "up")
            # Created inside the namespaces: the host's own interfaces are never involved.
            run("ip", "-n", b, "link", "add", self.port(k), "type", "veth", "peer", "name", "eth0", "netns", ns)
            run("ip", "-n", b, "link", "set", self.port(k), "master", "br0", "up")
            run("ip", "-n", ns, "addr", "add", f"{self.addr(k)}/24", "dev", "eth0")
            run("ip", "-n", ns, "link", "set", "eth0", "up")
            run("ip", "-n", ns, "route", "add", "224.0.0.0/4", "dev", "eth0")
        # The lab's only nftables table, in the bridge namespace's own ruleset.
        self.nft("add table bridge lab\n"
                 "add chain bridge lab drops { type filter hook forward priority 0 ; policy accept ; }\n")

    def nft(self, script: str) -> None:
        run("ip", "netns", "exec", self.bridge_ns, "nft", "-f", "-", input_text=script)

    def set_rules(self, rules: list[str]) -> None:
        """Replace the lab's drop rules in one nft transaction; the first rule counts every
        frame the bridge forwards (one per output port), so the real loss rate is known."""
        seen, dropped = self.counts()
        self.seen += seen
        self.dropped += dropped
        rules = ['counter comment "seen"', *rules]
        self.nft("flush chain bridge lab drops\n" + "".join(f"add rule bridge lab drops {r}\n" for r in rules))

    def counts(self) -> tuple[int, int]:
        """(forwarded, dropped) frames counted by the current rules."""
        r = run("ip", "netns", "exec", self.bridge_ns, "nft", "-j", "list", "table", "bridge", "lab", check=False)
        seen = dropped = 0
        with contextlib.suppress(ValueError, KeyError, TypeError):
            for item in json.loads(r.stdout)["nftables"]:
                rule = item.get("rule", {})
                for expr in rule.get("expr", []):
                    if "counter" in expr:
                        if rule.get("comment") == "seen":
                            seen += expr["counter"]["packets"]
                        else:
                            dropped += expr["counter"]["packets"]
        return seen, dropped

    def totals(self) -> tuple[int, int]:
        seen, dropped = self.counts()
        return self.seen + seen, self.dropped + dropped

    def bridge_link(self, up: bool) -> None:
        run("ip", "-n", self.bridge_ns, "link", "set", "br0", "up" if up else "down")

    def down(self) -> None:
        for ns in reversed(self.created):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=CMD_TIMEOUT_S)
        self.created.clear()


# --- nemesis schedule ----------------------------------------------------------------------


@dataclass(slots=True)
class Fault:
    """One nemesis action: active from ``start`` to ``end`` (seconds into the workload)."""

    name: str
    start: float
    end: float
    cuts: list[tuple[int, int]] = field(default_factory=list)  # (src, dst) node pairs dropped
    link_loss: dict[int, float] = field(default_factory=dict)  # node -> loss on its port
    node: int | None = None  # pause / kill target

    def describe(self) -> str:
        what = ""
        if self.cuts:
            what = " cuts " + ",".join(f"n{a + 1}>n{b + 1}" for a, b in self.cuts)
        if self.link_loss:
            what = " " + ",".join(f"n{k + 1}:{p:.0%}" for k, p in self.link_loss.items())
        if self.node is not None:
            what = f" n{self.node + 1}"
        return f"{self.name} {self.start:.1f}-{self.end:.1f}s{what}"


def both_ways(a: list[int], b: list[int]) -> list[tuple[int, int]]:
    return [(x, y) for x in a for y in b] + [(y, x) for x in a for y in b]


def make_fault(name: str, rng: random.Random, nodes: int, start: float, end: float, loss: float) -> Fault:
    f = Fault(name, start, end)
    order = list(range(nodes))
    rng.shuffle(order)
    if name == "partition-halves":
        # The bigger half first: 3 nodes give 2|1.
        half = (nodes + 1) // 2
        f.cuts = both_ways(order[:half], order[half:])
    elif name == "partition-node":
        f.cuts = both_ways(order[:1], order[1:])
    elif name == "partition-majorities-ring":
        # Jepsen's majorities ring: in a shuffled ring, each node hears only itself and the
        # next majority-1 nodes, so every node sees a majority but no two see the same one.
        m = nodes // 2 + 1
        for i, dst in enumerate(order):
            hears = {order[(i + j) % nodes] for j in range(m)}
            f.cuts += [(src, dst) for src in order if src not in hears]
    elif name == "asymmetric":
        f.cuts = [(order[0], order[1])]  # order[0] -> order[1] dropped, the reverse fine
    elif name == "asymmetric-token-hop":
        # ringd's ring is its members in name order (so is Corosync's, by node id, up to 9
        # nodes): cut A -> the member after A, the hop the token takes from A.
        ring = sorted(range(nodes), key=lambda k: f"n{k + 1}")
        f.cuts = [(order[0], ring[(ring.index(order[0]) + 1) % nodes])]
    elif name == "link-loss":
        level = max(loss * 2, 0.1)
        f.link_loss = {k: round(rng.uniform(0, level), 3) for k in range(nodes)}
    elif name in ("pause", "kill"):
        f.node = order[0]
    return f


def schedule(names: list[str], rng: random.Random, nodes: int, duration: float, first_at: float | None,
             loss: float, count_max: int | None = None, span_s: float | None = None) -> list[Fault]:
    """Faults one after another until 3 s before the end: quiet 2-5 s, fault 3-8 s (pauses
    1.5-4 s, longer than the lan token timeout of 1 s; bridge flaps 1-3 s), then heal."""
    out: list[Fault] = []
    if not names:
        return out
    t = first_at if first_at is not None else rng.uniform(2, 5)
    while True:
        name = rng.choice(names)
        span = {"pause": rng.uniform(1.5, 4), "bridge-flap": rng.uniform(1, 3)}.get(name, rng.uniform(3, 8))
        span = span_s if span_s is not None else span
        if t + span > duration - 3 or (count_max is not None and len(out) >= count_max):
            break
        out.append(make_fault(name, rng, nodes, t, t + span, loss))
        t += span + rng.uniform(2, 5)
    return out


def drop_rules(net: Net, loss: float, faults: list[Fault]) -> list[str]:
    rules = []
    for f in faults:
        for src, dst in f.cuts:
            rules.append(f'iifname "{net.port(src)}" oifname "{net.port(dst)}" counter drop')
        for k, p in f.link_loss.items():
            if p > 0:
                rules.append(f'iifname "{net.port(k)}" numgen random mod 10000 < {int(p * 10000)} counter drop')
    if loss > 0:
        rules.append(f"numgen random mod 10000 < {int(loss * 10000)} counter drop")
    return rules


# --- processes -----------------------------------------------------------------------------


class Procs:
    """Every process this run started, by PID; ``stop_all`` ends them (SIGCONT first, so a
    paused one can act on SIGTERM), then SIGKILL what is left."""

    def __init__(self) -> None:
        self.all: list[subprocess.Popen[bytes]] = []

    def start(self, cmd: list[str], out: Path) -> subprocess.Popen[bytes]:
        with open(out, "ab") as f:
            p = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                 start_new_session=True)
        self.all.append(p)
        return p

    @staticmethod
    def signal(p: subprocess.Popen[bytes], sig: int) -> None:
        if p.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(p.pid, sig)

    def stop(self, p: subprocess.Popen[bytes], timeout: float = 5.0) -> None:
        self.signal(p, signal.SIGCONT)
        self.signal(p, signal.SIGTERM)
        try:
            p.wait(timeout)
        except subprocess.TimeoutExpired:
            self.signal(p, signal.SIGKILL)
            p.wait(5)

    def stop_all(self) -> None:
        for p in self.all:
            self.signal(p, signal.SIGCONT)
            self.signal(p, signal.SIGTERM)
        deadline = time.monotonic() + 5
        for p in self.all:
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(max(deadline - time.monotonic(), 0.01))
        for p in self.all:
            self.signal(p, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(5)


STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGALRM}


def teardown(procs: Procs, net: Net) -> None:
    """End every process, then delete the namespaces, with the stop signals held back: a
    second Ctrl-C must not leave namespaces behind half way through."""
    old = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        procs.stop_all()
        net.down()
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def wait_for(what: str, cond: Any, timeout: float, interval: float = 0.2) -> Any:
    """Poll ``cond()`` until it returns something truthy, or raise LabError after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        got = cond()
        if got:
            return got
        if time.monotonic() > deadline:
            raise LabError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)


# --- workload processes (run inside a node's namespace) ------------------------------------


def worker_subscriber(sock: str, out_path: str, ready_path: str, incarnation: str) -> int:
    """Join the group and log every event frame as a JSON line until SIGTERM or the daemon
    goes away. Writes ``ready_path`` (the incarnation) once the join is answered."""
    from ringd.client import BlockingRingClient, ClientError, ConfigEvent, GroupEvent, MessageBatch

    stop = False

    def on_term(signum: int, frame: Any) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_term)
    out = open(out_path, "a", buffering=1)

    def write(rec: dict[str, Any]) -> None:
        rec["t"] = time.time_ns()
        out.write(json.dumps(rec) + "\n")

    deadline = time.monotonic() + 30
    while True:
        try:
            client = BlockingRingClient(sock, timeout_s=30)
            break
        except ClientError:
            if time.monotonic() > deadline or stop:
                write({"ev": "end", "why": "no daemon"})
                return 1
            time.sleep(0.05)
    try:
        member = client.join(GROUP)
        write({"ev": "joined", "member": member})
        Path(ready_path).write_text(incarnation)
        while not stop:
            for b in client.batches(timeout=0.2):
                if isinstance(b, MessageBatch):
                    write({"ev": "message", "sender": b.sender, "member": b.member, "ring": b.ring,
                           "seq": b.first_seq, "safe": b.safe,
                           "data": [d.decode(errors="replace") for d in b.data]})
                elif isinstance(b, ConfigEvent):
                    write({"ev": "config", "kind": b.kind, "ring": b.ring, "members": list(b.members)})
                elif isinstance(b, GroupEvent):
                    write({"ev": "group", "group": b.group, "members": list(b.members),
                           "joined": list(b.joined), "left": list(b.left), "reason": b.reason})
                if stop:
                    break
    except ClientError as exc:
        write({"ev": "end", "why": f"lost: {exc}"})
        return 0
    write({"ev": "end", "why": "stopped"})
    return 0


def worker_sender(sock: str, node: str, out_path: str, ready_path: str, stop_path: str,
                  rate: str, seed: str) -> int:
    """Send until ``stop_path`` exists: a seeded mix of agreed and safe, one per call and
    batches of 2-8, ``rate`` calls per second. Logs each request before it goes out and its
    outcome after. Only sends while ``ready_path`` names the daemon's incarnation (its
    subscriber has joined), so every accepted message has a subscriber that can deliver it."""
    from ringd.client import BlockingRingClient, ClientError
    from ringd.lab_history import make_payload

    rng = random.Random(seed)
    out = open(out_path, "a", buffering=1)
    gap = 1.0 / float(rate)
    msg_id = 0
    client: BlockingRingClient | None = None
    incarnation = -1
    t0 = time.monotonic()
    calls = 0
    while not os.path.exists(stop_path):
        if client is None:
            try:
                incarnation = int(Path(ready_path).read_text())
                client = BlockingRingClient(sock, timeout_s=30)
            except (OSError, ValueError, ClientError):
                time.sleep(0.05)  # the daemon is down or its subscriber not back yet
                continue
        calls += 1
        safe = rng.random() < 0.4
        count = 1 if rng.random() < 0.5 else rng.randint(2, 8)
        now = time.time_ns()
        ids = list(range(msg_id, msg_id + count))
        msg_id += count
        payloads = [make_payload(node, i, now) for i in ids]
        out.write(json.dumps({"op": "try", "t": now, "inc": incarnation, "ids": ids, "safe": safe,
                              "data": payloads}) + "\n")
        try:
            client.send(GROUP, payloads, safe=safe)
            out.write(json.dumps({"op": "ok", "t": time.time_ns(), "ids": ids}) + "\n")
        except ClientError as exc:
            out.write(json.dumps({"op": "err", "t": time.time_ns(), "ids": ids, "error": str(exc)}) + "\n")
            client.close()
            client = None
        # The workload's own pacing, not a wait for a condition.
        delay = t0 + calls * gap - time.monotonic()
        if delay > 0:
            time.sleep(delay)
    if client is not None:
        client.close()
    return 0


# --- one ringd run -------------------------------------------------------------------------


@dataclass(slots=True)
class Node:
    index: int
    name: str
    ns: str
    sock: Path
    state_dir: Path
    daemon: subprocess.Popen[bytes] | None = None
    incarnation: int = 0
    subscriber: subprocess.Popen[bytes] | None = None
    sender: subprocess.Popen[bytes] | None = None
    paused: bool = False
    dead: bool = False
    sub_logs: list[tuple[int, Path, bool]] = field(default_factory=list)  # (inc, path, crashed)


class RingdLab:
    def __init__(self, args: argparse.Namespace, loss: float, workdir: Path, prefix: str) -> None:
        self.args = args
        self.loss = loss
        self.dir = workdir
        self.net = Net(prefix, args.nodes)
        self.procs = Procs()
        self.py = sys.executable
        self.script = str(Path(__file__).resolve())
        self.nodes = [Node(k, f"n{k + 1}", self.net.node_ns[k], workdir / f"n{k + 1}.sock",
                           workdir / f"state-n{k + 1}") for k in range(args.nodes)]
        self.stop_file = workdir / "stop-senders"
        self.events: list[str] = []
        self.kills: list[Any] = []  # ringd.lab_quorum.Kill: when each killed daemon was dead
        self.started_wall = time.time()

    # -- daemons and workload --

    def start_daemon(self, n: Node) -> None:
        # The whole cluster's votes, as README asks (and corosync's nodelist does): with the
        # default, daemons that first form rings apart are each primary, and the lab's
        # one-primary check would rightly say so. --daemon-set can still override it.
        sets = [f"quorum.expected_votes={self.args.nodes}", *self.args.daemon_set]
        cmd = ["ip", "netns", "exec", n.ns, self.py, "-m", "ringd", "run", "--preset", "lan",
               "--name", n.name, "--cluster-name", "lab", "--socket", str(n.sock),
               "--state-dir", str(n.state_dir), *sum((["--set", s] for s in sets), [])]
        # `ip netns exec` execs the command: the PID is the daemon's own.
        n.daemon = self.procs.start(cmd, self.dir / f"{n.name}.log")
        n.dead = False

    def start_subscriber(self, n: Node) -> None:
        ready = self.dir / f"ready-{n.name}"
        ready.unlink(missing_ok=True)
        out = self.dir / f"sub-{n.name}-{n.incarnation}.jsonl"
        n.sub_logs.append((n.incarnation, out, False))
        n.subscriber = self.procs.start(
            ["ip", "netns", "exec", n.ns, self.py, self.script, "_subscriber", str(n.sock), str(out),
             str(ready) + ".tmp", str(n.incarnation)], self.dir / f"sub-{n.name}.err")

    def sub_ready(self, n: Node) -> bool:
        tmp = self.dir / f"ready-{n.name}.tmp"
        if tmp.exists():
            # The sender reads ``ready-<node>``: publish it in one rename.
            tmp.rename(self.dir / f"ready-{n.name}")
        return (self.dir / f"ready-{n.name}").exists()

    def start_sender(self, n: Node) -> None:
        n.sender = self.procs.start(
            ["ip", "netns", "exec", n.ns, self.py, self.script, "_sender", str(n.sock), n.name,
             str(self.dir / f"send-{n.name}.jsonl"), str(self.dir / f"ready-{n.name}"),
             str(self.stop_file), str(self.args.rate), f"{self.args.seed}-{n.name}"],
            self.dir / f"send-{n.name}.err")

    def status(self, n: Node) -> dict[str, Any] | None:
        from ringd import client
        try:
            return client.status(n.sock, timeout_s=2)
        except Exception:  # down, paused or starting: no status this time
            return None

    def one_ring(self) -> list[dict[str, Any]] | None:
        ss = [self.status(n) for n in self.nodes]
        names = sorted(n.name for n in self.nodes)
        if any(s is None or s["totem"]["state"] != "operational" or sorted(s["totem"]["members"]) != names
               for s in ss):
            return None
        if len({s["totem"]["ring"] for s in ss}) != 1:  # type: ignore[index]
            return None
        return ss  # type: ignore[return-value]

    # -- nemesis actions --

    def apply(self, active: list[Fault]) -> None:
        self.net.set_rules(drop_rules(self.net, self.loss, active))

    def fault_on(self, f: Fault, active: list[Fault]) -> None:
        self.events.append(f"{time.time():.3f} start {f.describe()}")
        log(f"nemesis: {f.describe()}")
        if f.name == "bridge-flap":
            self.net.bridge_link(False)
        elif f.name == "pause":
            n = self.nodes[f.node]  # type: ignore[index]
            if n.daemon is not None:
                Procs.signal(n.daemon, signal.SIGSTOP)
                n.paused = True
        elif f.name == "kill":
            n = self.nodes[f.node]  # type: ignore[index]
            if n.daemon is not None and not n.dead:
                Procs.signal(n.daemon, signal.SIGKILL)
                n.daemon.wait(5)
                from ringd.lab_quorum import Kill
                self.kills.append(Kill(n.name, n.incarnation, time.time()))
                n.dead = True
                (self.dir / f"ready-{n.name}").unlink(missing_ok=True)
                inc, path, _ = n.sub_logs[-1]
                n.sub_logs[-1] = (inc, path, True)
        self.apply(active)

    def fault_off(self, f: Fault, active: list[Fault]) -> None:
        self.events.append(f"{time.time():.3f} heal {f.describe()}")
        if f.name == "bridge-flap":
            self.net.bridge_link(True)
        elif f.name == "pause":
            n = self.nodes[f.node]  # type: ignore[index]
            if n.daemon is not None:
                Procs.signal(n.daemon, signal.SIGCONT)
                n.paused = False
        elif f.name == "kill":
            n = self.nodes[f.node]  # type: ignore[index]
            if n.subscriber is not None:
                self.procs.stop(n.subscriber)
            n.incarnation += 1
            self.start_daemon(n)
            self.start_subscriber(n)  # it waits for the daemon's socket
        self.apply(active)

    # -- the run --

    def run(self) -> dict[str, Any]:
        a = self.args
        rng = random.Random(f"{a.seed}-{self.loss}")
        faults = schedule(a.nemesis, rng, a.nodes, a.duration, a.nemesis_start, self.loss, a.nemesis_count,
                          a.nemesis_span)
        try:
            self.net.up()
            for n in self.nodes:
                self.start_daemon(n)
            t_form = time.monotonic()
            wait_for("the first ring of all nodes", self.one_ring, RING_FORM_TIMEOUT_S, 0.3)
            log(f"ring of {a.nodes} formed in {time.monotonic() - t_form:.1f} s (dir {self.dir})")
            for n in self.nodes:
                self.start_subscriber(n)
            wait_for("every subscriber to join", lambda: all(self.sub_ready(n) for n in self.nodes), 30)
            self.apply([])
            for n in self.nodes:
                self.start_sender(n)
            log(f"workload {a.duration:g} s at {self.loss:.0%} loss; faults: "
                + ("; ".join(f.describe() for f in faults) or "none"))
            self.drive(faults)
            # Heal: every fault and the loss off, then stop the senders (their last safe
            # sends may need the healed ring to complete).
            self.net.set_rules([])
            self.stop_file.write_text("stop")
            for n in self.nodes:
                if n.sender is not None:
                    try:
                        n.sender.wait(SENDER_STOP_TIMEOUT_S)
                    except subprocess.TimeoutExpired:
                        log(f"{n.name}: sender still waiting for a reply; stopping it")
                        self.procs.stop(n.sender)
            t_heal = time.monotonic()
            settled = True
            try:
                wait_for("one ring of all nodes after the heal", self.one_ring, SETTLE_TIMEOUT_S, 0.3)
                heal_s = time.monotonic() - t_heal
                probes = self.send_probes()
                wait_for("probe messages at every subscriber", lambda: self.probes_delivered(probes),
                         PROBE_TIMEOUT_S, 0.3)
            except LabError as exc:
                log(f"liveness: {exc}")
                settled = False
                heal_s = None
                probes = getattr(self, "_probes", [])
            finals = [self.status(n) for n in self.nodes]
            for n in self.nodes:
                if n.subscriber is not None:
                    self.procs.stop(n.subscriber)
            drops = self.net.totals()
            return self.analyse(faults, finals, probes, settled, heal_s, drops)
        finally:
            teardown(self.procs, self.net)

    def drive(self, faults: list[Fault]) -> None:
        """Apply and heal faults on schedule; restarted daemons' subscribers are published."""
        t0 = time.monotonic()
        self.t0_ns = time.time_ns()
        timeline = sorted([(f.start, 1, i) for i, f in enumerate(faults)]
                          + [(f.end, 0, i) for i, f in enumerate(faults)])
        active: list[Fault] = []
        for at, on, i in timeline + [(self.args.duration, 0, -1)]:
            while time.monotonic() - t0 < at:
                for n in self.nodes:
                    self.sub_ready(n)
                time.sleep(min(0.1, max(at - (time.monotonic() - t0), 0)))  # the schedule's pacing
            if i < 0:
                break
            f = faults[i]
            if on:
                active.append(f)
                self.fault_on(f, active)
            else:
                active.remove(f)
                self.fault_off(f, active)
        # A restarted node's subscriber must be in before the heal checks.
        wait_for("restarted subscribers", lambda: all(self.sub_ready(n) for n in self.nodes), 30)

    def send_probes(self) -> list[tuple[str, int, str, int]]:
        """One agreed message from every node, from the lab itself (host namespace, by the
        daemon's socket path): every live node must deliver all of them."""
        from ringd.client import BlockingRingClient
        from ringd.lab_history import make_payload
        probes = []
        self._probes = probes
        for n in self.nodes:
            msg_id = 10**9 + n.index
            now = time.time_ns()
            data = make_payload(n.name, msg_id, now, probe=True)
            with BlockingRingClient(n.sock, timeout_s=20) as c:
                c.send(GROUP, [data])
            probes.append((n.name, msg_id, data, n.incarnation))
        return probes

    def probes_delivered(self, probes: list[tuple[str, int, str, int]]) -> bool:
        want = {p[2] for p in probes}
        for n in self.nodes:
            path = n.sub_logs[-1][1]
            text = path.read_text() if path.exists() else ""
            if not all(w in text for w in want):
                return False
        return True

    # -- checks and numbers --

    def analyse(self, faults: list[Fault], finals: list[dict[str, Any] | None],
                probes: list[tuple[str, int, str, int]], settled: bool, heal_s: float | None,
                drops: tuple[int, int]) -> dict[str, Any]:
        from ringd.lab_history import (
            SentMessage,
            SubscriberLog,
            build_history,
            check_group_sync,
            group_view_splits,
            parse_payload,
        )
        from ringd.lab_quorum import read_daemon_logs
        from ringd.sim.checkers import FinalNode, check_liveness, check_safety

        subs = [SubscriberLog.read(path, n.name, inc, crashed)
                for n in self.nodes for inc, path, crashed in n.sub_logs if path.exists()]
        sent: list[SentMessage] = []
        acked = 0
        for n in self.nodes:
            path = self.dir / f"send-{n.name}.jsonl"
            tries: dict[int, dict[str, Any]] = {}
            oks: set[int] = set()
            if path.exists():
                for line in path.read_text().splitlines():
                    with contextlib.suppress(json.JSONDecodeError):
                        r = json.loads(line)
                        if r["op"] == "try":
                            tries[r["ids"][0]] = r
                        elif r["op"] == "ok":
                            oks.add(r["ids"][0])
            for first, r in tries.items():
                for msg_id, data in zip(r["ids"], r["data"], strict=True):
                    sent.append(SentMessage(n.name, msg_id, data.encode(), r["safe"], r["inc"],
                                            acked=first in oks, sent_ns=r["t"]))
                if first in oks:
                    acked += len(r["ids"])
        for name, msg_id, data, inc in probes:
            sent.append(SentMessage(name, msg_id, data.encode(), False, inc, acked=True, probe=True))
        fin = {}
        for n, s in zip(self.nodes, finals, strict=True):
            if s is not None:
                from ringd.lab_history import parse_ring
                t = s["totem"]
                fin[n.name] = FinalNode(node=n.name, incarnation=n.incarnation, state=t["state"].upper(),
                                        ring_id=parse_ring(t["ring"]) if t.get("ring") else None,
                                        members=tuple(t["members"]))
        lab = build_history(subs, sent, fin)
        violations = check_safety(lab.history, eventual=settled)
        violations += check_liveness(lab.history, [n.name for n in self.nodes])
        violations += check_group_sync(subs, settled=settled)
        # One primary component at a time, from the daemons' own logs (ringd.lab_quorum).
        quorum = read_daemon_logs([(n.name, self.dir / f"{n.name}.log") for n in self.nodes],
                                  self.kills, self.started_wall)
        violations += quorum.check()

        # Numbers: regular configurations after the first, per node over its incarnations.
        regulars: dict[str, int] = {}
        installed_at: dict[str, list[float]] = {}  # seconds into the workload, per node
        delivered: dict[str, set[tuple[str, int]]] = {}
        lat: list[float] = []
        for sub in subs:
            for r in sub.events():
                if r["ev"] == "config" and r["kind"] == "regular":
                    regulars[sub.node] = regulars.get(sub.node, 0) + 1
                    installed_at.setdefault(sub.node, []).append(round((r["t"] - self.t0_ns) / 1e9, 2))
                elif r["ev"] == "message":
                    for item in r["data"]:
                        p = parse_payload(item)
                        if p is None or p[3]:
                            continue
                        key = (p[0], p[1])
                        if key not in delivered.setdefault(sub.node, set()):
                            delivered[sub.node].add(key)
                            lat.append((r["t"] - p[2]) / 1e6)
        lat.sort()
        by_prop: dict[str, int] = {}
        for v in violations:
            by_prop[v.prop] = by_prop.get(v.prop, 0) + 1

        def q(f: float) -> float | None:
            return round(lat[min(len(lat) - 1, int(f * len(lat)))], 2) if lat else None

        counters = {}
        for n, s in zip(self.nodes, finals, strict=True):
            if s is None:
                continue
            st = s["totem"]["stats"]
            counters[n.name] = {k: st.get(k) for k in (
                "rings_formed", "gather_entered", "token_lost", "consensus_timeouts", "fail_to_recv",
                "token_retx", "mcast_retx", "rtr_requested", "foreign_rx", "flap_held_hints")}
            counters[n.name]["gossip_suspicions"] = s["gossip"].get("suspicions_raised")
            counters[n.name]["gossip_members_dead"] = s["gossip"].get("members_confirmed_dead")
        return {
            "system": "ringd",
            "nodes": self.args.nodes,
            "loss": self.loss,
            "nemesis": list(self.args.nemesis),
            "duration_s": self.args.duration,
            "reconfigurations": max((c - 1 for c in regulars.values()), default=0),
            "sent": acked,
            "delivered_min": min((len(delivered.get(n.name, ())) for n in self.nodes), default=0),
            "evs_violations": len(violations),
            # Regular configurations decided primary (quorate), all checked for one primary
            # component at a time (properties dual-primary, primary-chain, quorum-agreement).
            "primary_configurations": quorum.primary_configurations,
            "latency_p50_ms": q(0.5),
            "latency_p99_ms": q(0.99),
            "violations": [str(v) for v in violations[:20]],
            "violations_by_property": by_prop,
            # Report only (see ringd.lab_history.group_view_splits): messages delivered
            # under different group views at different subscribers, after merges.
            "group_view_splits": group_view_splits(subs),
            "faults": [f.describe() for f in faults],
            # When the member that saw the most regular configurations installed those after
            # its first (seconds into the workload).
            "regular_configs_at_s": max(installed_at.values(), key=len, default=[])[1:],
            "liveness_heal_s": round(heal_s, 2) if heal_s is not None else None,
            "unacked_delivered": lab.unacked_delivered,
            "packets_forwarded": drops[0],
            "packets_dropped": drops[1],
            "counters": counters,
            "dir": str(self.dir),
        }


# --- Corosync ------------------------------------------------------------------------------


class CorosyncLab:
    """The same lab, schedule and loss with Corosync 3 (udp multicast, default timings) and
    cpgbench (one sender at ``--rate`` x 3 msgs/s, a monitor on every node for totem changes).
    Corosync's config comes from the anchor's lib.sh ``gen_conf``; the network is this
    script's, with its own per-run names."""

    def __init__(self, args: argparse.Namespace, loss: float, workdir: Path, prefix: str) -> None:
        self.args = args
        self.loss = loss
        self.dir = workdir
        self.net = Net(prefix, args.nodes)
        self.procs = Procs()
        self.corosync: list[subprocess.Popen[bytes]] = []

    @staticmethod
    def preflight(anchors: Path) -> str | None:
        """Why Corosync cannot run here, or None."""
        for tool in ("corosync", "corosync-quorumtool", "gcc", "nsenter", "unshare"):
            if shutil.which(tool) is None:
                return f"{tool} not found (apt-get install corosync libcpg-dev gcc)"
        if not (anchors / "lib.sh").exists() or not (anchors / "cpgbench.c").exists():
            return f"no lib.sh/cpgbench.c in {anchors} (--corosync-anchors)"
        return None

    def build(self, anchors: Path) -> Path:
        bench = self.dir / "cpgbench"
        r = subprocess.run(["gcc", "-O2", "-o", str(bench), str(anchors / "cpgbench.c"), "-lcpg"],
                           capture_output=True, text=True, timeout=120)
        if r.returncode != 0:
            raise LabError(f"cannot build cpgbench: {r.stderr.strip().splitlines()[-1:]}")
        # lib.sh's gen_conf writes $RUN/nI/corosync.conf; point it at this run's addresses.
        script = (f'D={self.dir}; . {anchors / "lib.sh"}; SUB={SUBNET}; RUN={self.dir}/run; '
                  f"gen_conf {self.args.nodes} udp default")
        r = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=30)
        if r.returncode != 0:
            raise LabError(f"lib.sh gen_conf failed: {r.stderr.strip()}")
        return bench

    def node_exec(self, k: int, cmd: list[str], out: Path) -> subprocess.Popen[bytes]:
        pid = self.corosync[k].pid
        return self.procs.start(["nsenter", "-t", str(pid), "-n", "-m", *cmd], out)

    def crashed(self) -> list[str]:
        """Corosync processes that exited, with the last line they printed (an assertion)."""
        out = []
        for k, p in enumerate(self.corosync):
            if p.poll() is not None:
                text = (self.dir / f"corosync-n{k + 1}.out").read_text(errors="replace").strip()
                out.append(f"n{k + 1} exited {p.returncode}: {text.splitlines()[-1] if text else ''}")
        return out

    def members_ok(self) -> bool:
        if dead := self.crashed():
            raise LabError("corosync " + "; ".join(dead))
        pid = self.corosync[0].pid
        r = subprocess.run(["nsenter", "-t", str(pid), "-n", "-m", "corosync-quorumtool", "-s"],
                           capture_output=True, text=True, timeout=10)
        return any(line.split()[:2] == ["Total", "votes:"] and line.split()[2] == str(self.args.nodes)
                   for line in r.stdout.splitlines() if len(line.split()) >= 3)

    def run(self, anchors: Path) -> dict[str, Any]:
        a = self.args
        rng = random.Random(f"{a.seed}-{self.loss}")
        names = list(a.nemesis)
        faults = schedule(names, rng, a.nodes, a.duration, a.nemesis_start, self.loss, a.nemesis_count,
                          a.nemesis_span)
        skipped = [f.describe() for f in faults if not (f.cuts or f.link_loss or f.name == "bridge-flap")]
        # Only the network faults are replayed against Corosync (same times, same cuts).
        faults = [f for f in faults if f.cuts or f.link_loss or f.name == "bridge-flap"]
        try:
            bench = self.build(anchors)
            self.net.up()
            for k, ns in enumerate(self.net.node_ns):
                conf = self.dir / "run" / f"n{k + 1}" / "corosync.conf"
                # Own mount namespace: a private /run (pid lock, libqb sockets) and /dev/shm.
                p = self.procs.start(["ip", "netns", "exec", ns, "unshare", "-m", "--propagation", "private",
                                      "sh", "-c", "mount -t tmpfs tmpfs /run && mount -t tmpfs tmpfs /dev/shm "
                                      f"&& exec corosync -f -c {conf}"], self.dir / f"corosync-n{k + 1}.out")
                self.corosync.append(p)
            wait_for("corosync membership of all nodes", self.members_ok, RING_FORM_TIMEOUT_S, 0.3)
            mons = [self.node_exec(k, [str(bench), "-m", "mon", "-g", "mon"], self.dir / f"mon{k + 1}.txt")
                    for k in range(a.nodes)]
            time.sleep(1)  # let the monitors join before the first fault (startup pacing)
            self.net.set_rules(drop_rules(self.net, self.loss, []))
            group = f"g{rng.randrange(10**6)}"
            rate = a.rate * 3
            benches = [self.node_exec(k, [str(bench), "-m", "run", "-g", group, "-N", str(a.nodes), "-e", "1",
                                          *(["-S"] if k == 0 else []), "-s", "100", "-d", str(a.duration),
                                          "-r", str(rate), "-o", str(self.dir / f"order{k + 1}.bin")],
                                      self.dir / f"bench{k + 1}.txt") for k in range(a.nodes)]
            t0 = time.monotonic()
            self.t0_ns = time.time_ns()
            timeline = sorted([(f.start, 1, i) for i, f in enumerate(faults)]
                              + [(f.end, 0, i) for i, f in enumerate(faults)])
            active: list[Fault] = []
            for at, on, i in timeline:
                while time.monotonic() - t0 < at:
                    time.sleep(min(0.1, max(at - (time.monotonic() - t0), 0)))
                f = faults[i]
                if on:
                    active.append(f)
                    if f.name == "bridge-flap":
                        self.net.bridge_link(False)
                else:
                    active.remove(f)
                    if f.name == "bridge-flap":
                        self.net.bridge_link(True)
                self.net.set_rules(drop_rules(self.net, self.loss, active))
            # cpgbench nodes wait for the sender's END marker; a node cut off when it was sent
            # never gets it: stop them 20 s after the end (SIGTERM prints their result).
            end = t0 + a.duration + 20
            for b in benches:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    b.wait(max(end - time.monotonic(), 0.1))
                if b.poll() is None:
                    self.procs.stop(b)
            self.net.set_rules([])
            healed = True
            try:
                wait_for("corosync membership of all nodes after the heal", self.members_ok, SETTLE_TIMEOUT_S, 0.3)
            except LabError:
                healed = False
            crashed = self.crashed()
            for m in mons:
                self.procs.stop(m)
            return self.analyse(faults, skipped, healed, crashed)
        finally:
            teardown(self.procs, self.net)

    def analyse(self, faults: list[Fault], skipped: list[str], healed: bool,
                crashed: list[str]) -> dict[str, Any]:
        import struct
        results = []
        for k in range(self.args.nodes):
            text = (self.dir / f"bench{k + 1}.txt").read_text()
            line = next((ln for ln in text.splitlines() if ln.startswith("RESULT")), "")
            results.append(dict(kv.split("=", 1) for kv in line.split()[1:] if "=" in kv))
        # Order check (weaker than ringd's: one sender, so every node's sequence of its
        # message seqs must be increasing without duplicates, and common ones in one order).
        seqs = []
        for k in range(self.args.nodes):
            p = self.dir / f"order{k + 1}.bin"
            raw = p.read_bytes() if p.exists() else b""
            seqs.append([struct.unpack_from("<IIQ", raw, i)[2] for i in range(0, len(raw) - len(raw) % 16, 16)])
        violations = sum(1 for s in seqs if any(b <= a for a, b in zip(s, s[1:], strict=False)))
        changes = []
        installed_at: list[float] = []
        for k in range(self.args.nodes):
            p = self.dir / f"mon{k + 1}.txt"
            lines = [ln for ln in (p.read_text().splitlines() if p.exists() else []) if ln.startswith("TOTEM")]
            changes.append(len(lines))
            at = [round((int(ln.split()[1][2:]) - self.t0_ns) / 1e9, 2) for ln in lines[1:]]
            installed_at = at if len(at) > len(installed_at) else installed_at
        p50 = [float(r["all_lat_us_p50"]) / 1000 for r in results if float(r.get("all_lat_us_p50", -1)) >= 0]
        p99 = [float(r["all_lat_us_p99"]) / 1000 for r in results if float(r.get("all_lat_us_p99", -1)) >= 0]
        return {
            "system": "corosync",
            "nodes": self.args.nodes,
            "loss": self.loss,
            "nemesis": list(self.args.nemesis),
            "duration_s": self.args.duration,
            # The monitor's first TOTEM line is the ring it started in (initial totem conf).
            "reconfigurations": max((c - 1 for c in changes), default=0),
            "sent": int(results[0].get("sent", 0)) if results else 0,
            "delivered_min": min((len(s) for s in seqs), default=0),
            "evs_violations": violations,
            "latency_p50_ms": round(sorted(p50)[len(p50) // 2], 2) if p50 else None,
            "latency_p99_ms": round(max(p99), 2) if p99 else None,
            "faults": [f.describe() for f in faults],
            "regular_configs_at_s": installed_at,
            "faults_not_replayed": skipped,
            "healed": healed,
            "crashed": crashed,
            "packets_forwarded": self.net.seen,
            "packets_dropped": self.net.dropped,
            "check": "cpgbench: one sender; each node's delivered seqs increase (order, no duplicates)",
            "dir": str(self.dir),
        }


# --- main ----------------------------------------------------------------------------------


def print_table(rows: list[dict[str, Any]]) -> None:
    cols = ["system", "nodes", "loss", "nemesis", "duration_s", "reconfigurations", "sent",
            "delivered_min", "evs_violations", "latency_p50_ms", "latency_p99_ms"]
    cells = [[",".join(r[c]) or "-" if c == "nemesis" else str(r[c]) for c in cols] for r in rows]
    widths = [max(len(c), *(len(x[i]) for x in cells)) for i, c in enumerate(cols)]
    print("  ".join(c.ljust(w) for c, w in zip(cols, widths, strict=True)))
    for x in cells:
        print("  ".join(v.ljust(w) for v, w in zip(x, widths, strict=True)))
    for r in rows:
        for v in r.get("violations", [])[:5]:
            print(f"  {r['system']} loss={r['loss']}: {v}")


def preflight() -> str | None:
    if os.geteuid() != 0:
        return "needs root (network namespaces and nftables)"
    for tool in ("ip", "nft"):
        if shutil.which(tool) is None:
            return f"needs {tool} (apt-get install iproute2 nftables)"
    return None


@contextlib.contextmanager
def bounded(seconds: float) -> Iterator[None]:
    """Ctrl-C, SIGTERM, SIGHUP and a hard alarm all raise in the main thread, so ``finally`` blocks
    clean up the namespaces and processes whatever stops the run."""

    def on_signal(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    # SIGINT too: a shell starts background jobs with SIGINT ignored, and Python then
    # installs no KeyboardInterrupt handler of its own.
    old = {s: signal.signal(s, on_signal) for s in STOP_SIGNALS}
    signal.alarm(int(seconds))
    try:
        yield
    finally:
        signal.alarm(0)
        for s, h in old.items():
            signal.signal(s, h)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "_subscriber":
        return worker_subscriber(*argv[1:])
    if argv and argv[0] == "_sender":
        return worker_sender(*argv[1:])
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--nodes", type=int, default=3)
    p.add_argument("--loss", type=float, nargs="+", default=[0.0],
                   help="loss on every link, 0-1; several values run one lab each")
    p.add_argument("--duration", type=float, default=30.0, help="seconds of workload per run")
    p.add_argument("--nemesis", action="append", default=[], choices=NEMESES,
                   help="fault to inject (repeatable); faults follow each other on a seeded schedule")
    p.add_argument("--nemesis-start", type=float, default=None,
                   help="seconds into the workload of the first fault (default: seeded 2-5 s)")
    p.add_argument("--nemesis-count", type=int, default=None, help="at most this many faults")
    p.add_argument("--nemesis-span", type=float, default=None, help="seconds each fault lasts (default: seeded)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--rate", type=float, default=20.0, help="send calls per second per node")
    p.add_argument("--daemon-set", action="append", default=[], metavar="KEY=VALUE",
                   help="config key for every daemon (ringd run --set)")
    p.add_argument("--corosync", action="store_true", help="also run Corosync on the same schedule")
    p.add_argument("--corosync-anchors", type=Path, default=DEFAULT_ANCHORS,
                   help="directory with the anchor's lib.sh and cpgbench.c")
    p.add_argument("--json", type=Path, default=None, help="write {\"runs\": [...]} here")
    p.add_argument("--keep", action="store_true", help="keep the run directories (logs)")
    a = p.parse_args(argv)
    if a.nodes < 2 or a.nodes > 200:
        p.error("--nodes must be 2..200")
    if any(not 0 <= x < 1 for x in a.loss):
        p.error("--loss must be in [0, 1)")
    if problem := preflight():
        print(f"netlab: {problem}", file=sys.stderr)
        return 2
    if a.corosync and (problem := CorosyncLab.preflight(a.corosync_anchors)):
        print(f"netlab: --corosync: {problem}", file=sys.stderr)
        return 2
    rows: list[dict[str, Any]] = []
    failed = False
    per_run = a.duration + RING_FORM_TIMEOUT_S + SETTLE_TIMEOUT_S + PROBE_TIMEOUT_S + SENDER_STOP_TIMEOUT_S + 60
    runs = len(a.loss) * (2 if a.corosync else 1)
    with bounded(per_run * runs):
        for i, loss in enumerate(a.loss):
            systems = ["ringd"] + (["corosync"] if a.corosync else [])
            for system in systems:
                prefix = f"nl{os.getpid() % 100000}{i}{system[0]}"
                workdir = Path(tempfile.mkdtemp(prefix=f"netlab-{system}-"))
                try:
                    if system == "ringd":
                        row = RingdLab(a, loss, workdir, prefix).run()
                    else:
                        try:
                            row = CorosyncLab(a, loss, workdir, prefix).run(a.corosync_anchors)
                        except LabError as exc:
                            # Corosync 3.1.7 sometimes asserts in orf_token_rtr while three
                            # nodes start at once: say so and try a fresh lab once more.
                            log(f"corosync: {exc}; logs in {workdir}; one more try")
                            first_error = str(exc)
                            workdir = Path(tempfile.mkdtemp(prefix=f"netlab-{system}-"))
                            row = CorosyncLab(a, loss, workdir, prefix + "r").run(a.corosync_anchors)
                            row["first_attempt_error"] = first_error
                except LabError as exc:
                    print(f"netlab: {system} at loss {loss}: {exc} (logs in {workdir})", file=sys.stderr)
                    failed = True
                    continue
                rows.append(row)
                log(f"{system} loss={loss}: {row['evs_violations']} violation(s), "
                    f"{row['reconfigurations']} reconfiguration(s)")
                if not a.keep and row["evs_violations"] == 0:
                    shutil.rmtree(workdir, ignore_errors=True)
                    row["dir"] = None
    print_table(rows)
    if a.json:
        a.json.write_text(json.dumps({"runs": rows}, indent=1) + "\n")
    return 1 if failed or any(r["evs_violations"] for r in rows) else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt as exc:
        print(f"netlab: interrupted ({exc}); cleaned up", file=sys.stderr)
        sys.exit(130)
