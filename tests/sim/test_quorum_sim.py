"""Quorum in the whole-node simulator: one primary component, and the checker that says so."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from ringd.config import QuorumConfig
from ringd.core.events import Reply
from ringd.core.requests import SendMessages
from ringd.sim.cluster import DEFAULT_OPTIONS, WHOLE_NODE_CLOCK_DRIFT
from ringd.sim.node_cluster import PUBLISHER, NodeSimCluster
from ringd.sim.quorum_checker import PrimaryExit, QuorumReport, check_quorum
from ringd.sim.runner import run_seed
from ringd.totem_messages import RingId

WHOLE = replace(DEFAULT_OPTIONS, whole_node=True, clock_drift_max=WHOLE_NODE_CLOCK_DRIFT)


@pytest.mark.parametrize(("seed", "nodes"), [(21, 3), (22, 5), (23, 5)])
def test_chaos_runs_have_one_primary_component(seed: int, nodes: int) -> None:
    result = run_seed(seed, nodes, WHOLE)
    assert result.ok, "\n".join(str(v) for v in result.violations) + "\n" + result.repro
    # Partitions and crashes made both kinds of configuration: the checker had work.
    assert result.stats["primary_configurations"] > 0
    assert result.stats["nonprimary_configurations"] > 0


def test_weighted_votes_keep_one_primary_component() -> None:
    opts = replace(WHOLE, weighted_votes=True)
    assert len(set(NodeSimCluster(24, 5, opts).votes)) > 1  # not one vote each
    result = run_seed(24, 5, opts)
    assert result.ok, "\n".join(str(v) for v in result.violations) + "\n" + result.repro
    assert result.stats["primary_configurations"] > 0 and result.stats["nonprimary_configurations"] > 0


def test_without_expected_votes_the_checker_sees_the_start_up_split_brain() -> None:
    """With the default expected votes (the highest total seen) nodes that first form rings
    apart are each primary: the checker must report it (it is why expected_votes is set)."""
    result = run_seed(6, 5, replace(WHOLE, quorum=QuorumConfig()))
    assert {"dual-primary", "primary-chain"} <= {v.prop for v in result.violations}


def _ring(seq: int) -> RingId:
    return RingId(seq=seq, rep="a")


def _report(at: float, pid: str, seq: int, members: str, primary: bool = True) -> QuorumReport:
    return QuorumReport(at=at, pid=pid, ring_id=_ring(seq), kind="regular",
                        members=frozenset(members), primary=primary, votes=len(members),
                        expected_votes=5, reason="configuration")


def test_quorum_checker_properties() -> None:
    members = {_ring(4): frozenset("abc"), _ring(8): frozenset("cde"), _ring(12): frozenset("de")}
    chain = [_report(1.0, "a#0", 4, "abc"), _report(1.1, "b#0", 4, "abc"),
             _report(3.0, "c#0", 8, "cde")]
    exits = [PrimaryExit(at=2.0, pid="c#0", node="c", ring_id=_ring(4), why="left Operational")]
    assert check_quorum(chain, exits, members) == []
    # The successor starts before the predecessor lost a member: two at one moment.
    late = [PrimaryExit(at=3.5, pid="c#0", node="c", ring_id=_ring(4), why="left Operational")]
    assert {v.prop for v in check_quorum(chain, late, members)} == {"dual-primary"}
    # Two primaries sharing no member: a fork of the chain.
    fork = [*chain[:2], _report(3.0, "d#0", 12, "de")]
    assert "primary-chain" in {v.prop for v in check_quorum(fork, exits, members)}
    # Members of one configuration that decide differently.
    split = [*chain, _report(3.1, "d#0", 8, "cde", primary=False)]
    assert {v.prop for v in check_quorum(split, exits, members)} == {"quorum-agreement"}


def _frames(cluster: NodeSimCluster, node: str) -> list[dict[str, Any]]:
    return [f for log in cluster.client_logs if log.node == node and log.conn == PUBLISHER
            for f in log.frames]


def test_a_3_2_partition_leaves_the_minority_not_quorate_until_the_heal() -> None:
    opts = replace(WHOLE, partitions=False, crashes=False, pauses=False, starvation=False,
                   loss=0.0, duplication=0.0, load=False, liveness=False, duration_s=1000.0)
    cluster = NodeSimCluster(1, 5, opts)
    cluster.begin()
    assert cluster.run_until(15.0, cluster.converged)
    assert all(cluster.core(n).quorum.status.primary for n in ("n0", "n1", "n2", "n3", "n4"))

    cluster.network.split([["n0", "n1", "n2"], ["n3", "n4"]])
    assert cluster.run_until(cluster.now + 15.0, lambda: cluster.converged(["n0", "n1", "n2"])
                             and cluster.converged(["n3", "n4"]))
    minority = cluster.core("n3").quorum.status
    assert cluster.core("n0").quorum.status.primary and not minority.primary
    assert (minority.votes, minority.expected_votes, minority.quorum) == (2, 5, 3)
    node3 = cluster._by_name["n3"]
    effects = cluster._request(node3, SendMessages, PUBLISHER, group="g0", data=(b"safe one",), safe=True)
    (reply,) = [e for e in effects if type(e) is Reply]
    assert not reply.body["ok"] and "not quorate" in reply.body["error"]
    cluster._request(node3, SendMessages, PUBLISHER, group="g0", data=(b"agreed one",), safe=False)
    cluster.run_until(cluster.now + 1.0)
    got = [f for f in _frames(cluster, "n4") if f["ev"] == "message" and f["data"] == [b"agreed one"]]
    assert len(got) == 1 and got[0]["primary"] is False  # delivered, marked
    assert not any(f["ev"] == "message" and f["data"] == [b"agreed one"] for f in _frames(cluster, "n0"))

    cluster.network.heal()
    assert cluster.run_until(cluster.now + 20.0, cluster.converged)
    assert all(cluster.core(n).quorum.status.primary for n in ("n0", "n1", "n2", "n3", "n4"))
    # The minority's applications learn in order that they are in a primary component again.
    configs = [f for f in _frames(cluster, "n4") if f["ev"] == "config" and f["kind"] == "regular"]
    assert [c["primary"] for c in configs[-2:]] == [False, True]
    assert configs[-1]["votes"] == 5 and configs[-1]["expected"] == 5


def test_primary_history_checker() -> None:
    from ringd.core.totem_events import ConfigChange, ConfigKind, Deliver
    from ringd.sim.checkers import ProcessLog
    from ringd.sim.quorum_checker import PrimaryInstall, check_primary_history

    def config(seq: int) -> ConfigChange:
        return ConfigChange(kind=ConfigKind.REGULAR, ring_id=_ring(seq), members=("a", "b"))

    def deliver(seq: int, msg_id: int) -> Deliver:
        return Deliver(ring_id=_ring(seq), seq=msg_id, origin="a", msg_id=msg_id, payload=b"",
                       safe=True)

    kept = ProcessLog("b", 0, [config(4), deliver(4, 1), config(8)])
    lost = ProcessLog("c", 0, [config(4), config(8), deliver(4, 1)])
    safe = {_ring(4): {("a", 1)}}
    for log, ok in ((kept, True), (lost, False)):
        installs = [PrimaryInstall(log=log, index=1, ring_id=_ring(4)),
                    PrimaryInstall(log=log, index=3 if log is kept else 2, ring_id=_ring(8))]
        props = {v.prop for v in check_primary_history(installs, safe)}
        assert props == (set() if ok else {"primary-history"})


def test_last_man_standing_shrinks_expected_votes_step_by_step() -> None:
    quorum = QuorumConfig(expected_votes=5, last_man_standing=True, last_man_standing_window_s=2.0)
    opts = replace(WHOLE, partitions=False, crashes=False, pauses=False, starvation=False,
                   loss=0.0, duplication=0.0, load=False, liveness=False, duration_s=1000.0,
                   quorum=quorum)
    cluster = NodeSimCluster(2, 5, opts)
    cluster.begin()
    assert cluster.run_until(15.0, cluster.converged)
    cluster.network.split([["n0", "n1", "n2"], ["n3", "n4"]])
    three = ["n0", "n1", "n2"]
    assert cluster.run_until(cluster.now + 15.0, lambda: cluster.converged(three))
    assert cluster.core("n0").quorum.status.expected_votes == 5
    # After the window the three agree, in order, on 3 expected votes.
    assert cluster.run_until(cluster.now + 5.0, lambda: all(
        cluster.core(n).quorum.status.expected_votes == 3 for n in three))
    assert all(cluster.core(n).quorum.status.primary for n in three)
    assert not cluster.core("n3").quorum.status.primary  # the other side still expects 5
    # Losing one more leaves 2 of 3: still primary, as it would not be out of 5.
    cluster.network.split([["n0", "n1"], ["n2"], ["n3", "n4"]])
    assert cluster.run_until(cluster.now + 15.0, lambda: cluster.converged(["n0", "n1"]))
    status = cluster.core("n0").quorum.status
    assert status.primary and (status.votes, status.expected_votes) == (2, 3)
    frames = [f for f in _frames(cluster, "n1") if f["ev"] == "quorum"]
    assert frames and frames[0]["reason"] == "last_man_standing" and frames[0]["expected"] == 3
