#!/usr/bin/env python3
"""Long simulator sweeps: many seeds over several node counts, a JSON summary and a table.

Example (about 10,000 runs on 2 cores)::

    .venv/bin/python scripts/sim_sweep.py --seeds 3400 --nodes 3,5,8 --jobs 2 \
        --out /tmp/sweep.json

Every failing seed is printed with its reproduce command and trace tail as it is found.
Exit status 1 if any seed failed.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path

from rich.console import Console
from rich.table import Table

from ringd.sim.cluster import WHOLE_NODE_CLOCK_DRIFT, SimOptions
from ringd.sim.runner import RunResult, format_failure, sweep


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=1000, help="seeds per node count")
    parser.add_argument("--seed", type=int, default=0, help="first seed")
    parser.add_argument("--nodes", default="3,5,8", help="comma-separated node counts")
    parser.add_argument("--jobs", type=int, default=2, help="worker processes")
    parser.add_argument("--duration", type=float, default=10.0, help="chaos phase, virtual s")
    parser.add_argument("--loss", type=float, default=None, help="fixed loss (default per seed)")
    parser.add_argument("--no-partitions", action="store_true")
    parser.add_argument("--no-crashes", action="store_true")
    parser.add_argument("--no-pauses", action="store_true")
    parser.add_argument("--codec", action="store_true", help="pass datagrams through wire.Codec")
    parser.add_argument("--totem-only", action="store_true",
                        help="bare Totem cores with faked gossip hints instead of whole nodes")
    parser.add_argument("--hostile", action="store_true",
                        help="harsher chaos: more faults, more loss, long delay spikes")
    parser.add_argument("--out", type=Path, default=None, help="write a JSON summary here")
    parser.add_argument("--max-failures", type=int, default=50,
                        help="stop after this many failing seeds")
    args = parser.parse_args(argv)

    counts = [int(n) for n in args.nodes.split(",") if n.strip()]
    base = SimOptions.hostile() if args.hostile else SimOptions()
    options = replace(base, duration_s=args.duration, loss=args.loss,
                      partitions=not args.no_partitions, crashes=not args.no_crashes,
                      pauses=not args.no_pauses, codec=args.codec, whole_node=not args.totem_only,
                      clock_drift_max=0.0 if args.totem_only else WHOLE_NODE_CLOCK_DRIFT)
    tasks = [(seed, n) for n in counts for seed in range(args.seed, args.seed + args.seeds)]
    console = Console(stderr=True)
    started = time.perf_counter()
    per_n: dict[int, dict[str, float]] = {n: Counter() for n in counts}  # type: ignore[misc]
    props: Counter[str] = Counter()
    failures: list[dict[str, object]] = []
    done = 0
    for result in sweep(tasks, options, args.jobs):
        done += 1
        _account(per_n[result.nodes], result)
        if not result.ok:
            for v in result.violations:
                props[v.prop] += 1
            failures.append({"seed": result.seed, "nodes": result.nodes, "loss": result.loss,
                             "repro": result.repro,
                             "violations": [str(v) for v in result.violations],
                             "trace_tail": result.trace_tail[-80:]})
            print(format_failure(result, trace_lines=40), file=sys.stderr, flush=True)
            if len(failures) >= args.max_failures:
                console.print(f"stopping: {len(failures)} failing seeds")
                break
        if done % 200 == 0:
            elapsed = time.perf_counter() - started
            console.print(f"{done}/{len(tasks)} runs, {len(failures)} failing, "
                          f"{done / elapsed:.1f} seeds/s")
    wall = time.perf_counter() - started

    table = Table(title=f"simulator sweep: {done} runs in {wall:.1f}s ({done / wall:.1f} seeds/s)")
    for col in ("nodes", "runs", "failed", "virtual s", "delivered", "client msgs", "config changes",
                "crashes", "partitions", "pauses", "converge max s", "probe rounds max",
                "wall s/run"):
        table.add_column(col, justify="right")
    for n in counts:
        row = per_n[n]
        runs = int(row["runs"])
        table.add_row(str(n), str(runs), str(int(row["failed"])), f"{row['virtual_s']:.0f}",
                      str(int(row["delivered"])), str(int(row["client_messages_delivered"])),
                      str(int(row["config_changes"])),
                      str(int(row["crashes"])), str(int(row["partitions"])),
                      str(int(row["pauses"])), f"{row['converge_max_s']:.2f}",
                      str(int(row["probe_rounds_max"])),
                      f"{row['wall_s'] / runs:.3f}" if runs else "-")
    Console(width=200).print(table)
    if props:
        Console().print("violations by property: " + ", ".join(f"{p}={c}" for p, c in props.most_common()))

    if args.out is not None:
        summary = {
            "runs": done, "wall_s": wall, "seeds_per_s": done / wall if wall else 0.0,
            "options": {"seeds": args.seeds, "first_seed": args.seed, "nodes": counts,
                        "duration_s": args.duration, "loss": args.loss,
                        "partitions": not args.no_partitions, "crashes": not args.no_crashes,
                        "pauses": not args.no_pauses, "codec": args.codec,
                        "hostile": args.hostile, "whole_node": not args.totem_only},
            "per_nodes": {str(n): dict(per_n[n]) for n in counts},
            "violations_by_property": dict(props),
            "failures": failures,
        }
        args.out.write_text(json.dumps(summary, indent=2))
        console.print(f"summary written to {args.out}")
    return 1 if failures else 0


def _account(row: dict[str, float], result: RunResult) -> None:
    stats = result.stats
    row["runs"] += 1
    row["failed"] += 0 if result.ok else 1
    row["virtual_s"] += result.virtual_s
    row["wall_s"] += result.wall_s
    row["delivered"] += stats["delivered"]
    row["config_changes"] += stats["config_changes"]
    row["crashes"] += stats["crashes"]
    row["partitions"] += stats["partitions"]
    row["pauses"] += stats["pauses"]
    for name in ("gossip_messages", "totem_messages", "group_events", "client_messages_delivered",
                 "primary_configurations", "nonprimary_configurations", "sends_refused_not_quorate"):
        row[name] += stats.get(name, 0)
    row["probe_rounds_max"] = max(row.get("probe_rounds_max", 0), stats["probe_rounds"])
    if stats["converged_at_s"] is not None and stats["heal_at_s"] is not None:
        row["converge_max_s"] = max(row.get("converge_max_s", 0.0),
                                    stats["converged_at_s"] - stats["heal_at_s"])
    else:
        row.setdefault("converge_max_s", 0.0)


if __name__ == "__main__":
    sys.exit(main())
