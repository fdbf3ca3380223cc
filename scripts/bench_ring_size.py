#!/usr/bin/env python3
"""How large a ring one host sustains: start N local daemons together (`ringd cluster`),
measure how long the ring of the first ``ring_size_max`` of them takes to form, then count
its reconfigurations over a window. Prints a table and writes a JSON file.

    python scripts/bench_ring_size.py --nodes 50 --tries 5 --window-s 60
    python scripts/bench_ring_size.py --nodes 64 --tries 5 --window-s 120
    python scripts/bench_ring_size.py --nodes 32 --set totem.ring_size_max=32

Every daemon runs on loopback; each try stops its cluster (the launcher ends the daemons it
started) before the next one starts. The host's steal time is logged from /proc/stat.
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from ringd import client

RINGD = [sys.executable, "-m", "ringd"]
POLL_S = 1.0


def steal_ticks() -> int:
    with open("/proc/stat") as f:
        fields = f.readline().split()
    return int(fields[8]) if len(fields) > 8 else 0


def ring_of(socket: str) -> dict[str, Any] | None:
    try:
        status = client.status(socket)
    except (client.ClientError, OSError):
        return None
    totem = status.get("totem") or {}
    stats = totem.get("stats") or {}
    return {"state": totem.get("state"), "ring": totem.get("ring"),
            "members": tuple(totem.get("members") or ()),
            "regular": (stats.get("configurations") or {}).get("regular", 0)}


def one_try(nodes: int, ring_size: int, window_s: float, form_timeout_s: float,
            settings: Sequence[str], console: Console) -> dict[str, Any]:
    directory = Path(tempfile.mkdtemp(prefix="rs-", dir="/tmp"))
    cmd = [*RINGD, "cluster", "--nodes", str(nodes), "--dir", str(directory),
           "--for", str(form_timeout_s + window_s + 30)]
    for item in settings:
        cmd += ["--set", item]
    started = time.monotonic()
    steal_before = steal_ticks()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    result: dict[str, Any] = {"nodes": nodes, "formed_s": None, "ring_size": None,
                              "reconfigurations": None, "ring_seq_at_end": None}
    try:
        spec_file = directory / "cluster.json"
        while not spec_file.exists():
            if proc.poll() is not None:
                raise RuntimeError(f"ringd cluster exited: {proc.stderr.read().decode()[-500:]}")  # type: ignore[union-attr]
            if time.monotonic() - started > 120:
                raise RuntimeError("the cluster did not start within 120 s")
            time.sleep(0.2)  # poll: the launcher writes it once every daemon answers
        daemons = json.loads(spec_file.read_text())["nodes"]
        sockets = {d["name"]: d["socket"] for d in daemons}
        formed_at: float | None = None
        regular_at_form: dict[str, int] = {}
        members: tuple[str, ...] = ()
        end = started + form_timeout_s
        while time.monotonic() < end:
            views = {name: ring_of(path) for name, path in sockets.items()}
            rings = {}
            for name, view in views.items():
                if view and view["state"] == "operational":
                    rings.setdefault((view["ring"], view["members"]), []).append(name)
            best = max(rings.items(), key=lambda kv: len(kv[0][1]), default=None)
            if best is not None:
                (ring, ring_members), holders = best
                # Formed: every member of the largest ring reports that very ring, and the
                # ring is as large as the ring size allows.
                if set(ring_members) <= set(holders) and (
                        formed_at is None and len(ring_members) >= ring_size):
                    formed_at = time.monotonic()
                    members = ring_members
                    regular_at_form = {m: views[m]["regular"] for m in members}  # type: ignore[index]
                    break
            time.sleep(POLL_S)  # poll
        if formed_at is None:
            result["formed_s"] = None
            console.print(f"  ring did not form within {form_timeout_s:.0f} s")
        else:
            result["formed_s"] = round(formed_at - started, 2)
            result["ring_size"] = len(members)
            window_end = formed_at + window_s
            while time.monotonic() < window_end:
                time.sleep(POLL_S)  # the window itself (the measure is the counters' delta)
            deltas = []
            seqs = []
            for m in members:
                view = ring_of(sockets[m])
                if view is not None:
                    deltas.append(view["regular"] - regular_at_form[m])
                    seqs.append(view["ring"])
            result["reconfigurations"] = max(deltas) if deltas else None
            result["ring_seq_at_end"] = sorted(set(seqs))
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    hz = 100
    result["steal_cpu_s"] = round((steal_ticks() - steal_before) / hz, 1)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=50)
    parser.add_argument("--tries", type=int, default=5)
    parser.add_argument("--window-s", type=float, default=120.0,
                        help="after the ring formed, count reconfigurations this long")
    parser.add_argument("--form-timeout-s", type=float, default=60.0)
    parser.add_argument("--ring-size", type=int, default=None,
                        help="the ring size to wait for (default: totem.ring_size_max of the preset)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--out", type=Path, default=Path("bench-results/bench_ring_size.json"))
    args = parser.parse_args(argv)
    from ringd.config import load_config

    overrides = dict(item.split("=", 1) for item in args.set)
    cfg = load_config(None, {}, overrides)  # the daemons' own defaults and --set values
    # The ring the cluster should reach: every daemon, up to the ring's maximum.
    ring_size = min(args.nodes, args.ring_size or cfg.totem.ring_size_max)
    console = Console(stderr=True)
    rows = []
    for attempt in range(1, args.tries + 1):
        console.print(f"try {attempt}/{args.tries}: {args.nodes} daemons, ring of "
                      f"{ring_size}")
        row = one_try(args.nodes, ring_size, args.window_s, args.form_timeout_s, args.set, console)
        row["try"] = attempt
        rows.append(row)
        console.print(f"  {row}")
    table = Table(title=f"{args.nodes} daemons on one host, ring of {ring_size}")
    for col in ("try", "formed after s", "ring size", f"reconfigurations in {args.window_s:.0f} s",
                "host steal s"):
        table.add_column(col, justify="right")
    for row in rows:
        table.add_row(str(row["try"]), str(row["formed_s"]), str(row["ring_size"]),
                      str(row["reconfigurations"]), str(row["steal_cpu_s"]))
    Console().print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"nodes": args.nodes, "settings": args.set,
                                    "ring_size": ring_size,
                                    "window_s": args.window_s, "tries": rows}, indent=2))
    console.print(f"written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
