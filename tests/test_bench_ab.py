"""bench_ab.py alternates arms and reports per-round ratios (run against a stand-in bench)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"

# Stands in for scripts/bench_ring.py: throughput from a counter file (so rounds differ) and
# the arm's --daemon-set (a "speed" factor), latency the other way round.
FAKE_BENCH = '''
import json, sys
from pathlib import Path
args = sys.argv[1:]
out = Path(args[args.index("--json") + 1])
speed = 1.0
for i, a in enumerate(args):
    if a == "--daemon-set" and args[i + 1].startswith("speed="):
        speed = float(args[i + 1].split("=")[1])
counter = Path(__file__).parent / "round"
n = int(counter.read_text()) if counter.exists() else 0
counter.write_text(str(n + 1))
base = 1000.0 * (1 + (n // 2))  # both arms of a round see the same host "noise"
out.write_text(json.dumps({"rows": [{"n": 3,
    "throughput": [{"size": 1000, "senders": 1, "msgs_per_s": [base * speed, base * speed + 5]}],
    "latency": [{"safe": False, "senders": 1, "lat_p50_ms": 2.0 / speed, "lat_p99_ms": 4.0}]}]}))
'''


def test_rounds_alternate_and_ratios_are_per_round(tmp_path: Path) -> None:
    checkout = tmp_path / "checkout"
    (checkout / "scripts").mkdir(parents=True)
    (checkout / "scripts" / "bench_ring.py").write_text(FAKE_BENCH)
    out = tmp_path / "ab.json"
    proc = subprocess.run(
        [sys.executable, str(SCRIPTS / "bench_ab.py"), "--rounds", "3",
         "--arm", f"plain@{checkout}", "--arm", f"fast@{checkout}:speed=0.8",
         "--json", str(out), "--keep", str(tmp_path / "runs"), "--", "--nodes", "3"],
        capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result = json.loads(out.read_text())
    # Round 2 starts with the second arm (the order rotates); each round is one pair.
    assert [list(r) for r in result["rounds"]] == [["plain", "fast"], ["fast", "plain"], ["plain", "fast"]]
    summary = {(r["figure"], r["arm"]): r for r in result["summary"]}
    tput = summary[("N=3 throughput msgs/s, 1000 B, 1 sender(s)", "fast")]
    assert tput["ratios"] == [0.8, 0.8, 0.8]  # per round, though the rounds' levels differ 3x
    assert tput["ratio_median"] == 0.8
    lat = summary[("N=3 latency p50 ms, agreed, 1 sender(s)", "fast")]
    assert lat["ratio_median"] == 1.25
    assert "| N=3 throughput msgs/s, 1000 B, 1 sender(s) |" in proc.stdout


def test_a_failing_arm_is_named(tmp_path: Path) -> None:
    checkout = tmp_path / "checkout"
    (checkout / "scripts").mkdir(parents=True)
    (checkout / "scripts" / "bench_ring.py").write_text("import sys; sys.exit(3)\n")
    proc = subprocess.run(
        [sys.executable, str(SCRIPTS / "bench_ab.py"), "--rounds", "1",
         "--arm", f"a@{checkout}", "--arm", f"b@{checkout}", "--keep", str(tmp_path / "runs")],
        capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0
    assert "arm a failed (exit 3)" in proc.stderr


# Stands in for bench_ring.py in a --concurrent round: each run marks that it started, then
# waits (polling, with a deadline) until every arm's run has started, which only happens
# when the arms run at the same time.
CONCURRENT_BENCH = '''
import json, sys, time
from pathlib import Path
args = sys.argv[1:]
out = Path(args[args.index("--json") + 1])
here = Path(__file__).parent
(here / f"started-{out.stem}").touch()
deadline = time.monotonic() + 20
while len(list(here.glob("started-*"))) < 2:  # poll
    if time.monotonic() > deadline:
        sys.exit("the other arm never started")
    time.sleep(0.01)  # poll
out.write_text(json.dumps({"rows": [{"n": 3, "latency": [
    {"safe": False, "senders": 1, "lat_p50_ms": 1.0, "lat_p99_ms": 2.0}]}]}))
'''


def test_concurrent_rounds_run_the_arms_at_the_same_time(tmp_path: Path) -> None:
    checkout = tmp_path / "checkout"
    (checkout / "scripts").mkdir(parents=True)
    (checkout / "scripts" / "bench_ring.py").write_text(CONCURRENT_BENCH)
    proc = subprocess.run(
        [sys.executable, str(SCRIPTS / "bench_ab.py"), "--rounds", "1", "--concurrent",
         "--arm", f"a@{checkout}", "--arm", f"b@{checkout}", "--json", str(tmp_path / "ab.json"),
         "--keep", str(tmp_path / "runs")],
        capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result = json.loads((tmp_path / "ab.json").read_text())
    assert result["concurrent"] is True
    assert [r["ratio_median"] for r in result["summary"] if r["arm"] == "b"] == [1.0, 1.0]
