"""Run one seed (simulate + check) or sweep many, optionally in worker processes."""

from __future__ import annotations

import multiprocessing
import re
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any

from ringd.sim.checkers import Violation, check_liveness, check_safety
from ringd.sim.cluster import DEFAULT_OPTIONS, SimCluster, SimOptions, format_trace
from ringd.sim.group_checker import ClientHistory, check_group_views, check_groups
from ringd.sim.node_cluster import NodeSimCluster
from ringd.sim.quorum_checker import check_primary_history, check_quorum
from ringd.wire import decode_payload

# What a whole-node run counts beside SimStats (``ringd simulate --json`` totals).
NODE_COUNTERS = ("gossip_messages", "totem_messages", "group_events", "client_messages_delivered",
                 "primary_configurations", "nonprimary_configurations", "sends_refused_not_quorate")


def make_cluster(seed: int, nodes: int, options: SimOptions) -> SimCluster:
    """The cluster a run uses: whole nodes (NodeCore), or bare Totem cores."""
    return NodeSimCluster(seed, nodes, options) if options.whole_node else SimCluster(seed, nodes, options)


@dataclass(slots=True)
class RunResult:
    """Outcome of one seed: plain data, picklable, printable."""

    seed: int
    nodes: int
    loss: float
    duplication: float
    violations: list[Violation]
    stats: dict[str, Any]
    network: dict[str, Any]
    trace_tail: list[str]
    digest: str
    wall_s: float
    virtual_s: float
    repro: str
    core_stats: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.violations

    @property
    def delivered(self) -> int:
        return int(self.stats["delivered"])

    @property
    def config_changes(self) -> int:
        return int(self.stats["config_changes"])


def repro_command(seed: int, nodes: int, options: SimOptions,
                  prog: str = "ringd simulate") -> str:
    """A one-line command that reruns exactly this seed with these options."""
    defaults = DEFAULT_OPTIONS
    parts = [prog, f"--seed {seed}", "--seeds 1", f"--nodes {nodes}"]
    if not options.whole_node:
        parts.append("--totem-only")
    hostile = SimOptions.hostile()
    defaults = replace(defaults, whole_node=options.whole_node,
                       clock_drift_max=options.clock_drift_max)
    hostile = replace(hostile, whole_node=options.whole_node, clock_drift_max=options.clock_drift_max)
    if all(getattr(options, f) == getattr(hostile, f)
           for f in ("fault_interval_s", "loss_max", "duplication_max", "network")):
        parts.append("--hostile")
        defaults = hostile
    if options.loss is not None:
        parts.append(f"--loss {options.loss!r}")
    if options.weighted_votes:
        parts.append("--weighted-votes")
    for flag in ("partitions", "crashes", "pauses", "codec"):
        value = getattr(options, flag)
        if value != getattr(defaults, flag):
            parts.append(f"--{flag}" if value else f"--no-{flag}")
    if options.duration_s != defaults.duration_s:
        parts.append(f"--duration {options.duration_s!r}")
    unexpressed = [name for name in ("duplication", "load", "liveness", "totem", "ring_size_max",
                                     "starvation", "clock_drift_max",
                                     "network", "core_factory", "fault_interval_s", "loss_max",
                                     "duplication_max", "burst_interval_s", "liveness_s",
                                     "liveness_loss", "flood_probability", "quorum")
                   if getattr(options, name) != getattr(defaults, name)]
    if unexpressed:
        parts.append(f"# plus non-default options: {', '.join(unexpressed)}")
    return " ".join(parts)


def run_seed(seed: int, nodes: int = 5, options: SimOptions = DEFAULT_OPTIONS) -> RunResult:
    """Simulate one seed and check it: safety always, liveness when the run had that phase."""
    started = time.perf_counter()
    cluster = make_cluster(seed, nodes, options)
    run = cluster.run()
    violations = list(run.violations)
    if isinstance(cluster, NodeSimCluster):
        violations.extend(check_groups(
            (ClientHistory(log.pid, log.member, log.frames) for log in cluster.client_logs),
            cluster.sent))
        violations.extend(check_group_views(run.history.processes, decode_payload,
                                            cluster.syncs_published))
        violations.extend(check_quorum(cluster.quorum_reports, cluster.primary_exits,
                                       cluster.regular_members))
        violations.extend(check_primary_history(cluster.primary_installs, cluster.safe_in_primary))
    fatal = any(v.prop in ("core-exception", "event-budget", "timer-loop") for v in violations)
    violations.extend(check_safety(run.history, eventual=options.liveness))
    if options.liveness and not fatal:
        stuck = check_liveness(run.history, run.live_nodes)
        if stuck:
            # Self/safe delivery are "eventually" properties: when the ring never settled
            # they are symptoms of the liveness failure, not separate bugs. Say so.
            violations = [Violation(v.prop, v.detail + " (run did not settle: see liveness)")
                          if v.prop in ("self-delivery", "safe-delivery") else v
                          for v in violations]
        violations.extend(stuck)
    stats = {name: getattr(run.stats, name) for name in run.stats.__slots__}  # type: ignore[attr-defined]
    for name in NODE_COUNTERS:
        stats[name] = getattr(cluster, name, 0)
    trace = format_trace(run.trace if violations else run.trace[-40:])
    first = _first_violation_time(violations)
    if first is not None and not fatal and first < run.stats.finished_at_s - 0.01:
        # The trace ends at the end of the run, long after a safety violation: rerun
        # (deterministic) and keep the events leading up to the first one instead.
        window = trace_window(seed, nodes, options, 0.0, first + 0.001)
        trace = window[-options.trace_len:]
    return RunResult(
        seed=seed, nodes=nodes, loss=run.loss, duplication=run.duplication,
        violations=violations, stats=stats, network=run.network,
        trace_tail=trace,
        digest=run.digest, wall_s=time.perf_counter() - started,
        virtual_s=run.stats.finished_at_s, repro=repro_command(seed, nodes, options),
        core_stats=run.core_stats)


_TIME_IN_DETAIL = re.compile(r"(?:@|t=)(\d+\.\d+)s")


def _first_violation_time(violations: list[Violation]) -> float | None:
    times = [float(m) for v in violations for m in _TIME_IN_DETAIL.findall(v.detail)]
    return min(times) if times else None


def trace_window(seed: int, nodes: int, options: SimOptions, from_s: float, to_s: float,
                 node: str | None = None) -> list[str]:
    """Rerun a seed keeping its whole trace; the events between ``from_s`` and ``to_s``
    (of one node, or all), for reading what led up to a violation."""
    cluster = make_cluster(seed, nodes, replace(options, trace_len=10_000_000))
    cluster.run()
    out = []
    for line in cluster.trace_tail():
        at = float(line.split(None, 1)[0])
        if from_s <= at <= to_s and (node is None or line.split()[1] in (node, "-")):
            out.append(line)
    return out


def _run_task(task: tuple[int, int, SimOptions]) -> RunResult:
    seed, nodes, options = task
    return run_seed(seed, nodes, options)


def sweep(tasks: Iterable[tuple[int, int]], options: SimOptions = DEFAULT_OPTIONS,
          jobs: int = 1) -> Iterator[RunResult]:
    """Run ``(seed, nodes)`` tasks, in order; with ``jobs > 1`` in that many worker processes."""
    work = ((seed, nodes, options) for seed, nodes in tasks)
    if jobs <= 1:
        for task in work:
            yield _run_task(task)
        return
    # fork: workers inherit imported modules (and test-only core factories) for free.
    with multiprocessing.get_context("fork").Pool(jobs) as pool:
        yield from pool.imap(_run_task, work, chunksize=2)


def format_failure(result: RunResult, trace_lines: int = 60) -> str:
    """Seed, repro line, violations and the end of the trace, for a human."""
    lines = [f"seed {result.seed}: {len(result.violations)} violation(s) "
             f"(nodes={result.nodes} loss={result.loss:.3f} dup={result.duplication:.3f})",
             f"  reproduce: {result.repro}"]
    lines += [f"  {v}" for v in result.violations]
    lines.append(f"  last {min(trace_lines, len(result.trace_tail))} trace events:")
    lines += [f"    {line}" for line in result.trace_tail[-trace_lines:]]
    return "\n".join(lines)
