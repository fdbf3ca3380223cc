#!/usr/bin/env python3
"""Same-run A/B of `bench_ring.py`: two or more arms, alternated round by round.

This host's noise moves absolute figures 2-5x from hour to hour and single runs by
+-30 %, so a target stated as a ratio ("encrypted throughput >= 0.85x plain", "no
regression against commit X") is measured here: every round runs each arm once, in a
rotating order (or, with --concurrent, all at once: for light loads such as the latency
part, so that the arms see the same moment of host noise; each bench_ring.py run has its
own cluster name and ports); the result is, per figure, the median over rounds of the arm's value
divided by the first arm's value in the same round (a per-pair ratio, not a ratio of
medians). Host steal during each run is read from /proc/stat and reported.

An arm is NAME[@CHECKOUT][:KEY=VALUE[,KEY=VALUE...]]:
  * CHECKOUT: another checkout of ringd (its own scripts/bench_ring.py and daemon code,
    run with this Python and PYTHONPATH=CHECKOUT/daemon); default: this one;
  * KEY=VALUE: daemon config passed as --daemon-set KEY=VALUE (this checkout's
    bench_ring.py must support it).

    python scripts/bench_ab.py --rounds 8 --arm plain --arm enc:key_file=$PWD/k.key \\
        --json ab.json -- --nodes 3 --sizes 1000 --parts throughput --duration-s 8
    python scripts/bench_ab.py --rounds 8 --concurrent --arm base@/tmp/ringd-old --arm new \\
        -- --nodes 3 --parts latency --latency-s 10

Everything after `--` goes to every bench_ring.py run (which binds loopback only and
stops its daemons itself). Prints a table and writes --json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent.parent


@dataclass
class Arm:
    name: str
    checkout: Path
    settings: list[str] = field(default_factory=list)

    @classmethod
    def parse(cls, text: str) -> Arm:
        head, _, sets = text.partition(":")
        name, _, checkout = head.partition("@")
        if not name:
            raise argparse.ArgumentTypeError(f"arm {text!r}: no name")
        path = Path(checkout).resolve() if checkout else HERE
        if not (path / "scripts" / "bench_ring.py").is_file():
            raise argparse.ArgumentTypeError(f"arm {text!r}: no scripts/bench_ring.py in {path}")
        settings = [s for s in sets.split(",") if s]
        for s in settings:
            if "=" not in s:
                raise argparse.ArgumentTypeError(f"arm {text!r}: {s!r} is not KEY=VALUE")
        return cls(name, path, settings)


def steal_ticks() -> int:
    """Host steal so far (clock ticks, all CPUs), from the first line of /proc/stat."""
    try:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()
        return int(fields[8])
    except (OSError, IndexError, ValueError):
        return 0


def _slowest(value: Any) -> float:
    return min(value) if isinstance(value, list) else value


def figures(result: dict[str, Any]) -> dict[str, float]:
    """The comparable figures of one bench_ring.py JSON: latency p50/p99 per order and
    sender count, throughput (the slowest node's msgs/s) per size and sender count, and
    the per-call rows."""
    out: dict[str, float] = {}
    for row in result.get("rows", []):
        n = row.get("n")
        for x in row.get("latency", []):
            order = "safe" if x["safe"] else "agreed"
            out[f"N={n} latency p50 ms, {order}, {x['senders']} sender(s)"] = x["lat_p50_ms"]
            out[f"N={n} latency p99 ms, {order}, {x['senders']} sender(s)"] = x["lat_p99_ms"]
        for x in row.get("throughput", []):
            out[f"N={n} throughput msgs/s, {x['size']} B, {x['senders']} sender(s)"] = _slowest(x["msgs_per_s"])
        for x in row.get("percall", []):
            out[f"N={n} per call msgs/s, {x.get('mode')}, {x.get('tasks', 1)} task(s)"] = _slowest(x["msgs_per_s"])
    return out


def start_arm(arm: Arm, bench_args: list[str], out: Path, log: Path) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, str(arm.checkout / "scripts" / "bench_ring.py"), *bench_args]
    for s in arm.settings:
        cmd += ["--daemon-set", s]
    cmd += ["--json", str(out)]
    env = dict(os.environ)
    if arm.checkout != HERE:
        env["PYTHONPATH"] = str(arm.checkout / "daemon")
    with log.open("wb") as f:
        return subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, cwd=arm.checkout)


def run_round(arms: list[Arm], bench_args: list[str], work: Path, index: int,
              concurrent: bool) -> dict[str, Any]:
    """One round: every arm once, one after the other or all at once."""
    result: dict[str, Any] = {}
    groups = [arms] if concurrent else [[arm] for arm in arms]
    for group in groups:
        steal0, t0 = steal_ticks(), time.monotonic()
        procs = {arm.name: start_arm(arm, bench_args, work / f"{arm.name}-{index}.json",
                                     work / f"{arm.name}-{index}.log") for arm in group}
        try:
            codes = {name: proc.wait() for name, proc in procs.items()}
        finally:
            for proc in procs.values():
                if proc.poll() is None:  # interrupted: bench_ring stops its daemons on SIGTERM
                    proc.terminate()
                    proc.wait()
        for arm in group:
            out = work / f"{arm.name}-{index}.json"
            if codes[arm.name] != 0 or not out.exists():
                raise SystemExit(f"bench_ab: arm {arm.name} failed (exit {codes[arm.name]}); "
                                 f"see {work / f'{arm.name}-{index}.log'}")
            result[arm.name] = {"figures": figures(json.loads(out.read_text())),
                                "steal_ticks": steal_ticks() - steal0,
                                "wall_s": round(time.monotonic() - t0, 1)}
    return result


def summarize(arms: list[Arm], rounds: list[dict[str, Any]]) -> list[dict[str, Any]]:
    ref = arms[0].name
    names = [k for k in rounds[0][ref]["figures"]]
    rows = []
    for key in names:
        for arm in arms:
            values = [r[arm.name]["figures"].get(key) for r in rounds]
            pairs = [(r[arm.name]["figures"].get(key), r[ref]["figures"].get(key)) for r in rounds]
            ratios = [a / b for a, b in pairs if a is not None and b]
            got = [v for v in values if v is not None]
            rows.append({"figure": key, "arm": arm.name,
                         "median": statistics.median(got) if got else None,
                         "ratio_median": statistics.median(ratios) if ratios else None,
                         "ratios": [round(x, 3) for x in ratios]})
    return rows


def print_table(arms: list[Arm], rows: list[dict[str, Any]], rounds: int) -> None:
    ref = arms[0].name
    print(f"\nA/B of bench_ring.py, {rounds} rounds; ratio = median over rounds of arm / {ref} "
          "in the same round")
    head = ["figure", *[f"{a.name} median" for a in arms], *[f"{a.name}/{ref}" for a in arms[1:]],
            "per-round ratios"]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    by_figure: dict[str, dict[str, dict[str, Any]]] = {}
    for r in rows:
        by_figure.setdefault(r["figure"], {})[r["arm"]] = r
    for key, per_arm in by_figure.items():
        cells = [key]
        cells += [f"{per_arm[a.name]['median']:,.3f}" if per_arm[a.name]["median"] is not None
                  else "-" for a in arms]
        cells += [f"{per_arm[a.name]['ratio_median']:.3f}" if per_arm[a.name]["ratio_median"] is not None
                  else "-" for a in arms[1:]]
        cells.append("; ".join(" ".join(f"{x:.2f}" for x in per_arm[a.name]["ratios"]) for a in arms[1:]))
        print("| " + " | ".join(cells) + " |")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    bench_args: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, bench_args = argv[:cut], argv[cut + 1:]
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="Arguments after -- go to bench_ring.py.")
    parser.add_argument("--arm", action="append", type=Arm.parse, required=True,
                        help="NAME[@CHECKOUT][:KEY=VALUE,...]; the first is the reference")
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--concurrent", action="store_true",
                        help="run the arms of a round at the same time (for light loads such as "
                             "the latency part: both arms then see the same host noise)")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--keep", type=Path, help="directory for every run's JSON and log")
    args = parser.parse_args(argv)
    arms: list[Arm] = args.arm
    if len(arms) < 2 or len({a.name for a in arms}) != len(arms):
        parser.error("give at least two --arm, with different names")
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    if any(a in bench_args for a in ("--json", "--daemon-set")):
        parser.error("--json and --daemon-set belong to bench_ab (arms), not after --")
    work = args.keep or Path(tempfile.mkdtemp(prefix="ringd-bench-ab-"))
    work.mkdir(parents=True, exist_ok=True)
    rounds: list[dict[str, Any]] = []
    for i in range(args.rounds):
        order = arms[i % len(arms):] + arms[:i % len(arms)]
        result = run_round(order, bench_args, work, i + 1, args.concurrent)
        for arm in order:
            print(f"round {i + 1}/{args.rounds} {arm.name}: {result[arm.name]['wall_s']} s, "
                  f"steal {result[arm.name]['steal_ticks']} ticks", flush=True)
        rounds.append(result)
    rows = summarize(arms, rounds)
    print_table(arms, rows, len(rounds))
    if args.json:
        args.json.write_text(json.dumps({
            "arms": [{"name": a.name, "checkout": str(a.checkout), "settings": a.settings} for a in arms],
            "bench_args": bench_args, "concurrent": args.concurrent, "rounds": rounds, "summary": rows}, indent=1))
        print(f"\nJSON written to {args.json}")
    print(f"runs kept in {work}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
