#!/usr/bin/env python3
"""Ordered-delivery (Totem ring) benchmark: real ringd daemons on loopback, default `local`
preset and default Totem timings, N = 3 and 5 by default. Method follows the Corosync anchor
(shared/anchors/corosync, cpgbench) so the numbers are comparable:

  throughput  every node has a subscriber process joined to the group; once every subscriber
              sees all N members, one sender (or every node's sender) sends batches of
              --batch messages flat out for --duration-s, then an END marker. Each subscriber
              counts from its first to its last delivery -> msgs/s and MB/s per node, and
              hashes the (sender, ring, seq, data) sequence: identical on all nodes = total order.
  percall     the same with one sender on node 0 and 100 B messages, sent as applications
              do: one message per call, from one task (`await ring.send(g, m)` in a loop),
              from --tasks tasks of one process, with `submit` + `flush` from one task, from
              the blocking client (send, and submit + flush), and through `ringd send`
              reading lines on stdin; each row beside Corosync's cpgbench (one message per
              cpg_mcast_joined call), measured in the same hour with --corosync-throughput.
  latency     100-byte messages at --rate msgs/s per sender (one sender on the last node, which
              is not the representative, then every node),
              carrying time.monotonic_ns(); p50/p99 of every delivery on every node, and of the
              senders' own self-deliveries; agreed and safe.
  failover    kill -9 of one daemon (rotating) -> the LAST survivor's monitor client receives the
              regular configuration without it; then restart it (same state dir) -> the regular
              configuration with it at the last member (from `status` answering, and from spawn).
  resources   CPU % (of one core) and RSS per daemon, idle, during the all-senders 100 B run, and
              idle again after the throughput runs (the ring must go quiet after a burst).
  soak        (--soak-s) N = 3, every node sending 100 B for S seconds; monitors count
              configuration changes (each one is spurious: nobody fails).

Senders and subscribers are separate worker processes (`bench_ring.py worker ...`). Everything
binds 127.0.0.1; each run has its own cluster name and multicast port; every process started is
killed by PID at the end, also on Ctrl-C or an error.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from bench_gossip import Cluster, Daemon, ask, count_alive, proc_cpu_s, proc_rss_mib
from bench_ring_worker import add_worker_parser, worker_main
from ringd.client import ClientError, ConfigEvent, RingClient

SCRIPT = Path(__file__).resolve()
POLL_S = 0.002
RING_TIMEOUT_S = 60.0

# shared/anchors/corosync/results/summary.md, transport udp (multicast) with udpu in brackets.
COROSYNC_TPUT = {  # (nodes, bytes, all senders) -> msgs/s per node (udp, udpu)
    (3, 100, False): (33_378, 50_250), (3, 100, True): (37_490, 57_689),
    (3, 1000, False): (33_095, 31_442), (3, 1000, True): (30_872, 30_668),
    (5, 100, False): (23_616, 19_464), (5, 100, True): (22_214, 19_529),
    (5, 1000, False): (23_269, 18_155), (5, 1000, True): (16_994, 14_024),
}
COROSYNC_LAT = {  # (nodes, all senders) -> all deliveries p50, p99 ms (udp)
    (3, False): (0.486, 0.917), (3, True): (0.329, 0.810),
    (5, False): (0.426, 1.040), (5, True): (0.281, 1.014),
}
CPGBENCH_TPUT_LINE = re.compile(r"tr=(\S+) nodes=(\d+) .*?size=(\d+) senders=(\d+) RESULT .*?rx_msgs_per_s=([\d.]+)")
CPGBENCH_LINE = re.compile(r"nodes=(\d+) .*?senders=(\d+) .*?all_lat_us_p50=([\d.]+) all_lat_us_p99=([\d.]+)")


def corosync_latency(path: Path) -> dict[tuple[int, bool], tuple[float, float]]:
    """Corosync latency measured beside this run: the anchor's ``results/latency.txt`` (one
    cpgbench RESULT line per node and run) -> (nodes, all senders) -> median over nodes of
    all-delivery p50 and p99, in ms. Host noise moves both programs alike, so numbers taken
    in the same hour compare better than the anchor's fixed ones."""
    per_run: dict[tuple[int, bool], list[tuple[float, float]]] = {}
    for line in path.read_text().splitlines():
        m = CPGBENCH_LINE.search(line)
        if m and float(m[3]) >= 0:
            key = (int(m[1]), int(m[2]) > 1)
            per_run.setdefault(key, []).append((float(m[3]) / 1000, float(m[4]) / 1000))
    if not per_run:
        raise SystemExit(f"bench_ring: no cpgbench latency results in {path}")
    return {k: (round(statistics.median(x for x, _ in v), 3), round(statistics.median(y for _, y in v), 3))
            for k, v in per_run.items()}


def corosync_throughput(path: Path) -> dict[tuple[int, int, bool], dict[str, float]]:
    """Corosync throughput measured beside this run: the anchor's ``results/throughput.txt``
    (one line per node and run, ``tr=T nodes=N token=... size=S senders=K RESULT node=...
    rx_msgs_per_s=R ...``) -> (nodes, bytes, all senders) -> transport -> the slowest node's
    msgs/s (median over repeated runs). cpgbench sends one message per cpg_mcast_joined call."""
    per_run: dict[tuple[int, int, bool, str], dict[int, float]] = {}
    runs: dict[tuple[int, int, bool, str], list[float]] = {}
    for line in path.read_text().splitlines():
        m = CPGBENCH_TPUT_LINE.search(line)
        if not m:
            continue
        key = (int(m[2]), int(m[3]), int(m[4]) > 1, m[1])
        node = int(re.search(r"RESULT node=(\d+)", line)[1])  # type: ignore[index]
        run = per_run.setdefault(key, {})
        if node in run:  # a repeated run starts: close the previous one
            runs.setdefault(key, []).append(min(run.values()))
            run.clear()
        run[node] = float(m[5])
    for key, run in per_run.items():
        if run:
            runs.setdefault(key, []).append(min(run.values()))
    if not runs:
        raise SystemExit(f"bench_ring: no cpgbench throughput results in {path}")
    out: dict[tuple[int, int, bool], dict[str, float]] = {}
    for (n, size, every, tr), values in runs.items():
        out.setdefault((n, size, every), {})[tr] = round(statistics.median(values))
    return out


def corosync_for(n: int, size: int, every: bool,
                 side_by_side: dict[tuple[int, int, bool], dict[str, float]] | None) -> tuple[str, float] | None:
    """(label, msgs/s per node) of Corosync to compare with: the best transport measured beside
    this run, else the anchor's fixed udp multicast number."""
    if side_by_side:
        by_tr = side_by_side.get((n, size, every))
        if by_tr:
            tr, value = max(by_tr.items(), key=lambda kv: kv[1])
            return f"{tr}, same run", value
        return None
    fixed = COROSYNC_TPUT.get((n, size, every))
    return ("udp, anchor", fixed[0]) if fixed else None


# Per-call rows: name -> (label, worker mode, tasks).
PERCALL_MODES = {
    "send": ("send, 1 task", "call", 1),
    "send-tasks": ("send, {tasks} tasks", "call", 0),  # 0: --tasks
    "submit": ("submit + flush, 1 task", "submit", 1),
    "blocking": ("blocking send", "blocking", 1),
    "blocking-submit": ("blocking submit + flush", "blocking-submit", 1),
    "cli": ("ringd send < lines", "cli", 1),
}


COROSYNC_RES = {  # nodes -> idle CPU %, idle RSS MiB, load CPU % (all senders 100 B), load RSS MiB
    3: (0.2, 14.4, 51.3, 18.2), 5: (0.2, 14.4, 26.9, 17.9),
}
TARGET = {"lat_p50_ms": 1.0, "lat_p99_ms": 5.0, "failover_s": 1.5, "join_s": 0.3, "rss_mib": 60.0}

WORKERS: list[subprocess.Popen[bytes]] = []  # every worker process started, killed at the end


def kill_workers(procs: list[subprocess.Popen[bytes]] | None = None) -> None:
    """SIGKILL ``procs`` (default: every worker started) and reap them."""
    procs = WORKERS if procs is None else procs
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGKILL)
    for p in procs:
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


# --- the cluster ---------------------------------------------------------------------------


def new_cluster(root: Path, tag: str, n: int, settings: list[str] | None = None) -> Cluster:
    rnd = random.Random()
    extra = [arg for item in settings or [] for arg in ("--set", item)]
    c = Cluster(root / tag, f"ring{tag}-{rnd.randrange(1 << 30):x}", rnd.randrange(20000, 60000), extra)
    c.root.mkdir(parents=True)
    for i in range(n):
        c.spawn(f"r{i}")
    return c


def totem_members(reply: dict[str, Any] | None) -> list[str]:
    totem = (reply or {}).get("totem") or {}
    return sorted(totem.get("members", [])) if totem.get("state") == "operational" else []


async def wait_ring(daemons: list[Daemon], timeout_s: float = RING_TIMEOUT_S) -> float:
    """Poll until every daemon is Operational on one ring of exactly these daemons."""
    want = sorted(d.name for d in daemons)
    t0 = time.monotonic()
    while True:
        replies = [await ask(d, "status") for d in daemons]
        alive = [count_alive(await ask(d, "members") or {}) for d in daemons]
        if all(totem_members(r) == want for r in replies) and min(alive) >= len(daemons):
            return time.monotonic() - t0
        if time.monotonic() - t0 > timeout_s:
            raise TimeoutError(f"no ring of {want} within {timeout_s}s: {[totem_members(r) for r in replies]}")
        await trio.sleep(0.05)  # poll


# --- resources -----------------------------------------------------------------------------


async def sample_resources(pids: list[int], seconds: float) -> dict[str, list[float]]:
    """CPU % of one core over ``seconds`` and the max RSS MiB seen (sampled every 0.25 s)."""
    cpu0 = {p: proc_cpu_s(p) for p in pids}
    rss = {p: proc_rss_mib(p) for p in pids}
    t0 = time.monotonic()
    end = t0 + seconds
    while time.monotonic() < end:
        await trio.sleep(min(0.25, max(0.0, end - time.monotonic())))  # sampling period
        for p in pids:
            rss[p] = max(rss[p], proc_rss_mib(p))
    wall = time.monotonic() - t0
    return {"cpu_pct": [100 * (proc_cpu_s(p) - cpu0[p]) / wall for p in pids], "rss_mib": [rss[p] for p in pids]}


# --- traffic runs (worker processes) -------------------------------------------------------


@dataclass
class Traffic:
    """One run: subscribers on every node, senders on ``senders`` nodes."""

    size: int
    senders: list[int]
    duration_s: float
    rate: float = 0.0  # 0: flat out, batches; else msgs/s per sender, one per send
    safe: bool = False
    join_senders: bool = False  # senders join the group and measure self-delivery
    msg_cap: float = 0.0  # flat out: msgs/s cap per sender (0 = none)
    mode: str = "batch"  # the sender's --mode (see bench_ring_worker.py)
    tasks: int = 1  # mode "call": sending tasks
    extra: dict[str, Any] = field(default_factory=dict)


def spawn_worker(args: list[str], log: Path) -> subprocess.Popen[bytes]:
    with open(log, "ab") as fh:
        p = subprocess.Popen([sys.executable, str(SCRIPT), "worker", *args], stdout=fh,
                             stderr=subprocess.STDOUT, start_new_session=True)
    WORKERS.append(p)
    return p


async def run_traffic(c: Cluster, t: Traffic, a: argparse.Namespace, tag: str,
                      load_sample: bool = False) -> dict[str, Any]:
    daemons = list(c.daemons.values())
    work = c.root / tag
    work.mkdir()
    group = f"g{tag}"
    go = work / "go"
    # Joined senders are their node's subscriber too (one process per node, like cpgbench).
    sub_nodes = [i for i in range(len(daemons)) if not (t.join_senders and i in t.senders)]
    expect = len(daemons)
    subs, sends = [], []
    common = ["--group", group, "--timeout-s", str(t.duration_s + 120), "--senders", str(len(t.senders)),
              "--expect", str(expect)]
    for i, d in enumerate(daemons):
        if i not in sub_nodes:
            continue
        out = work / f"sub{i}.json"
        p = spawn_worker(["sub", "--socket", str(d.sock), "--out", str(out), "--ready", str(work / f"ready{i}"),
                          *common], work / f"sub{i}.log")
        subs.append((p, out))
    for i in t.senders:
        out = work / f"send{i}.json"
        extra = ["--rate", str(t.rate), "--batch", "1" if t.rate > 0 else str(a.batch), "--mode", t.mode,
                 "--tasks", str(t.tasks), "--cli-lines", str(int(a.cli_rate * t.duration_s))]
        extra += ["--msg-cap", str(t.msg_cap)] if t.msg_cap else []
        extra += ["--safe"] if t.safe else []
        extra += ["--join"] if t.join_senders else []
        extra += ["--ready", str(work / f"ready{i}")] if t.join_senders else []
        # Paced (latency) senders keep normal priority: niceness would only add wake-up delay.
        nice = a.sender_nice if t.rate <= 0 else 0
        p = spawn_worker(["send", "--socket", str(daemons[i].sock), "--out", str(out), "--go", str(go),
                          "--sender-id", str(i), "--nice", str(nice), "--size", str(t.size),
                          "--inflight", str(a.inflight), "--duration-s", str(t.duration_s), *extra, *common],
                         work / f"send{i}.log")
        sends.append((p, out))
    deadline = time.monotonic() + RING_TIMEOUT_S
    while not all((work / f"ready{i}").exists() for i in range(len(daemons))):
        if time.monotonic() > deadline or any(p.poll() is not None for p, _ in subs + sends):
            raise RuntimeError(f"{tag}: subscribers not ready (logs in {work})")
        await trio.sleep(0.02)  # poll
    await trio.sleep(0.3)  # let the senders finish connecting (they poll `go` every ms)
    go.write_text("go\n")
    res: dict[str, Any] = {}
    if load_sample:
        await trio.sleep(min(1.0, t.duration_s / 4))  # skip the ramp-up
        pids = [d.proc.pid for d in daemons if d.proc]
        res["load"] = await sample_resources(pids, max(0.5, t.duration_s - 2 * min(1.0, t.duration_s / 4)))
    deadline = time.monotonic() + t.duration_s + 120
    while any(p.poll() is None for p, _ in subs + sends):
        if time.monotonic() > deadline:
            raise RuntimeError(f"{tag}: workers did not finish (logs in {work})")
        await trio.sleep(0.05)  # poll
    sub_out = [json.loads(o.read_text()) for _, o in subs]
    send_out = [json.loads(o.read_text()) for _, o in sends]
    for r in send_out:
        if "error" in r:
            raise RuntimeError(f"{tag}: sender failed: {r['error']} (logs in {work})")
    sub_out += [r["tally"] for r in send_out if "tally" in r]
    dropped = [r["error"] for r in sub_out if "error" in r]
    if dropped:  # the daemon drops a subscriber 32 MiB behind: the ring outpaced it
        return {"size": t.size, "senders": len(t.senders), "msg_cap": t.msg_cap, "dropped": dropped,
                "sent": sum(s["sent"] for s in send_out)}
    return summarize_traffic(t, sub_out, send_out, res)


def summarize_traffic(t: Traffic, subs: list[dict[str, Any]], sends: list[dict[str, Any]],
                      res: dict[str, Any]) -> dict[str, Any]:
    rates, mbs = [], []
    for s in subs:
        span = ((s["last_ns"] or 0) - (s["first_ns"] or 0)) / 1e9
        rates.append(s["count"] / span if span > 0 else 0.0)
        mbs.append(s["bytes"] / span / 1e6 if span > 0 else 0.0)
    lat = [x / 1e6 for s in subs for x in s["latency_ns"]]
    self_lat = [x / 1e6 for s in sends for x in s.get("self_latency_ns", [])]
    counts = {s["count"] for s in subs}
    orders = {s["order"] for s in subs}
    out = {
        "size": t.size, "senders": len(t.senders), "msg_cap": t.msg_cap, "dropped": [], "duration_s": t.duration_s, "rate": t.rate, "safe": t.safe,
        "msgs_per_s": rates, "mb_per_s": mbs, "delivered": [s["count"] for s in subs],
        "sent": sum(s["sent"] for s in sends), "send_calls": sum(s["send_calls"] for s in sends),
        "order_identical": len(orders) == 1 and len(counts) == 1,
        "all_delivered": counts == {sum(s["sent"] for s in sends)},
        "lat_p50_ms": pct(lat, 0.50), "lat_p99_ms": pct(lat, 0.99), "lat_samples": len(lat),
        "self_p50_ms": pct(self_lat, 0.50), "self_p99_ms": pct(self_lat, 0.99), "self_samples": len(self_lat),
        "send_errors": [e for s in sends for e in s.get("errors", [])][:5],
        "mode": t.mode, "tasks": t.tasks,
        "request_frames": sum(s.get("request_frames", 0) for s in sends),
        "client_send_calls": sum(s.get("client_send_calls", 0) for s in sends),
        **res,
    }
    return out


# --- monitors: configuration events timestamped in this process -----------------------------


class Monitor:
    """A RingClient joined to a monitor group on one daemon; records (time, ConfigEvent)."""

    def __init__(self, d: Daemon, group: str) -> None:
        self.daemon = d
        self.group = group
        self.configs: list[tuple[float, ConfigEvent]] = []
        self.lost = False

    async def run(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        started = False
        try:
            async with await RingClient.connect(self.daemon.sock) as c:
                await c.join(self.group)
                task_status.started()
                started = True
                async for b in c.batches():
                    if isinstance(b, ConfigEvent):
                        self.configs.append((time.monotonic(), b))
        except ClientError:
            self.lost = True  # its daemon was killed
            if not started:
                task_status.started()

    def regular_since(self, t0: float) -> list[tuple[float, ConfigEvent]]:
        return [(t, e) for t, e in self.configs if t >= t0 and e.kind == "regular"]

    def first_regular(self, t0: float, members: list[str]) -> float | None:
        for t, e in self.regular_since(t0):
            if sorted(e.members) == members:
                return t
        return None


async def wait_members_regular(mons: list[Monitor], t0: float, members: list[str], timeout_s: float) -> list[float]:
    deadline = time.monotonic() + timeout_s
    while True:
        seen = [m.first_regular(t0, members) for m in mons]
        if all(s is not None for s in seen):
            return [s for s in seen if s is not None]
        if time.monotonic() > deadline:
            raise TimeoutError(f"regular configuration {members} not seen by all monitors within {timeout_s}s")
        await trio.sleep(POLL_S)  # poll


async def failover(c: Cluster, a: argparse.Namespace, n: int) -> dict[str, Any]:
    names = sorted(c.daemons)
    trials = []
    async with trio.open_nursery() as nursery:
        mons: dict[str, Monitor] = {}
        for name in names:
            mons[name] = Monitor(c.daemons[name], "monitor")
            await nursery.start(mons[name].run)
        for k in range(a.failover_repeats):
            victim = names[(k + 1) % n]
            survivors = [x for x in names if x != victim]
            t_kill = time.monotonic()
            c.kill(victim)
            lasts = await wait_members_regular([mons[x] for x in survivors], t_kill, survivors, 60)
            t_detect = max(lasts)
            t_spawn = time.monotonic()
            d = c.spawn(victim)
            while await ask(d, "status") is None:
                if time.monotonic() - t_spawn > 30:
                    raise TimeoutError(f"{victim} did not answer status after restart")
                await trio.sleep(POLL_S)  # poll
            t_ready = time.monotonic()
            lasts = await wait_members_regular([mons[x] for x in survivors], t_ready, names, 60)
            t_self = None
            while t_self is None:  # its own monitor joined too late to see that configuration
                if totem_members(await ask(d, "status")) == names:
                    t_self = time.monotonic()
                elif time.monotonic() - t_ready > 60:
                    raise TimeoutError(f"{victim} never reached the full ring")
                else:
                    await trio.sleep(POLL_S)  # poll
            t_join = max([*lasts, t_self])
            reconf = max(len(mons[x].regular_since(t_kill)) for x in survivors)
            trans = max(len([1 for t, e in mons[x].configs if t >= t_kill and e.kind == "transitional"])
                        for x in survivors)
            trial = {"victim": victim, "failover_s": t_detect - t_kill, "join_from_ready_s": t_join - t_ready,
                     "join_from_spawn_s": t_join - t_spawn, "spawn_to_ready_s": t_ready - t_spawn,
                     "join_last_is_self": t_self >= max(lasts), "regular_configs": reconf,
                     "transitional_configs": trans}
            trials.append(trial)
            print(f"    trial {k + 1}: kill {victim}: failover {trial['failover_s']:.3f}s, join "
                  f"{trial['join_from_ready_s']:.3f}s from ready ({trial['join_from_spawn_s']:.3f}s from spawn), "
                  f"regular configs {reconf}, transitional {trans}", flush=True)
            mons[victim] = Monitor(d, "monitor")
            await nursery.start(mons[victim].run)
            await wait_ring([c.daemons[x] for x in names])
            await trio.sleep(1.0)  # let gossip settle before the next kill
        nursery.cancel_scope.cancel()
    fo = [t["failover_s"] for t in trials]
    jr = [t["join_from_ready_s"] for t in trials]
    js = [t["join_from_spawn_s"] for t in trials]
    return {"trials": trials, "failover_median_s": statistics.median(fo), "failover_all_s": fo,
            "join_from_ready_median_s": statistics.median(jr), "join_from_ready_all_s": jr,
            "join_from_spawn_median_s": statistics.median(js),
            "regular_configs_per_trial": [t["regular_configs"] for t in trials]}


# --- per N ---------------------------------------------------------------------------------


async def bench_n(n: int, a: argparse.Namespace, root: Path) -> dict[str, Any]:
    c = new_cluster(root, f"n{n}", n, a.daemon_set)
    res: dict[str, Any] = {"n": n}
    try:
        res["ring_formed_s"] = await wait_ring(list(c.daemons.values()))
        print(f"  N={n}: ring formed in {res['ring_formed_s']:.2f}s", flush=True)
        await trio.sleep(2.0)  # let start-up gossip drain before sampling idle cost
        pids = [d.proc.pid for d in c.daemons.values() if d.proc]
        res["idle"] = await sample_resources(pids, a.idle_s)
        print(f"  N={n}: idle cpu {fmt_list(res['idle']['cpu_pct'], 2)} % rss "
              f"{fmt_list(res['idle']['rss_mib'], 1)} MiB", flush=True)
        tput = []
        for size in (a.sizes if "throughput" in a.parts else []):
            single = 0.0
            for all_send in (False, True):
                senders = list(range(n)) if all_send else [0]
                t = Traffic(size=size, senders=senders, duration_s=a.duration_s)
                tag = f"t{n}-{size}-{len(senders)}"
                r = await run_traffic(c, t, a, tag, load_sample=(all_send and size == 100))
                if r["dropped"] and single > 0:
                    print(f"  N={n}: {size} B x {len(senders)} senders: {len(r['dropped'])} subscribers dropped "
                          f"by their daemon (fell 32 MiB behind); again with the total capped at "
                          f"{0.5 * single:,.0f} msgs/s", flush=True)
                    tput.append(r)
                    t.msg_cap = 0.5 * single / len(senders)
                    r = await run_traffic(c, t, a, tag + "c", load_sample=(all_send and size == 100))
                tput.append(r)
                if r["dropped"]:
                    print(f"  N={n}: {size} B x {len(senders)} senders: subscribers dropped", flush=True)
                    continue
                if not all_send:
                    single = min(r["msgs_per_s"])
                print(f"  N={n}: {size} B x {len(senders)} senders: {min(r['msgs_per_s']):,.0f}..."
                      f"{max(r['msgs_per_s']):,.0f} msgs/s, order {order_word(r)}", flush=True)
        res["throughput"] = tput
        percall = []
        for label, mode, tasks in (PERCALL_MODES[m] for m in (a.percall if "percall" in a.parts else [])):
            tasks = tasks or a.tasks
            t = Traffic(size=100, senders=[0], duration_s=a.duration_s, mode=mode, tasks=tasks)
            r = await run_traffic(c, t, a, f"p{n}-{mode}-{tasks}")
            r["label"] = label.format(tasks=tasks)
            percall.append(r)
            if r["dropped"]:
                print(f"  N={n}: per call, {r['label']}: subscribers dropped", flush=True)
                continue
            print(f"  N={n}: per call, {r['label']}: {min(r['msgs_per_s']):,.0f}...{max(r['msgs_per_s']):,.0f} "
                  f"msgs/s, {calls_per_request(r)} calls per request, order {order_word(r)}", flush=True)
        res["percall"] = percall
        if tput or percall:
            # After the bursts the ring must go quiet again (held token), not keep spinning.
            await trio.sleep(2.0)
            res["idle_after_load"] = await sample_resources(pids, a.idle_s)
            print(f"  N={n}: idle after load cpu {fmt_list(res['idle_after_load']['cpu_pct'], 2)} %", flush=True)
        lat = []
        for safe in ((False, True) if "latency" in a.parts else ()):
            for all_send in (False, True):
                senders = list(range(n)) if all_send else [a.lone_sender % n]
                t = Traffic(size=100, senders=senders, duration_s=a.latency_s, rate=a.rate, safe=safe,
                            join_senders=True)
                before = await totem_totals(c)
                r = await run_traffic(c, t, a, f"l{n}-{'s' if safe else 'a'}-{len(senders)}", load_sample=True)
                after = await totem_totals(c)
                # Token visits and hold/merge-detect traffic per message sent: where idle CPU goes.
                r["totem_per_msg"] = {k: round((after[k] - before[k]) / max(1, r["sent"]), 2) for k in after}
                lat.append(r)
                print(f"  N={n}: latency {'safe' if safe else 'agreed'} x {len(senders)}: all "
                      f"{r['lat_p50_ms']:.3f}/{r['lat_p99_ms']:.3f} ms, self {r['self_p50_ms']:.3f}/"
                      f"{r['self_p99_ms']:.3f} ms, daemon CPU {fmt_list(r['load']['cpu_pct'], 1)} %, "
                      f"per message {r['totem_per_msg']}", flush=True)
        res["latency"] = lat
        if a.failover_repeats > 0 and "failover" in a.parts:
            print(f"  N={n}: failover x {a.failover_repeats}", flush=True)
            res["failover"] = await failover(c, a, n)
        return res
    finally:
        c.stop_all()


# Totem counters the soak reports per daemon (a reconfiguration's cause among them).
SOAK_STATS = ("gather_entered", "token_lost", "fail_to_recv", "consensus_timeouts", "token_retx",
              "mcast_retx", "token_held", "throttled_visits")


# Totem counters summed over the daemons around each latency run (per message sent).
LATENCY_STATS = ("token_rx", "token_held", "hold_cancels", "merge_detect_tx", "token_retx", "throttled_visits",
                 "mcast_retx", "rtr_requested", "rings_formed", "backpressure_holds")


async def totem_stats(d: Daemon) -> dict[str, Any]:
    """The daemon's Totem counters ({} if it does not answer)."""
    status = await ask(d, "status")
    return {**status["totem"]["stats"], **status["totem"].get("driver", {})} if status else {}


async def totem_totals(c: Cluster) -> dict[str, int]:
    totals = dict.fromkeys(LATENCY_STATS, 0)
    for d in c.daemons.values():
        stats = await totem_stats(d)
        for k in LATENCY_STATS:
            totals[k] += stats.get(k) or 0
    return totals


async def soak(a: argparse.Namespace, root: Path) -> dict[str, Any]:
    n = 3
    c = new_cluster(root, "soak", n)
    try:
        await wait_ring(list(c.daemons.values()))
        names = sorted(c.daemons)
        async with trio.open_nursery() as nursery:
            mons = [Monitor(c.daemons[x], "monitor") for x in names]
            for m in mons:
                await nursery.start(m.run)
            t0 = time.monotonic()
            print(f"  soak N={n}: full load for {a.soak_s:.0f}s", flush=True)
            r = await run_traffic(c, Traffic(size=100, senders=list(range(n)), duration_s=a.soak_s), a,
                                  "soak", load_sample=True)
            nursery.cancel_scope.cancel()
        # Why the ring reformed, if it did: each daemon's Totem counters.
        r["totem_stats"] = {}
        for x in names:
            stats = await totem_stats(c.daemons[x])
            r["totem_stats"][x] = {k: stats.get(k) for k in SOAK_STATS}
        r["configs"] = {m.daemon.name: [[round(t - t0, 3), e.kind, e.ring, list(e.members)] for t, e in m.configs]
                        for m in mons}
        # A monitor's first event is the configuration it joined into (the ring formed before
        # the soak): only the ones after it are reconfigurations.
        r["reconfigurations"] = max(len(m.configs[1:]) for m in mons)
        r["n"] = n
        r["soak_s"] = a.soak_s
        return r
    finally:
        c.stop_all()


# --- report --------------------------------------------------------------------------------


def fmt_list(xs: list[float], digits: int) -> str:
    return ", ".join(f"{x:.{digits}f}" for x in xs)


def order_word(t: dict[str, Any]) -> str:
    word = "identical" if t["order_identical"] else "DIFFERENT"
    return word if t["all_delivered"] else f"{word}, NOT ALL DELIVERED"


def ok(cond: bool) -> str:
    return "met" if cond else "MISSED"


def calls_per_request(t: dict[str, Any]) -> str:
    """Send calls per send request frame the sender's client wrote (coalescing)."""
    frames = t.get("request_frames") or 0
    return f"{t['client_send_calls'] / frames:.1f}" if frames else "-"


def percall_table(rows: list[dict[str, Any]],
                  corosync_tput: dict[tuple[int, int, bool], dict[str, float]] | None) -> list[str]:
    out = ["Per-call throughput: one sender on node 0, 100 B, one message per call (agreed); delivered "
           "msgs/s per node; Corosync's cpgbench also sends one message per call",
           "| N | how the app sends | msgs/s per node | calls per request | order | Corosync msgs/s "
           "| ratio to Corosync |", "|" + "---|" * 7]
    for r in rows:
        n = r["n"]
        for t in r.get("percall", []):
            if t["dropped"]:
                out.append(f"| {n} | {t['label']} | {len(t['dropped'])} subscribers dropped | - | - | - | - |")
                continue
            lo = min(t["msgs_per_s"])
            cs = corosync_for(n, 100, False, corosync_tput)
            ratio = f"{lo / cs[1]:.2f}x" if cs else "-"
            out.append(f"| {n} | {t['label']} | {lo:,.0f} .. {max(t['msgs_per_s']):,.0f} | {calls_per_request(t)} "
                       f"| {order_word(t)} | {f'{cs[1]:,.0f} ({cs[0]})' if cs else '-'} | {ratio} |")
    return out


def table(rows: list[dict[str, Any]], corosync_lat: dict[tuple[int, bool], tuple[float, float]] | None = None,
          corosync_tput: dict[tuple[int, int, bool], dict[str, float]] | None = None) -> str:
    out = ["Throughput, agreed order, --batch messages per send call, delivered msgs/s per node (min..max "
           "over nodes); Corosync udp multicast [udpu] same machine kind (one message per call)",
           "| N | bytes | senders | msgs/s per node | MB/s (min) | lat under load p50/p99 ms | order "
           "| Corosync udp [udpu] | target ≥ Corosync udp | ratio to Corosync "
           f"({'same run' if corosync_tput else 'anchor'}) |", "|" + "---|" * 10]
    for r in rows:
        n = r["n"]
        for t in r.get("throughput", []):
            if t["dropped"]:
                cap = f" (capped {t['msg_cap'] * t['senders']:,.0f})" if t["msg_cap"] else ""
                out.append(f"| {n} | {t['size']} | {t['senders']}{cap} | {len(t['dropped'])} subscribers dropped: "
                           "they fell 32 MiB behind the ring | - | - | - | - | - | - |")
                continue
            key = (n, t["size"], t["senders"] > 1)
            cs = COROSYNC_TPUT.get(key)
            lo = min(t["msgs_per_s"])
            tgt = f"{ok(lo >= cs[0])} ({100 * lo / cs[0]:.0f} %)" if cs else "-"
            cap = f" (capped {t['msg_cap'] * t['senders']:,.0f})" if t["msg_cap"] else ""
            side = corosync_for(n, t["size"], t["senders"] > 1, corosync_tput)
            ratio = f"{lo / side[1]:.2f}x vs {side[1]:,.0f} ({side[0]})" if side else "-"
            out.append(f"| {n} | {t['size']} | {t['senders']}{cap} | {lo:,.0f} .. {max(t['msgs_per_s']):,.0f} "
                       f"| {min(t['mb_per_s']):.2f} | {t['lat_p50_ms']:.1f} / {t['lat_p99_ms']:.1f} "
                       f"| {order_word(t)} | {f'{cs[0]:,} [{cs[1]:,}]' if cs else '-'} | {tgt} | {ratio} |")
    out += [""] + percall_table(rows, corosync_tput)
    out += ["", "Latency, 100 B at 100 msgs/s per sender (all deliveries on all nodes; sender self-delivery)",
            "| N | order | senders | all p50 / p99 ms | self p50 / p99 ms | order check | daemon CPU % "
            f"| Corosync udp all p50/p99 ({'side by side' if corosync_lat else 'anchor'}) "
            "| target p50 ≤ 1, p99 ≤ 5 |", "|" + "---|" * 9]
    for r in rows:
        n = r["n"]
        for t in r.get("latency", []):
            cs = (corosync_lat or COROSYNC_LAT).get((n, t["senders"] > 1)) if not t["safe"] else None
            met = t["lat_p50_ms"] <= TARGET["lat_p50_ms"] and t["lat_p99_ms"] <= TARGET["lat_p99_ms"]
            out.append(f"| {n} | {'safe' if t['safe'] else 'agreed'} | {t['senders']} "
                       f"| {t['lat_p50_ms']:.3f} / {t['lat_p99_ms']:.3f} | {t['self_p50_ms']:.3f} / "
                       f"{t['self_p99_ms']:.3f} | {order_word(t)} "
                       f"| {fmt_list(t['load']['cpu_pct'], 1) if 'load' in t else '-'} "
                       f"| {f'{cs[0]} / {cs[1]}' if cs else '-'} | {ok(met) if not t['safe'] else '(agreed only)'} |")
    out += ["", "Failover (kill -9 -> regular configuration at the last survivor) and join (restart -> "
            "regular configuration with it at the last member)",
            "| N | failover median s [all] | target ≤ 1.5 (Corosync 10.6 default, 0.49 token 200) "
            "| join from ready median s [all] | join from spawn median s | target ≤ 0.3 (Corosync 0.17-0.18 "
            "from start) | regular configs per trial |", "|" + "---|" * 7]
    for r in rows:
        f = r.get("failover")
        if not f:
            continue
        out.append(f"| {r['n']} | {f['failover_median_s']:.3f} [{fmt_list(f['failover_all_s'], 3)}] "
                   f"| {ok(f['failover_median_s'] <= TARGET['failover_s'])} "
                   f"| {f['join_from_ready_median_s']:.3f} [{fmt_list(f['join_from_ready_all_s'], 3)}] "
                   f"| {f['join_from_spawn_median_s']:.3f} | {ok(f['join_from_ready_median_s'] <= TARGET['join_s'])} "
                   f"| {f['regular_configs_per_trial']} |")
    out += ["", "Resources per daemon (CPU % of one core; RSS MiB, max during the window)",
            "| N | idle CPU % | idle RSS | load CPU % (all send 100 B) | load RSS max | idle CPU % after load "
            "| Corosync udp idle CPU/RSS, load CPU/RSS | target RSS ≤ 60 under load |", "|" + "---|" * 8]
    for r in rows:
        n = r["n"]
        load = next((t["load"] for t in r.get("throughput", []) if "load" in t and not t["dropped"]), None)
        if load is None:
            continue
        cs = COROSYNC_RES.get(n)
        out.append(f"| {n} | {fmt_list(r['idle']['cpu_pct'], 2)} | {fmt_list(r['idle']['rss_mib'], 1)} "
                   f"| {fmt_list(load['cpu_pct'], 1)} | {max(load['rss_mib']):.1f} "
                   f"| {fmt_list(r['idle_after_load']['cpu_pct'], 2) if 'idle_after_load' in r else '-'} "
                   f"| {f'{cs[0]} / {cs[1]}, {cs[2]} / {cs[3]}' if cs else '-'} "
                   f"| {ok(max(load['rss_mib']) <= TARGET['rss_mib'])} |")
    return "\n".join(out)


def soak_line(s: dict[str, Any]) -> str:
    return (f"Soak N={s['n']} for {s['soak_s']:.0f}s, every node sending 100 B: "
            f"{min(s['msgs_per_s']):,.0f}..{max(s['msgs_per_s']):,.0f} msgs/s per node, delivered "
            f"{s['delivered']}, order {order_word(s)}, configuration "
            f"changes seen by a monitor: {s['reconfigurations']} (target 0), daemon RSS max "
            f"{max(s['load']['rss_mib']):.1f} MiB, CPU {fmt_list(s['load']['cpu_pct'], 1)} %\n"
            + "\n".join(f"  {name}: {stats}" for name, stats in s.get("totem_stats", {}).items()))


async def main_async(a: argparse.Namespace) -> dict[str, Any]:
    root = Path(tempfile.mkdtemp(prefix="ringd-bench-ring-"))
    out: dict[str, Any] = {"rows": []}
    try:
        for n in a.nodes:
            print(f"N={n} ...", flush=True)
            out["rows"].append(await bench_n(n, a, root))
        if a.soak_s > 0:
            print("soak ...", flush=True)
            out["soak"] = await soak(a, root)
    finally:
        kill_workers()
        if a.keep:
            print(f"logs kept in {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd")
    add_worker_parser(sub)
    p.add_argument("--nodes", type=int, nargs="+", default=[3, 5])
    p.add_argument("--sizes", type=int, nargs="+", default=[100, 1000])
    p.add_argument("--duration-s", "--duration", type=float, default=5.0, help="throughput send window")
    p.add_argument("--batch", type=int, default=256, help="messages per send call (throughput)")
    p.add_argument("--inflight", type=int, default=2, help="connections sending at once per sender process")
    p.add_argument("--percall", nargs="+", default=list(PERCALL_MODES), choices=list(PERCALL_MODES),
                   help="per-call rows to measure")
    p.add_argument("--tasks", type=int, default=16, help="per-call rows: tasks of one process sending at once")
    p.add_argument("--cli-rate", type=float, default=60_000.0,
                   help="per-call `ringd send` row: lines piped per second of --duration-s")
    p.add_argument("--sender-nice", type=int, default=10,
                   help="nice increment of flat-out sender processes, so subscribers are not starved of CPU "
                        "(a subscriber that falls 32 MiB behind is dropped by its daemon)")
    p.add_argument("--rate", type=float, default=100.0, help="latency runs: msgs/s per sender")
    p.add_argument("--lone-sender", type=int, default=-1,
                   help="latency runs with one sender: its node index (default -1: the last node, which "
                        "is not the ring's representative, as for most apps)")
    p.add_argument("--latency-s", type=float, default=10.0, help="length of each latency run")
    p.add_argument("--idle-s", type=float, default=5.0)
    p.add_argument("--failover-repeats", type=int, default=5)
    p.add_argument("--soak-s", type=float, default=0.0, help="full-load soak at N=3 (0 = skip)")
    p.add_argument("--json", default="bench-results/bench_ring.json")
    p.add_argument("--keep", action="store_true", help="keep daemon and worker logs")
    p.add_argument("--parts", nargs="+", default=["throughput", "percall", "latency", "failover"],
                   choices=["throughput", "percall", "latency", "failover"], help="what to measure per N")
    p.add_argument("--corosync-latency", metavar="FILE",
                   help="Corosync's latency.txt from its anchor script, run beside this one: the latency "
                        "table then compares with it instead of the anchor's fixed numbers")
    p.add_argument("--corosync-throughput", metavar="FILE",
                   help="Corosync's throughput.txt from its anchor script, run beside this one: the "
                        "throughput rows then give their ratio to it instead of the anchor's fixed numbers")
    p.add_argument("--daemon-set", action="append", default=[], metavar="KEY=VALUE",
                   help="a config setting for every daemon (repeatable), e.g. totem.token_timeout_s=1")
    a = p.parse_args()
    if a.cmd == "worker":
        worker_main(a)
        return
    cs_lat = None
    if a.corosync_latency:  # read first: a wrong path fails before the long run, not after
        try:
            cs_lat = corosync_latency(Path(a.corosync_latency))
        except OSError as exc:
            raise SystemExit(f"bench_ring: cannot read --corosync-latency: {exc}") from None
    cs_tput = None
    if a.corosync_throughput:
        try:
            cs_tput = corosync_throughput(Path(a.corosync_throughput))
        except OSError as exc:
            raise SystemExit(f"bench_ring: cannot read --corosync-throughput: {exc}") from None
    try:
        result = trio.run(main_async, a)
    finally:
        kill_workers()  # also on Ctrl-C: the daemons are killed by each run's `finally`
    print()
    if cs_lat:
        result["corosync_latency_side_by_side"] = {f"{n}x{'all' if every else '1'}": v
                                                   for (n, every), v in cs_lat.items()}
    if cs_tput:
        result["corosync_throughput_side_by_side"] = {f"{n}x{size}x{'all' if every else '1'}": v
                                                      for (n, size, every), v in cs_tput.items()}
    print(table(result["rows"], cs_lat, cs_tput))
    if "soak" in result:
        print()
        print(soak_line(result["soak"]))
    path = Path(a.json)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"when": time.strftime("%Y-%m-%dT%H:%M:%S"), "args": vars(a), **result}, indent=1))
    print(f"\nJSON written to {path}")


if __name__ == "__main__":
    main()
