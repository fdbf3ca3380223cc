"""The simulator itself, driven by the fake sequencer core: plumbing, determinism, detection."""

from __future__ import annotations

import functools
import os
import random
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from ringd.sim.cluster import SimCluster, SimOptions, node_names
from ringd.sim.network import NetworkOptions, PartitionShape, SimNetwork
from ringd.sim.runner import format_failure, repro_command, run_seed, sweep

sys.path.insert(0, str(Path(__file__).parent))
from fake_core import SequencerCore  # noqa: E402


def fake_options(n: int, flaw: str = "", **kw: object) -> SimOptions:
    """Fault-free options (the fake core only survives those), with duplication and reordering."""
    base = dict(loss=0.0, duplication=0.05, partitions=False, crashes=False, pauses=False,
                gossip_hints=False, duration_s=5.0, stagger_start_s=0.0,
                core_factory=functools.partial(SequencerCore, members=tuple(node_names(n)),
                                               flaw=flaw))
    base.update(kw)
    return SimOptions(**base)  # type: ignore[arg-type]


# --- Network ------------------------------------------------------------------------------


def test_loopback_is_never_lost_and_loss_rate_is_respected() -> None:
    net = SimNetwork(["a", "b", "c"], random.Random(1),
                     NetworkOptions(loss_probability=0.25, spike_probability=0.0))
    copies = {"a": 0, "b": 0, "c": 0}
    for i in range(4000):
        for at, dst in net.transmit(float(i), "a", ("a", "b", "c")):
            assert i < at <= i + NetworkOptions().delay_max_s
            copies[dst] += 1
    assert copies["a"] == 4000
    assert 2800 < copies["b"] < 3200 and 2800 < copies["c"] < 3200


def test_duplication_and_reordering_happen() -> None:
    net = SimNetwork(["a", "b"], random.Random(2),
                     NetworkOptions(duplicate_probability=0.1, spike_probability=0.05))
    arrivals = []
    for i in range(1000):
        arrivals += [(at, i) for at, _ in net.transmit(i * 0.0005, "a", ("b",))]
    assert net.stats.duplicated > 50
    order = [i for _, i in sorted(arrivals)]
    assert order != sorted(order)  # some later datagrams overtook earlier ones


def test_multicast_deaf_node_still_gets_unicast() -> None:
    names = node_names(4)
    net = SimNetwork(names, random.Random(3))
    description = net.partition(PartitionShape.MULTICAST_DEAF)
    deaf = description.split(": ")[1].split()[0]
    sender = next(n for n in names if n != deaf)
    assert deaf not in [d for _, d in net.transmit(0.0, sender, tuple(names), multicast=True)]
    assert [d for _, d in net.transmit(0.0, sender, (deaf,), multicast=False)] == [deaf]
    net.heal()
    assert deaf in [d for _, d in net.transmit(0.0, sender, tuple(names), multicast=True)]


@pytest.mark.parametrize("shape", [s for s in PartitionShape if s not in (
    PartitionShape.MULTICAST_DEAF, PartitionShape.MULTICAST_MUTE)])
def test_partition_shapes_cut_and_heal(shape: PartitionShape) -> None:
    names = node_names(6)
    net = SimNetwork(names, random.Random(3))
    description = net.partition(shape)
    assert description.startswith(shape.value) or shape is PartitionShape.FLAKY_LINKS
    cut = [(a, b) for a in names for b in names if not net.reachable(a, b)]
    assert cut, description
    assert all(net.reachable(n, n) for n in names)
    # A cut link drops every copy; the loopback still works.
    a, b = cut[0]
    assert [dst for _, dst in net.transmit(0.0, a, tuple(names))].count(b) == 0
    net.heal()
    assert all(net.reachable(x, y) for x in names for y in names)


def test_symmetric_shapes_are_symmetric() -> None:
    names = node_names(8)
    for seed in range(20):
        net = SimNetwork(names, random.Random(seed))
        net.partition(random.Random(seed).choice(
            [PartitionShape.HALVES, PartitionShape.GROUPS, PartitionShape.ISOLATE_SINGLE]))
        for x in names:
            for y in names:
                assert net.reachable(x, y) == net.reachable(y, x)


# --- Cluster with the fake core -------------------------------------------------------------


@pytest.mark.parametrize("seed", range(5))
def test_fake_core_runs_clean(seed: int) -> None:
    result = run_seed(seed, 5, fake_options(5))
    assert result.ok, format_failure(result)
    assert result.delivered > 100
    assert result.stats["converged_at_s"] is not None
    assert result.network["duplicated"] > 0


def test_same_seed_same_run_and_different_seed_different_run() -> None:
    opts = fake_options(4, trace_digest=True)
    first = SimCluster(11, 4, opts).run()
    again = SimCluster(11, 4, opts).run()
    other = SimCluster(12, 4, opts).run()
    assert first.digest == again.digest
    assert first.digest != other.digest
    assert first.stats == again.stats


def _digest_in_subprocess(hash_seed: str) -> str:
    code = ("import functools, sys; sys.path.insert(0, 'tests/sim');"
            "from fake_core import SequencerCore;"
            "from ringd.sim.cluster import SimCluster, SimOptions, node_names;"
            "o = SimOptions(loss=0.0, duplication=0.05, partitions=False, crashes=False,"
            " pauses=False, gossip_hints=False, duration_s=3.0, trace_digest=True, stagger_start_s=0.0,"
            " core_factory=functools.partial(SequencerCore, members=tuple(node_names(4))));"
            "print(SimCluster(5, 4, o).run().digest)")
    env = dict(os.environ, PYTHONHASHSEED=hash_seed)
    root = Path(__file__).parents[2]
    out = subprocess.run([sys.executable, "-c", code], cwd=root, env=env, check=True,
                         capture_output=True, text=True, timeout=120)
    return out.stdout.strip()


def test_run_does_not_depend_on_hash_randomization() -> None:
    assert _digest_in_subprocess("1") == _digest_in_subprocess("2")


def test_checker_catches_a_core_that_breaks_total_order() -> None:
    result = run_seed(3, 5, fake_options(5, flaw="unordered"))
    assert not result.ok
    assert "total-order" in {v.prop for v in result.violations}
    report = format_failure(result)
    assert "seed 3" in report and "reproduce: ringd simulate --seed 3" in report
    assert "trace events" in report


def test_checker_catches_a_core_that_loses_its_own_messages() -> None:
    result = run_seed(4, 3, fake_options(3, flaw="no_self"))
    assert {"self-delivery", "liveness"} <= {v.prop for v in result.violations}


def test_sweep_in_two_processes_matches_one_process() -> None:
    opts = fake_options(3)
    tasks = [(s, 3) for s in range(4)]
    serial = [r.digest for r in sweep(tasks, opts, jobs=1)]
    parallel = [r.digest for r in sweep(tasks, opts, jobs=2)]
    assert serial == parallel


def test_pause_queues_then_resumes() -> None:
    opts = fake_options(3, duration_s=3.0)
    cluster = SimCluster(1, 3, opts)
    cluster.begin()
    assert cluster.run_until(2.0, lambda: cluster.converged())
    node = cluster.nodes[1]
    cluster._pause(node, 0.5)
    cluster.run_until(cluster.now + 0.4)
    assert node.paused
    ticks = cluster.core("n1").stats.ticks
    cluster.run_until(cluster.now + 0.2)
    assert not node.paused and cluster.core("n1").stats.ticks > ticks


def test_crash_and_restart_make_a_new_process() -> None:
    opts = fake_options(3, duration_s=3.0)
    cluster = SimCluster(1, 3, opts)
    cluster.begin()
    cluster.run_until(1.0)
    cluster.crash("n2")
    assert cluster.core("n2") is None and cluster.log("n2").crashed  # type: ignore[union-attr]
    cluster.restart("n2")
    log = cluster.log("n2")
    assert log is not None and log.pid == "n2#1" and not log.crashed
    assert cluster.core("n2").name == "n2"


def test_repro_command_names_every_non_default_option() -> None:
    opts = SimOptions(loss=0.1, partitions=False, crashes=True, pauses=False, duration_s=4.0,
                      codec=True)
    line = repro_command(42, 8, opts)
    assert line == ("ringd simulate --seed 42 --seeds 1 --nodes 8 --totem-only --loss 0.1 "
                    "--no-partitions --no-pauses --codec --duration 4.0")
    whole = repro_command(42, 8, replace(opts, whole_node=True, clock_drift_max=0.005))
    assert whole == ("ringd simulate --seed 42 --seeds 1 --nodes 8 --loss 0.1 --no-partitions "
                     "--no-pauses --codec --duration 4.0")


def test_repro_command_marks_hostile_runs() -> None:
    line = repro_command(7, 5, SimOptions.hostile(duration_s=20.0))
    assert line == "ringd simulate --seed 7 --seeds 1 --nodes 5 --totem-only --hostile --duration 20.0"


def test_simulator_catches_a_ring_id_used_before_it_is_persisted() -> None:
    result = run_seed(2, 3, fake_options(3, flaw="no_persist"))
    assert "persist-before-use" in {v.prop for v in result.violations}
