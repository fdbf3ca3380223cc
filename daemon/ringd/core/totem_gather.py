"""Gather and Commit as the core runs them: Joins, consensus, the commit token, gossip hints.

The rules themselves (set merging, consensus, commit token contents) are in
``totem_membership``; this mixin applies them to the core's state and timers. It is mixed
into :class:`ringd.core.totem.TotemCore` and only uses attributes that class defines.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ringd.core.totem_events import SendTo
from ringd.core.totem_membership import (
    JoinOutcome,
    build_commit_token,
    commit_entry,
    next_member,
)
from ringd.core.totem_state import Reason, State
from ringd.totem_messages import CommitEntry, CommitToken, Join, Token, TokenAck

if TYPE_CHECKING:
    from ringd.core.totem import TotemCore

SILENT_SUCCESSOR_RETRANSMITS = 4  # unanswered token resends before token loss fails the successor


class GatherCommitMixin:
    """Membership handlers of :class:`TotemCore` (split out to keep each module short)."""

    def _silent_successor(self: TotemCore) -> set[str] | None:
        """The member we kept resending the token to without any sign of life, if any.

        Only we can know it died with the token; failing it at once spares everybody the
        consensus timeout (a live but unlucky successor merges back through its Joins).
        """
        last = self._last_sent
        if last is None or self._unanswered < SILENT_SUCCESSOR_RETRANSMITS:
            return None
        # Resends adapt to the rotation time (milliseconds on a fast ring): silence counts
        # as in token_retransmit_s, so a successor starved of CPU for a moment is not failed.
        silent_s = SILENT_SUCCESSOR_RETRANSMITS * self.config.token_retransmit_s
        if self._now - self._last_sent_at < silent_s:
            return None
        return {last[0]}

    def _consensus_timeout(self: TotemCore, out: list) -> None:
        self.stats.consensus_timeouts += 1
        ms = self.membership
        silent = ms.silent()
        if silent:
            ms.add_fail(silent)
        else:
            ms.restart()  # consensus, but no commit token came: try again
        self._enter_gather(Reason.CONSENSUS_TIMEOUT, out)

    # --- Gather / Commit ------------------------------------------------------------------

    def _check_consensus(self: TotemCore, out: list) -> None:
        ms = self.membership
        if self.state is not State.GATHER or not ms.agreed() or not ms.is_rep() or ms.commit_built:
            return
        ms.commit_built = True
        base = self.highest_ring_seq
        if self.ring is not None:
            base = max(base, self.ring.ring_id.seq)
        token = build_commit_token(me=self.name, members=ms.members, highest_ring_seq=base)
        self._persist(token.ring_id.seq, out)
        self.stats.rings_formed += 1
        self._on_commit_token(token, self.name, out)

    def _stale_join(self: TotemCore, sender: str, join: Join) -> bool:
        """A Join sent before the ring we are on was formed (delayed or duplicated)."""
        ring = self.ring
        return ring is not None and sender in ring.members and join.ring_seq < ring.ring_id.seq

    def _on_join(self: TotemCore, join: Join, sender: str, out: list) -> None:
        self.stats.join_rx += 1
        if sender == self.name:
            return
        if join.ring_seq > self.highest_ring_seq:
            self.highest_ring_seq = join.ring_seq
        state = self.state
        if (state is State.RECOVERY or self._stale_join(sender, join)
                or self.flaps.held_out(sender, self._now)):
            # In Recovery a member may already have installed the new ring: leaving now
            # would split the transitional configuration. The joiner keeps sending; we
            # take it into account once Operational (or after a token loss).
            return
        adopted = bool(join.held) and self._adopt_holds(join)
        if state is State.OPERATIONAL:
            if self.name in join.fail and sender not in self.members:
                # It gave up on us, so a gather would fail it (failure is mutual) and
                # re-form this very ring: pure churn. When the sender's gather is over it
                # sends Joins that list us as alive, and those merge.
                self.stats.joins_failing_us_ignored += 1
                return
            self._enter_gather(Reason.JOIN, out, proc={sender})
        elif state is not State.GATHER:
            ms = self.membership
            if sender in ms.fail or ms.contains(join):
                return
            self._enter_gather(Reason.JOIN, out)
        current = join.ring_seq >= self.ring_id.seq
        outcome = self.membership.on_join(sender, join, current=current)
        if outcome is JoinOutcome.MERGED or adopted:
            held = self.flaps.held(self._now) & self.membership.proc
            if held and self.membership.add_fail(held):
                outcome = JoinOutcome.MERGED  # our sets grew: re-send our Join
        if outcome is JoinOutcome.AGREES:
            self._check_consensus(out)
        elif outcome is JoinOutcome.MERGED:
            self._enter_gather(Reason.MERGE_DURING_JOIN, out)

    def _adopt_holds(self: TotemCore, join: Join) -> bool:
        """Hold out whom the sender holds out, as long (see ringd.core.totem_flap): else we
        would take the Joins of a node it fails in every gather, and the ring would churn.
        True if a hold was taken or lengthened."""
        flaps, now, me = self.flaps, self._now, self.name
        adopted = False
        for node, remaining_s in join.held.items():
            if node != me and flaps.adopt(node, remaining_s, now):
                self.stats.flap_holds_adopted += 1
                adopted = True
        return adopted

    def _my_entry(self: TotemCore) -> CommitEntry:
        ring = self.ring
        if ring is None:
            return commit_entry(me=self.name, old_ring_id=self.ring_id, fresh=True, aru=0,
                                high_delivered=0, high_received=0, votes=self.vote_info)
        return commit_entry(me=self.name, old_ring_id=ring.ring_id, fresh=False, aru=ring.my_aru,
                            high_delivered=ring.delivered_seq, high_received=ring.high_seq,
                            votes=self.vote_info)

    def _on_commit_token(self: TotemCore, token: CommitToken, sender: str, out: list) -> None:
        self.stats.commit_token_rx += 1
        me = self.name
        if me not in token.members:
            return
        if token.ring_id.seq > self.highest_ring_seq:
            self.highest_ring_seq = token.ring_id.seq
        current = self.commit
        if (current is not None and sender != me and token.ring_id == current.ring_id
                and token.token_seq < current.token_seq):
            # A resend of one we already passed on: tell the sender to stop.
            out.append(SendTo(dest=sender, msg=TokenAck(ring_id=token.ring_id,
                                                        token_seq=token.token_seq)))
            return
        state = self.state
        members = token.members
        full = len(token.entries) == len(members)
        if state is State.GATHER:
            if (members != self.membership.members or full
                    or token.ring_id.seq <= self.ring_id.seq
                    or any(e.node == me for e in token.entries)):
                return
            self._persist(token.ring_id.seq, out)
            token = CommitToken(ring_id=token.ring_id, token_seq=token.token_seq + 1,
                                members=members, entries=token.entries + (self._my_entry(),))
            self.commit = token
            self._enter_commit(Reason.COMMIT_TOKEN)
            self._forward_commit(token, out)
        elif state is State.COMMIT:
            current = self.commit
            if (current is None or token.ring_id != current.ring_id or not full
                    or (token.token_seq <= current.token_seq and sender != me)):
                return
            token = CommitToken(ring_id=token.ring_id, token_seq=token.token_seq + 1,
                                members=members, entries=token.entries)
            self.commit = token
            self._enter_recovery(Reason.COMMIT_DONE, token)
            self._forward_commit(token, out)
        elif state is State.RECOVERY:
            current = self.commit
            ring = self.new_ring
            if (current is None or ring is None or token.ring_id != ring.ring_id or not ring.is_rep
                    or (token.token_seq <= current.token_seq and sender != me)
                    or ring.last_token_seq >= 0):
                return
            self.commit = token
            # Second rotation done: the representative starts the ring's first token.
            first = Token(ring_id=ring.ring_id, token_seq=0, seq=0, aru=0, aru_id="", rtr=(),
                          fcc=0, backlog=0, retrans_flg=True, install=0)
            self._on_token(first, me, out)

    def _forward_commit(self: TotemCore, token: CommitToken, out: list) -> None:
        self.stats.commit_token_tx += 1
        self._forward(next_member(token.members, self.name), token, out)

    def _on_peer_dead(self: TotemCore, node: str, out: list) -> None:
        if node == self.name:
            return
        self.flaps.hint(node, False, self._now)
        state = self.state
        if state is State.GATHER:
            if node in self.membership.proc and self.membership.add_fail({node}):
                self._enter_gather(Reason.PEER_DEAD, out)
            return
        if state is State.RECOVERY:
            return  # see _on_join; a dead member stops the token, which we detect
        in_ring = self.ring is not None and node in self.ring.members
        in_new = self.commit is not None and node in self.commit.members
        if in_ring or in_new:
            self._enter_gather(Reason.PEER_DEAD, out, fail={node})

    def _on_peer_alive(self: TotemCore, node: str, out: list) -> None:
        if node == self.name:
            return
        self.flaps.hint(node, True, self._now)
        if self.flaps.held_out(node, self._now):
            self.stats.flap_held_hints += 1
            return
        if self._deaf:
            return  # we could not hear its Joins: wait until its multicast reaches us
        state = self.state
        if state is State.GATHER:
            if node not in self.membership.fail and self.membership.add_proc(node):
                self._enter_gather(Reason.PEER_ALIVE, out)
        elif state is State.OPERATIONAL and self.ring is not None and node not in self.ring.members:
            self._enter_gather(Reason.PEER_ALIVE, out, proc={node})
