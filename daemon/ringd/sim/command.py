"""``ringd simulate``: run seeded simulations of the Totem core and check EVS.

Register with ``app.command("simulate")(simulate)``; also runnable on its own as
``python -m ringd.sim.command --seeds 100``.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import replace
from typing import Annotated

import typer


def simulate(
    seeds: Annotated[int | None, typer.Option(
        "--seeds", min=1, help="Number of seeds to run (default 100, or 1 with --seed).")] = None,
    seed: Annotated[int | None, typer.Option(
        "--seed", min=0, help="First seed (default: a random one, printed).")] = None,
    nodes: Annotated[int, typer.Option("--nodes", min=1, max=64, help="Nodes per run.")] = 5,
    loss: Annotated[float | None, typer.Option(
        "--loss", min=0.0, max=0.9,
        help="Datagram loss probability in the chaos phase (default: drawn per seed in 0..0.3).",
    )] = None,
    partitions: Annotated[bool, typer.Option(
        "--partitions/--no-partitions", help="Partition the network in random shapes.")] = True,
    crashes: Annotated[bool, typer.Option(
        "--crashes/--no-crashes", help="Crash and restart nodes.")] = True,
    pauses: Annotated[bool, typer.Option(
        "--pauses/--no-pauses", help="Pause nodes for longer than the token timeout.")] = True,
    duration: Annotated[float, typer.Option(
        "--duration", min=0.1, help="Virtual seconds of the chaos phase of each run.")] = 10.0,
    jobs: Annotated[int, typer.Option(
        "--jobs", min=1, max=64, help="Worker processes.")] = 1,
    hostile: Annotated[bool, typer.Option(
        "--hostile", help="Harsher chaos: more faults, more loss, long delay spikes.")] = False,
    codec: Annotated[bool, typer.Option(
        "--codec/--no-codec", help="Pass every datagram through the wire codec.")] = False,
    verbose: Annotated[bool, typer.Option(
        "--verbose", "-v", help="One line per seed.")] = False,
    trace_window: Annotated[str | None, typer.Option(
        "--trace-window", metavar="FROM:TO",
        help="Print every trace event between these virtual times (seconds) of each seed.",
    )] = None,
    trace_lines: Annotated[int, typer.Option(
        "--trace-lines", min=0, help="Trace events printed for a failing seed.")] = 60,
) -> None:
    """Run seeded deterministic simulations of the Totem ring and check extended virtual synchrony.

    Exits with status 1 if any run violates a property, printing the seed, a command that reproduces it and the end of its trace.
    """
    if seed is None:
        seed = int.from_bytes(os.urandom(4), "big")
        count = seeds or 100
    else:
        count = seeds or 1
    # Imported here so `ringd run` (which shares cli.py) never loads the simulator.
    from ringd.sim import cluster as sim_cluster
    from ringd.sim import runner
    from ringd.sim.runner import format_failure, sweep

    base = sim_cluster.SimOptions.hostile() if hostile else sim_cluster.DEFAULT_OPTIONS
    options = replace(base, duration_s=duration, loss=loss,
                      partitions=partitions, crashes=crashes, pauses=pauses, codec=codec)
    print(f"simulating seeds {seed}..{seed + count - 1}: nodes={nodes} "
          f"loss={'per-seed 0..0.3' if loss is None else loss} partitions={partitions} "
          f"crashes={crashes} pauses={pauses} duration={duration}s jobs={jobs}"
          f"{' hostile' if hostile else ''}", flush=True)
    window: tuple[float, float] | None = None
    if trace_window is not None:
        try:
            lo, hi = (float(x) for x in trace_window.split(":"))
        except ValueError:
            raise typer.BadParameter("expected FROM:TO in seconds, e.g. 3.2:3.6",
                                     param_hint="--trace-window") from None
        window = (lo, hi)
    started = time.perf_counter()
    runs = failures = delivered = changes = violations = 0
    virtual = 0.0
    for result in sweep(((s, nodes) for s in range(seed, seed + count)), options, jobs):
        runs += 1
        virtual += result.virtual_s
        delivered += result.delivered
        changes += result.config_changes
        violations += len(result.violations)
        if verbose:
            print(f"seed {result.seed}: {'ok' if result.ok else 'FAIL'} "
                  f"virtual={result.virtual_s:.1f}s delivered={result.delivered} "
                  f"configs={result.config_changes} wall={result.wall_s:.3f}s", flush=True)
        if window is not None:
            for line in runner.trace_window(result.seed, nodes, options, *window):
                print(line)
        if not result.ok:
            failures += 1
            print(format_failure(result, trace_lines), file=sys.stderr, flush=True)
            print(f"  (or: python -m ringd.sim.command{result.repro.removeprefix('ringd simulate')})",
                  file=sys.stderr, flush=True)
    wall = time.perf_counter() - started
    print(f"runs: {runs}  failed: {failures}  violations: {violations}")
    print(f"virtual time: {virtual:.1f}s  messages delivered: {delivered}  "
          f"configuration changes: {changes}")
    print(f"wall time: {wall:.2f}s  seeds/second: {runs / wall if wall else 0.0:.1f}")
    if failures:
        raise typer.Exit(1)


if __name__ == "__main__":
    typer.run(simulate)
