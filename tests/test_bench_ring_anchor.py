"""bench_ring.py reads Corosync's throughput results (the anchor's results/throughput.txt)."""

from __future__ import annotations

import sys
from pathlib import Path

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


def line(tr: str, nodes: int, senders: int, node: int, rate: float, size: int = 100) -> str:
    """One line as run_all.sh writes it: its label, then cpgbench's output on one line."""
    return (f"tr={tr} nodes={nodes} token=default size={size} senders={senders} RESULT node={node} "
            f"sender=1 size={size} sent=1 tryagain=0 rx=1 span_s=10.000 rx_msgs_per_s={rate:.0f} "
            f"rx_MB_per_s=1.000 ends=1/1 self_lat_us_p50=1.0 self_lat_us_p99=1.0 all_lat_us_p50=1.0 "
            "all_lat_us_p99=1.0 n_self=1 ")


def test_corosync_throughput_file(tmp_path: Path) -> None:
    sys.path.insert(0, str(SCRIPTS))
    try:
        import bench_ring
    finally:
        sys.path.remove(str(SCRIPTS))
    results = tmp_path / "throughput.txt"
    results.write_text("\n".join([
        # udpu, 3 nodes, 1 sender, two runs: the slowest node of each, then their median
        line("udpu", 3, 1, 1, 51_000), line("udpu", 3, 1, 2, 50_000), line("udpu", 3, 1, 3, 52_000),
        line("udpu", 3, 1, 1, 49_000), line("udpu", 3, 1, 2, 49_500), line("udpu", 3, 1, 3, 60_000),
        line("udp", 3, 1, 1, 30_000), line("udp", 3, 1, 2, 31_000), line("udp", 3, 1, 3, 33_000),
        line("udp", 3, 3, 1, 40_000), line("udp", 3, 3, 2, 41_000), line("udp", 3, 3, 3, 42_000),
        "mcast err 6",  # cpgbench's stderr ends up in the file too
    ]) + "\n")
    parsed = bench_ring.corosync_throughput(results)
    assert parsed == {(3, 100, False): {"udpu": 49_500, "udp": 30_000}, (3, 100, True): {"udp": 40_000}}
    assert bench_ring.corosync_for(3, 100, False, parsed) == ("udpu, same run", 49_500)
    assert bench_ring.corosync_for(5, 100, False, parsed) is None
    assert bench_ring.corosync_for(3, 100, False, None) == ("udp, anchor", 33_378)
