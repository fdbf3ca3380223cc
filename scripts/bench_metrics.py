#!/usr/bin/env python3
"""Metrics cost benchmark (issue 5 targets): real ringd daemons on loopback.

1. Scrape cost: --members daemons (default 50), one of them with --metrics-port. Once that
   daemon sees every member alive (and, if it forms, one ring of all), the bench scrapes its
   /metrics --scrapes times (default 200) one after another with --pause-s between them, and
   reports the daemon's CPU per scrape: utime+stime from /proc/PID/stat over the scrapes,
   minus the daemon's idle CPU rate (measured over equal intervals without scrapes just before
   and just after) times the scrape interval. Also the nanosecond schedstat figure, the reply
   size and the number of series. Target: < 5 ms.

2. Overhead per message: 3 daemons carry the same ordered load twice, once with metrics off
   and once with metrics on every daemon scraped every --scrape-period-s (1 s, like
   Prometheus) by a plain HTTP GET from this process. One sender sends --messages messages of
   --size bytes in batches of --batch through the client library; a subscriber on every node
   counts until all arrived. Reported: total CPU of the 3 daemons per message during the load
   (after a warm-up), median of --repeats runs of each variant, alternating which goes first,
   and the relative overhead. Target: < 3 %.

Only daemon CPU time is measured (not wall time), so other load on the machine matters less.
Everything binds 127.0.0.1; every cluster gets its own name and multicast port; every daemon
started is killed by PID at the end, also on errors. Prints a table and writes JSON (--json).
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from bench_gossip import Cluster, Daemon, ask, count_alive, proc_cpu_s, proc_rss_mib
from ringd.client import MessageBatch, RingClient, open_client
from ringd.runtime.launcher import free_port_run

LOOPBACK = "127.0.0.1"
TARGET_SCRAPE_MS = 5.0
TARGET_OVERHEAD_PCT = 3.0
GROUP = "bench-metrics"
HTTP_TIMEOUT_S = 10.0
# How long to let join-time gossip and ring formation settle before measuring idle CPU.
SETTLE_S = 3.0
POLL_S = 0.05


# --- /proc and HTTP helpers ----------------------------------------------------------------


def proc_cpu_ns(pid: int) -> int:
    """CPU time of all live threads of ``pid`` in ns (schedstat: finer than stat's ticks)."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            total += int((task / "schedstat").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            pass  # a thread that just exited
    return total


@dataclass
class CpuSample:
    """CPU of one process: stat seconds (the brief's measure) and schedstat ns."""

    stat_s: float
    sched_ns: int

    @classmethod
    def of(cls, pid: int) -> CpuSample:
        return cls(proc_cpu_s(pid), proc_cpu_ns(pid))

    def minus(self, other: CpuSample) -> CpuSample:
        return CpuSample(self.stat_s - other.stat_s, self.sched_ns - other.sched_ns)


async def http_get(port: int, path: str = "/metrics") -> bytes:
    """A plain HTTP/1.0 GET on loopback; returns the body, raises on anything but 200."""
    with trio.fail_after(HTTP_TIMEOUT_S):
        stream = await trio.open_tcp_stream(LOOPBACK, port)
        async with stream:
            await stream.send_all(f"GET {path} HTTP/1.0\r\nHost: {LOOPBACK}:{port}\r\n\r\n".encode())
            raw = bytearray()
            while chunk := await stream.receive_some(1 << 16):
                raw += chunk
    head, _, body = bytes(raw).partition(b"\r\n\r\n")
    status = head.split(b"\r\n", 1)[0]
    if b" 200 " not in status + b" ":
        raise RuntimeError(f"GET :{port}{path}: {status.decode(errors='replace')}")
    return body


def series_count(body: bytes) -> int:
    """Sample lines of a text exposition (comments and blank lines excluded)."""
    return sum(1 for line in body.splitlines() if line and not line.startswith(b"#"))


async def poll_until(what: str, check: Callable[[], Any], timeout_s: float) -> None:
    """Await ``check()`` (an async callable returning truthy) until true or ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not await check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not reached within {timeout_s}s")
        await trio.sleep(POLL_S)  # poll


def ring_of(status: dict[str, Any] | None) -> tuple[str, str, int]:
    """(state, ring id, size) of a daemon's Totem from its status reply."""
    totem = (status or {}).get("totem") or {}
    return str(totem.get("state", "")).lower(), str(totem.get("ring", "")), len(totem.get("members") or ())


async def one_ring(daemons: list[Daemon], n: int) -> bool:
    """Every daemon Operational on the same ring of ``n`` members."""
    rings = [ring_of(await ask(d, "status")) for d in daemons]
    return len(set(rings)) == 1 and rings[0][0] == "operational" and rings[0][2] == n


def new_cluster(root: Path, label: str, rnd: random.Random) -> Cluster:
    c = Cluster(root / label, f"bm-{label}-{rnd.randrange(1 << 30):x}", rnd.randrange(20000, 60000))
    c.root.mkdir(parents=True)
    return c


def spawn_with_metrics(c: Cluster, name: str, port: int) -> Daemon:
    extra = c.extra
    c.extra = [*extra, "--metrics-port", str(port)]
    try:
        return c.spawn(name)
    finally:
        c.extra = extra


# --- 1. scrape cost ---------------------------------------------------------------------------


async def idle_cpu(pids: list[int], duration_s: float) -> tuple[CpuSample, float]:
    """Summed CPU of ``pids`` over ``duration_s`` of doing nothing here; (delta, wall s)."""
    before, t0 = total_cpu(pids), time.monotonic()
    await trio.sleep(duration_s)  # the idle interval being measured
    return total_cpu(pids).minus(before), time.monotonic() - t0


def total_cpu(pids: list[int]) -> CpuSample:
    samples = [CpuSample.of(p) for p in pids]
    return CpuSample(sum(s.stat_s for s in samples), sum(s.sched_ns for s in samples))


async def scrape_block(targets: list[tuple[int, int]], rounds: int, pause_s: float,
                       seen: dict[str, list[float]]) -> tuple[CpuSample, float]:
    """``rounds`` rounds of one GET to every ``(pid, port)``, ``pause_s`` apart; (CPU delta, wall s)."""
    pids = [pid for pid, _ in targets]
    before, t0 = total_cpu(pids), time.monotonic()
    for _ in range(rounds):
        for _, port in targets:
            s0 = time.monotonic()
            body = await http_get(port)
            seen["latency_s"].append(time.monotonic() - s0)
            seen["bytes"].append(len(body))
            seen["series"].append(series_count(body))
        await trio.sleep(pause_s)  # spacing between scrapes, so they are not back to back
    return total_cpu(pids).minus(before), time.monotonic() - t0


async def scrape_cost(targets: list[tuple[int, int]], rounds: int, pause_s: float,
                      blocks: int) -> dict[str, Any]:
    """Daemon CPU per scrape. The rounds are split into ``blocks`` blocks; each block of
    scrapes is followed by an idle interval of the same length, and the block's estimate is
    (scrape CPU - idle CPU) / scrapes. Interleaving cancels slow drifts of the daemons' own
    background CPU (gossip, ring formation), which an idle baseline taken once would not."""
    pids = [pid for pid, _ in targets]
    seen: dict[str, list[float]] = {"latency_s": [], "bytes": [], "series": []}
    per_block = max(1, rounds // blocks)
    busy, idle = CpuSample(0.0, 0), CpuSample(0.0, 0)
    estimates_ms: list[float] = []
    for _ in range(blocks):
        b, b_s = await scrape_block(targets, per_block, pause_s, seen)
        i, i_s = await idle_cpu(pids, b_s)
        b_ns = b.sched_ns - i.sched_ns * b_s / i_s  # scale idle to exactly the block's length
        estimates_ms.append(b_ns / 1e6 / (per_block * len(targets)))
        busy = CpuSample(busy.stat_s + b.stat_s, busy.sched_ns + b.sched_ns)
        idle = CpuSample(idle.stat_s + i.stat_s * b_s / i_s, idle.sched_ns + int(i.sched_ns * b_s / i_s))
    k = per_block * blocks * len(targets)
    return {
        "scrapes_measured": k,
        "cpu_ms_per_scrape": 1000 * (busy.stat_s - idle.stat_s) / k,
        "cpu_ms_per_scrape_schedstat": (busy.sched_ns - idle.sched_ns) / 1e6 / k,
        "cpu_ms_per_scrape_block_median": statistics.median(estimates_ms),
        "cpu_ms_per_scrape_blocks": [round(e, 3) for e in estimates_ms],
        "cpu_ms_per_scrape_gross": 1000 * busy.stat_s / k,
        "idle_cpu_ms_per_scrape_interval": 1000 * idle.stat_s / k,
        "reply_bytes": int(statistics.median(seen["bytes"])),
        "series": int(statistics.median(seen["series"])),
        "latency_ms_p50": 1000 * statistics.median(seen["latency_s"]),
        "latency_ms_max": 1000 * max(seen["latency_s"]),
    }


async def bench_scrape(args: argparse.Namespace, root: Path, rnd: random.Random) -> dict[str, Any]:
    n = args.members
    c = new_cluster(root, f"scrape{n}", rnd)
    res: dict[str, Any] = {"members": n, "scrapes": args.scrapes, "pause_s": args.pause_s}
    try:
        port = free_port_run(1)
        target = spawn_with_metrics(c, "m00", port)
        for i in range(1, n):
            c.spawn(f"m{i:02d}")
        t0 = time.monotonic()

        async def all_alive() -> bool:
            reply = await ask(target, "members")
            return reply is not None and count_alive(reply) >= n

        await poll_until(f"{n} members alive at m00", all_alive, args.timeout_s)
        res["converged_s"] = round(time.monotonic() - t0, 2)
        try:
            await poll_until(f"one ring of {n}", lambda: one_ring(c.alive(), n), args.ring_wait_s)
            res["ring_formed"] = True
        except TimeoutError:
            res["ring_formed"] = False  # measured anyway: the idle baseline absorbs ring traffic
        res["ring_at_m00"] = ring_of(await ask(target, "status"))
        print(f"  scrape: {n} alive after {res['converged_s']}s, ring {res['ring_at_m00']}", flush=True)
        await trio.sleep(SETTLE_S)  # let join-time gossip drain before the idle baseline

        pid = target.proc.pid if target.proc else 0
        res |= await scrape_cost([(pid, port)], args.scrapes, args.pause_s, args.blocks)
        res["rss_mib"] = proc_rss_mib(pid)
        print(f"  scrape: {res['cpu_ms_per_scrape']:.2f} ms CPU/scrape "
              f"(schedstat {res['cpu_ms_per_scrape_schedstat']:.2f}), {res['series']} series, "
              f"{res['reply_bytes']} B", flush=True)
        return res
    finally:
        c.stop_all()


# --- 2. overhead per message ------------------------------------------------------------------


@dataclass
class Counted:
    """Messages of GROUP one subscriber has received; tasks may wait for a total."""

    total: int = 0
    waiters: list[tuple[int, trio.Event]] = field(default_factory=list)

    def add(self, k: int) -> None:
        self.total += k
        for goal, event in self.waiters:
            if self.total >= goal:
                event.set()

    async def wait_for(self, goal: int) -> None:
        if self.total >= goal:
            return
        event = trio.Event()
        self.waiters.append((goal, event))
        await event.wait()


async def subscribe(client: RingClient, counted: Counted) -> None:
    async for batch in client.batches():
        if isinstance(batch, MessageBatch) and batch.group == GROUP:
            counted.add(len(batch.data))


@dataclass
class Scraper:
    """Scrapes every port each period, like one Prometheus; counts what it did."""

    ports: list[int]
    period_s: float
    starts: list[float] = field(default_factory=list)
    failures: int = 0

    async def run(self) -> None:
        next_at = time.monotonic()
        while True:
            for port in self.ports:
                self.starts.append(time.monotonic())
                try:
                    await http_get(port)
                except (OSError, RuntimeError, trio.TooSlowError):
                    self.failures += 1
            next_at += self.period_s
            await trio.sleep(max(0.0, next_at - time.monotonic()))  # scrape period


def udp_rcvbuf_errors() -> int:
    """Host-wide UDP datagrams dropped for a full socket buffer (/proc/net/snmp); other
    processes on the machine add to it, so it is a hint, not a measure of one cluster."""
    lines = [line.split() for line in Path("/proc/net/snmp").read_text().splitlines() if line.startswith("Udp:")]
    return int(dict(zip(lines[0], lines[1], strict=True))["RcvbufErrors"])


# Totem counters that tell a smooth run from a disturbed one (summed over the daemons).
TOTEM_COUNTERS = ("token_rx", "token_retx", "token_dup_rx", "mcast_tx", "mcast_retx", "rtr_requested",
                  "rings_formed", "consensus_timeouts")


async def totem_counts(daemons: list[Daemon]) -> dict[str, int]:
    out = dict.fromkeys(TOTEM_COUNTERS, 0)
    for d in daemons:
        stats = ((await ask(d, "status")) or {}).get("totem", {}).get("stats", {})
        for key in TOTEM_COUNTERS:
            out[key] += int(stats.get(key, 0))
        out["token_lost"] = out.get("token_lost", 0) + sum((stats.get("token_lost") or {}).values())
    out["host_udp_rcvbuf_errors"] = udp_rcvbuf_errors()
    return out


async def send_all(client: RingClient, count: int, size: int, batch: int) -> None:
    payload = b"x" * size
    full = [payload] * batch
    sent = 0
    while sent < count:
        k = min(batch, count - sent)
        await client.send(GROUP, full if k == batch else [payload] * k)
        sent += k


async def ring_run(args: argparse.Namespace, root: Path, rnd: random.Random,
                   metrics_on: bool, label: str) -> dict[str, Any]:
    nodes = args.nodes
    c = new_cluster(root, label, rnd)
    res: dict[str, Any] = {"metrics": metrics_on}
    try:
        ports: list[int] = []
        if metrics_on:
            base = free_port_run(nodes)
            ports = [base + k for k in range(nodes)]
            daemons = [spawn_with_metrics(c, f"r{k}", ports[k]) for k in range(nodes)]
        else:
            daemons = [c.spawn(f"r{k}") for k in range(nodes)]
        await poll_until(f"one ring of {nodes}", lambda: one_ring(daemons, nodes), args.timeout_s)
        pids = [d.proc.pid for d in daemons if d.proc]
        scraper = Scraper(ports, args.scrape_period_s)
        counts = [Counted() for _ in daemons]
        async with AsyncExitStack() as stack:
            subscribers = [await stack.enter_async_context(await RingClient.connect(d.sock)) for d in daemons]
            async with trio.open_nursery() as nursery:
                for client, counted in zip(subscribers, counts, strict=True):
                    await client.join(GROUP)
                    nursery.start_soon(subscribe, client, counted)

                async def group_complete() -> bool:
                    sizes = [len((await s.members(GROUP)).get(GROUP, [])) for s in subscribers]
                    return all(size == nodes for size in sizes)

                await poll_until("group members everywhere", group_complete, args.timeout_s)
                if metrics_on:
                    nursery.start_soon(scraper.run)
                async with open_client(daemons[0].sock) as sender:
                    warm = args.warmup
                    await send_all(sender, warm, args.size, args.batch)
                    for counted in counts:
                        await counted.wait_for(warm)
                    totem0 = await totem_counts(daemons)
                    cpu0 = [CpuSample.of(p) for p in pids]
                    t0 = time.monotonic()
                    with trio.fail_after(args.timeout_s * 10):
                        await send_all(sender, args.messages, args.size, args.batch)
                        for counted in counts:
                            await counted.wait_for(warm + args.messages)
                    t1 = time.monotonic()
                    cpu = [CpuSample.of(p).minus(s) for p, s in zip(pids, cpu0, strict=True)]
                    res["rss_mib"] = [proc_rss_mib(p) for p in pids]
                    totem1 = await totem_counts(daemons)
                    res["totem"] = {k: totem1[k] - totem0.get(k, 0) for k in totem1}
                nursery.cancel_scope.cancel()  # subscribers and scraper
        if metrics_on:
            # What the scrapes in the window cost, measured on the same daemons now idle:
            # a low-noise cross-check of the on/off difference.
            res["idle_scrape"] = await scrape_cost(list(zip(pids, ports, strict=True)),
                                                   args.check_rounds, args.pause_s, blocks=3)
        m = args.messages
        res["wall_s"] = t1 - t0
        res["msgs_per_s"] = m / (t1 - t0)
        res["daemon_cpu_s"] = [s.stat_s for s in cpu]
        res["daemon_cpu_total_s"] = sum(s.stat_s for s in cpu)
        res["daemon_cpu_total_s_schedstat"] = sum(s.sched_ns for s in cpu) / 1e9
        res["cpu_us_per_msg"] = 1e6 * sum(s.stat_s for s in cpu) / m
        res["cpu_us_per_msg_schedstat"] = sum(s.sched_ns for s in cpu) / 1e3 / m
        res["scrapes_in_window"] = sum(1 for s in scraper.starts if t0 <= s <= t1)
        res["scrape_failures"] = scraper.failures
        res["delivered"] = [counted.total for counted in counts]
        if metrics_on:
            scrapes_s = res["scrapes_in_window"] * res["idle_scrape"]["cpu_ms_per_scrape_schedstat"] / 1000
            base_s = res["daemon_cpu_total_s_schedstat"] - scrapes_s
            res["attributed_overhead_pct"] = 100 * scrapes_s / base_s
        print(f"  ring {label}: {res['msgs_per_s']:.0f} msgs/s, {res['cpu_us_per_msg']:.2f} µs CPU/msg "
              f"(schedstat {res['cpu_us_per_msg_schedstat']:.2f}), scrapes {res['scrapes_in_window']}, "
              f"totem {res['totem']}",
              flush=True)
        return res
    finally:
        c.stop_all()


async def bench_overhead(args: argparse.Namespace, root: Path, rnd: random.Random) -> dict[str, Any]:
    runs: dict[str, list[dict[str, Any]]] = {"off": [], "on": []}
    for r in range(args.repeats):
        order = ("off", "on") if r % 2 == 0 else ("on", "off")
        for variant in order:
            runs[variant].append(await ring_run(args, root, rnd, variant == "on", f"ring{r}-{variant}"))
    out: dict[str, Any] = {"nodes": args.nodes, "messages": args.messages, "size": args.size,
                           "batch": args.batch, "repeats": args.repeats,
                           "scrape_period_s": args.scrape_period_s, "runs": runs}
    for variant, rows in runs.items():
        for key in ("cpu_us_per_msg", "cpu_us_per_msg_schedstat", "msgs_per_s"):
            out[f"{variant}_{key}"] = statistics.median(r[key] for r in rows)
    out["attributed_overhead_pct"] = statistics.median(r["attributed_overhead_pct"] for r in runs["on"])
    out["on_cpu_ms_per_scrape"] = statistics.median(
        r["idle_scrape"]["cpu_ms_per_scrape_schedstat"] for r in runs["on"])
    out["on_wall_s"] = statistics.median(r["wall_s"] for r in runs["on"])
    out["on_scrapes_in_window"] = statistics.median(r["scrapes_in_window"] for r in runs["on"])
    for key in ("cpu_us_per_msg", "cpu_us_per_msg_schedstat"):
        out[f"overhead_pct{key.removeprefix('cpu_us_per_msg')}"] = (
            100 * (out[f"on_{key}"] - out[f"off_{key}"]) / out[f"off_{key}"])
    return out


# --- report -------------------------------------------------------------------------------------


def verdict(ok: bool) -> str:
    return "met" if ok else "MISSED"


def table(scrape: dict[str, Any] | None, overhead: dict[str, Any] | None) -> str:
    out = ["| measure | value | target |", "|---|---|---|"]
    if scrape:
        ms = scrape["cpu_ms_per_scrape"]
        blocks = scrape["cpu_ms_per_scrape_blocks"]
        state, ring, size = scrape["ring_at_m00"]
        out += [
            f"| daemon CPU per scrape, {scrape['members']} members (stat; schedstat) "
            f"| {ms:.2f} ms; {scrape['cpu_ms_per_scrape_schedstat']:.2f} ms "
            f"| < {TARGET_SCRAPE_MS:.0f} ms: {verdict(ms < TARGET_SCRAPE_MS)} |",
            f"| same, median of {len(blocks)} blocks (min..max, schedstat) "
            f"| {scrape['cpu_ms_per_scrape_block_median']:.2f} ms ({min(blocks):.2f}..{max(blocks):.2f}) | |",
            f"| gross CPU per scrape interval; idle CPU in as long without scrapes "
            f"| {scrape['cpu_ms_per_scrape_gross']:.2f} ms; {scrape['idle_cpu_ms_per_scrape_interval']:.2f} ms | |",
            f"| reply size; series | {scrape['reply_bytes']} B; {scrape['series']} | |",
            f"| scrape latency p50 / max (bench side) "
            f"| {scrape['latency_ms_p50']:.1f} / {scrape['latency_ms_max']:.1f} ms | |",
            f"| scraped daemon: Totem state, ring size; RSS "
            f"| {state} {ring} of {size}; {scrape['rss_mib']:.1f} MiB | |",
        ]
    if overhead:
        pct = overhead["overhead_pct"]
        on = [f"{r['cpu_us_per_msg']:.2f}" for r in overhead["runs"]["on"]]
        off = [f"{r['cpu_us_per_msg']:.2f}" for r in overhead["runs"]["off"]]
        out += [
            f"| {overhead['nodes']}-daemon CPU per msg, metrics off (median; runs) "
            f"| {overhead['off_cpu_us_per_msg']:.2f} µs; [{' '.join(off)}] | |",
            f"| same, metrics on + scraped every {overhead['scrape_period_s']:g} s "
            f"| {overhead['on_cpu_us_per_msg']:.2f} µs; [{' '.join(on)}] | |",
            f"| overhead (stat; schedstat) | {pct:+.2f} %; {overhead['overhead_pct_schedstat']:+.2f} % "
            f"| < {TARGET_OVERHEAD_PCT:.0f} %: {verdict(pct < TARGET_OVERHEAD_PCT)} |",
            f"| overhead attributed to the scrapes in the window "
            f"({overhead['on_scrapes_in_window']:g} scrapes in {overhead['on_wall_s']:.1f} s "
            f"x {overhead['on_cpu_ms_per_scrape']:.2f} ms, re-measured idle) "
            f"| {overhead['attributed_overhead_pct']:+.2f} % | < {TARGET_OVERHEAD_PCT:.0f} % |",
            f"| throughput off / on (median, wall: machine shared) "
            f"| {overhead['off_msgs_per_s']:.0f} / {overhead['on_msgs_per_s']:.0f} msgs/s | |",
        ]
    return "\n".join(out)


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    root = Path(tempfile.mkdtemp(prefix="ringd-bench-metrics-"))
    rnd = random.Random()
    result: dict[str, Any] = {"when": time.strftime("%Y-%m-%dT%H:%M:%S")}
    try:
        if "scrape" in args.parts:
            print(f"scrape cost, {args.members} members ...", flush=True)
            result["scrape"] = await bench_scrape(args, root, rnd)
        if "overhead" in args.parts:
            print(f"overhead per message, {args.nodes} daemons x {args.repeats} x 2 ...", flush=True)
            result["overhead"] = await bench_overhead(args, root, rnd)
    finally:
        if args.keep:
            print(f"logs kept in {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--parts", nargs="+", choices=("scrape", "overhead"), default=["scrape", "overhead"])
    p.add_argument("--members", type=int, default=50, help="daemons in the scrape-cost cluster")
    p.add_argument("--scrapes", type=int, default=200, help="sequential scrapes to average over")
    p.add_argument("--pause-s", type=float, default=0.05, help="pause between two scrapes")
    p.add_argument("--blocks", type=int, default=10,
                   help="scrape blocks, each followed by an idle interval of its length")
    p.add_argument("--ring-wait-s", type=float, default=30.0,
                   help="how long the scrape cluster may take to form one ring (measured anyway)")
    p.add_argument("--nodes", type=int, default=3, help="daemons in the overhead runs")
    p.add_argument("--messages", type=int, default=2_000_000,
                   help="messages per overhead run (enough for several scrape periods)")
    p.add_argument("--warmup", type=int, default=10_240, help="messages sent before measuring")
    p.add_argument("--size", type=int, default=100, help="payload bytes")
    p.add_argument("--batch", type=int, default=256, help="messages per send request")
    p.add_argument("--scrape-period-s", type=float, default=1.0)
    p.add_argument("--check-rounds", type=int, default=30,
                   help="scrape rounds re-measured on the idle daemons after an 'on' run")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--timeout-s", type=float, default=120.0)
    p.add_argument("--json", default="bench-results/bench_metrics.json")
    p.add_argument("--keep", action="store_true", help="keep daemon logs")
    args = p.parse_args()
    result = trio.run(main_async, args)
    print()
    print(table(result.get("scrape"), result.get("overhead")))
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"\nJSON written to {out}")


if __name__ == "__main__":
    main()
