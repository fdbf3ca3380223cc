"""The whole-node simulator (NodeCore on every host, real gossip, client applications) and
the process-group checker."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from ringd.core import groups
from ringd.sim.cluster import DEFAULT_OPTIONS, WHOLE_NODE_CLOCK_DRIFT
from ringd.sim.group_checker import ClientHistory, check_groups
from ringd.sim.node_cluster import NodeSimCluster
from ringd.sim.runner import run_seed

WHOLE = replace(DEFAULT_OPTIONS, whole_node=True, clock_drift_max=WHOLE_NODE_CLOCK_DRIFT)


@pytest.mark.parametrize(("seed", "nodes"), [(1, 3), (2, 3), (3, 5), (4, 5)])
def test_chaos_runs_keep_evs_and_group_virtual_synchrony(seed: int, nodes: int) -> None:
    result = run_seed(seed, nodes, WHOLE)
    assert result.ok, "\n".join(str(v) for v in result.violations) + "\n" + result.repro
    # Real gossip and real applications ran: not a Totem-only run in disguise.
    for key in ("gossip_messages", "totem_messages", "group_events", "client_messages_delivered"):
        assert result.stats[key] > 0, key
    assert result.stats["converged_at_s"] is not None


def test_one_seed_reproduces_a_whole_node_run_exactly() -> None:
    opts = replace(WHOLE, trace_digest=True)
    first, second = run_seed(11, 3, opts), run_seed(11, 3, opts)
    assert first.digest == second.digest and first.stats == second.stats
    assert run_seed(12, 3, opts).digest != first.digest


def test_every_fault_class_happens() -> None:
    """Starvation, drift, partitions (one-way and cut links included), crashes and pauses."""
    cluster = NodeSimCluster(5, 5, replace(WHOLE, duration_s=30.0, fault_interval_s=0.5))
    cluster.run()
    stats = cluster.stats
    assert stats.crashes and stats.restarts and stats.pauses and stats.partitions
    assert any(until > 0 for until in cluster._starving_until)
    rates = {clock.rate for clock in cluster._clocks}
    assert len(rates) == 5 and all(abs(r - 1.0) <= WHOLE_NODE_CLOCK_DRIFT for r in rates)


def test_a_group_fan_out_bug_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    """Drop every tenth message frame at one node: the group checker must notice."""
    original = groups.GroupsCore._deliver_send
    count = {"n": 0}

    def lossy(self: groups.GroupsCore, d: Any, msg: Any) -> list[groups.ToClient]:
        out = original(self, d, msg)
        if self.node == "n1":
            count["n"] += 1
            if count["n"] % 10 == 0:
                return []
        return out

    monkeypatch.setattr(groups.GroupsCore, "_deliver_send", lossy)
    opts = replace(WHOLE, partitions=False, crashes=False, pauses=False, starvation=False, loss=0.0)
    result = run_seed(1, 3, opts)
    assert {"group-gap", "group-views"} & {v.prop for v in result.violations}


def _message(ring: str, seq: int, member: str, data: bytes, group: str = "g") -> dict[str, Any]:
    return {"ev": "message", "group": group, "sender": member.partition(":")[0], "member": member,
            "ring": ring, "seq": seq, "safe": False, "data": [data]}


def _join(members: list[str], joined: list[str], group: str = "g") -> dict[str, Any]:
    return {"ev": "group", "group": group, "members": members, "joined": joined, "left": [],
            "reason": "join"}


REGULAR = {"ev": "config", "kind": "regular", "ring": "4.a", "members": ["a", "b"]}
SENT = {("g", "a:1"): {b"x", b"y", b"z"}}


def test_group_checker_accepts_identical_histories() -> None:
    frames = [REGULAR, _message("4.a", 1, "a:1", b"x"), _join(["a:1", "b:1"], ["b:1"]),
              _message("4.a", 2, "a:1", b"y")]
    hists = [ClientHistory("a/1", "a:1", list(frames)), ClientHistory("b/1", "b:2", list(frames))]
    assert check_groups(hists, SENT) == []


def test_group_checker_finds_duplicates_creation_views_and_gaps() -> None:
    dup = ClientHistory("a/1", "a:9", [REGULAR, _message("4.a", 1, "a:1", b"x"),
                                       _message("4.a", 1, "a:1", b"x")])
    forged = ClientHistory("a/2", "a:9", [REGULAR, _message("4.a", 1, "a:1", b"never sent")])
    assert {v.prop for v in check_groups([dup], SENT)} == {"group-order"}
    assert {v.prop for v in check_groups([forged], SENT)} == {"group-creation"}
    with_join = ClientHistory("b/1", "b:9", [REGULAR, _message("4.a", 1, "a:1", b"x"),
                                             _join(["a:1", "c:1"], ["c:1"]),
                                             _message("4.a", 2, "a:1", b"y")])
    without = ClientHistory("c/1", "d:9", [REGULAR, _message("4.a", 1, "a:1", b"x"),
                                           _message("4.a", 2, "a:1", b"y")])
    assert {v.prop for v in check_groups([with_join, without], SENT)} == {"group-views"}
    full = ClientHistory("e/1", "e:9", [REGULAR, _message("4.a", 1, "a:1", b"x"),
                                        _message("4.a", 2, "a:1", b"y"),
                                        _message("4.a", 3, "a:1", b"z")])
    gap = ClientHistory("f/1", "f:9", [REGULAR, _message("4.a", 1, "a:1", b"x"),
                                       _message("4.a", 3, "a:1", b"z")])
    assert {v.prop for v in check_groups([full, gap], SENT)} == {"group-gap"}
    # In a transitional configuration a node may skip what it never got: no gap there.
    transitional = {**REGULAR, "kind": "transitional"}
    skipped = ClientHistory("g/1", "g:9", [transitional, _message("4.a", 1, "a:1", b"x"),
                                           _message("4.a", 3, "a:1", b"z")])
    assert check_groups([full, skipped], SENT) == []


def _ring_formation(nodes: int, coefficient: float) -> tuple[float | None, int]:
    """All nodes start at once, starved of CPU for 12 s: when every node first installed the
    ring of all, and how many regular configurations any node installed after that."""
    from ringd.core.totem_events import ConfigChange, ConfigKind

    opts = replace(WHOLE, partitions=False, crashes=False, pauses=False, starvation=False,
                   loss=0.0, duplication=0.0, load=False, stagger_start_s=0.05, duration_s=12.0,
                   liveness=False, starve_all_until_s=12.0, starve_slice_max_s=0.08,
                   totem=replace(WHOLE.totem, token_coefficient_s=coefficient))
    cluster = NodeSimCluster(1, nodes, opts)
    cluster.run()
    firsts: list[float | None] = []
    after = 0
    for proc in cluster._processes:
        regular = [t for e, t in zip(proc.entries, proc.times, strict=True)
                   if type(e) is ConfigChange and e.kind is ConfigKind.REGULAR and t <= 12.0]
        full = [t for e, t in zip(proc.entries, proc.times, strict=True)
                if type(e) is ConfigChange and e.kind is ConfigKind.REGULAR and len(e.members) == nodes]
        firsts.append(full[0] if full and full[0] <= 12.0 else None)
        after = max(after, sum(1 for t in regular if full and t > full[0]))
    formed = None if None in firsts else max(f for f in firsts if f is not None)
    return formed, after


def test_a_starved_ring_of_32_forms_and_holds_with_the_token_coefficient() -> None:
    """The merge livelock of many loaded daemons starting together: with a fixed token
    timeout a rotation of 32 hops, each waiting for a CPU, outlasts it and the ring never
    forms; scaled per member (as corosync's token_coefficient) it forms and stays."""
    assert _ring_formation(32, 0.0)[0] is None
    formed, reconfigurations = _ring_formation(32, WHOLE.totem.token_coefficient_s)
    assert formed is not None and formed < 10.0 and reconfigurations == 0
