"""A short, deterministic fuzz run of every target (the Hypothesis engine, fixed seeds),
and checks that the harness's detectors really detect crashes, hangs and allocations."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import pytest

import fuzz
import fuzz_targets
from fuzz_targets import TARGETS, Checker, Target
from ringd.wire import DropReason, WireError

RUNS = 300
SEED = 20261207
# Generous: the suite shares 2 cores; the detector itself is tested below with a tight one.
HANG_S = 5.0


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_short_run_finds_nothing_and_reaches_both_outcomes(name: str) -> None:
    checker = Checker(TARGETS[name], hang_s=HANG_S)
    fuzz.fuzz_hypothesis(checker, runs=RUNS, seconds=60.0, seed=SEED)
    stats = checker.stats
    assert [f.detail for f in checker.findings] == []
    assert (stats.crashes, stats.hangs, stats.allocs) == (0, 0, 0)
    assert stats.inputs == RUNS
    # Both sides of the boundary are exercised: inputs it accepts (seeds, structured
    # values) and inputs it refuses with its documented error (if it has one: the node
    # core takes every decoded datagram).
    assert stats.accepted > 0, stats.accepted
    assert stats.refused > 0 or not TARGETS[name].errors, stats.refused
    assert stats.peak_alloc_bytes_max > 0  # allocation tracing was on


@pytest.mark.parametrize("name", ["datagram_mac", "datagram_aead"])
def test_keyed_harness_state_stays_small(name: str) -> None:
    """20,000 key-holder inputs, each with a sender name never seen before: the harness's
    codecs keep state per name, and a whole run's worth of it made table resizes of ~1 MB
    inside single tiny inputs, reported as their allocations (5 per million in both keyed
    targets). The codecs are renewed every HARNESS_CODEC_INPUTS inputs."""
    with Checker(TARGETS[name], hang_s=HANG_S) as checker:
        for i in range(20_000):
            sender = f"s{i}".encode()
            checker.check(b"\x00" + bytes([len(sender)]) + sender + b"\x00")
    stats = checker.stats
    assert stats.refused == 20_000 and stats.allocs == 0, stats.finding_kinds
    assert stats.peak_alloc_bytes_max < TARGETS[name].alloc_bound(8) // 4


def test_same_seed_same_run() -> None:
    def run(seed: int) -> tuple[int, int, dict[str, int]]:
        checker = Checker(TARGETS["gossip_messages"], hang_s=HANG_S)
        fuzz.fuzz_hypothesis(checker, runs=200, seconds=60.0, seed=seed)
        return checker.stats.accepted, checker.stats.refused, dict(checker.stats.refusals)

    assert run(SEED) == run(SEED)


def _target(run, errors=(WireError,)) -> Target:  # type: ignore[no-untyped-def]
    return Target(name="probe", doc="", run=run, errors=errors, seeds=lambda: [b"seed"],
                  alloc_base_bytes=64 << 10, alloc_per_input_byte=100)


def test_detectors_catch_each_kind_of_finding(tmp_path: Path) -> None:
    def run(data: bytes) -> None:
        if data == b"crash":
            {}["missing"]  # noqa: B018 - an undocumented exception escaping
        if data == b"two lines":
            raise WireError(DropReason.MALFORMED, "first\nsecond")
        if data == b"round trip":
            raise fuzz_targets.PropertyFailed("decode(encode(x)) != x")
        if data == b"hang":
            while True:
                pass
        if data == b"alloc":
            _big = [0] * 1_000_000  # 8 MB for 5 input bytes
        if data == b"refuse":
            raise WireError(DropReason.MALFORMED, "refused")

    checker = Checker(_target(run), hang_s=0.05, findings_dir=tmp_path)
    outcomes = {d: checker.check(d) for d in (b"ok", b"refuse", b"crash", b"two lines",
                                                b"round trip", b"hang", b"alloc")}
    assert outcomes == {b"ok": "accepted", b"refuse": "refused", b"crash": "crash",
                        b"two lines": "crash", b"round trip": "crash", b"hang": "hang",
                        b"alloc": "alloc"}
    stats = checker.stats
    assert (stats.crashes, stats.hangs, stats.allocs) == (3, 1, 1)
    assert "KeyError" in checker.findings[0].detail
    assert sorted(p.name.split("-")[0] for p in tmp_path.iterdir()) == [
        "alloc", "crash", "crash", "crash", "hang"]
    # A finding's file holds the input that caused it, for --replay.
    assert {p.read_bytes() for p in tmp_path.iterdir()} == {
        b"crash", b"two lines", b"round trip", b"hang", b"alloc"}


def test_slow_input_is_timed_twice_before_it_counts_as_a_hang() -> None:
    calls: list[bytes] = []

    def run(data: bytes) -> None:
        calls.append(data)
        if len(calls) == 1:  # slow once (0.08 s of CPU time), as on a busy machine
            deadline = time.thread_time() + 0.08
            while time.thread_time() < deadline:
                pass

    checker = Checker(_target(run), hang_s=0.05)
    assert checker.check(b"x") == "accepted"
    assert len(calls) == 2 and checker.stats.hangs == 0


def test_allocation_tracing_stays_on_between_inputs(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tracing is started once, not per input: before CPython 3.12.5, every
    tracemalloc.stop() leaks the tracebacks it interned (gh-121390), which grew the
    node_core worker by ~20 KB per input until libFuzzer's 4 GB limit stopped it."""
    assert not tracemalloc.is_tracing()
    calls: list[str] = []
    real_start, real_stop = tracemalloc.start, tracemalloc.stop
    monkeypatch.setattr(tracemalloc, "start", lambda *a: (calls.append("start"), real_start(*a)))
    monkeypatch.setattr(tracemalloc, "stop", lambda: (calls.append("stop"), real_stop()))
    with Checker(_target(lambda data: [data] * 1000)) as checker:
        for i in range(50):
            assert checker.check(bytes([i])) == "accepted"
        assert tracemalloc.is_tracing()
        assert checker.stats.peak_alloc_bytes_max >= 8000  # each input's own list is measured
    assert calls == ["start", "stop"] and not tracemalloc.is_tracing()
    # Someone else's tracing (python -X tracemalloc) is used and left on.
    real_start(1)
    with Checker(_target(lambda data: [data] * 1000)) as checker:
        checker.check(b"x")
    assert tracemalloc.is_tracing() and checker.stats.peak_alloc_bytes_max >= 8000
    real_stop()


def test_many_inputs_do_not_grow_the_process() -> None:
    """Inputs that run many distinct allocating lines (as the node core does), checked
    3,000 times: the stop per input this replaces grew the process by ~30 MB here."""
    source = "def run(data):\n" + "".join(f"    x{i} = [data, {i}]\n" for i in range(300))
    namespace: dict[str, object] = {}
    exec(compile(source, "<many-lines>", "exec"), namespace)  # noqa: S102 - fixed source
    with Checker(_target(namespace["run"])) as checker:
        for _ in range(300):  # warm up: every traceback interned once
            checker.check(b"x")
        before = _rss_bytes()
        for _ in range(3000):
            checker.check(b"x")
        grown = _rss_bytes() - before
    assert checker.stats.accepted == 3300
    assert grown < 8 << 20, f"grew {grown >> 10} KiB over 3,000 inputs"


def _rss_bytes() -> int:
    statm = Path("/proc/self/statm")
    if not statm.exists():
        pytest.skip("needs /proc/self/statm (Linux)")
    return int(statm.read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def test_command_line_runs_workers_and_writes_json(tmp_path: Path) -> None:
    out = tmp_path / "results.json"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(Path(fuzz.__file__).resolve().parents[1] / "daemon"), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run(
        [sys.executable, fuzz.__file__, "--engine", "hypothesis", "--target", "group_messages",
         "--target", "frames", "--runs", "150", "--jobs", "2", "--out", str(tmp_path / "fz"),
         "--json", str(out)], capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result = json.loads(out.read_text())
    rows = {r["target"]: r for r in result["targets"]}
    assert set(rows) == {"group_messages", "frames"}
    for row in rows.values():
        assert row["inputs"] == 150 and row["crashes"] == row["hangs"] == row["allocs"] == 0
        assert row["exit_code"] == 0
    assert "group_messages" in proc.stdout and "inputs/s" in proc.stdout


def test_atheris_engine_runs_a_target(tmp_path: Path) -> None:
    import atheris  # noqa: F401  (in the test extra: the engine must work, not be skipped)
    env = {**os.environ, "PYTHONPATH": str(Path(fuzz.__file__).resolve().parents[1] / "daemon")}
    proc = subprocess.run(
        [sys.executable, fuzz.__file__, "--engine", "atheris", "--target", "datagram_mac",
         "--runs", "3000", "--out", str(tmp_path / "fz"), "--json", str(tmp_path / "r.json")],
        capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    row = json.loads((tmp_path / "r.json").read_text())["targets"][0]
    assert row["engine"] == "atheris" and row["inputs"] == 3000 and row["crashes"] == 0
    assert row["accepted"] > 0  # the key holder's sealed datagrams get past the MAC
    assert any((tmp_path / "fz" / "datagram_mac" / "corpus").iterdir())
