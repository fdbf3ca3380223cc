"""The faulty-LAN lab (scripts/netlab.py) with real daemons: 3 nodes in network namespaces on
a bridge, 10 % random loss on every link for 20 s, then a 2|1 partition and its heal. The
EVS checker must pass on the real histories, process groups must stay virtually synchronous,
one primary component at a time (the quorum checker on the daemons' logs), and after the heal one ring of all nodes must deliver a probe from every node everywhere.

Needs root, iproute2 and nftables (CI runs as root and ``.ci/run`` installs both); skipped
with the reason otherwise. Addresses are 198.18.0.0/24 inside namespaces the lab creates
and removes; the host's interfaces and ruleset are never touched.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
NETLAB = ROOT / "scripts" / "netlab.py"
RUN_TIMEOUT_S = 150  # the run takes about 40 s; the lab bounds itself too

pytestmark = pytest.mark.integration


def _missing() -> str | None:
    if os.geteuid() != 0:
        return "the lab needs root (network namespaces, nftables)"
    for tool in ("ip", "nft"):
        if shutil.which(tool) is None:
            return f"the lab needs {tool} (Debian packages iproute2, nftables)"
    return None


def _lab_namespaces(pid: int) -> list[str]:
    """The namespaces the lab with this PID made (bridge ``nl<pid>0rb``, nodes ``nl<pid>0rnK``)."""
    ours = {f"nl{pid % 100000}0r{suffix}" for suffix in ("b", "n1", "n2", "n3")}
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, timeout=10).stdout
    return [line.split()[0] for line in out.splitlines() if line.split() and line.split()[0] in ours]


@pytest.mark.skipif(_missing() is not None, reason=_missing() or "")
def test_lossy_lan_then_partition_and_heal_passes_the_checker(tmp_path: Path) -> None:
    out = tmp_path / "lab.json"
    proc = subprocess.Popen(
        [sys.executable, str(NETLAB), "--nodes", "3", "--loss", "0.1", "--duration", "32",
         "--nemesis", "partition-halves", "--nemesis-start", "20", "--nemesis-count", "1",
         "--seed", "17", "--json", str(out)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        output, _ = proc.communicate(timeout=RUN_TIMEOUT_S)
    finally:
        if proc.poll() is None:  # SIGTERM: the lab removes its namespaces and daemons
            proc.terminate()
            proc.communicate(timeout=30)
    # Every namespace of this run is gone, whatever the outcome (the prefix holds its PID).
    assert _lab_namespaces(proc.pid) == []
    assert proc.returncode == 0, output
    runs = json.loads(out.read_text())["runs"]
    assert len(runs) == 1, output
    row = runs[0]
    assert row["system"] == "ringd" and row["nodes"] == 3 and row["loss"] == 0.1
    assert row["nemesis"] == ["partition-halves"]
    # One partition, 2|1, starting 20 s in, healed before the end.
    assert len(row["faults"]) == 1 and row["faults"][0].startswith("partition-halves 20.0-"), row["faults"]
    assert row["evs_violations"] == 0, row["violations"]
    # The quorum checker ran on the daemons' logs: the first ring of 3, the 2 of the
    # partition and the 3 after the heal are primary (the 1 alone is not), one at a time.
    assert row["primary_configurations"] >= 3, row
    # The partition splits the ring and the heal merges it: at least two new regular
    # configurations at the member that saw the most.
    assert row["reconfigurations"] >= 2, row
    # 20 calls/s per node for 32 s, one to eight messages each: thousands accepted, and even
    # the node cut off alone delivered its own side's messages throughout.
    assert row["sent"] > 1000, row
    assert row["delivered_min"] > 500, row
    assert row["latency_p50_ms"] is not None and row["latency_p99_ms"] >= row["latency_p50_ms"]
    assert row["liveness_heal_s"] is not None, row
    assert row["packets_dropped"] > 0, row
