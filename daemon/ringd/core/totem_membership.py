"""Gather and Commit: join sets, consensus, the commit token.

Gather (paper §4, corosync ``memb_join_process``): every processor multicasts a Join with
the set of processors it believes up (``proc``) and those it gave up on (``fail``). A Join
with the same sets as ours counts towards consensus; one whose sets are contained in ours
is ignored; anything else is merged into ours and we start over. A processor that lists
us as failed goes into our fail set (failure is mutual). Consensus is reached when every
processor of ``proc - fail`` sent a Join identical to ours; its lowest name (the
representative) then builds the commit token. When consensus does not come within
``consensus_s``, the silent processors are moved to the fail set.

Commit: the commit token names the new ring (a seq above every ring seq any member has
seen, so ring ids only grow) and goes round twice. On the first rotation each member adds
its entry (old ring id, aru, high delivered, high received); on the second every member
sees all entries and enters Recovery.
"""

from __future__ import annotations

import enum

from ringd.core.totem_events import DEFAULT_VOTES, VoteInfo
from ringd.totem_messages import CommitEntry, CommitToken, Join, RingId

RING_SEQ_STEP = 4  # corosync: new ring seq = highest seen + 4


class JoinOutcome(enum.Enum):
    """What a received Join did to our gather state."""

    IGNORED = "ignored"  # contained in our sets, or from a processor we failed
    AGREES = "agrees"  # identical sets: counts towards consensus
    MERGED = "merged"  # our sets grew: re-send our Join, restart consensus


class Membership:
    """The gather state of one processor: proc set, fail set, consensus."""

    def __init__(self, me: str) -> None:
        self.me = me
        self.proc: set[str] = {me}
        self.fail: set[str] = set()
        self.consensus: set[str] = {me}
        self.commit_built = False  # we already built the commit token for these sets

    def start(self, proc: set[str], fail: set[str]) -> None:
        """Begin (or restart) a gather round with these sets."""
        self.proc = proc | fail | {self.me}
        self.fail = fail - {self.me}
        self.restart()

    def restart(self) -> None:
        self.consensus = {self.me}
        self.commit_built = False

    def join(self, ring_seq: int, held: dict[str, float] | None = None) -> Join:
        return Join(proc=tuple(sorted(self.proc)), fail=tuple(sorted(self.fail)), ring_seq=ring_seq,
                    held=held or {})

    def contains(self, join: Join) -> bool:
        """The Join tells us nothing new."""
        return self.proc.issuperset(join.proc) and self.fail.issuperset(join.fail)

    def on_join(self, sender: str, join: Join, *, current: bool) -> JoinOutcome:
        """Apply a Join. ``current``: the sender has seen our ring (its ring seq is not
        older), so its fail set is a verdict of this gather and not a leftover of an
        earlier one; a leftover fail set is not merged (else two processors that once
        failed each other would keep failing each other)."""
        if sender in self.fail:
            return JoinOutcome.IGNORED
        proc, fail = set(join.proc), set(join.fail)
        if proc == self.proc and fail == self.fail:
            self.consensus.add(sender)
            return JoinOutcome.AGREES
        if proc <= self.proc and fail <= self.fail:
            return JoinOutcome.IGNORED
        before = (len(self.proc), len(self.fail))
        self.proc |= proc | {sender}
        if current:
            self.proc |= fail
            if self.me in fail:
                self.fail.add(sender)  # it gave up on us: we give up on it
            else:
                self.fail |= fail
            self.fail.discard(self.me)
        if (len(self.proc), len(self.fail)) == before:
            return JoinOutcome.IGNORED
        self.restart()
        if proc == self.proc and fail == self.fail:
            self.consensus.add(sender)  # we adopted exactly its view: it already agrees
        return JoinOutcome.MERGED

    def add_proc(self, node: str) -> bool:
        if node in self.proc:
            return False
        self.proc.add(node)
        self.restart()
        return True

    def add_fail(self, nodes: set[str]) -> bool:
        new = nodes - self.fail - {self.me}
        if not new:
            return False
        self.proc |= new
        self.fail |= new
        self.restart()
        return True

    @property
    def members(self) -> tuple[str, ...]:
        """The ring this gather would form: ``proc - fail``, in ring (sorted) order."""
        return tuple(sorted(self.proc - self.fail))

    def agreed(self) -> bool:
        return self.consensus.issuperset(self.proc - self.fail)

    def silent(self) -> set[str]:
        """Processors we still lack consensus with (they go to the fail set on timeout)."""
        return self.proc - self.fail - self.consensus

    def is_rep(self) -> bool:
        return self.members[0] == self.me


def build_commit_token(*, me: str, members: tuple[str, ...], highest_ring_seq: int) -> CommitToken:
    """The representative's commit token for a new ring above every seq seen."""
    ring_id = RingId(seq=highest_ring_seq + RING_SEQ_STEP, rep=me)
    return CommitToken(ring_id=ring_id, token_seq=0, members=members, entries=())


def next_member(members: tuple[str, ...], me: str) -> str:
    return members[(members.index(me) + 1) % len(members)]


def commit_entry(*, me: str, old_ring_id: RingId, fresh: bool, aru: int, high_delivered: int,
                 high_received: int, votes: VoteInfo = DEFAULT_VOTES) -> CommitEntry:
    return CommitEntry(node=me, old_ring_id=old_ring_id, fresh=fresh, aru=aru,
                       high_delivered=high_delivered, high_received=high_received,
                       votes=votes.votes, expected_votes=votes.expected_votes,
                       waiting=votes.waiting, two_node=votes.two_node)
