"""ringd.lab_quorum: daemon logs in the quorum checker's model (no root).

The lines are those the daemon writes (``ringd.runtime.node``'s executor); a real run's
logs are checked by tests/lab/test_netlab.py.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from ringd.lab_quorum import Kill, read_daemon_logs
from ringd.totem_messages import RingId

DAY = dt.date(2026, 12, 7)
T0 = dt.datetime.combine(DAY, dt.time(10, 0, 0)).timestamp()


def line(at: str, node: str, text: str, level: str = "INFO") -> str:
    return f"{at} {node} {level} {text}"


def install(at: str, node: str, ring: str, members: str, votes: int, expected: int = 3) -> list[str]:
    state = "quorate" if votes * 2 > expected else "not quorate"
    out = []
    for kind in ("transitional", "regular"):
        out.append(line(at, node, f"{kind} configuration {ring}: {members}"))
        out.append(line(at, node, f"quorum: {state}: {votes} of {expected} expected votes "
                                  f"(quorum {expected // 2 + 1}) in {kind} {ring}"))
    return out


def startup(node: str) -> str:
    return f"ringd {node} listening on 198.18.0.1:5405 (cluster lab, multicast off), control socket x"


def write_logs(tmp_path: Path, logs: dict[str, list[str]]) -> list[tuple[str, Path]]:
    out = []
    for node, lines in logs.items():
        path = tmp_path / f"{node}.log"
        path.write_text("\n".join(lines) + "\n")
        out.append((node, path))
    return out


def partition_and_heal(majority_leaves_at: str, minority_leaves_at: str) -> dict[str, list[str]]:
    """3 nodes in ring 4; n3 is cut off; n1, n2 form primary ring 8, n3 non-primary ring 8.n3;
    after the heal all three form ring 12. Each node leaves its ring before its next one."""
    logs: dict[str, list[str]] = {}
    for n in ("n1", "n2"):
        logs[n] = [startup(n), *install("10:00:01.000", n, "4.n1", "n1,n2,n3", 3),
                   line(majority_leaves_at, n, "left ring 4.n1: token_loss"),
                   *install("10:00:05.500", n, "8.n1", "n1,n2", 2),
                   line("10:00:09.000", n, "left ring 8.n1: foreign_ring"),
                   *install("10:00:09.200", n, "12.n1", "n1,n2,n3", 3)]
    logs["n3"] = [startup("n3"), *install("10:00:01.000", "n3", "4.n1", "n1,n2,n3", 3),
                  line(minority_leaves_at, "n3", "left ring 4.n1: token_loss"),
                  *install("10:00:05.600", "n3", "8.n3", "n3", 1),
                  line("10:00:09.000", "n3", "left ring 8.n3: foreign_ring"),
                  *install("10:00:09.200", "n3", "12.n1", "n1,n2,n3", 3)]
    return logs


def test_a_partition_and_its_heal_have_one_primary_at_a_time(tmp_path: Path) -> None:
    inputs = read_daemon_logs(write_logs(tmp_path, partition_and_heal("10:00:05.000", "10:00:05.100")),
                              [], T0)
    assert inputs.primary_configurations == 3  # 4.n1, 8.n1 and 12.n1; 8.n3 is not primary
    assert inputs.regular_members[RingId(seq=8, rep="n3")] == frozenset({"n3"})
    assert {(e.pid, e.ring_id.seq) for e in inputs.exits} == {
        (n, s) for n in ("n1#0", "n2#0", "n3#0") for s in (4, 8)}
    assert inputs.check() == []


def test_a_primary_installed_before_the_old_one_was_left_is_a_dual_primary(tmp_path: Path) -> None:
    # The whole old ring (n1, n2, n3) stays in 4.n1 until 10:00:06, after n1 and n2 installed
    # primary 8.n1 at 10:00:05.500: two primary components at once.
    logs = partition_and_heal("10:00:06.000", "10:00:06.000")
    violations = read_daemon_logs(write_logs(tmp_path, logs), [], T0).check()
    assert [v.prop for v in violations] == ["dual-primary"]
    assert "4.n1" in violations[0].detail and "8.n1" in violations[0].detail


def test_disagreeing_members_and_disjoint_primaries_are_found(tmp_path: Path) -> None:
    logs = partition_and_heal("10:00:05.000", "10:00:05.100")
    # n3 alone calls itself quorate in 8.n3 (as if it had 2 votes of 3): a second primary
    # component beside 8.n1, sharing no member with it.
    logs["n3"] = [ln.replace("not quorate: 1 of 3", "quorate: 2 of 3") for ln in logs["n3"]]
    props = sorted({v.prop for v in read_daemon_logs(write_logs(tmp_path, logs), [], T0).check()})
    assert props == ["dual-primary", "primary-chain"]
    # Members of one configuration that decide differently.
    logs = partition_and_heal("10:00:05.000", "10:00:05.100")
    logs["n2"] = [ln.replace("quorate: 2 of 3 expected votes (quorum 2) in regular 8.n1",
                             "quorate: 2 of 4 expected votes (quorum 3) in regular 8.n1")
                  for ln in logs["n2"]]
    props = sorted({v.prop for v in read_daemon_logs(write_logs(tmp_path, logs), [], T0).check()})
    assert props == ["quorum-agreement"]


def test_a_killed_incarnation_leaves_its_ring_when_the_lab_saw_it_dead(tmp_path: Path) -> None:
    logs = {"n1": [startup("n1"), *install("10:00:01.000", "n1", "4.n1", "n1,n2", 2, expected=2),
                   startup("n1"), *install("10:00:07.000", "n1", "8.n1", "n1,n2", 2, expected=2)],
            "n2": [startup("n2"), *install("10:00:01.000", "n2", "4.n1", "n1,n2", 2, expected=2),
                   line("10:00:05.000", "n2", "left ring 4.n1: token_loss"),
                   *install("10:00:07.000", "n2", "8.n1", "n1,n2", 2, expected=2)]}
    killed_at = T0 + 3.25
    inputs = read_daemon_logs(write_logs(tmp_path, logs), [Kill("n1", 0, killed_at)], T0)
    exits = {(e.pid, e.ring_id.seq): e for e in inputs.exits}
    assert sorted(exits) == [("n1#0", 4), ("n2#0", 4)]
    assert exits[("n1#0", 4)].at == killed_at and exits[("n1#0", 4)].why == "killed"
    # The process after the restart is another one; its quorum lines are its own.
    assert {r.pid for r in inputs.reports if r.ring_id.seq == 8} == {"n1#1", "n2#0"}
    assert inputs.check() == []


def test_a_change_within_a_configuration_keeps_its_reason(tmp_path: Path) -> None:
    logs = {"n1": [startup("n1"), *install("10:00:01.000", "n1", "4.n1", "n1", 1, expected=2),
                   line("10:00:02.000", "n1", "quorum: quorate: 1 of 1 expected votes (quorum 1) "
                                              "in regular 4.n1 (operator)")]}
    reports = read_daemon_logs(write_logs(tmp_path, logs), [], T0).reports
    assert [(r.kind, r.primary, r.reason) for r in reports] == [
        ("transitional", False, "configuration"), ("regular", False, "configuration"),
        ("regular", True, "operator")]
    assert reports[-1].at == T0 + 2.0
