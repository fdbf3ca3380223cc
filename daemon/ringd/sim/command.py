"""``ringd simulate``: run seeded simulations of whole nodes (or of the Totem core alone)
and check EVS and process-group virtual synchrony.

Register with ``app.command("simulate")(simulate)``; also runnable on its own as
``python -m ringd.sim.command --seeds 100``.
"""

from __future__ import annotations

import json
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
        "--jobs", min=0, max=64, help="Worker processes (0: one per CPU).")] = 0,
    hostile: Annotated[bool, typer.Option(
        "--hostile", help="Harsher chaos: more faults, more loss, long delay spikes.")] = False,
    codec: Annotated[bool, typer.Option(
        "--codec/--no-codec", help="Pass every datagram through the wire codec.")] = False,
    weighted_votes: Annotated[bool, typer.Option(
        "--weighted-votes", help="Give each node 1-3 quorum votes (drawn from the seed), not 1.")] = False,
    totem_only: Annotated[bool, typer.Option(
        "--totem-only", help="Simulate bare Totem cores with faked gossip hints, not whole nodes.")] = False,
    as_json: Annotated[bool, typer.Option(
        "--json", help="Print one JSON object of totals instead of the summary lines.")] = False,
    verbose: Annotated[bool, typer.Option(
        "--verbose", "-v", help="One line per seed.")] = False,
    trace_window: Annotated[str | None, typer.Option(
        "--trace-window", metavar="FROM:TO",
        help="Print every trace event between these virtual times (seconds) of each seed.",
    )] = None,
    trace_lines: Annotated[int, typer.Option(
        "--trace-lines", min=0, help="Trace events printed for a failing seed.")] = 60,
) -> None:
    """Run seeded deterministic simulations of whole ringd nodes (gossip, Totem, process
    groups, client applications) and check extended virtual synchrony and group virtual
    synchrony.

    Exits with status 1 if any run violates a property, printing the seed, a command that reproduces it and the end of its trace.
    """
    if jobs == 0:
        jobs = os.cpu_count() or 1
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
                      partitions=partitions, crashes=crashes, pauses=pauses, codec=codec,
                      whole_node=not totem_only, weighted_votes=weighted_votes,
                      clock_drift_max=0.0 if totem_only else sim_cluster.WHOLE_NODE_CLOCK_DRIFT)
    out = sys.stderr if as_json else sys.stdout
    print(f"simulating seeds {seed}..{seed + count - 1}: nodes={nodes} "
          f"loss={'per-seed 0..0.3' if loss is None else loss} partitions={partitions} "
          f"crashes={crashes} pauses={pauses} duration={duration}s jobs={jobs}"
          f"{' hostile' if hostile else ''}{' totem-only' if totem_only else ' whole nodes'}"
          f"{' weighted-votes' if weighted_votes else ''}",
          file=out, flush=True)
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
    totals = dict.fromkeys(runner.NODE_COUNTERS, 0)
    for result in sweep(((s, nodes) for s in range(seed, seed + count)), options, jobs):
        runs += 1
        virtual += result.virtual_s
        delivered += result.delivered
        changes += result.config_changes
        violations += len(result.violations)
        for name in totals:
            totals[name] += int(result.stats.get(name, 0))
        if verbose:
            print(f"seed {result.seed}: {'ok' if result.ok else 'FAIL'} "
                  f"virtual={result.virtual_s:.1f}s delivered={result.delivered} "
                  f"configs={result.config_changes} wall={result.wall_s:.3f}s", file=out, flush=True)
        if window is not None:
            for line in runner.trace_window(result.seed, nodes, options, *window):
                print(line, file=out)
        if not result.ok:
            failures += 1
            print(format_failure(result, trace_lines), file=sys.stderr, flush=True)
            print(f"  (or: python -m ringd.sim.command{result.repro.removeprefix('ringd simulate')})",
                  file=sys.stderr, flush=True)
    wall = time.perf_counter() - started
    rate = runs / wall if wall else 0.0
    if as_json:
        print(json.dumps({"runs": runs, "violations": violations, "seeds_per_s": round(rate, 2),
                          **totals, "failed_runs": failures, "messages_delivered": delivered,
                          "configuration_changes": changes, "virtual_s": round(virtual, 3),
                          "wall_s": round(wall, 3)}))
    else:
        print(f"runs: {runs}  failed: {failures}  violations: {violations}")
        print(f"virtual time: {virtual:.1f}s  messages delivered: {delivered}  "
              f"configuration changes: {changes}")
        if not totem_only:
            print("gossip messages: {gossip_messages}  totem messages: {totem_messages}  "
                  "group events: {group_events}  client messages delivered: "
                  "{client_messages_delivered}".format(**totals))
            print("primary configurations: {primary_configurations}  non-primary: "
                  "{nonprimary_configurations}  sends refused as not quorate: "
                  "{sends_refused_not_quorate}".format(**totals))
        print(f"wall time: {wall:.2f}s  seeds/second: {rate:.1f}")
    if failures:
        raise typer.Exit(1)


if __name__ == "__main__":
    typer.run(simulate)
