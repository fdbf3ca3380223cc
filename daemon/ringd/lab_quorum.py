"""Real daemons' logs in the quorum checker's model: one primary component at a time.

``scripts/netlab.py`` keeps every daemon's log (all its incarnations, appended to one file).
Three kinds of line there are what :func:`ringd.sim.quorum_checker.check_quorum` needs, the
same inputs the whole-node simulator records in virtual time:

* ``regular configuration 12.n1: n1,n2`` (and ``transitional``): a configuration installed,
  with its members;
* ``quorum: quorate: 2 of 3 expected votes (quorum 2) in regular 12.n1``: the quorum
  decided for it (the node core reports one after every configuration; a change within a
  configuration, by the operator or last man standing, ends with its reason in brackets);
* ``left ring 12.n1: token_loss``: the daemon stopped belonging to that ring (Totem went back
  to Gather, or the daemon became an observer). A ``kill -9`` the lab made ends membership
  too, at the moment the lab saw the process dead.

Times are the log lines' wall-clock times (millisecond resolution, one clock for every
namespace of the lab). Truncation to the millisecond keeps their order, so a configuration
left before another was installed is never seen the other way round; two events within the
same millisecond count as not overlapping.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from ringd.core.quorum import REASON_CONFIGURATION
from ringd.lab_history import parse_ring
from ringd.sim.checkers import Violation
from ringd.sim.quorum_checker import PrimaryExit, QuorumReport, check_quorum
from ringd.totem_messages import RingId

_LINE = re.compile(r"^(\d\d):(\d\d):(\d\d)\.(\d{3}) (\S+) [A-Z]+ (.*)$")
_CONFIG = re.compile(r"^(regular|transitional) configuration (\S+): (.*)$")
_QUORUM = re.compile(r"^quorum: (quorate|not quorate): (\d+) of (\d+) expected votes "
                     r"\(quorum \d+\) in (regular|transitional) (\S+?)(?: \((\w+)\))?$")
_LEFT = re.compile(r"^left ring (\S+): (\S+)$")
_STARTUP = re.compile(r"^ringd \S+ listening on ")


@dataclass(slots=True)
class QuorumInputs:
    """What :func:`check_quorum` takes, read from the daemons' logs."""

    reports: list[QuorumReport] = field(default_factory=list)
    exits: list[PrimaryExit] = field(default_factory=list)
    regular_members: dict[RingId, frozenset[str]] = field(default_factory=dict)

    @property
    def primary_configurations(self) -> int:
        return len({r.ring_id for r in self.reports if r.kind == "regular" and r.primary})

    def check(self) -> list[Violation]:
        return check_quorum(self.reports, self.exits, self.regular_members)


@dataclass(frozen=True, slots=True)
class Kill:
    """The lab killed incarnation ``incarnation`` of ``node``; it was dead at ``at``."""

    node: str
    incarnation: int
    at: float


def _wall(h: str, m: str, s: str, ms: str, day: dt.date, not_before: float) -> float:
    """Epoch seconds of a log line's local time of day, on the lab's day (or the next, after
    midnight)."""
    t = dt.datetime.combine(day, dt.time(int(h), int(m), int(s), int(ms) * 1000)).timestamp()
    return t + 86400 if t < not_before - 43200 else t


def read_daemon_logs(logs: Iterable[tuple[str, Path]], kills: Iterable[Kill],
                     started_at: float) -> QuorumInputs:
    """Quorum checker inputs from ``(node, log path)`` pairs; ``started_at`` is when the lab
    started (epoch seconds), which dates the lines. A process is ``node#incarnation``, its
    incarnations counted by the daemon's startup lines from 0."""
    day = dt.datetime.fromtimestamp(started_at).date()
    out = QuorumInputs()
    kills_by_pid = {f"{k.node}#{k.incarnation}": k.at for k in kills}
    for node, path in logs:
        incarnation = -1
        members: dict[RingId, tuple[str, ...]] = {}
        attached: RingId | None = None  # the ring this process is in (Operational)
        for line in path.read_text(errors="replace").splitlines():
            if _STARTUP.match(line):  # printed on stdout, without a time
                _killed(out, node, incarnation, attached, kills_by_pid)
                incarnation += 1
                members, attached = {}, None
                continue
            m = _LINE.match(line)
            if m is None or m.group(5) != node:
                continue
            text = m.group(6)
            pid = f"{node}#{incarnation}"
            at = _wall(*m.group(1, 2, 3, 4), day, started_at)
            if (c := _CONFIG.match(text)) is not None:
                ring = parse_ring(c.group(2))
                members[ring] = tuple(c.group(3).split(","))
                if c.group(1) == "regular":
                    out.regular_members[ring] = frozenset(members[ring])
                    attached = ring
            elif (q := _QUORUM.match(text)) is not None:
                ring = parse_ring(q.group(5))
                out.reports.append(QuorumReport(
                    at=at, pid=pid, ring_id=ring, kind=q.group(4),
                    members=frozenset(members.get(ring, ())), primary=q.group(1) == "quorate",
                    votes=int(q.group(2)), expected_votes=int(q.group(3)),
                    reason=q.group(6) or REASON_CONFIGURATION))
            elif (left := _LEFT.match(text)) is not None:
                ring = parse_ring(left.group(1))
                out.exits.append(PrimaryExit(at=at, pid=pid, node=node, ring_id=ring,
                                             why=f"left it ({left.group(2)})"))
                if ring == attached:
                    attached = None
        _killed(out, node, incarnation, attached, kills_by_pid)
    return out


def _killed(out: QuorumInputs, node: str, incarnation: int, attached: RingId | None,
            kills_by_pid: dict[str, float]) -> None:
    """The lab killed this incarnation while it was in ``attached``: it left it then."""
    pid = f"{node}#{incarnation}"
    if attached is not None and pid in kills_by_pid:
        out.exits.append(PrimaryExit(at=kills_by_pid[pid], pid=pid, node=node,
                                     ring_id=attached, why="killed"))


__all__ = ["Kill", "QuorumInputs", "read_daemon_logs"]
