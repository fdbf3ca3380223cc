"""TotemCore: the Totem single-ring protocol (Amir et al., TOCS 1995) as a sans-IO core.

States as in the paper and corosync: OPERATIONAL (the token circulates, messages are
ordered and delivered), GATHER (joins until consensus on a membership), COMMIT (the commit
token goes round twice), RECOVERY (old-ring messages are exchanged, then the transitional
and regular configurations are delivered). Every state change goes through
``_enter_<state>(reason)`` and is counted in :class:`TotemStats`.

The phases live in their own modules: ordering, flow control and delivery in
``totem_ring``; gather and commit rules in ``totem_membership`` and their handlers in
``totem_gather``; recovery in ``totem_recovery``; packing and fragmentation in
``totem_packing``; flap damping of gossip hints in ``totem_flap``. This module routes
inputs, runs the token in Operational and Recovery, and owns the timers (deadlines as
data; the driver passes :class:`Tick`).

Deviations from corosync, each for a reason given where it is done: Joins are ignored in
Recovery; a duplicate token is answered with :class:`TokenAck` so that a member whose
successor died fails it at once; the idle token is held for a bounded time only;
failing to receive is also detected in Recovery, and a processor that failed to receive
does not advertise its singleton ring until it hears multicast again.
"""

from __future__ import annotations

import collections
import math
from collections.abc import Callable
from random import Random
from typing import Any

from ringd.config import TotemConfig
from ringd.core.events import Received, Tick
from ringd.core.totem_events import (
    DEFAULT_VOTES,
    Broadcast,
    ConfigChange,
    ConfigKind,
    PeerAlive,
    PeerDead,
    PersistRingSeq,
    Publish,
    ReadersBehind,
    RingLeft,
    SendRefused,
    SendTo,
    TotemEffect,
    VoteInfo,
)
from ringd.core.totem_flap import FlapDamper
from ringd.core.totem_gather import GatherCommitMixin
from ringd.core.totem_membership import Membership
from ringd.core.totem_packing import Reassembler, SendQueue
from ringd.core.totem_receive import ReceiveMixin
from ringd.core.totem_recovery import (
    RecoverySource,
    deliver_old_ring,
    plan_recovery,
    transitional_group,
)
from ringd.core.totem_ring import Entry, Ring, SendSource
from ringd.core.totem_state import Reason, State
from ringd.core.totem_stats import TotemStats
from ringd.messages import Message
from ringd.totem_messages import (
    CommitEntry,
    CommitToken,
    Join,
    Mcast,
    MergeDetect,
    Recovered,
    RingId,
    Token,
    TokenAck,
    TokenHoldCancel,
)

HOLD_TOKEN_TIMEOUT_FRACTION = 0.4  # a held token is released well before others time out
# The token is resent once it has been gone this many rotations (at the fastest recent
# pace per hop) with no sign that the successor has it. A lost token then costs a few
# rotations instead of a fixed token_retransmit_s: on a lossy LAN, many resends fit in one
# token loss timeout, so loss alone no longer looks like a dead member (and a loss costs
# milliseconds of latency). Hop times outlive a ring change, so the commit token and the
# recovery of the next ring (the likeliest moments to lose a token) are resent as fast.
RETRANSMIT_ROTATIONS = 3.0
HOPS_KEPT = 16  # the recent rotations (as time per hop) the fastest is taken from
HOPS_BEFORE_ADAPTING = 4  # until then tokens are resent after token_retransmit_s

# What others send by multicast: receiving any of these shows we are not deaf to it.
_MULTICAST_TYPES = frozenset({Mcast, Recovered, Join, MergeDetect})

__all__ = ["TOTEM_MESSAGE_TYPES", "Reason", "State", "TotemCore"]

# The one registry of Totem datagrams: message type -> TotemCore handler. The node core
# routes by it (TOTEM_MESSAGE_TYPES); a new Totem message needs its wire class and a line here.
HANDLERS: dict[type, str] = {
    Token: "_on_token",
    Mcast: "_on_mcast",
    Recovered: "_on_recovered",
    Join: "_on_join",
    CommitToken: "_on_commit_token",
    MergeDetect: "_on_merge_detect",
    TokenHoldCancel: "_on_hold_cancel",
    TokenAck: "_on_token_ack",
}
TOTEM_MESSAGE_TYPES: frozenset[type] = frozenset(HANDLERS)


class _AppSource(SendSource):
    """Operational send source: packs the application send queue into datagrams."""

    def __init__(self, queue: SendQueue, stats: TotemStats) -> None:
        self.queue = queue
        self.stats = stats

    def backlog(self) -> int:
        return self.queue.backlog()

    def make(self, ring_id: RingId, seq: int, me: str) -> Entry | None:
        if not len(self.queue):
            return None
        chunks, safe, fragments = self.queue.next_packet()
        self.stats.fragments_tx += fragments
        return Mcast(ring_id=ring_id, seq=seq, origin=me, safe=safe, chunks=chunks)


class TotemCore(ReceiveMixin, GatherCommitMixin):
    """One processor's Totem state machine. Drive it with :meth:`handle` and :meth:`next_deadline`.

    ``ring_seq`` is the highest ring seq persisted by an earlier run (see
    :class:`PersistRingSeq`); every ring this core forms or joins has a higher seq.
    """

    def __init__(self, *, name: str, config: TotemConfig, rng: Random, ring_seq: int = 0,
                 now: float = 0.0, vote_info: VoteInfo = DEFAULT_VOTES) -> None:
        self.name = name
        # Our quorum inputs, put in our commit token entry (the node core keeps them
        # current; set before the first Gather, which may commit a ring of one at once).
        self.vote_info = vote_info
        self.config = config
        self.rng = rng
        self.stats = TotemStats()
        self.state = State.GATHER
        self.last_reason = Reason.START
        self.queue = SendQueue(mtu_bytes=config.mtu_bytes, message_bytes_max=config.message_bytes_max,
                               len_max=config.send_queue_len_max)
        self._app = _AppSource(self.queue, self.stats)
        self.reassembler = Reassembler()
        self.ring: Ring | None = None  # the installed (regular) configuration
        self.persisted_ring_seq = ring_seq
        self.highest_ring_seq = ring_seq
        self.membership = Membership(name)
        self.flaps = FlapDamper(config)
        # Commit / Recovery
        self.commit: CommitToken | None = None  # the commit token we last forwarded
        self.new_ring: Ring | None = None
        self.entries: dict[str, CommitEntry] = {}
        self.recovery: RecoverySource | None = None
        # Timers (absolute times; math.inf when off)
        self._now = now
        self._token_loss_at = math.inf
        self._retransmit_at = math.inf
        self._join_at = math.inf
        self._consensus_at = math.inf
        self._hold_until = math.inf
        self._held: Token | None = None
        # Observation only (TotemStats histograms): when the held token was taken, and when
        # this node last processed a token in Operational (None: none since entering it).
        self._held_since = 0.0
        self._last_visit_at: float | None = None
        # Time per hop of the latest rotations (see _token_retransmit_after).
        self._hop_s: collections.deque[float] = collections.deque(maxlen=HOPS_KEPT)
        self._releasing = False
        # Where a held token released for a member's send goes (None: our successor).
        self._release_to: str | None = None
        self._holder: str | None = None  # the member we heard start holding the token
        # We had something for the ring while the token was on its way round: if a member
        # holds that very token, ask for it as soon as we hear so (see _on_merge_detect).
        self._wake_pending = False
        self.readers_behind = False  # see ReadersBehind: our visits claim the whole window
        self._self_msg: Message | None = None  # token to ourselves (a ring of one)
        self._last_sent: tuple[str, Message] | None = None
        self._unanswered = 0  # retransmissions of _last_sent with no sign of progress
        self._last_sent_at = 0.0  # when _last_sent was first sent
        # We failed to receive and have heard no multicast from anyone since: we keep our
        # singleton ring to ourselves (see _failed_to_receive) until multicast reaches us.
        self._deaf = False
        self._hold_s = min(config.merge_s, HOLD_TOKEN_TIMEOUT_FRACTION * config.token_timeout_s)
        self._dispatch: dict[type, Callable[[Any, str, list], None]] = {
            tp: getattr(self, method) for tp, method in HANDLERS.items()}
        self._emit = self._make_emit()
        out: list = []
        self._enter_gather(Reason.START, out, proc={name}, fail=set())
        self._startup_effects = out

    # --- Public API ---------------------------------------------------------------------

    @property
    def ring_id(self) -> RingId:
        """The installed ring (before the first one: a placeholder with seq -1)."""
        return self.ring.ring_id if self.ring is not None else RingId(seq=-1, rep=self.name)

    @property
    def members(self) -> tuple[str, ...]:
        """Members of the installed regular configuration (empty before the first)."""
        return self.ring.members if self.ring is not None else ()

    def handle(self, event: Any, now: float) -> list[TotemEffect]:
        """Process one input; returns the effects to execute, in order."""
        self._now = now
        out: list = []
        if self._startup_effects:
            out, self._startup_effects = self._startup_effects, []
        tp = type(event)
        if tp is Received:
            if self._deaf and event.sender != self.name and type(event.msg) in _MULTICAST_TYPES:
                self._deaf = False  # multicast reaches us again
            handler = self._dispatch.get(type(event.msg))
            if handler is not None:
                handler(event.msg, event.sender, out)
        elif tp is Tick:
            self._on_tick(out)
        elif tp is Publish:
            self._on_publish(event, out)
        elif tp is PeerDead:
            self._on_peer_dead(event.node, out)
        elif tp is PeerAlive:
            self._on_peer_alive(event.node, out)
        elif tp is ReadersBehind:
            self._on_readers_behind(event, out)
        self.stats.send_queue_len = len(self.queue)
        return out

    def token_timeout(self, members: int) -> float:
        """Token loss timeout for a ring of ``members``: ``token_timeout_s`` plus
        ``token_coefficient_s`` per member beyond two (corosync's token_coefficient). A
        rotation takes one hop per member, and on a busy host each hop can wait for a CPU:
        a fixed timeout that suits 3 members makes a ring of 32 lose a healthy token."""
        cfg = self.config
        return cfg.token_timeout_s + cfg.token_coefficient_s * max(0, members - 2)

    def consensus_timeout(self, members: int) -> float:
        """``consensus_s`` scaled like the token timeout (it keeps its ratio to it)."""
        cfg = self.config
        return cfg.consensus_s * self.token_timeout(members) / cfg.token_timeout_s

    def next_deadline(self) -> float:
        """When the core next needs a :class:`Tick` (absolute; ``math.inf`` if never)."""
        if self._self_msg is not None or self._startup_effects:
            return self._now
        return min(self._token_loss_at, self._retransmit_at, self._join_at, self._consensus_at,
                   self._hold_until, self.flaps.next_release())

    # --- State entries ------------------------------------------------------------------

    def _count_entry(self, state: State, reason: Reason) -> None:
        self._last_visit_at = None  # a rotation spans one stay in Operational only
        self.state = state
        self.last_reason = reason
        self.stats.bump(self.stats.state_entered, state.name)

    def attached_ring(self) -> RingId | None:
        """The ring we belong to now: Operational in it, or committed to it."""
        return self._attached_ring(self.state)

    def _attached_ring(self, state: State) -> RingId | None:
        if state is State.OPERATIONAL:
            return self.ring.ring_id if self.ring is not None else None
        if state is State.COMMIT or state is State.RECOVERY:
            return self.commit.ring_id if self.commit is not None else None
        return None

    def _stop_token_timers(self) -> None:
        self._token_loss_at = math.inf
        self._retransmit_at = math.inf
        self._hold_until = math.inf
        self._held = None
        self._self_msg = None
        self._last_sent = None
        self._holder = None
        self._wake_pending = False

    def _enter_gather(self, reason: Reason, out: list, *, proc: set[str] | None = None,
                      fail: set[str] | None = None) -> None:
        """Start (or restart) a gather round; ``proc``/``fail`` replace or extend the sets."""
        prev = self.state
        ms = self.membership
        if prev is not State.GATHER:
            left = self._attached_ring(prev)
            if left is not None:
                out.append(RingLeft(ring_id=left, reason=reason.value))
            silent = self._silent_successor()
            if silent:
                fail = (fail or set()) | silent
        if prev is State.OPERATIONAL and self.ring is not None:
            self.queue.restart_partial()
            ms.start(set(self.ring.members) | (proc or set()), fail or set())
        elif prev in (State.COMMIT, State.RECOVERY):
            new_members = set(self.commit.members) if self.commit is not None else set()
            ms.start(ms.proc | new_members | (proc or set()), ms.fail | (fail or set()))
        elif reason is Reason.START:
            ms.start(proc or {self.name}, fail or set())
        elif proc or fail:
            ms.start(ms.proc | (proc or set()), ms.fail | (fail or set()))
        # else: still gathering; the caller already changed the sets (consensus restarted)
        held = self.flaps.held(self._now) & ms.proc
        if held:
            ms.add_fail(held)
        self.commit = None
        self.new_ring = None
        self.entries = {}
        self.recovery = None
        self._stop_token_timers()
        self._count_entry(State.GATHER, reason)
        self.stats.bump(self.stats.gather_entered, reason.value)
        self._consensus_at = self._now + self.consensus_timeout(len(ms.proc - ms.fail))
        self._send_join(out)
        self._check_consensus(out)

    def _enter_commit(self, reason: Reason) -> None:
        self._join_at = math.inf
        self._consensus_at = math.inf
        ms = self.membership
        self._token_loss_at = self._now + self.token_timeout(len(ms.proc - ms.fail))
        self._count_entry(State.COMMIT, reason)

    def _enter_recovery(self, reason: Reason, token: CommitToken) -> None:
        self.entries = {e.node: e for e in token.entries}
        self.new_ring = Ring(ring_id=token.ring_id, members=token.members, me=self.name,
                             config=self.config, stats=self.stats)
        self.recovery = plan_recovery(self.entries, self.name, self.ring)
        self._token_loss_at = self._now + self.token_timeout(len(token.members))
        self._count_entry(State.RECOVERY, reason)

    def _enter_operational(self, reason: Reason, out: list) -> None:
        """Recovery is complete: deliver the old ring's rest and both configurations."""
        new = self.new_ring
        assert new is not None
        old = self.ring
        group = transitional_group(self.entries, self.name)
        if old is not None and group:
            deliver_old_ring(old=old, group=group, new_ring_id=new.ring_id, out=out, emit=self._emit)
            self.stats.bump(self.stats.configurations, ConfigKind.TRANSITIONAL.value)
        self.reassembler.reset()
        out.append(ConfigChange(kind=ConfigKind.REGULAR, ring_id=new.ring_id, members=new.members,
                                votes=tuple(self.entries[m] for m in new.members)))
        self.stats.bump(self.stats.configurations, ConfigKind.REGULAR.value)
        self.ring = new
        self.new_ring = None
        self.recovery = None
        self.stats.ring_seq = new.ring_id.seq
        self._count_entry(State.OPERATIONAL, reason)

    # --- Sending tokens -------------------------------------------------------------------

    def _forward(self, dest: str, msg: Message, out: list) -> None:
        if dest == self.name:
            self._self_msg = msg  # a ring of one: handled at the next Tick (now)
            self._last_sent = None
            self._retransmit_at = math.inf
            return
        out.append(SendTo(dest=dest, msg=msg))
        self._last_sent = (dest, msg)
        self._last_sent_at = self._now
        self._unanswered = 0
        self._retransmit_at = self._now + self._token_retransmit_after(msg)

    def _token_retransmit_after(self, token: Message) -> float:
        """How long a forwarded ``token`` (ring or commit token) may go without a sign of
        progress before we resend it: RETRANSMIT_ROTATIONS rotations of its ring at the
        fastest recent time per hop, within [token_retransmit_min_s, token_retransmit_s].

        The fastest, not the mean: rotations slowed by a loss elsewhere or by a held token
        must not slow the resend of the next loss. A resend that was not needed costs a
        duplicate token, which the successor drops (by token_seq) and acknowledges.
        """
        cfg = self.config
        longest = cfg.token_retransmit_s
        hops = self._hop_s
        if len(hops) < HOPS_BEFORE_ADAPTING:
            return longest
        if type(token) is CommitToken:
            members = len(token.members)
        else:
            ring = self.new_ring if self.state is State.RECOVERY else self.ring
            members = len(ring.members) if ring is not None else 1
        after = RETRANSMIT_ROTATIONS * members * min(hops)
        shortest = min(cfg.token_retransmit_min_s, longest)
        if after < shortest:
            return shortest
        return after if after < longest else longest

    def _send_join(self, out: list) -> None:
        out.append(Broadcast(msg=self.membership.join(self.highest_ring_seq,
                                                      held=self.flaps.remaining(self._now))))
        self.stats.join_tx += 1
        self._join_at = self._now + self.config.join_s

    def _persist(self, seq: int, out: list) -> None:
        if seq > self.highest_ring_seq:
            self.highest_ring_seq = seq
        if seq > self.persisted_ring_seq:
            self.persisted_ring_seq = seq
            out.append(PersistRingSeq(seq=seq))

    # --- Timers ---------------------------------------------------------------------------

    def _on_tick(self, out: list) -> None:
        now = self._now
        for node in self.flaps.released(now):
            self._on_peer_alive(node, out)  # stable again: welcome it back
        msg = self._self_msg
        if msg is not None:
            self._self_msg = None
            self._dispatch[type(msg)](msg, self.name, out)
        if self._held is None:
            self._hold_until = math.inf
        elif now >= self._hold_until:
            self._release_hold(out)
        if now >= self._retransmit_at and self._last_sent is None:
            self._retransmit_at = math.inf  # nothing to resend: never spin on a stale deadline
        if now >= self._retransmit_at and self._last_sent is not None:
            dest, last = self._last_sent
            out.append(SendTo(dest=dest, msg=last))
            self.stats.token_retx += 1
            self._unanswered += 1
            self._retransmit_at = now + self._token_retransmit_after(last)
        if now >= self._token_loss_at:
            self.stats.bump(self.stats.token_lost, self.state.name)
            self._enter_gather(Reason.TOKEN_LOSS, out)
            return
        if self.state is not State.GATHER:
            self._join_at = self._consensus_at = math.inf
        else:
            if now >= self._consensus_at:
                self._consensus_timeout(out)
            elif now >= self._join_at:
                self._send_join(out)

    # --- Tokens ---------------------------------------------------------------------------

    def _on_token(self, token: Token, sender: str, out: list) -> None:
        state = self.state
        if state is State.OPERATIONAL:
            ring = self.ring
        elif state is State.RECOVERY:
            ring = self.new_ring
        else:
            return
        assert ring is not None
        if token.ring_id != ring.ring_id:
            self.stats.foreign_rx += 1
            return
        if token.token_seq <= ring.last_token_seq or self._held is not None:
            self.stats.token_dup_rx += 1
            if sender != self.name:
                out.append(SendTo(dest=sender, msg=TokenAck(ring_id=token.ring_id,
                                                            token_seq=token.token_seq)))
            return
        self._holder = None
        self._token_loss_at = self._now + self.token_timeout(len(ring.members))
        self._retransmit_at = math.inf
        self._last_sent = None
        if state is State.RECOVERY:
            install = token.install
            if ring.is_rep and not token.retrans_flg and token.aru == token.seq:
                install += 1
            if install < 1:
                self.stats.token_rx += 1
                assert self.recovery is not None
                result = ring.visit(token, self.recovery, out, recovery=True, install=install)
                self.stats.recovery_tx += result.sent
                self._forward(ring.next_member, result.token, out)
                if result.failed_to_receive:
                    # The recovery exchange cannot finish while we miss its datagrams; no
                    # member can have installed yet (the aru we hold down blocks install).
                    self._failed_to_receive(out)
                return
            self._enter_operational(Reason.RECOVERY_DONE, out)
            ring = self.ring
            assert ring is not None
            token = Token(ring_id=token.ring_id, token_seq=token.token_seq, seq=token.seq,
                          aru=token.aru, aru_id=token.aru_id, rtr=token.rtr, fcc=token.fcc,
                          backlog=token.backlog, retrans_flg=False, install=install)
        # Only the would-be holder counts quiet rotations: any other member becomes one by
        # sending, which restarts the count anyway.
        if (not self._releasing and ring.holds_idle_token(token)
                and ring.idle(token, len(self.queue))):
            self._held_since = self._now
            self._hold(token, out)
            return
        if self._releasing:
            self.stats.token_hold_s.observe(self._now - self._held_since)
        self._operational_visit(token, out)

    def _operational_visit(self, token: Token, out: list) -> None:
        ring = self.ring
        assert ring is not None
        self.stats.token_rx += 1
        if self._last_visit_at is not None:
            rotation = self._now - self._last_visit_at
            self.stats.token_rotation_s.observe(rotation)
            self._hop_s.append(rotation / len(ring.members))
        self._last_visit_at = self._now
        self._wake_pending = False  # this visit sends (or claims) what we had
        mark = len(out)
        throttle = self.readers_behind
        if throttle:
            self.stats.throttled_visits += 1
        result = ring.visit(token, self._app, out, recovery=False, install=token.install,
                            throttle=throttle)
        if self._deaf and len(ring.members) == 1:
            # Nobody needs our singleton's datagrams; to others they are a foreign ring to
            # merge with, and merging a processor that cannot hear them stalls their ring.
            out[mark:] = [e for e in out[mark:] if type(e) is not Broadcast]
        self.stats.token_tx += 1
        self._forward(self._release_to or ring.next_member, result.token, out)
        ring.deliver(out, self._emit)
        ring.collect()
        if result.failed_to_receive:
            self._failed_to_receive(out)

    def _failed_to_receive(self, out: list) -> None:
        """We hold the aru down rotation after rotation: multicast does not reach us.

        As corosync does, give up on everyone and form a singleton ring at once. Our Join
        lists all of them as failed, so by the mutual-fail rule they drop us instead of
        taking us into their next ring (where we would stall their recovery the same way).
        Until we hear a multicast datagram again we do not advertise the singleton ring;
        once multicast works we hear theirs and merge back.
        """
        self.stats.fail_to_recv += 1
        self._deaf = True
        others = set(self.ring.members) if self.ring is not None else set()
        if self.commit is not None:
            others |= set(self.commit.members)
        others.discard(self.name)
        self._enter_gather(Reason.FAILED_TO_RECEIVE, out, fail=others)

    # --- Application and gossip hints -----------------------------------------------------

    def _on_publish(self, event: Publish, out: list) -> None:
        refused = self.queue.offer(event.msg_id, event.payload, event.safe)
        if refused is not None:
            self.stats.app_refused += 1
            out.append(SendRefused(msg_id=event.msg_id, reason=refused))
            return
        self.stats.app_sent += 1
        self._wake_held_token(out)

    def _on_readers_behind(self, event: ReadersBehind, out: list) -> None:
        if event.behind == self.readers_behind:
            return
        self.readers_behind = event.behind
        # Either way the ring should hear of it at once, not at the held token's release:
        # our visit claims the window (behind) or gives it back (caught up).
        self._wake_held_token(out)

    def _wake_held_token(self, out: list) -> None:
        """We have something for the ring: get an idle ring's held token moving."""
        if self.state is not State.OPERATIONAL:
            return
        if self._held is not None:
            self.stats.hold_cancels += 1
            self._release_hold(out)
        elif self._holder is not None and self.ring is not None:
            # Ask the holder alone, so that one send does not wake every member.
            out.append(SendTo(dest=self._holder, msg=TokenHoldCancel(ring_id=self.ring.ring_id)))
            self._holder = None
        else:
            self._wake_pending = True
