#!/usr/bin/env python3
"""Fuzz ringd's trust boundaries: coverage-guided with atheris, else long Hypothesis runs.

Targets (``scripts/fuzz_targets.py``): the datagram decoder with and without a key, the
gossip / Totem / group message decoders, the control socket's frame decoder, client API
request validation and the config loader. Every input is checked for crashes (anything but
the documented error escaping, or a broken round trip), hangs and allocations beyond a
bound linear in the input. Examples::

    .venv/bin/pip install -e '.[fuzz]'              # atheris (else: Hypothesis)
    .venv/bin/python scripts/fuzz.py --runs 100000   # every target, one after the other
    .venv/bin/python scripts/fuzz.py --target datagram --seconds 600 --json out.json
    .venv/bin/python scripts/fuzz.py --target config --replay fuzz-out/config/findings/*

Each target runs in its own worker process (atheris never returns; a worker stuck in C
code is stopped by the parent and counted as a hang). The coverage corpus and every
finding are kept under ``--out`` (default ``fuzz-out/``). Prints a table and writes JSON;
exit status 1 if anything was found.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

SCRIPTS = Path(__file__).resolve().parent
if str(SCRIPTS) not in sys.path:
    sys.path.insert(0, str(SCRIPTS))

# Inputs a Hypothesis run generates per @given call: a fresh call per chunk keeps
# Hypothesis' memory of past examples (and its slow-down) bounded in long runs.
HYPOTHESIS_CHUNK = 2000
STATS_FLUSH_S = 0.5
# Beyond --seconds, how long a worker may take to start, load its corpus and finish.
WORKER_GRACE_S = 120.0
# When the parent has no time limit (only --runs), a worker that reports no progress for
# this long is stuck (in C code, where the per-input alarm cannot interrupt it).
WORKER_STALL_S = 120.0


def atheris_available() -> bool:
    try:
        import atheris  # noqa: F401
    except ImportError:
        return False
    return True


# --- Engines (in the worker, or in-process for the test suite) -------------------------


def fuzz_hypothesis(checker: Any, *, runs: int, seconds: float, seed: int,
                    flush: Any = None) -> None:
    """Seeds first, then Hypothesis-generated inputs (random bytes, mutated seeds,
    structured values) until ``runs`` inputs or ``seconds``; deterministic for a seed.

    Each chunk's inputs are generated first and then checked: the checker's allocation
    tracing stays on while it checks (see ``Checker._run``) and is stopped between chunks,
    so Hypothesis' own work is not traced (3-4 times slower when it is). ``flush`` (the
    worker's stats writer) is called as the run goes, for the parent's progress check."""
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis import seed as hypothesis_seed

    from fuzz_targets import input_strategy

    target = checker.target
    stats = checker.stats
    deadline = time.monotonic() + seconds
    seeds = target.seeds()
    for data in seeds[:runs]:
        checker.check(data)
    checker.close()
    strategy = input_strategy(target, seeds)
    chunk = 0
    batch: list[bytes] = []
    while stats.inputs < runs and time.monotonic() < deadline:
        batch.clear()

        @settings(max_examples=min(HYPOTHESIS_CHUNK, runs - stats.inputs), database=None,
                  deadline=None, phases=[Phase.generate], suppress_health_check=list(HealthCheck),
                  derandomize=False)
        @hypothesis_seed(seed * 1_000_003 + chunk)
        @given(strategy)
        def one(data: bytes) -> None:
            batch.append(data)

        one()
        chunk += 1
        last_flush = time.monotonic()
        for data in batch:
            if stats.inputs >= runs or time.monotonic() >= deadline:
                break
            checker.check(data)
            if flush is not None and time.monotonic() - last_flush > STATS_FLUSH_S:
                last_flush = time.monotonic()
                flush()
        checker.close()
        if not batch:
            break  # the strategy is exhausted


def fuzz_atheris(checker: Any, *, runs: int, seconds: float, seed: int, corpus: Path,
                 artifacts: Path, flush: Any) -> None:
    """libFuzzer over ``corpus`` (seeded with the target's seeds); never returns."""
    import hashlib

    import atheris

    target = checker.target
    corpus.mkdir(parents=True, exist_ok=True)
    artifacts.mkdir(parents=True, exist_ok=True)
    for data in target.seeds():
        path = corpus / f"seed-{hashlib.sha1(data).hexdigest()[:16]}"
        if not path.exists():
            path.write_bytes(data)
    if target.prepare_coverage is not None:
        target.prepare_coverage(atheris.instrument_func)
    stats = checker.stats
    last_flush = [time.monotonic()]

    def one(data: bytes) -> None:
        checker.check(data)
        if stats.inputs >= runs:
            flush()
        elif time.monotonic() - last_flush[0] > STATS_FLUSH_S:
            last_flush[0] = time.monotonic()
            flush()

    args = [sys.argv[0], f"-runs={runs}", f"-seed={seed}", f"-max_len={target.input_bytes_max}",
            "-timeout=0",  # the checker's own alarm times every input (libFuzzer's would clash)
            "-rss_limit_mb=4096", f"-artifact_prefix={artifacts}/", "-print_final_stats=1",
            str(corpus)]
    if seconds != float("inf"):
        args.insert(1, f"-max_total_time={max(1, int(seconds))}")
    if target.tokens is not None:
        dictionary = artifacts.parent / "tokens.dict"
        dictionary.write_text("".join(f'"{_dict_escape(t)}"\n' for t in target.tokens()))
        args.insert(1, f"-dict={dictionary}")
    offset = target.cbor_offset
    if offset is None:
        atheris.Setup(args, one)
    else:
        from fuzz_targets import mutate_structure

        def mutator(data: bytes, max_size: int, seed: int) -> bytes:
            # Half byte-level (libFuzzer's own), half one structural change in the CBOR.
            if seed % 2:
                rng = random.Random(seed)
                mutated = mutate_structure(data, rng, offset)
                if mutated is not None and len(mutated) <= max_size:
                    return mutated
            return atheris.Mutate(data, max_size)

        atheris.Setup(args, one, custom_mutator=mutator)
    atheris.Fuzz()


def _dict_escape(token: bytes) -> str:
    """A token in libFuzzer's dictionary syntax: printable ASCII, the rest as \\xNN."""
    return "".join(chr(b) if 0x20 <= b < 0x7F and b not in (0x22, 0x5C) else f"\\x{b:02x}"
                   for b in token)


# --- Worker ----------------------------------------------------------------------------


def worker(args: argparse.Namespace) -> int:
    """Run one target; stats go to ``--out/<target>/stats.json`` (also while running)."""
    out = Path(args.out) / args.target
    out.mkdir(parents=True, exist_ok=True)
    stats_path = out / "stats.json"
    if args.engine == "atheris":
        import atheris

        # Coverage comes from the code under test (and the TOML parser the config uses).
        with atheris.instrument_imports(include=["ringd", "tomllib"]):
            import fuzz_targets
            import ringd.core.node  # noqa: F401  (imported lazily by node_core and the seeds)
            import ringd.sim.runner  # noqa: F401
    else:
        import fuzz_targets
    fuzz_targets.scratch_dir = out / "scratch"
    target = fuzz_targets.TARGETS[args.target]
    checker = fuzz_targets.Checker(target, hang_s=args.hang_s, findings_dir=out / "findings")
    checker.stats.engine = args.engine

    def flush() -> None:
        tmp = stats_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(checker.stats.as_json()))
        os.replace(tmp, stats_path)

    flush()
    seconds = args.seconds if args.seconds is not None else float("inf")
    if args.engine == "atheris":
        fuzz_atheris(checker, runs=args.runs, seconds=seconds, seed=args.seed,
                     corpus=out / "corpus", artifacts=out / "artifacts", flush=flush)
    else:
        fuzz_hypothesis(checker, runs=args.runs, seconds=seconds, seed=args.seed, flush=flush)
    checker.close()
    flush()
    return 0


# --- Parent ----------------------------------------------------------------------------


def _spawn(args: argparse.Namespace, name: str, engine: str) -> subprocess.Popen[bytes]:
    out = Path(args.out) / name
    out.mkdir(parents=True, exist_ok=True)
    (out / "stats.json").unlink(missing_ok=True)
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", "--target", name,
           "--engine", engine, "--runs", str(args.runs), "--seed", str(args.seed),
           "--hang-s", str(args.hang_s), "--out", str(args.out)]
    if args.seconds is not None:
        cmd += ["--seconds", str(args.seconds)]
    log = open(out / "worker.log", "wb")  # noqa: SIM115 - closed when the worker ends
    return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)


def _read_stats(args: argparse.Namespace, name: str) -> dict[str, Any] | None:
    try:
        return json.loads((Path(args.out) / name / "stats.json").read_text())
    except (OSError, ValueError):
        return None


def run_all(args: argparse.Namespace, names: list[str], engine: str) -> list[dict[str, Any]]:
    """Run the targets' workers, ``--jobs`` at a time; a worker past its time is stopped."""
    pending = list(names)
    running: dict[str, tuple[subprocess.Popen[bytes], float]] = {}
    results: dict[str, dict[str, Any]] = {}
    progress: dict[str, tuple[int, float]] = {}
    while pending or running:
        while pending and len(running) < args.jobs:
            name = pending.pop(0)
            running[name] = (_spawn(args, name, engine), time.monotonic())
            print(f"fuzz: {name}: started ({engine})", flush=True)
        time.sleep(0.5)
        for name, (proc, started) in list(running.items()):
            stats = _read_stats(args, name)
            now = time.monotonic()
            inputs = stats["inputs"] if stats else -1
            if progress.get(name, (None,))[0] != inputs:
                progress[name] = (inputs, now)
            code = proc.poll()
            stuck = (args.seconds is not None and now - started > args.seconds + WORKER_GRACE_S) \
                or now - progress[name][1] > WORKER_STALL_S
            if code is None and not stuck:
                continue
            if code is None:
                proc.kill()  # our own worker, by its handle
                proc.wait()
            del running[name]
            stats = stats or {"target": name, "inputs": 0, "crashes": 0, "hangs": 0, "allocs": 0,
                              "findings": []}
            stats.setdefault("engine", engine)
            if code is None:
                stats["hangs"] += 1
                stats["findings"].append({"kind": "hang", "detail": "worker stopped responding "
                                          "(stuck outside Python?); see worker.log"})
            elif code != 0:
                stats["crashes"] += 1
                stats["findings"].append({"kind": "crash", "detail": f"worker exited with {code}; "
                                          "see worker.log"})
            stats["exit_code"] = code
            results[name] = stats
            print(f"fuzz: {name}: {stats['inputs']} inputs, {stats['crashes']} crashes, "
                  f"{stats['hangs']} hangs, {stats['allocs']} allocs", flush=True)
    return [results[n] for n in names]


def print_table(rows: list[dict[str, Any]]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="ringd fuzzing", header_style="bold")
    for column in ("target", "engine", "inputs", "crashes", "hangs", "allocs",
                   "max peak alloc", "slowest input", "inputs/s", "seconds"):
        table.add_column(column, justify="left" if column in ("target", "engine") else "right")
    for r in rows:
        table.add_row(r["target"], r.get("engine", ""), f"{r['inputs']:,}", str(r["crashes"]),
                      str(r["hangs"]), str(r["allocs"]),
                      f"{r.get('peak_alloc_bytes_max', 0) / 1024:.0f} KiB",
                      f"{r.get('slowest_input_s', 0) * 1000:.1f} ms",
                      f"{r.get('inputs_per_s', 0):,.0f}", f"{r.get('seconds', 0):.0f}")
    Console(width=150).print(table)
    for r in rows:
        for f in r.get("findings", [])[:10]:
            print(f"  {r['target']}: {f['kind']}: {f['detail']} {f.get('path', '')}")


def replay(args: argparse.Namespace, files: list[str]) -> int:
    """Run saved inputs through one target and print what each does now."""
    import fuzz_targets

    bad = 0
    with fuzz_targets.Checker(fuzz_targets.TARGETS[args.target], hang_s=args.hang_s) as checker:
        for name in files:
            outcome = checker.check(Path(name).read_bytes())
            detail = checker.findings[-1].detail if outcome not in ("accepted", "refused") else ""
            bad += outcome not in ("accepted", "refused")
            print(f"{name}: {outcome} {detail}")
    return 1 if bad else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", action="append", help="target name (repeatable; default all)")
    parser.add_argument("--runs", type=int, default=100_000, help="inputs per target")
    parser.add_argument("--seconds", type=float, default=None, help="time limit per target")
    parser.add_argument("--engine", choices=("auto", "atheris", "hypothesis"), default="auto")
    parser.add_argument("--jobs", type=int, default=1, help="targets fuzzed at once")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--hang-s", type=float, default=1.0, help="slowest allowed input")
    parser.add_argument("--out", default="fuzz-out", help="corpus, findings and worker logs")
    parser.add_argument("--json", dest="json_path", help="write the results here")
    parser.add_argument("--list", action="store_true", help="list the targets and exit")
    parser.add_argument("--replay", nargs="+", metavar="FILE", help="re-run saved inputs")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        args.target = args.target[0]
        return worker(args)
    import fuzz_targets

    names = args.target or list(fuzz_targets.TARGETS)
    unknown = [n for n in names if n not in fuzz_targets.TARGETS]
    if unknown:
        parser.error(f"unknown target {unknown[0]} (known: {', '.join(fuzz_targets.TARGETS)})")
    if args.list:
        for name, target in fuzz_targets.TARGETS.items():
            print(f"{name:16} {target.doc}")
        return 0
    if args.replay:
        if len(names) != 1:
            parser.error("--replay needs exactly one --target")
        args.target = names[0]
        return replay(args, args.replay)
    engine = args.engine
    if engine == "auto":
        engine = "atheris" if atheris_available() else "hypothesis"
    elif engine == "atheris" and not atheris_available():
        parser.error("atheris is not installed (pip install -e '.[fuzz]'), use --engine hypothesis")
    started = time.time()
    rows = run_all(args, names, engine)
    print_table(rows)
    if args.json_path:
        Path(args.json_path).write_text(json.dumps({
            "engine": engine, "runs_per_target": args.runs, "seconds_per_target": args.seconds,
            "seed": args.seed, "hang_s": args.hang_s, "started_unix": started,
            "wall_s": round(time.time() - started, 1), "targets": rows}, indent=2) + "\n")
    found = sum(r["crashes"] + r["hangs"] + r["allocs"] for r in rows)
    return 1 if found else 0


if __name__ == "__main__":
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    sys.exit(main())
