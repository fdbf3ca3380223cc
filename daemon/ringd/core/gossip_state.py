"""State and update rules shared by :class:`ringd.core.gossip.GossipCore` (split out to
keep each module small): the member/suspicion/queue state, how piggybacked and merged
updates change it (precedence from ``members.py``), refutation, and the send helpers."""

from __future__ import annotations

import heapq
import itertools
import math
from collections import Counter, OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from random import Random

from ringd.config import GossipConfig
from ringd.core.awareness import Awareness
from ringd.core.broadcasts import BroadcastQueue, estimate_size, retransmit_limit
from ringd.core.events import (
    Effect,
    Log,
    MemberChanged,
    Multicast,
    Send,
    UserEventDelivered,
)
from ringd.core.members import (
    GONE_STATES,
    LIVE_STATES,
    Member,
    MemberTable,
    alive_applies,
    dead_applies,
    left_applies,
    must_refute,
    suspect_applies,
)
from ringd.core.suspicion import Suspicion, expected_confirmations, suspicion_timeout
from ringd.messages import (
    Address,
    Alive,
    Announce,
    Dead,
    Left,
    MemberRecord,
    MemberState,
    Message,
    NameConflict,
    PushPull,
    Suspect,
    Update,
    UserEvent,
)

PACKET_RESERVE_BYTES = 256  # envelope, header and fixed fields around the piggyback
PIGGYBACK_ITEM_BYTES = 3  # per-item array/tag overhead on top of size_of()
RELAYS_LEN_MAX = 1024  # indirect probes we run for others at once
SEEN_EVENTS_LEN_MAX = 4096  # (origin, ltime) of delivered user events remembered
GOSSIP_TO_DEAD_S = 15.0  # keep gossiping to the recently dead so a false death is refuted
ANNOUNCE_SLOWDOWN = 10  # re-announce this much less often once we know someone
NACK_FRACTION = 0.8  # helpers nack before the prober's own wait ends
LEAVE_PROBE_INTERVALS = 3  # LeaveDone at the latest after this many probe intervals
PUSH_PULL_SCALE_THRESHOLD = 32  # members above which push-pull slows down (memberlist)


@dataclass(frozen=True, slots=True)
class MemberView:
    """A snapshot of one member for callers (the runtime, the control socket)."""

    name: str
    state: MemberState
    incarnation: int
    address: Address
    tags: dict[str, str]
    state_since: float


@dataclass(slots=True)
class GossipStats:
    """Plain counters; metrics read them at scrape time."""

    probes_sent: int = 0
    probes_ack: int = 0
    probes_indirect_ack: int = 0
    probes_failed: int = 0
    ping_reqs_sent: int = 0
    suspicions_raised: int = 0  # by our own failed probes
    suspicions_learned: int = 0  # members we marked suspect because others said so
    suspicions_refuted: int = 0  # about us
    members_confirmed_dead: int = 0  # suspicion timed out here
    members_dead: int = 0  # transitions to dead (ours or learned)
    members_left: int = 0
    members_reaped: int = 0
    members_dropped: int = 0  # member table full
    nacks_sent: int = 0
    nacks_received: int = 0
    relays_dropped: int = 0
    push_pulls_sent: int = 0
    push_pulls_received: int = 0
    gossip_rounds: int = 0
    announces_sent: int = 0
    name_conflicts_sent: int = 0
    name_conflicts_ignored: int = 0  # a younger daemon's NameConflict for our own name
    user_events_delivered: int = 0
    broadcasts_dropped: int = 0
    broadcast_queue_len: int = 0
    health_score: int = 0
    msgs_sent: Counter[str] = field(default_factory=Counter)
    msgs_received: Counter[str] = field(default_factory=Counter)


@dataclass(slots=True)
class _Probe:
    seq: int
    target: str
    address: Address
    incarnation: int
    timeout_at: float
    end_at: float
    helpers: int = 0
    indirect_sent: bool = False
    nacks: set[str] = field(default_factory=set)


@dataclass(slots=True)
class _Relay:
    requester: Address
    requester_seq: int
    nack_at: float
    expires_at: float
    nacked: bool = False


@dataclass(slots=True)
class _Leave:
    update: Left
    pending: set[Address]
    deadline: float
    next_round_at: float
    done: bool = False

class GossipState:
    """Everything but the schedules: :class:`GossipCore` adds inputs, timers and probes."""

    def __init__(
        self,
        *,
        name: str,
        address: Address,
        config: GossipConfig,
        rng: Random,
        tags: dict[str, str] | None = None,
        seeds: Sequence[Address] = (),
        incarnation: int = 0,
        multicast: bool = True,
        size_of: Callable[[Message], int] | None = None,
        datagram_bytes_max: int = 65000,
    ) -> None:
        self.name = name
        self.address = address
        self.config = config
        self.incarnation = incarnation
        self.stats = GossipStats()
        self._rng = rng
        self._tags = dict(tags or {})
        self._seeds = [s for s in seeds if s != address]
        self._multicast = multicast
        measure = size_of or estimate_size
        self._size_of: Callable[[Message], int] = lambda m: measure(m) + PIGGYBACK_ITEM_BYTES
        self._budget_bytes = max(0, datagram_bytes_max - PACKET_RESERVE_BYTES)
        self._members = MemberTable()
        self._members.add(Member(name, MemberState.ALIVE, incarnation, address, dict(self._tags)))
        self._awareness = Awareness(config.awareness_max)
        self._queue = BroadcastQueue(self._size_of)
        self._suspicions: dict[str, Suspicion] = {}
        self._probe_order: list[str] = []
        self._probe_pos = 0
        self._probe: _Probe | None = None
        self._relays: dict[int, _Relay] = {}
        self._seq = itertools.count(1)
        self._reap_heap: list[tuple[float, str]] = []
        self._ltime = 0
        self._seen_events: OrderedDict[tuple[str, int], None] = OrderedDict()
        self._leave: _Leave | None = None
        self._started = False
        self._started_at = 0.0  # when Start came (our uptime settles name conflicts)
        self._stopped = False  # after Fatal
        self._next_probe_at = math.inf
        self._next_gossip_at = math.inf
        self._next_push_pull_at = math.inf
        self._next_announce_at = math.inf
        self._out: list[Effect] = []

    # --- updates (piggybacked or merged) ------------------------------------------------

    def _apply_piggyback(self, updates: tuple[Update, ...], now: float) -> None:
        for u in updates:
            match u:
                case Alive():
                    self._on_alive(u, now)
                case Suspect():
                    self._on_suspect(u, now)
                case Dead():
                    self._on_dead(u, now)
                case Left():
                    self._on_left(u, now)
                case UserEvent():
                    self._on_user_event(u, now)

    def _name_conflict(self, node: str, holder: Address, now: float) -> NameConflict:
        """What we tell a claimant of ``node``'s name: with our uptime when the name is ours
        (the older of two daemons of one name keeps it), else no age (our word is final)."""
        uptime = now - self._started_at if node == self.name else -1.0
        return NameConflict(node=node, holder_address=holder, holder_uptime_s=uptime)

    def _on_alive(self, a: Alive, now: float) -> None:
        if a.node == self.name:
            if self._leave is not None:
                return  # leaving: our Left stands, nothing to refute
            if a.address != self.address:
                self.stats.name_conflicts_sent += 1
                self._send(a.address, self._name_conflict(self.name, self.address, now))
                self._log("warning", "name conflict", node=self.name, claimant=str(a.address))
                if must_refute(self.incarnation, a.incarnation):
                    self._refute(a.incarnation, now)  # reclaim our address in everyone's view
            elif a.incarnation > self.incarnation or (
                a.incarnation == self.incarnation and a.tags != self._tags
            ):
                self._refute(a.incarnation, now)  # a previous life of ours
            return
        m = self._members.get(a.node)
        if not alive_applies(m, a.incarnation):
            return
        if m is None:
            if self._members.full():
                self.stats.members_dropped += 1
                return
            m = Member(a.node, MemberState.ALIVE, a.incarnation, a.address, dict(a.tags), now)
            self._members.add(m)
            self._add_probe_target(a.node)
            self._emit_changed(m, None)
        else:
            old = m.state
            self._suspicions.pop(a.node, None)
            m.incarnation, m.address, m.tags = a.incarnation, a.address, dict(a.tags)
            if old is not MemberState.ALIVE:
                self._members.set_state(m, MemberState.ALIVE)
                m.state_since = now
                if old in GONE_STATES:
                    self._add_probe_target(a.node)
            self._emit_changed(m, old)
        self._queue_update(a, now)

    def _on_suspect(self, s: Suspect, now: float) -> None:
        if s.node == self.name:
            if self._leave is None and must_refute(self.incarnation, s.incarnation):
                self.stats.suspicions_refuted += 1
                self._refute(s.incarnation, now)
            elif self._leave is None:
                self._reassert(now)
            return
        m = self._members.get(s.node)
        if not suspect_applies(m, s.incarnation):
            return
        assert m is not None
        if m.state is MemberState.SUSPECT:
            susp = self._suspicions.get(s.node)
            if susp is not None and susp.confirm(s.source):
                self._queue_update(s, now)  # an independent confirmation is news
            if s.incarnation > m.incarnation:
                m.incarnation = s.incarnation
                self._emit_changed(m, m.state)
            return
        m.incarnation = s.incarnation
        self._members.set_state(m, MemberState.SUSPECT)
        m.state_since = now
        cfg = self.config
        n = self._live_count()
        min_s = suspicion_timeout(cfg.suspicion_mult, n, cfg.probe_interval_s)
        self._suspicions[s.node] = Suspicion(
            source=s.source,
            k=expected_confirmations(cfg.suspicion_confirmations, n),
            min_s=min_s,
            max_s=cfg.suspicion_max_mult * min_s,
            start=now,
        )
        if s.source == self.name:
            self.stats.suspicions_raised += 1
        else:
            self.stats.suspicions_learned += 1
        self._emit_changed(m, MemberState.ALIVE)
        self._log("info", "member suspected", node=s.node, incarnation=s.incarnation, by=s.source)
        self._queue_update(s, now)

    def _on_dead(self, d: Dead, now: float) -> None:
        if d.node == self.name:
            if self._leave is None and must_refute(self.incarnation, d.incarnation):
                self.stats.suspicions_refuted += 1
                self._refute(d.incarnation, now)
            elif self._leave is None:
                self._reassert(now)
            return
        m = self._members.get(d.node)
        if not dead_applies(m, d.incarnation):
            return
        assert m is not None
        self._make_gone(m, MemberState.DEAD, d.incarnation, now)
        self.stats.members_dead += 1
        self._log("info", "member dead", node=d.node, incarnation=d.incarnation, by=d.source)
        self._queue_update(d, now)

    def _on_left(self, left: Left, now: float) -> None:
        if left.node == self.name:
            if self._leave is None and must_refute(self.incarnation, left.incarnation):
                self._refute(left.incarnation, now)
            return
        m = self._members.get(left.node)
        if not left_applies(m, left.incarnation):
            return
        assert m is not None
        self._make_gone(m, MemberState.LEFT, left.incarnation, now)
        self.stats.members_left += 1
        self._queue_update(left, now)

    def _on_user_event(self, ev: UserEvent, now: float) -> None:
        self._ltime = max(self._ltime, ev.ltime)
        key = (ev.origin, ev.ltime)
        if key in self._seen_events:
            return
        self._seen_events[key] = None
        if len(self._seen_events) > SEEN_EVENTS_LEN_MAX:
            self._seen_events.popitem(last=False)
        self.stats.user_events_delivered += 1
        self._out.append(UserEventDelivered(origin=ev.origin, ltime=ev.ltime, name=ev.name, payload=ev.payload))
        self._queue_update(ev, now)

    def _make_gone(self, m: Member, state: MemberState, incarnation: int, now: float) -> None:
        old = m.state
        self._suspicions.pop(m.name, None)
        if self._probe is not None and self._probe.target == m.name:
            self._probe = None
        m.incarnation = incarnation
        self._members.set_state(m, state)
        m.state_since = now
        heapq.heappush(self._reap_heap, (now + self.config.reap_dead_s, m.name))
        self._emit_changed(m, old)

    def _refute(self, seen_incarnation: int, now: float) -> None:
        """Someone holds an outdated or wrong view of us: outbid it."""
        self._awareness.apply_delta(1)
        self._log("info", "refuting", incarnation=seen_incarnation + 1, health_score=self._awareness.score)
        self._bump_incarnation(max(self.incarnation, seen_incarnation) + 1, now)

    def _reassert(self, now: float) -> None:
        """A stale claim about us (an older incarnation) still circulates: whoever sent it
        missed our refutation (its retransmissions may all have been lost), so that news
        goes round again. No new incarnation: the current one already outbids the claim."""
        self._queue_update(self._own_alive(), now)

    def _bump_incarnation(self, incarnation: int, now: float) -> None:
        self.incarnation = incarnation
        me = self._me()
        me.incarnation, me.tags = incarnation, dict(self._tags)
        self._emit_changed(me, me.state)
        self._queue_update(self._own_alive(), now)

    # --- helpers ------------------------------------------------------------------------

    def _me(self) -> Member:
        me = self._members.get(self.name)
        assert me is not None
        return me

    def _own_alive(self) -> Alive:
        return Alive(node=self.name, incarnation=self.incarnation, address=self.address, tags=dict(self._tags))

    def _live_count(self) -> int:
        return self._members.count(LIVE_STATES)

    def _push_pull_interval_s(self) -> float:
        n = self._live_count()
        scale = 1
        if n > PUSH_PULL_SCALE_THRESHOLD:
            scale = math.ceil(math.log2(n) - math.log2(PUSH_PULL_SCALE_THRESHOLD)) + 1
        return self.config.push_pull_interval_s * scale

    def _queue_update(self, update: Update, now: float) -> None:
        if not self._queue:
            self._next_gossip_at = now  # first round at once; then every gossip interval
        self._queue.queue(update)

    def _piggyback(self, first: tuple[Update, ...] = ()) -> tuple[Update, ...]:
        budget = self._budget_bytes - sum(self._size_of(u) for u in first)
        limit = retransmit_limit(self.config.retransmit_mult, self._live_count())
        return first + tuple(self._queue.take(budget, limit, exclude=first))

    def _records(self) -> tuple[MemberRecord, ...]:
        """Our whole view for a push-pull (ourselves first), cut to the datagram budget."""
        budget = self._budget_bytes
        out: list[MemberRecord] = []
        me = self._me()
        for m in itertools.chain((me,), (m for m in self._members if m is not me)):
            rec = MemberRecord(node=m.name, incarnation=m.incarnation, state=int(m.state), address=m.address, tags=dict(m.tags))
            budget -= self._size_of(rec)
            if budget < 0:
                break
            out.append(rec)
        return tuple(out)

    def _send_push_pull(self, dest: Address, *, join: bool = False, reply: bool = False) -> None:
        if not reply:
            self.stats.push_pulls_sent += 1
        self._send(dest, PushPull(members=self._records(), reply=reply, join=join))

    def _announce(self) -> None:
        self.stats.announces_sent += 1
        msg = Announce(address=self.address, incarnation=self.incarnation,
                       alone=self._live_count() <= 1)
        self.stats.msgs_sent[type(msg).__name__] += 1
        self._out.append(Multicast(msg=msg))

    def _send(self, dest: Address, msg: Message) -> None:
        self.stats.msgs_sent[type(msg).__name__] += 1
        leave = self._leave
        if leave is not None and not leave.done and leave.update in getattr(msg, "piggyback", ()):
            leave.pending.discard(dest)
        self._out.append(Send(dest=dest, msg=msg))

    def _emit_changed(self, m: Member, old: MemberState | None) -> None:
        self._out.append(
            MemberChanged(
                node=m.name,
                old_state=None if old is None else old.name,
                new_state=m.state.name,
                incarnation=m.incarnation,
                address=m.address,
                tags=dict(m.tags),
            )
        )

    def _log(self, level: str, text: str, **fields: object) -> None:
        self._out.append(Log(level=level, text=text, fields=dict(fields)))
