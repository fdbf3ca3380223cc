"""Quorum with real daemon processes on loopback: SIGSTOP 3 of 5 daemons, the other 2 are
not quorate and refuse safe sends; SIGCONT, all 5 are quorate again and nothing the primary
side sent is lost."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from typing import Any

from ordered_helpers import (
    Subscriber,
    check_evs,
    payloads,
    process_log,
    send_lines,
    wait_ring,
    wait_subscribers,
)

from helpers import DaemonProcess, ProcessRegistry, one_line_error, wait_until

# The ordered-delivery tests' steady timings: failover in a few seconds, and no spurious
# token loss among 5 daemons on a loaded 2-core host.
TIMINGS = ("--set", "totem.token_timeout_s=2.0", "--set", "totem.consensus_s=2.4")
TIMEOUT_S = 90.0


def quorum_of(d: DaemonProcess) -> dict[str, Any]:
    return d.status()["quorum"]


def finish(proc: subprocess.Popen[bytes]) -> None:
    _out, err = proc.communicate(timeout=TIMEOUT_S)
    assert proc.returncode == 0, f"ringd send failed ({proc.returncode}): {err.decode()}"


def test_sigstop_3_of_5_leaves_2_not_quorate_until_sigcont(daemons: ProcessRegistry) -> None:
    nodes = daemons.start_cluster(5, *TIMINGS)
    wait_ring(nodes)
    wait_until(lambda: all(quorum_of(d)["quorate"] and quorum_of(d)["expected_votes"] == 5
                           for d in nodes), TIMEOUT_S, "5 quorate daemons expecting 5 votes")
    # Applications on both sides of the coming split: node1 (stopped), node4 and node5.
    subs = {d.name: Subscriber(daemons, d, "q") for d in (nodes[0], nodes[3], nodes[4])}
    wait_subscribers(list(subs.values()), 3)
    before = {d.name: payloads(d.name, 0, 20) for d in nodes}
    for d in nodes:
        finish(send_lines(daemons, d, "q", before[d.name]))
    sent_before = {line for lines in before.values() for line in lines}
    wait_until(lambda: all(sent_before <= set(s.data()) for s in subs.values()), TIMEOUT_S,
               "the first messages at every subscriber")

    stopped, rest = nodes[:3], nodes[3:]
    for d in stopped:
        os.kill(d.pid, signal.SIGSTOP)
    try:
        wait_ring(rest, timeout_s=TIMEOUT_S)
        wait_until(lambda: all(not quorum_of(d)["quorate"] for d in rest), TIMEOUT_S,
                   "the 2 remaining daemons to be not quorate")
        status = json.loads(daemons.run_cli("status", "--json", "--socket", str(rest[0].socket)).stdout)
        assert {k: status["quorum"][k] for k in ("quorate", "votes", "expected_votes")} == \
            {"quorate": False, "votes": 2, "expected_votes": 5}
        text = daemons.run_cli("status", "--socket", str(rest[0].socket)).stdout
        assert "quorum: not quorate: 2 of 5 expected votes" in text
        refused = daemons.run_cli("send", "q", "decided?", "--safe", "--socket", str(rest[0].socket))
        assert refused.returncode != 0
        assert "not quorate" in one_line_error(refused.stderr)
        # An agreed send is delivered, marked as coming from a non-primary component.
        finish(send_lines(daemons, rest[0], "q", ["node4-900"]))
        marked = wait_until(lambda: [m for m in subs["node5"].messages() if m["data"] == "node4-900"],
                            TIMEOUT_S, "the agreed message at node5")
        assert marked[0]["primary"] is False
    finally:
        for d in stopped:
            os.kill(d.pid, signal.SIGCONT)

    wait_ring(nodes, timeout_s=TIMEOUT_S)
    wait_until(lambda: all(quorum_of(d)["quorate"] for d in nodes), TIMEOUT_S,
               "all 5 daemons quorate again")
    after = {d.name: payloads(d.name, 1000, 20) for d in nodes}
    for d in nodes:
        finish(send_lines(daemons, d, "q", after[d.name]))
    wanted = {line for lines in (*before.values(), *after.values()) for line in lines}
    wait_until(lambda: all(wanted <= set(s.data()) for s in subs.values()), TIMEOUT_S,
               "every message of the primary side at every subscriber")
    for s in subs.values():
        # Delivered in a primary component, and the minority learned, in order, that it
        # is in one again.
        assert all(m["primary"] for m in s.messages() if m["data"] in wanted)
        regular = [c for c in s.configs() if c["kind"] == "regular"]
        assert regular[-1]["primary"] is True and regular[-1]["votes"] == 5
    for name in ("node4", "node5"):
        assert any(c["kind"] == "regular" and c["primary"] is False for c in subs[name].configs())
    sent = {d.name: (1, before[d.name] + after[d.name] + (["node4-900"] if d.name == "node4" else []))
            for d in nodes}
    assert check_evs([process_log(s, 1, crashed=False) for s in subs.values()], sent) == []


def test_operator_override_makes_a_lone_daemon_quorate(daemons: ProcessRegistry) -> None:
    nodes = daemons.start_cluster(2, *TIMINGS)
    wait_ring(nodes)
    wait_until(lambda: all(quorum_of(d)["quorate"] for d in nodes), TIMEOUT_S, "2 quorate daemons")
    nodes[1].kill9()
    wait_ring(nodes[:1], timeout_s=TIMEOUT_S)
    lone = nodes[0]
    wait_until(lambda: not quorum_of(lone)["quorate"], TIMEOUT_S, "the survivor not quorate")
    shown = daemons.run_cli("quorum", "--socket", str(lone.socket))
    assert shown.returncode == 0 and shown.stdout.startswith("not quorate: 1 of 2 expected votes")
    done = daemons.run_cli("quorum", "expected", "1", "--socket", str(lone.socket))
    assert done.returncode == 0, done.stderr
    wait_until(lambda: quorum_of(lone)["quorate"], TIMEOUT_S, "the survivor quorate by override")
    assert quorum_of(lone)["expected_votes"] == 1
    assert "operator sets expected votes to 1" in lone.log()
    bad = daemons.run_cli("quorum", "expected", "0", "--socket", str(lone.socket))
    assert bad.returncode != 0 and one_line_error(bad.stderr)
