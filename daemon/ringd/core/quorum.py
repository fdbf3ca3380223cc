"""Quorum: is the configuration we are in the primary component? (sans-IO; votequorum's rules)

**The rule.** A configuration is primary when its members' votes reach the quorum,
``expected // 2 + 1``, where ``expected`` is the highest expected votes any member brings
and never less than the votes present (votequorum's ``highest_expected``). Options, named
as in votequorum:

* ``wait_for_all``: a member is *waiting* from its start until it is in a primary
  configuration; a configuration of waiting members only is primary only if it holds all
  expected votes (a member that is not waiting was in a primary component, so joining it is
  joining the cluster, as a restarted votequorum node may join a quorate partition);
* ``two_node``: with expected votes 2 and every member so configured, the quorum is 1;
* ``last_man_standing``: a primary configuration that stayed ``window`` seconds with fewer
  votes than expected lowers every member's expected votes to the votes present.

**Agreement.** Every member of a configuration must reach the same answer, so the inputs
travel with the configuration: each member puts its votes, expected votes, waiting flag
and two_node flag in its entry of the new ring's commit token (Totem's
:class:`~ringd.totem_messages.CommitEntry`), and every member installs the ring from the
same full token (the second rotation carries every entry). :func:`decide` is a pure
function of those entries, so all members compute the same decision, and no extra
message round is needed before the configuration event can say ``primary``. A transitional
configuration is decided from its members' entries of the same token. Changes within a
configuration (operator override, last man standing) are :class:`QuorumExpected` payloads
ordered by the ring, applied by every member at the same place of the delivery order.
(Announcing votes in order after the regular configuration would also agree, but would
leave every configuration undecided until all announcements arrived.)

**One primary.** If every node's expected votes are at least the votes of the whole
cluster (``quorum.expected_votes`` set, or the highest total seen once the cluster has been
whole: it only grows), two primary configurations each hold more than half of the votes,
so they share a member. A member is in one configuration at a time, installs them in ring
seq order, and puts its entry in a new ring's commit token only after it left its old
ring's Operational state: so primaries form a single chain and the next one starts only
after the previous one lost a member. Outside that assumption (a fresh cluster without
``expected_votes`` formed in parts, ``two_node``, or expected votes lowered by the operator
or by last man standing on some nodes only) two primaries can exist, as with votequorum.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import Any, Final, Protocol

from ringd.config import QuorumConfig
from ringd.core.events import Log, Persist
from ringd.core.totem_events import ConfigChange, ConfigKind, Deliver, VoteInfo
from ringd.quorum_messages import QuorumExpected
from ringd.totem_messages import RingId

EXPECTED_VOTES: Final = "expected_votes"  # the Persist key of our expected votes

# Why the quorum state was (re)computed: the label of the transitions metric.
REASON_CONFIGURATION: Final = "configuration"
REASON_OPERATOR: Final = "operator"
REASON_LAST_MAN_STANDING: Final = "last_man_standing"
REASON_OBSERVER: Final = "observer"


class MemberVotes(Protocol):
    """A member's quorum inputs (a commit token entry)."""

    @property
    def node(self) -> str: ...
    @property
    def votes(self) -> int: ...
    @property
    def expected_votes(self) -> int: ...
    @property
    def waiting(self) -> bool: ...
    @property
    def two_node(self) -> bool: ...


@dataclass(frozen=True, slots=True, kw_only=True)
class Decision:
    """The quorum of one configuration, as every member of it computes it."""

    primary: bool
    votes: int  # present
    expected_votes: int
    quorum: int  # votes needed


def decide(members: Iterable[MemberVotes]) -> Decision:
    """Primary or not, from the members' inputs alone (the same on every member)."""
    entries = list(members)
    votes = sum(e.votes for e in entries)
    expected = max([votes, *(e.expected_votes for e in entries)])
    if entries and expected == 2 and all(e.two_node for e in entries):
        quorum = 1
    else:
        quorum = expected // 2 + 1
    primary = votes >= quorum
    if primary and entries and all(e.waiting for e in entries) and votes < expected:
        primary = False  # wait_for_all: nobody here has been in a primary component yet
    return Decision(primary=primary, votes=votes, expected_votes=expected, quorum=quorum)


@dataclass(frozen=True, slots=True, kw_only=True)
class QuorumStatus:
    """Our quorum state after a change (an effect of the node core, and what status shows)."""

    ring_id: RingId | None  # None: in no configuration (before the first, or an observer)
    kind: str  # "regular", "transitional" or "none"
    primary: bool
    votes: int
    expected_votes: int
    quorum: int
    reason: str

    def client_fields(self) -> dict[str, Any]:
        """What configuration and quorum frames to clients carry."""
        return {"primary": self.primary, "votes": self.votes, "expected": self.expected_votes}

    def describe(self) -> str:
        where = f"{self.kind} {self.ring_id}" if self.ring_id is not None else "no configuration"
        state = "quorate" if self.primary else "not quorate"
        return (f"{state}: {self.votes} of {self.expected_votes} expected votes "
                f"(quorum {self.quorum}) in {where}")


@dataclass(slots=True)
class QuorumStats:
    """Counters for metrics."""

    transitions: dict[str, int] = field(default_factory=dict)  # quorate flips by reason
    sends_refused: int = 0  # client sends refused (or safe sends answered) as not quorate
    overrides: int = 0  # QuorumExpected payloads applied


class QuorumCore:
    """Our quorum inputs and the state of the configuration we are in."""

    def __init__(self, cfg: QuorumConfig, *, name: str, expected_persisted: int) -> None:
        self.cfg = cfg
        self.name = name
        configured = cfg.expected_votes or (2 if cfg.two_node else 0)
        # The highest total of votes seen in a regular configuration (persisted), and our
        # expected votes: configured or that, raised by every larger configuration, lowered
        # only by an ordered QuorumExpected (not persisted: a restart goes back to the
        # conservative value).
        self.highest_seen = expected_persisted
        self.expected_votes = max(configured, expected_persisted)
        self.waiting = cfg.wait_for_all or cfg.two_node
        self._policies = dict(cfg.group_policy)
        self.stats = QuorumStats()
        self.status = QuorumStatus(ring_id=None, kind="none", primary=False, votes=0,
                                   expected_votes=max(self.expected_votes, cfg.votes),
                                   quorum=0, reason=REASON_CONFIGURATION)
        self._entries: tuple[MemberVotes, ...] = ()
        self._lms_at = math.inf

    # --- inputs of the commit token -------------------------------------------------------

    @property
    def vote_info(self) -> VoteInfo:
        """What we bring to the next configuration (our commit token entry)."""
        return VoteInfo(votes=self.cfg.votes, expected_votes=self.expected_votes,
                        waiting=self.waiting, two_node=self.cfg.two_node)

    # --- ordered inputs ---------------------------------------------------------------------

    def on_config(self, change: ConfigChange, now: float) -> list[Any]:
        """A configuration was installed: decide it. Returns effects (``Persist``, ``Log``)."""
        out: list[Any] = []
        self._entries = tuple(change.votes)
        decision = decide(self._entries)
        self._lms_at = math.inf
        if change.kind is ConfigKind.REGULAR:
            if decision.votes > self.expected_votes:
                self.expected_votes = decision.votes
            if decision.votes > self.highest_seen:
                # The highest total seen so far: the default expected votes, durably.
                self.highest_seen = decision.votes
                out.append(Persist(key=EXPECTED_VOTES, value=decision.votes))
            if (decision.primary and self.cfg.last_man_standing
                    and decision.votes < decision.expected_votes):
                self._lms_at = now + self.cfg.last_man_standing_window_s
        self._set(change.ring_id, change.kind.value, decision, REASON_CONFIGURATION, out)
        return out

    def on_expected(self, msg: QuorumExpected, d: Deliver, now: float) -> list[Any]:
        """An ordered QuorumExpected was delivered (in configuration ``d.ring_id``)."""
        out: list[Any] = []
        status = self.status
        if msg.reason == REASON_LAST_MAN_STANDING and not (
                status.kind == ConfigKind.REGULAR.value and status.ring_id == msg.ring_id
                and d.ring_id == msg.ring_id):
            return out  # decided in a configuration we are no longer in: void
        if msg.expected < 1:
            return out  # validated by the sender; a bad peer payload changes nothing
        if self._entries and all(e.expected_votes == msg.expected for e in self._entries):
            return out  # already applied (every member proposes last man standing)
        self.stats.overrides += 1
        self.expected_votes = msg.expected
        out.append(Log(level="warning", text=(
            f"quorum: expected votes set to {msg.expected} ({msg.reason}, by {msg.by})")))
        # Every member applies the same value here, so their entries change alike.
        self._entries = tuple(replace_expected(e, msg.expected) for e in self._entries)
        self._lms_at = math.inf
        if status.ring_id is not None:
            self._set(status.ring_id, status.kind, decide(self._entries), msg.reason, out)
        return out

    def on_observer(self) -> list[Any]:
        """We left the ring (observer, or leaving): in no configuration, not primary."""
        out: list[Any] = []
        self._entries = ()
        self._lms_at = math.inf
        self._set(None, "none", Decision(primary=False, votes=0, expected_votes=self.expected_votes,
                                          quorum=self.expected_votes // 2 + 1), REASON_OBSERVER, out)
        return out

    # --- last man standing --------------------------------------------------------------------

    def next_deadline(self) -> float:
        return self._lms_at

    def due(self, now: float) -> QuorumExpected | None:
        """The last-man-standing window passed: the payload to publish (once per window)."""
        if now < self._lms_at:
            return None
        self._lms_at = math.inf
        status = self.status
        if not status.primary or status.votes >= status.expected_votes or status.ring_id is None:
            return None
        return QuorumExpected(expected=status.votes, reason=REASON_LAST_MAN_STANDING,
                              ring_id=status.ring_id, by=self.name)

    # --- policy -------------------------------------------------------------------------------

    def policy(self, group: str) -> str:
        return self._policies.get(group, self.cfg.nonprimary_sends)

    def refuses(self, group: str, safe: bool) -> bool:
        """Would a send to ``group`` be refused now (we are in a configuration that is not
        primary)? Before the first configuration sends wait for it, as they always did; a
        safe send's reply then says whether it was delivered in a primary component."""
        if self.status.primary or self.status.ring_id is None:
            return False
        policy = self.policy(group)
        return policy == "all" or (policy == "safe" and safe)

    def refusal(self, group: str, safe: bool) -> str:
        """The one-line error of a refused send."""
        s = self.status
        kind = "safe" if safe else "agreed"
        return (f"not quorate: {s.votes} of {s.expected_votes} expected votes present, "
                f"{s.quorum} needed; group {group!r} refuses {kind} sends from a non-primary "
                f"component (quorum policy {self.policy(group)!r})")

    def info(self) -> dict[str, Any]:
        """The quorum state for ``ringd status`` and the client API."""
        s = self.status
        return {"quorate": s.primary, "votes": s.votes, "expected_votes": s.expected_votes,
                "quorum": s.quorum, "ring": None if s.ring_id is None else str(s.ring_id),
                "kind": s.kind, "my_votes": self.cfg.votes,
                "my_expected_votes": self.expected_votes, "waiting": self.waiting,
                "wait_for_all": self.cfg.wait_for_all, "two_node": self.cfg.two_node,
                "last_man_standing": self.cfg.last_man_standing}

    # --- internals ----------------------------------------------------------------------------

    def _set(self, ring_id: RingId | None, kind: str, decision: Decision, reason: str,
             out: list[Any]) -> None:
        old = self.status
        if decision.primary:
            self.waiting = False
            self._entries = tuple(replace_waiting(e) for e in self._entries)
        if decision.primary != old.primary:
            self.stats.transitions[reason] = self.stats.transitions.get(reason, 0) + 1
        self.status = QuorumStatus(ring_id=ring_id, kind=kind, primary=decision.primary,
                                   votes=decision.votes, expected_votes=decision.expected_votes,
                                   quorum=decision.quorum, reason=reason)
        out.append(self.status)


def replace_expected(entry: MemberVotes, expected: int) -> MemberVotes:
    return replace(entry, expected_votes=expected)  # type: ignore[type-var]


def replace_waiting(entry: MemberVotes) -> MemberVotes:
    return entry if not entry.waiting else replace(entry, waiting=False)  # type: ignore[type-var]


__all__ = ["EXPECTED_VOTES", "Decision", "QuorumCore", "QuorumStats", "QuorumStatus", "decide"]
