"""Quorum checker: one primary component, as the whole-node simulator observed it.

Input: every :class:`~ringd.core.quorum.QuorumStatus` a process reported (with its virtual
time), the times a node left a ring it was committed to (Commit, Recovery) or Operational
in (it went back to Gather, crashed, or became an observer), and the members of every
regular configuration. Properties, each under its own code:

- ``quorum-agreement``: every process that installs a configuration (kind, ring id,
  members) decides the same primary / votes / expected votes for it.
- ``primary-chain``: every two primary regular configurations share a member. A node
  installs configurations one at a time in ring seq order, so this makes the primary
  configurations one chain, totally ordered by ring seq.
- ``dual-primary``: at most one primary component at any moment of virtual time. A
  primary configuration exists from the first moment a member installed it as primary
  until the first moment one of its members left it: went back to Gather from its Commit,
  Recovery or Operational state, crashed, or became an observer. (After that its token can
  no longer complete a rotation: no message becomes safe in it any more.) A member that
  installs it after another member abandoned it (a paused process waking up to a stale
  token) installs a configuration that is never whole: an empty interval. The existence
  intervals of two primary configurations never overlap. Why it holds: the next primary is
  installed only after all its members put their entries in its commit token, so after
  their shared member (``primary-chain``) left the previous one.
- ``primary-history``: a safe message delivered in a primary configuration C is delivered
  by every process that installed C before that process installs a later primary
  configuration: the history a primary component decided safely is known to the next
  one. (Every member of C received it, and Totem's recovery delivers what the members
  received before the next configuration. Agreed messages have no such guarantee: a
  member cut off right after delivering one may be the only one that has it.)
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from ringd.core.totem_events import Deliver
from ringd.sim.checkers import ProcessLog, Report, Violation
from ringd.totem_messages import RingId


@dataclass(frozen=True, slots=True, kw_only=True)
class QuorumReport:
    """One QuorumStatus of one process at virtual time ``at``."""

    at: float
    pid: str
    ring_id: RingId | None
    kind: str
    members: frozenset[str]
    primary: bool
    votes: int
    expected_votes: int
    reason: str


@dataclass(frozen=True, slots=True, kw_only=True)
class PrimaryExit:
    """Process ``pid`` of ``node`` left ring ``ring_id`` (or it stopped being primary)."""

    at: float
    pid: str
    node: str
    ring_id: RingId
    why: str


@dataclass(frozen=True, slots=True, kw_only=True)
class PrimaryInstall:
    """Process ``log`` installed primary ring ``ring_id`` after its first ``index`` entries."""

    log: ProcessLog
    index: int
    ring_id: RingId


def _members(members: frozenset[str]) -> str:
    return "{" + ",".join(sorted(members)) + "}"


def check_quorum(reports: Iterable[QuorumReport], exits: Iterable[PrimaryExit],
                 regular_members: Mapping[RingId, frozenset[str]]) -> list[Violation]:
    """Check the properties above; an empty list means one primary component throughout."""
    report = Report()
    decided: dict[tuple[str, RingId, frozenset[str]], tuple[tuple[bool, int, int], str]] = {}
    start: dict[RingId, tuple[float, str]] = {}
    for r in reports:
        if r.ring_id is None or r.reason != "configuration":
            if r.ring_id is not None and r.kind == "regular" and r.primary:
                start.setdefault(r.ring_id, (r.at, r.pid))  # became primary by an override
            continue
        key = (r.kind, r.ring_id, r.members)
        got = (r.primary, r.votes, r.expected_votes)
        first = decided.setdefault(key, (got, f"{r.pid}@{r.at:.6f}"))
        if first[0] != got:
            report.add("quorum-agreement",
                       f"{r.kind} {r.ring_id} {_members(r.members)}: {first[1]} decided "
                       f"primary={first[0][0]} votes={first[0][1]} expected={first[0][2]} but "
                       f"{r.pid}@{r.at:.6f} primary={r.primary} votes={r.votes} "
                       f"expected={r.expected_votes}")
        if r.kind == "regular" and r.primary:
            known = start.get(r.ring_id)
            if known is None or r.at < known[0]:
                start[r.ring_id] = (r.at, r.pid)
    end: dict[RingId, tuple[float, str]] = {}
    for e in exits:
        known = end.get(e.ring_id)
        if known is None or e.at < known[0]:
            end[e.ring_id] = (e.at, f"{e.pid} {e.why}")
    primaries = sorted(start)
    for i, a in enumerate(primaries):
        for b in primaries[i + 1:]:
            ma, mb = regular_members.get(a, frozenset()), regular_members.get(b, frozenset())
            if not ma & mb:
                report.add("primary-chain", f"primary configurations {a} {_members(ma)} and "
                           f"{b} {_members(mb)} share no member (two primary components)")
    # Existence intervals, ordered by start; one never whole (ended before it began) is empty.
    intervals = sorted((start[r][0], end.get(r, (math.inf, "still primary at the end"))[0], r)
                       for r in primaries)
    intervals = [(s, e, r) for s, e, r in intervals if e > s]
    for (s1, e1, r1), (s2, _e2, r2) in itertools.pairwise(intervals):
        if e1 > s2:
            why = end.get(r1, (math.inf, "still primary at the end"))[1]
            report.add("dual-primary",
                       f"primary {r1} {_members(regular_members.get(r1, frozenset()))} "
                       f"(from t={s1:.6f}s by {start[r1][1]}, until t={e1:.6f}s: {why}) was "
                       f"still whole when primary {r2} "
                       f"{_members(regular_members.get(r2, frozenset()))} began at "
                       f"t={s2:.6f}s ({start[r2][1]})")
    return report.violations


def check_primary_history(installs: Iterable[PrimaryInstall],
                          safe_in_primary: Mapping[RingId, set[tuple[str, int]]]) -> list[Violation]:
    """``primary-history`` (see the module docstring)."""
    report = Report()
    by_process: dict[str, list[PrimaryInstall]] = {}
    logs: dict[str, ProcessLog] = {}
    for inst in installs:
        by_process.setdefault(inst.log.pid, []).append(inst)
        logs[inst.log.pid] = inst.log
    for pid, process_installs in by_process.items():
        entries = logs[pid].entries
        delivered: set[tuple[str, int]] = set()
        done = 0
        earlier: list[RingId] = []
        for inst in sorted(process_installs, key=lambda i: i.index):
            for entry in entries[done:inst.index]:
                if type(entry) is Deliver:
                    delivered.add((entry.origin, entry.msg_id))
            done = inst.index
            for ring in earlier:
                missing = safe_in_primary.get(ring, set()) - delivered
                if missing:
                    report.add("primary-history",
                               f"{pid} installed primary {inst.ring_id} without having delivered "
                               f"{len(missing)} safe message(s) of the earlier primary {ring} it "
                               f"was in, e.g. {sorted(missing)[:3]}")
            earlier.append(inst.ring_id)
    return report.violations


__all__ = ["PrimaryExit", "PrimaryInstall", "QuorumReport", "check_primary_history", "check_quorum"]
