#!/usr/bin/env python3
"""Gossip benchmark: real ringd daemons on loopback, N = 5, 20, 50 by default.

For each N it measures, with the default (local preset) timings:
  cold start      first spawn -> every daemon sees all N alive
  join            one more daemon -> every daemon sees it alive (median of --repeats)
  tags            tag change on one node -> every daemon sees the new tags
  event           user event on one node -> every daemon received it
  leave           `leave` on the joiner -> every daemon sees it left (median)
  detect          kill -9 of one daemon -> the LAST survivor marks it dead (median; first observer too)
  idle CPU / RSS  per daemon, over --idle-s seconds of a converged idle cluster

Prints a table (with Serf's numbers from shared/anchors beside the targets) and writes JSON.
Polling goes only to daemons that have not yet seen the change, at --poll-s intervals, so the
resolution is about one poll interval. Everything binds 127.0.0.1; each run uses its own
cluster name and multicast port; every daemon started is killed by PID at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from ringd.client import ClientError, ControlClient

SERF_LAN = {  # shared/anchors/serf/results/summary.md (lan profile, same kind of machine)
    5: {"detect": 5.79, "event": 0.092, "join": 0.16, "leave": 0.38, "cpu": 0.10, "rss": 14.8},
    20: {"detect": 7.32, "event": 0.447, "join": 0.56, "leave": 0.96, "cpu": 0.15, "rss": 14.8},
    50: {"detect": 8.90, "event": 0.580, "join": 0.47, "leave": 1.04, "cpu": 0.20, "rss": 15.0},
}
TARGET_DETECT = {20: 2.5, 50: 3.0}


@dataclass
class Daemon:
    name: str
    sock: Path
    state_dir: Path
    log: Path
    proc: subprocess.Popen[bytes] | None = None


@dataclass
class Cluster:
    root: Path
    cluster_name: str
    mcast_port: int
    extra: list[str] = field(default_factory=list)
    daemons: dict[str, Daemon] = field(default_factory=dict)

    def spawn(self, name: str) -> Daemon:
        d = self.daemons.get(name) or Daemon(
            name, self.root / f"{name}.sock", self.root / name, self.root / f"{name}.log"
        )
        cmd = [
            sys.executable, "-m", "ringd", "run", "--name", name, "--port", "0",
            "--socket", str(d.sock), "--state-dir", str(d.state_dir),
            "--cluster-name", self.cluster_name, "--multicast-port", str(self.mcast_port),
            *self.extra,
        ]
        with open(d.log, "ab") as log:
            d.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self.daemons[name] = d
        return d

    def alive(self) -> list[Daemon]:
        return [d for d in self.daemons.values() if d.proc is not None and d.proc.poll() is None]

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        d = self.daemons[name]
        if d.proc is not None and d.proc.poll() is None:
            d.proc.send_signal(sig)
            d.proc.wait(timeout=10)

    def stop_all(self) -> None:
        for d in self.daemons.values():
            if d.proc is not None and d.proc.poll() is None:
                d.proc.send_signal(signal.SIGKILL)
        for d in self.daemons.values():
            if d.proc is not None:
                try:
                    d.proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    pass


async def ask(d: Daemon, op: str, **kw: Any) -> dict[str, Any] | None:
    try:
        with trio.fail_after(5):
            async with await ControlClient.connect(d.sock) as c:
                return await c.request(op, **kw)
    except (ClientError, trio.TooSlowError, OSError):
        return None


Check = Callable[[dict[str, Any]], bool]


async def wait_all(
    daemons: list[Daemon], op: str, check: Check, t0: float, timeout_s: float, poll_s: float
) -> tuple[float, float]:
    """Poll each daemon with ``op`` until ``check(reply)``; return (first, last) seconds after t0."""
    pending = {d.name: d for d in daemons}
    seen: dict[str, float] = {}
    deadline = t0 + timeout_s
    while pending:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{op}: {sorted(pending)[:5]} not satisfied within {timeout_s}s")
        replies: dict[str, dict[str, Any] | None] = {}

        async def one(d: Daemon, out: dict[str, dict[str, Any] | None] = replies) -> None:
            out[d.name] = await ask(d, op)

        async with trio.open_nursery() as n:
            for d in pending.values():
                n.start_soon(one, d)
        now = time.monotonic()
        for name, r in replies.items():
            if r is not None and check(r):
                seen[name] = now - t0
                del pending[name]
        if pending:
            await trio.sleep(poll_s)  # poll interval of the benchmark, not a wait for a condition
    return min(seen.values()), max(seen.values())


def member_state(reply: dict[str, Any], name: str) -> dict[str, Any] | None:
    for m in reply.get("members", []):
        if m.get("name") == name:
            return m
    return None


def count_alive(reply: dict[str, Any]) -> int:
    return sum(1 for m in reply.get("members", []) if m.get("state") == "alive")


def proc_cpu_s(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as fh:
        parts = fh.read().rsplit(")", 1)[1].split()
    return (int(parts[11]) + int(parts[12])) / os.sysconf("SC_CLK_TCK")


def proc_rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


async def bench_n(n: int, args: argparse.Namespace, root: Path) -> dict[str, Any]:
    rnd = random.Random()
    c = Cluster(root / f"n{n}", f"bench{n}-{rnd.randrange(1 << 30):x}", rnd.randrange(20000, 60000))
    c.root.mkdir(parents=True)
    res: dict[str, Any] = {"n": n}
    poll = args.poll_s
    try:
        t0 = time.monotonic()
        for i in range(n):
            c.spawn(f"b{i:02d}")
        names = list(c.daemons)
        _, res["cold_start_s"] = await wait_all(
            c.alive(), "members", lambda r: count_alive(r) >= n, t0, args.timeout_s, poll
        )
        print(f"  N={n}: cold start {res['cold_start_s']:.2f}s", flush=True)

        # Idle CPU and RSS of a converged cluster.
        await trio.sleep(2.0)  # let join-time gossip drain before sampling idle cost
        pids = [d.proc.pid for d in c.alive() if d.proc]
        cpu0 = {p: proc_cpu_s(p) for p in pids}
        w0 = time.monotonic()
        await trio.sleep(args.idle_s)
        wall = time.monotonic() - w0
        cpu_pct = [100 * (proc_cpu_s(p) - cpu0[p]) / wall for p in pids]
        rss = [proc_rss_mib(p) for p in pids]
        res["idle_cpu_pct_median"] = statistics.median(cpu_pct)
        res["idle_cpu_pct_max"] = max(cpu_pct)
        res["rss_mib_median"] = statistics.median(rss)
        res["rss_mib_max"] = max(rss)
        print(f"  N={n}: idle cpu {res['idle_cpu_pct_median']:.2f}% rss {res['rss_mib_median']:.1f} MiB", flush=True)

        # Tag dissemination and user-event dissemination from one node.
        src = c.daemons[names[0]]
        value = f"v{rnd.randrange(1 << 30)}"
        t0 = time.monotonic()
        await ask(src, "tags", tags={"bench": value})
        _, res["tags_s"] = await wait_all(
            c.alive(), "members",
            lambda r: ((member_state(r, src.name) or {}).get("tags") or {}).get("bench") == value,
            t0, args.timeout_s, poll,
        )
        ev = f"e{rnd.randrange(1 << 30)}"
        t0 = time.monotonic()
        await ask(src, "event", name=ev, payload=b"x")
        _, res["event_s"] = await wait_all(
            c.alive(), "events", lambda r: any(e.get("name") == ev for e in r.get("events", [])),
            t0, args.timeout_s, poll,
        )
        print(f"  N={n}: tags {res['tags_s']:.3f}s event {res['event_s']:.3f}s", flush=True)

        # Joins and graceful leaves.
        joins, leaves = [], []
        for k in range(args.repeats):
            jname = f"j{k}"
            t0 = time.monotonic()
            c.spawn(jname)
            others = [d for d in c.alive() if d.name != jname]
            _, last = await wait_all(
                [*others, c.daemons[jname]], "members",
                lambda r, jn=jname: (member_state(r, jn) or {}).get("state") == "alive"
                and count_alive(r) >= n + 1,
                t0, args.timeout_s, poll,
            )
            joins.append(last)
            t0 = time.monotonic()
            await ask(c.daemons[jname], "leave")
            _, last = await wait_all(
                others, "members",
                lambda r, jn=jname: (member_state(r, jn) or {}).get("state") == "left",
                t0, args.timeout_s, poll,
            )
            leaves.append(last)
            c.kill(jname)  # it exits by itself after leave; make sure
        res["join_s"] = statistics.median(joins)
        res["leave_s"] = statistics.median(leaves)
        print(f"  N={n}: join {res['join_s']:.3f}s leave {res['leave_s']:.3f}s", flush=True)

        # Failure detection: kill -9, last survivor marks dead; restart it before the next round.
        firsts, lasts = [], []
        for k in range(args.repeats):
            victim = names[1 + k % (n - 1)]
            survivors = [d for d in c.alive() if d.name != victim]
            t0 = time.monotonic()
            c.kill(victim)
            first, last = await wait_all(
                survivors, "members",
                lambda r, v=victim: (member_state(r, v) or {}).get("state") in ("dead", "left")
                or member_state(r, v) is None,
                t0, args.timeout_s, poll,
            )
            firsts.append(first)
            lasts.append(last)
            c.spawn(victim)
            await wait_all(
                c.alive(), "members", lambda r: count_alive(r) >= n, time.monotonic(),
                args.timeout_s, poll,
            )
        res["detect_first_s"] = statistics.median(firsts)
        res["detect_last_s"] = statistics.median(lasts)
        res["detect_last_all_s"] = lasts
        print(f"  N={n}: detect first {res['detect_first_s']:.2f}s last {res['detect_last_s']:.2f}s", flush=True)

        # Any false dead during the whole run? (counted by the daemons themselves)
        return res
    finally:
        c.stop_all()


async def soak(n: int, args: argparse.Namespace, root: Path) -> dict[str, Any]:
    """An idle converged cluster for ``--soak-s``: nobody is killed, so every suspicion is false
    and every dead a false positive. Counts come from the daemons' own gossip stats."""
    rnd = random.Random()
    c = Cluster(root / f"soak{n}", f"soak{n}-{rnd.randrange(1 << 30):x}", rnd.randrange(20000, 60000))
    c.root.mkdir(parents=True)
    try:
        t0 = time.monotonic()
        for i in range(n):
            c.spawn(f"s{i:02d}")
        await wait_all(c.alive(), "members", lambda r: count_alive(r) >= n, t0, args.timeout_s, args.poll_s)
        print(f"  soak N={n}: converged, idling {args.soak_s:.0f}s", flush=True)
        min_alive = n
        end = time.monotonic() + args.soak_s
        while time.monotonic() < end:
            await trio.sleep(min(10.0, max(0.0, end - time.monotonic())))  # sampling period
            replies = [await ask(d, "members") for d in c.alive()]
            min_alive = min([min_alive] + [count_alive(r) for r in replies if r is not None])
        stats = [await ask(d, "status") for d in c.alive()]
        g = [s["gossip"] for s in stats if s is not None]
        return {
            "n": n, "soak_s": args.soak_s, "daemons_running": len(c.alive()),
            "min_alive_seen": min_alive,
            "false_suspicions": sum(x.get("suspicions_raised", 0) for x in g),
            "refutations": sum(x.get("suspicions_refuted", 0) for x in g),
            "false_dead": sum(x.get("members_confirmed_dead", 0) for x in g),
        }
    finally:
        c.stop_all()


def table(rows: list[dict[str, Any]]) -> str:
    head = (
        "| N | cold start s | join s (Serf) | tags s | event s (Serf) | leave s (Serf) "
        "| detect last s (Serf / target) | detect first s | idle CPU %/daemon (Serf) | RSS MiB (Serf) |"
    )
    out = [head, "|" + "---|" * 10]
    for r in rows:
        s = SERF_LAN.get(r["n"], {})
        tgt = TARGET_DETECT.get(r["n"])
        out.append(
            f"| {r['n']} | {r['cold_start_s']:.2f} | {r['join_s']:.3f} ({s.get('join', '-')}) "
            f"| {r['tags_s']:.3f} | {r['event_s']:.3f} ({s.get('event', '-')}) "
            f"| {r['leave_s']:.3f} ({s.get('leave', '-')}) "
            f"| {r['detect_last_s']:.2f} ({s.get('detect', '-')} / {f'≤ {tgt:.1f}' if tgt else '-'}) "
            f"| {r['detect_first_s']:.2f} "
            f"| {r['idle_cpu_pct_median']:.2f} max {r['idle_cpu_pct_max']:.2f} ({s.get('cpu', '-')}) "
            f"| {r['rss_mib_median']:.1f} max {r['rss_mib_max']:.1f} ({s.get('rss', '-')}) |"
        )
    return "\n".join(out)


async def main_async(args: argparse.Namespace) -> list[dict[str, Any]]:
    root = Path(tempfile.mkdtemp(prefix="ringd-bench-gossip-"))
    rows = []
    try:
        for n in args.nodes:
            print(f"N={n} ...", flush=True)
            rows.append(await bench_n(n, args, root))
        if args.soak_s > 0:
            print(f"soak N={args.soak_n} ...", flush=True)
            rows.append({"soak": await soak(args.soak_n, args, root)})
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
        else:
            print(f"logs kept in {root}")
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--nodes", type=int, nargs="+", default=[5, 20, 50])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--idle-s", type=float, default=15.0)
    p.add_argument("--poll-s", type=float, default=0.02)
    p.add_argument("--timeout-s", type=float, default=60.0)
    p.add_argument("--soak-s", type=float, default=0.0, help="idle soak length (0 = skip); target run: 600")
    p.add_argument("--soak-n", type=int, default=50)
    p.add_argument("--json", default="bench-results/bench_gossip.json")
    p.add_argument("--keep", action="store_true", help="keep daemon logs")
    args = p.parse_args()
    rows = trio.run(main_async, args)
    print()
    print(table([r for r in rows if "soak" not in r]))
    for r in rows:
        if "soak" in r:
            sk = r["soak"]
            print(f"\nidle soak N={sk['n']} for {sk['soak_s']:.0f}s: false suspicions {sk['false_suspicions']}, "
                  f"refutations {sk['refutations']}, false dead {sk['false_dead']}, "
                  f"lowest alive count seen {sk['min_alive_seen']}/{sk['n']}")
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"when": time.strftime("%Y-%m-%dT%H:%M:%S"), "results": rows}, indent=2))
    print(f"\nJSON written to {out}")


if __name__ == "__main__":
    main()
