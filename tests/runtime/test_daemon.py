"""Real daemon processes over loopback multicast: convergence, failure, leave, restart.

Every test has its own cluster name and multicast port (see helpers.ProcessRegistry) and
polls the control sockets with deadlines.
"""

from __future__ import annotations

import pytest

from helpers import ProcessRegistry, all_see, wait_until

pytestmark = pytest.mark.integration

CONVERGE_S = 25.0  # generous: five interpreters starting on a loaded 2-core machine
DETECT_S = 20.0


def test_five_daemons_converge_and_detect_a_kill9_with_default_timings(daemons: ProcessRegistry) -> None:
    nodes = daemons.start_cluster(5, fast=False)
    names = [n.name for n in nodes]
    wait_until(lambda: all_see(nodes, dict.fromkeys(names, "alive")), CONVERGE_S,
               "all 5 daemons to see all 5 alive")
    for node in nodes:
        status = node.status()
        assert status["members_alive"] == 5 and status["members_total"] == 5

    victim, survivors = nodes[-1], nodes[:-1]
    victim.kill9()
    wait_until(lambda: all_see(survivors, {victim.name: "dead"}), DETECT_S,
               f"every survivor to mark {victim.name} dead")
    # Nobody else was hurt by the failure.
    assert all_see(survivors, dict.fromkeys((n.name for n in survivors), "alive") | {victim.name: "dead"})


def test_graceful_leave_is_seen_as_left_everywhere_and_exits_zero(daemons: ProcessRegistry) -> None:
    nodes = daemons.start_cluster(3)
    names = [n.name for n in nodes]
    wait_until(lambda: all_see(nodes, dict.fromkeys(names, "alive")), CONVERGE_S, "convergence")

    leaver, stayers = nodes[-1], nodes[:-1]
    result = daemons.run_cli("leave", "--socket", str(leaver.socket))
    assert result.returncode == 0, result.stderr
    assert f"{leaver.name} left the cluster" in result.stdout
    assert leaver.wait_exit() == 0
    assert not leaver.socket.exists()  # unlinked on exit
    wait_until(lambda: all_see(stayers, {leaver.name: "left"}), DETECT_S,
               f"{leaver.name} to be 'left' (not dead) everywhere")


def test_sigterm_leaves_gracefully(daemons: ProcessRegistry) -> None:
    nodes = daemons.start_cluster(2)
    wait_until(lambda: all_see(nodes, {"node1": "alive", "node2": "alive"}), CONVERGE_S, "convergence")
    nodes[1].terminate()
    assert nodes[1].wait_exit() == 0
    wait_until(lambda: all_see(nodes[:1], {"node2": "left"}), DETECT_S, "node2 left after SIGTERM")
    assert "leaving the cluster (SIGTERM)" in nodes[1].log()


def test_restart_after_kill9_is_alive_again_with_a_higher_incarnation(daemons: ProcessRegistry) -> None:
    nodes = daemons.start_cluster(3)
    names = [n.name for n in nodes]
    wait_until(lambda: all_see(nodes, dict.fromkeys(names, "alive")), CONVERGE_S, "convergence")
    victim, survivors = nodes[-1], nodes[:-1]
    before = max(node.members()[victim.name]["incarnation"] for node in nodes)

    victim.kill9()
    wait_until(lambda: all_see(survivors, {victim.name: "dead"}), DETECT_S, f"{victim.name} dead")

    victim.start()  # same name, same state dir
    restarted = victim.wait_ready()
    assert restarted["incarnation"] > before  # persisted incarnation + 1

    def alive_again_everywhere() -> bool:
        for node in nodes:
            view = node.members()[victim.name]
            if view["state"] != "alive" or view["incarnation"] <= before:
                return False
        return True

    wait_until(alive_again_everywhere, CONVERGE_S, f"{victim.name} alive again with a higher incarnation")
    assert int((victim.state_dir / "incarnation").read_text()) >= restarted["incarnation"]


def test_second_daemon_with_a_used_name_is_refused(daemons: ProcessRegistry) -> None:
    first = daemons.daemon("node1").start()
    first.wait_ready()
    impostor = daemons.daemon("node1", subdir="other")
    impostor.start()
    code = impostor.wait_exit(timeout_s=DETECT_S)
    assert code != 0
    errors = [line for line in impostor.log().splitlines() if " ERROR " in line]
    assert len(errors) == 1, impostor.log()
    assert "node1" in errors[0]
    assert "Traceback" not in impostor.log()
    # The holder of the name is unaffected.
    assert first.running()
    me = first.members()["node1"]
    assert me["state"] == "alive"
    assert me["address"] == first.status()["address"]
