"""``simulate`` as a command: summary lines, exit status and failure report (fake core)."""

from __future__ import annotations

import functools
import json
import sys
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from ringd.sim import cluster as sim_cluster
from ringd.sim.cluster import node_names
from ringd.sim.command import simulate

sys.path.insert(0, str(Path(__file__).parent))
from fake_core import SequencerCore  # noqa: E402

FAULT_FREE = ["--loss", "0", "--no-partitions", "--no-crashes", "--no-pauses",
              "--duration", "2"]
TOTEM_ONLY = ["--totem-only", *FAULT_FREE]  # the fake core replaces the Totem core only


def _app() -> typer.Typer:
    app = typer.Typer()
    app.command("simulate")(simulate)
    app.command("noop")(lambda: None)  # two commands: keep "simulate" as a subcommand
    return app


@pytest.fixture
def fake_core(monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    def use(flaw: str = "", n: int = 3) -> None:
        factory = functools.partial(SequencerCore, members=tuple(node_names(n)), flaw=flaw)
        monkeypatch.setattr(sim_cluster, "_default_core_factory", lambda: factory)
        # The fake core cannot survive a staggered start; start everyone at t=0.
        monkeypatch.setattr(sim_cluster, "DEFAULT_OPTIONS",
                            sim_cluster.SimOptions(stagger_start_s=0.0, gossip_hints=False))
    return use


def test_clean_runs_print_a_summary_and_exit_zero(fake_core) -> None:  # type: ignore[no-untyped-def]
    fake_core()
    result = CliRunner().invoke(_app(), ["simulate", "--seed", "5", "--seeds", "3",
                                         "--nodes", "3", *TOTEM_ONLY])
    assert result.exit_code == 0, result.output
    assert "runs: 3  failed: 0  violations: 0" in result.output
    assert "messages delivered:" in result.output and "seeds/second:" in result.output


def test_a_violation_exits_non_zero_with_seed_repro_and_trace(fake_core) -> None:  # type: ignore[no-untyped-def]
    fake_core(flaw="unordered", n=5)
    result = CliRunner().invoke(_app(), ["simulate", "--seed", "9", "--nodes", "5", *TOTEM_ONLY])
    assert result.exit_code == 1
    assert "seed 9:" in result.output
    assert "reproduce: ringd simulate --seed 9 --seeds 1 --nodes 5 --totem-only --loss 0.0" in result.output
    assert "[total-order]" in result.output and "trace events:" in result.output


def test_whole_node_json_counts_gossip_groups_and_clients() -> None:
    """The default mode runs whole nodes: real gossip, groups and client applications."""
    result = CliRunner().invoke(_app(), ["simulate", "--seed", "3", "--seeds", "2", "--nodes", "3",
                                         "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["runs"] == 2 and report["violations"] == 0 and report["seeds_per_s"] > 0
    for key in ("gossip_messages", "totem_messages", "group_events", "client_messages_delivered"):
        assert report[key] > 0, key
