#!/usr/bin/env python3
"""Agreed-delivery latency of the embedded node (``ringd.embedded``) beside daemons, in one run.

Two setups of N nodes on loopback, run one after the other with the same workload:

  daemon     N ``ringd run`` daemons; on each node a worker process connects to its daemon
             with ``RingClient`` (the application and the ring in two processes).
  embedded   N worker processes, each running an embedded node in its own Trio loop and
             talking to it with the same ``RingClient`` API (no daemon process).

Workload (as ``bench_ring.py --parts latency``): every worker joins one group; one sender on
the last node (not the representative), or every node with ``--all-senders``, sends one
100-byte message per call at ``--rate`` msgs/s for ``--latency-s``, each carrying
``time.monotonic_ns()``; p50/p99 over every delivery at every node. ``--corosync-latency``
takes the Corosync anchor's ``results/latency.txt`` from the same hour and adds the ratios;
the floor of the platform for that hour comes from ``bench_wakeups.py``.

    python scripts/bench_embedded.py --nodes 3 5 --latency-s 10 \
        --corosync-latency ../shared/anchors/corosync/results/latency.txt

Prints a table and writes a JSON file. Every process started is killed by PID at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import secrets
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import trio
from rich.console import Console
from rich.table import Table

from bench_ring import WORKERS, corosync_latency, kill_workers, pct
from bench_ring_size import steal_ticks
from ringd.client import MessageEvent, RingClient
from ringd.embedded import open_node

SCRIPT = Path(__file__).resolve()
STAMP = struct.Struct("!QI")  # send time (monotonic ns), sender index
POLL_S = 0.01
READY_TIMEOUT_S = 60.0


# --- the worker: one node's application --------------------------------------------------------


async def worker(a: argparse.Namespace) -> None:
    out: dict[str, Any] = {"latency_ns": [], "sent": 0}
    async with AsyncExitStack() as stack:
        if a.socket:
            ring = await RingClient.connect(a.socket)
        else:
            settings = {"name": a.name, "cluster_name": a.cluster, "net.port": 0,
                        "net.multicast_port": a.mcast_port, "socket": str(a.dir / f"{a.name}.sock"),
                        "state_dir": str(a.dir / a.name), "log_level": "warning"}
            node = await stack.enter_async_context(open_node(settings))
            await node.wait_ring(a.expect, READY_TIMEOUT_S)
            ring = await node.connect()
        await stack.enter_async_context(ring)
        await ring.join(a.group)
        with trio.fail_after(READY_TIMEOUT_S):
            while len((await ring.members(a.group))[a.group]) < a.expect:
                await trio.sleep(POLL_S)  # poll
        (a.dir / f"ready-{a.name}").touch()
        with trio.fail_after(READY_TIMEOUT_S):
            while not (a.dir / "go").exists():
                await trio.sleep(POLL_S)  # poll
        ends = 0

        async def receive(cancel: trio.CancelScope) -> None:
            nonlocal ends
            async for event in ring.events():
                if not isinstance(event, MessageEvent):
                    continue
                now = time.monotonic_ns()
                if event.data == b"END":
                    ends += 1
                    if ends == a.senders:
                        cancel.cancel()
                        return
                    continue
                sent_ns, _ = STAMP.unpack_from(event.data)
                out["latency_ns"].append(now - sent_ns)

        async def send() -> None:
            pad = b"x" * (a.size - STAMP.size)
            start = trio.current_time()
            count = int(a.rate * a.latency_s)
            for k in range(count):
                await trio.sleep_until(start + k / a.rate)
                await ring.send(a.group, STAMP.pack(time.monotonic_ns(), a.index) + pad)
                out["sent"] += 1
            await ring.send(a.group, b"END")

        with trio.fail_after(a.latency_s + READY_TIMEOUT_S):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(receive, nursery.cancel_scope)
                if a.sender:
                    nursery.start_soon(send)
    (a.dir / f"out-{a.name}.json").write_text(json.dumps(out))


# --- the driver ---------------------------------------------------------------------------------


def spawn(args: list[str], log: Path) -> subprocess.Popen[bytes]:
    with open(log, "ab") as fh:
        p = subprocess.Popen(args, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
    WORKERS.append(p)
    return p


def wait_for(cond: Any, timeout_s: float, what: str, procs: list[subprocess.Popen[bytes]]) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        dead = [p for p in procs if p.poll() not in (None, 0)]
        if dead or time.monotonic() > deadline:
            raise RuntimeError(f"{what}: timed out or a process failed ({dead})")
        time.sleep(POLL_S)  # poll


def one_run(mode: str, n: int, a: argparse.Namespace, root: Path) -> dict[str, Any]:
    work = root / f"{mode}-{n}-{'all' if a.all_senders else 'one'}"
    work.mkdir()
    cluster = f"be-{secrets.token_hex(4)}"
    mcast_port = random.randrange(20000, 60000)
    names = [f"n{i + 1}" for i in range(n)]
    senders = list(range(n)) if a.all_senders else [n - 1]
    procs: list[subprocess.Popen[bytes]] = []
    try:
        if mode == "daemon":
            for name in names:
                procs.append(spawn([sys.executable, "-m", "ringd", "run", "--name", name, "--port", "0",
                                    "--socket", str(work / f"{name}.sock"), "--state-dir", str(work / name),
                                    "--cluster-name", cluster, "--multicast-port", str(mcast_port),
                                    "--log-level", "warning"], work / f"{name}.daemon.log"))
            wait_for(lambda: all((work / f"{x}.sock").exists() for x in names), READY_TIMEOUT_S,
                     "daemons", procs)
        for i, name in enumerate(names):
            args = [sys.executable, str(SCRIPT), "worker", "--name", name, "--index", str(i),
                    "--dir", str(work), "--group", "lat", "--expect", str(n), "--senders", str(len(senders)),
                    "--rate", str(a.rate), "--latency-s", str(a.latency_s), "--size", str(a.size),
                    "--cluster", cluster, "--mcast-port", str(mcast_port)]
            if mode == "daemon":
                args += ["--socket", str(work / f"{name}.sock")]
            if i in senders:
                args += ["--sender"]
            procs.append(spawn(args, work / f"{name}.worker.log"))
        workers = procs[-n:]
        wait_for(lambda: all((work / f"ready-{x}").exists() for x in names), READY_TIMEOUT_S,
                 f"{mode} workers ready", procs)
        time.sleep(0.5)  # let the ring go idle after the joins before the clock starts
        steal0 = steal_ticks()
        (work / "go").touch()
        wait_for(lambda: all(p.poll() is not None for p in workers), a.latency_s + READY_TIMEOUT_S,
                 f"{mode} workers done", workers)
        steal_s = (steal_ticks() - steal0) / os.sysconf("SC_CLK_TCK")
        lat = [x / 1e6 for name in names
               for x in json.loads((work / f"out-{name}.json").read_text())["latency_ns"]]
    finally:
        kill_workers(procs)
    sent = int(a.rate * a.latency_s) * len(senders)
    return {"mode": mode, "nodes": n, "senders": len(senders), "rate": a.rate, "size": a.size,
            "sent": sent, "deliveries": len(lat), "all_delivered": len(lat) == sent * n,
            "p50_ms": round(pct(lat, 0.5), 3), "p99_ms": round(pct(lat, 0.99), 3),
            "steal_s": round(steal_s, 2)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd")
    w = sub.add_parser("worker")
    for flag, kind in (("--name", str), ("--index", int), ("--dir", Path), ("--group", str),
                       ("--expect", int), ("--senders", int), ("--rate", float), ("--latency-s", float),
                       ("--size", int), ("--cluster", str), ("--mcast-port", int), ("--socket", str)):
        w.add_argument(flag, type=kind, default=None)
    w.add_argument("--sender", action="store_true")
    p.add_argument("--nodes", type=int, nargs="+", default=[3, 5])
    p.add_argument("--rate", type=float, default=100.0, help="msgs/s per sender")
    p.add_argument("--latency-s", type=float, default=10.0)
    p.add_argument("--size", type=int, default=100)
    p.add_argument("--all-senders", action="store_true", help="every node sends (default: the last)")
    p.add_argument("--repeats", type=int, default=1, help="alternate the two setups this many times")
    p.add_argument("--corosync-latency", type=Path, metavar="FILE",
                   help="the Corosync anchor's results/latency.txt measured in the same hour")
    p.add_argument("--json", type=Path, default=Path("bench-results/bench_embedded.json"))
    a = p.parse_args()
    if a.cmd == "worker":
        trio.run(worker, a)
        return
    corosync = corosync_latency(a.corosync_latency) if a.corosync_latency else {}
    root = Path(tempfile.mkdtemp(prefix="be-", dir="/tmp"))
    rows: list[dict[str, Any]] = []
    try:
        for n in a.nodes:
            for r in range(a.repeats):
                order = ("daemon", "embedded") if r % 2 == 0 else ("embedded", "daemon")
                (root / f"r{r}").mkdir(exist_ok=True)
                for mode in order:
                    row = one_run(mode, n, a, root / f"r{r}")
                    row["repeat"] = r
                    cs = corosync.get((n, a.all_senders))
                    if cs:
                        row["corosync_p50_ms"], row["corosync_p99_ms"] = cs
                        row["p50_vs_corosync"] = round(row["p50_ms"] / cs[0], 2)
                        row["p99_vs_corosync"] = round(row["p99_ms"] / cs[1], 2)
                    rows.append(row)
                    print(json.dumps(row), flush=True)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
    finally:
        kill_workers()
        shutil.rmtree(root, ignore_errors=True)
    table = Table(title=f"agreed latency, {a.size} B at {a.rate:g} msgs/s per sender")
    for col in ("nodes", "senders", "setup", "p50 ms", "p99 ms", "all delivered", "Corosync p50/p99",
                "vs Corosync p50/p99", "steal s"):
        table.add_column(col)
    for row in rows:
        cs = f"{row['corosync_p50_ms']}/{row['corosync_p99_ms']}" if "corosync_p50_ms" in row else "-"
        ratio = f"{row['p50_vs_corosync']}×/{row['p99_vs_corosync']}×" if "p50_vs_corosync" in row else "-"
        table.add_row(str(row["nodes"]), str(row["senders"]), row["mode"], f"{row['p50_ms']:.3f}",
                      f"{row['p99_ms']:.3f}", "yes" if row["all_delivered"] else "NO", cs, ratio,
                      f"{row['steal_s']:.2f}")
    Console(width=160).print(table)
    a.json.parent.mkdir(parents=True, exist_ok=True)
    a.json.write_text(json.dumps({"rows": rows, "args": {k: str(v) for k, v in vars(a).items()}}, indent=1))
    print(f"written to {a.json}")


if __name__ == "__main__":
    main()
