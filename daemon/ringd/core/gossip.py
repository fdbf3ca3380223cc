"""SWIM + Lifeguard gossip membership, sans-IO: ``handle(event, now) -> effects``.

This module is the glue: it dispatches messages by type, runs the probe / gossip /
push-pull / announce schedules and keeps the timers as data. The rules live next door:
``gossip_state.py`` (state, update handling, refutation, send helpers), ``members.py`` (precedence), ``suspicion.py`` (Lifeguard suspicion), ``awareness.py``
(local health), ``broadcasts.py`` (piggyback queue).

Behaviour worth knowing (DESIGN.md §2):

* Probes go round-robin over a shuffled list of live members, one per (health-scaled)
  probe interval; no direct ack within the probe timeout → PingReq to up to
  ``indirect_checks`` helpers; no ack by the end of the interval → Suspect.
* Gossip rounds run only while the broadcast queue is non-empty, so an idle cluster wakes
  up once per probe interval, not once per gossip interval.
* Discovery: an Announce from a node we do not know (or know as gone / stale) is answered
  with a join PushPull *request* carrying our whole state; the newcomer learns everyone
  from it and its reply tells us its tags. A join PushPull from a newcomer is merged and
  answered the same way. So a joiner is known both ways within one round trip.
* Dead and left members are forgotten ``reap_dead_s`` after they went; reaping emits no
  effect (the member simply disappears from :meth:`GossipCore.members`).
* Our own user events are delivered to us too (as Serf does).
"""

from __future__ import annotations

import heapq
import math

from ringd.core.events import (
    Effect,
    Fatal,
    Input,
    LeaveCluster,
    LeaveDone,
    Received,
    SendUserEvent,
    SetTags,
    Start,
    Tick,
)
from ringd.core.gossip_state import (
    ANNOUNCE_SLOWDOWN,
    GOSSIP_TO_DEAD_S,
    LEAVE_PROBE_INTERVALS,
    NACK_FRACTION,
    RELAYS_LEN_MAX,
    GossipState,
    GossipStats,
    MemberView,
    _Leave,
    _Probe,
    _Relay,
)
from ringd.core.members import (
    GONE_STATES,
    LIVE_STATES,
    Member,
    conflicting_claim,
)
from ringd.messages import (
    Ack,
    Address,
    Alive,
    Announce,
    Dead,
    Gossip,
    Left,
    MemberRecord,
    MemberState,
    Nack,
    NameConflict,
    Ping,
    PingReq,
    PushPull,
    Suspect,
    Update,
    UserEvent,
)

__all__ = ["GossipCore", "GossipStats", "MemberView"]


class GossipCore(GossipState):
    """One member's SWIM/Lifeguard state machine. Only the driver task calls it.

    Constructor: see :class:`GossipState` (``name, address, config, rng, tags, seeds,
    incarnation, multicast, size_of, datagram_bytes_max``).
    """

    # --- public API ---------------------------------------------------------------------

    @property
    def health_score(self) -> int:
        """Lifeguard local health score (0 = healthy)."""
        return self._awareness.score

    @property
    def broadcast_queue_len(self) -> int:
        return len(self._queue)

    @property
    def tags(self) -> dict[str, str]:
        return dict(self._tags)

    def members(self) -> list[MemberView]:
        """Every member we know, ourselves included."""
        return [
            MemberView(m.name, m.state, m.incarnation, m.address, dict(m.tags), m.state_since)
            for m in self._members
        ]

    def handle(self, event: Input, now: float) -> list[Effect]:
        """Apply one input at time ``now``; return the effects to execute, in order."""
        if self._stopped:
            return []
        self._out = out = []
        match event:
            case Received():
                self._on_received(event, now)
            case Tick():
                pass  # timers run below after every input
            case Start():
                self._start(now)
            case LeaveCluster():
                self._start_leave(now)
            case SetTags(tags=tags):
                self._set_tags(tags, now)
            case SendUserEvent(name=ev_name, payload=payload):
                self._send_user_event(ev_name, payload, now)
        if self._started and not self._stopped:
            self._run_timers(now)
        self.stats.broadcast_queue_len = len(self._queue)
        self.stats.health_score = self._awareness.score
        self.stats.broadcasts_dropped = self._queue.dropped
        return out

    def next_deadline(self) -> float:
        """Absolute time of the next timer (``math.inf`` if none). The gossip timer counts
        only while there is something to gossip, so an idle cluster sleeps."""
        if self._stopped or not self._started:
            return math.inf
        times = [self._next_push_pull_at, self._next_announce_at]
        if self._leave is None:
            times.append(self._next_probe_at)
        elif not self._leave.done:
            times.append(min(self._leave.next_round_at, self._leave.deadline))
        if self._probe is not None:
            times.append(self._probe.end_at if self._probe.indirect_sent else self._probe.timeout_at)
        if self._queue:
            times.append(self._next_gossip_at)
        times.extend(s.deadline for s in self._suspicions.values())
        times.extend(r.expires_at if r.nacked else r.nack_at for r in self._relays.values())
        if self._reap_heap:
            times.append(self._reap_heap[0][0])
        return min(times)

    # --- inputs -------------------------------------------------------------------------

    def _start(self, now: float) -> None:
        if self._started:
            return
        self._started = True
        self._started_at = now
        me = self._me()
        me.state_since = now
        self._emit_changed(me, None)
        self._queue_update(self._own_alive(), now)
        if self._multicast:
            self._announce()
        for seed in self._seeds:
            self._send_push_pull(seed, join=True)
        cfg = self.config
        # jitter the first probe so daemons started together do not probe in lockstep
        self._next_probe_at = now + self._rng.uniform(0.0, cfg.probe_interval_s)
        self._next_push_pull_at = now + self._push_pull_interval_s()
        self._next_announce_at = now + cfg.announce_interval_s

    def _set_tags(self, tags: dict[str, str], now: float) -> None:
        self._tags = dict(tags)
        self._bump_incarnation(self.incarnation + 1, now)

    def _send_user_event(self, ev_name: str, payload: bytes, now: float) -> None:
        self._ltime += 1
        self._on_user_event(UserEvent(origin=self.name, ltime=self._ltime, name=ev_name, payload=payload), now)

    def _start_leave(self, now: float) -> None:
        if self._leave is not None:
            return
        self.incarnation += 1
        left = Left(node=self.name, incarnation=self.incarnation)
        me = self._me()
        old = me.state
        me.incarnation = self.incarnation
        self._members.set_state(me, MemberState.LEFT)
        me.state_since = now
        self._emit_changed(me, old)
        pending = {m.address for m in self._members if m.state in LIVE_STATES and m.name != self.name}
        deadline = now + LEAVE_PROBE_INTERVALS * self.config.probe_interval_s
        self._leave = _Leave(left, pending, deadline, now)
        self._probe = None
        self._queue_update(left, now)
        self._log("info", "leaving the cluster", incarnation=self.incarnation, members=len(pending))

    # --- received messages --------------------------------------------------------------

    def _on_received(self, event: Received, now: float) -> None:
        msg, sender, source = event.msg, event.sender, event.source
        if sender == self.name and source == self.address:
            return  # our own multicast, looped back
        self.stats.msgs_received[type(msg).__name__] += 1
        match msg:
            case Ping():
                self._apply_piggyback(msg.piggyback, now)
                if msg.target == self.name:
                    self._send(source, Ack(seq=msg.seq, piggyback=self._piggyback(
                        self._tell_about_itself(sender))))
            case PingReq():
                self._apply_piggyback(msg.piggyback, now)
                self._on_ping_req(msg, source, now)
            case Ack():
                self._apply_piggyback(msg.piggyback, now)
                self._on_ack(msg, sender)
            case Nack():
                p = self._probe
                if p is not None and msg.seq == p.seq and sender not in p.nacks:
                    p.nacks.add(sender)
                    self.stats.nacks_received += 1
            case Gossip():
                self._apply_piggyback(msg.piggyback, now)
            case PushPull():
                self._on_push_pull(msg, sender, source, now)
            case Announce():
                self._on_announce(msg, sender, source, now)
            case NameConflict():
                if msg.node == self.name:
                    self._on_name_conflict(msg, now)
            case _:
                pass  # not a gossip message (Totem and others are routed elsewhere)

    def _tell_about_itself(self, sender: str) -> tuple[Suspect | Dead, ...]:
        """A member that pings us while we hold it suspect or dead learns so in our ack, so
        it refutes at once. Gossip alone may never carry that news to it: whoever declared
        it dead stops probing it, and the piggyback's retransmissions may have been spent
        while the network was lossy (a live member then stays dead to us for good)."""
        m = self._members.get(sender)
        if m is None or m.state is MemberState.ALIVE or m.state is MemberState.LEFT:
            return ()
        if m.state is MemberState.DEAD:
            return (Dead(node=sender, incarnation=m.incarnation, source=self.name),)
        return (Suspect(node=sender, incarnation=m.incarnation, source=self.name),)

    def _on_ping_req(self, msg: PingReq, source: Address, now: float) -> None:
        if len(self._relays) >= RELAYS_LEN_MAX:
            self.stats.relays_dropped += 1
            return
        seq = next(self._seq)
        cfg = self.config
        self._relays[seq] = _Relay(
            requester=source,
            requester_seq=msg.seq,
            nack_at=now + NACK_FRACTION * cfg.probe_timeout_s,
            expires_at=now + cfg.probe_interval_s,
        )
        self._send(msg.target_address, Ping(seq=seq, target=msg.target, piggyback=self._piggyback()))

    def _on_ack(self, msg: Ack, sender: str) -> None:
        relay = self._relays.pop(msg.seq, None)
        if relay is not None:
            self._send(relay.requester, Ack(seq=relay.requester_seq, piggyback=self._piggyback()))
            return
        p = self._probe
        if p is None or msg.seq != p.seq:
            return  # late or foreign ack
        if sender == p.target:
            self.stats.probes_ack += 1
        else:
            self.stats.probes_indirect_ack += 1
        self._awareness.apply_delta(-1)
        self._probe = None

    def _on_push_pull(self, msg: PushPull, sender: str, source: Address, now: float) -> None:
        self.stats.push_pulls_received += 1
        own = next((r for r in msg.members if r.node == sender), None)
        if own is not None and self._conflicting(sender, own.address, own.incarnation, source, now):
            return
        for rec in msg.members:
            self._merge_record(rec, sender, now)
        if not msg.reply:
            self._send_push_pull(source, reply=True)

    def _merge_record(self, rec: MemberRecord, sender: str, now: float) -> None:
        try:
            state = MemberState(rec.state)
        except ValueError:
            return
        if state is MemberState.ALIVE:
            self._on_alive(Alive(node=rec.node, incarnation=rec.incarnation, address=rec.address, tags=rec.tags), now)
        elif state is MemberState.LEFT:
            self._on_left(Left(node=rec.node, incarnation=rec.incarnation), now)
        else:
            # A remote "dead" is only a suspicion here: we check it ourselves (memberlist
            # does the same), so one stale view cannot kill a member we can reach.
            self._on_suspect(Suspect(node=rec.node, incarnation=rec.incarnation, source=sender), now)

    def _on_announce(self, msg: Announce, sender: str, source: Address, now: float) -> None:
        if self._conflicting(sender, msg.address, msg.incarnation, source, now):
            return
        m = self._members.get(sender)
        if (
            m is None
            or m.state is not MemberState.ALIVE
            or m.address != msg.address
            or msg.incarnation < m.incarnation
            or msg.alone
        ):
            self._send_push_pull(msg.address, join=True)

    def _on_name_conflict(self, msg: NameConflict, now: float) -> None:
        """Another daemon says it holds our name. Two daemons started under one name each
        hear the other's claim and tell each other at once; the one that ran longer keeps
        the name, else both would exit. A third party's word (no age) is final."""
        uptime = now - self._started_at
        if 0.0 <= msg.holder_uptime_s < uptime:
            self.stats.name_conflicts_ignored += 1
            self._log("warning", "name conflict: the other daemon is younger and yields",
                      node=self.name, claimant=str(msg.holder_address),
                      its_uptime_s=round(msg.holder_uptime_s, 3), our_uptime_s=round(uptime, 3))
            return
        reason = f"name '{self.name}' is already used by a live daemon at {msg.holder_address}"
        self._out.append(Fatal(reason=reason))
        self._stopped = True

    def _conflicting(self, claimant: str, address: Address, incarnation: int, source: Address,
                     now: float) -> bool:
        """A direct claim of a name (Announce, PushPull) that a live member holds at another
        address: tell the claimant (NameConflict) and ignore the claim."""
        if claimant == self.name:
            if address == self.address and source == self.address:
                return False
            holder = self.address
        else:
            m = self._members.get(claimant)
            if not conflicting_claim(m, address, incarnation):
                return False
            assert m is not None
            holder = m.address
        self.stats.name_conflicts_sent += 1
        self._send(source, self._name_conflict(claimant, holder, now))
        self._log("warning", "name conflict", node=claimant, holder=str(holder), claimant=str(source))
        return True

    # --- timers -------------------------------------------------------------------------

    def _run_timers(self, now: float) -> None:
        self._probe_timers(now)
        for seq, relay in list(self._relays.items()):
            if now >= relay.expires_at:
                del self._relays[seq]
            elif not relay.nacked and now >= relay.nack_at:
                relay.nacked = True
                self.stats.nacks_sent += 1
                self._send(relay.requester, Nack(seq=relay.requester_seq))
        for node, susp in list(self._suspicions.items()):
            if now >= susp.deadline:
                del self._suspicions[node]
                m = self._members.get(node)
                if m is not None and m.state is MemberState.SUSPECT:
                    self.stats.members_confirmed_dead += 1
                    self._on_dead(Dead(node=node, incarnation=m.incarnation, source=self.name), now)
        if self._leave is not None:
            self._leave_timers(now)
        else:
            if now >= self._next_push_pull_at:
                self._next_push_pull_at = now + self._push_pull_interval_s()
                peers = self._members.names((MemberState.ALIVE,), exclude=self.name)
                if peers:
                    target = self._members.get(self._rng.choice(peers))
                    assert target is not None
                    self._send_push_pull(target.address)
            alone = self._live_count() <= 1
            if alone:
                self._next_announce_at = min(self._next_announce_at, now + self.config.announce_interval_s)
            if now >= self._next_announce_at:
                self._next_announce_at = now + self.config.announce_interval_s * (1 if alone else ANNOUNCE_SLOWDOWN)
                self._rediscover()
        if not self._queue:
            self._next_gossip_at = math.inf
        elif now >= self._next_gossip_at:
            self._next_gossip_at = now + self.config.gossip_interval_s
            self._gossip_round(now)
        while self._reap_heap and self._reap_heap[0][0] <= now:
            _, node = heapq.heappop(self._reap_heap)
            m = self._members.get(node)
            if m is not None and m.state in GONE_STATES and m.state_since + self.config.reap_dead_s <= now:
                self._members.remove(node)
                self.stats.members_reaped += 1

    def _probe_timers(self, now: float) -> None:
        p = self._probe
        if p is not None and not p.indirect_sent and now >= p.timeout_at:
            p.indirect_sent = True
            self._send_ping_reqs(p)
        if p is not None and now >= p.end_at:
            self._probe = None
            self._probe_failed(p, now)
        if self._leave is None and self._probe is None and now >= self._next_probe_at:
            self._start_probe(now)

    def _start_probe(self, now: float) -> None:
        cfg = self.config
        interval_s = self._awareness.scale(cfg.probe_interval_s)
        self._next_probe_at = now + interval_s
        target = self._next_probe_target()
        if target is None:
            return
        p = _Probe(
            seq=next(self._seq),
            target=target.name,
            address=target.address,
            incarnation=target.incarnation,
            timeout_at=now + self._awareness.scale(cfg.probe_timeout_s),
            end_at=now + interval_s,
        )
        self._probe = p
        self.stats.probes_sent += 1
        first: tuple[Update, ...] = ()
        if target.state is MemberState.SUSPECT:
            # buddy system: tell the suspect first, so it can refute at once
            first = (Suspect(node=target.name, incarnation=target.incarnation, source=self.name),)
        self._send(target.address, Ping(seq=p.seq, target=target.name, piggyback=self._piggyback(first)))

    def _send_ping_reqs(self, p: _Probe) -> None:
        helpers = self._members.names((MemberState.ALIVE,), exclude=self.name)
        helpers = [h for h in helpers if h != p.target]
        chosen = self._rng.sample(helpers, min(self.config.indirect_checks, len(helpers)))
        p.helpers = len(chosen)
        for name in chosen:
            helper = self._members.get(name)
            assert helper is not None
            self.stats.ping_reqs_sent += 1
            msg = PingReq(seq=p.seq, target=p.target, target_address=p.address, piggyback=self._piggyback())
            self._send(helper.address, msg)

    def _probe_failed(self, p: _Probe, now: float) -> None:
        self.stats.probes_failed += 1
        # Lifeguard: nacks from every helper mean the network and we are fine and the
        # target really is silent; each missing nack (or no helper at all) counts against us.
        self._awareness.apply_delta(p.helpers - len(p.nacks) if p.helpers else 1)
        m = self._members.get(p.target)
        if m is not None and m.state in LIVE_STATES:
            self._on_suspect(Suspect(node=m.name, incarnation=m.incarnation, source=self.name), now)

    def _next_probe_target(self) -> Member | None:
        for _ in range(2):
            while self._probe_pos < len(self._probe_order):
                name = self._probe_order[self._probe_pos]
                self._probe_pos += 1
                m = self._members.get(name)
                if m is not None and m.state in LIVE_STATES and name != self.name:
                    return m
            self._probe_order = self._members.names(LIVE_STATES, exclude=self.name)
            self._rng.shuffle(self._probe_order)
            self._probe_pos = 0
        return None

    def _add_probe_target(self, name: str) -> None:
        if name not in self._probe_order[self._probe_pos:]:
            self._probe_order.insert(self._rng.randint(self._probe_pos, len(self._probe_order)), name)

    def _gossip_round(self, now: float) -> None:
        candidates = [
            m.address
            for m in self._members
            if m.name != self.name
            and (m.state in LIVE_STATES or (m.state is MemberState.DEAD and now - m.state_since < GOSSIP_TO_DEAD_S))
        ]
        if not candidates:
            return
        self.stats.gossip_rounds += 1
        for address in self._rng.sample(candidates, min(self.config.gossip_nodes, len(candidates))):
            piggyback = self._piggyback()
            if not piggyback:
                break
            self._send(address, Gossip(piggyback=piggyback))

    def _leave_timers(self, now: float) -> None:
        leave = self._leave
        assert leave is not None
        if leave.done:
            return
        if leave.pending and now >= leave.next_round_at:
            leave.next_round_at = now + self.config.gossip_interval_s
            pending = sorted(leave.pending, key=str)  # sorted: deterministic for a seeded rng
            for address in self._rng.sample(pending, min(2 * self.config.gossip_nodes, len(pending))):
                self._send(address, Gossip(piggyback=self._piggyback((leave.update,))))
        if not leave.pending or now >= leave.deadline:
            leave.done = True
            self._out.append(LeaveDone())

    def _rediscover(self) -> None:
        """Announce again and retry seeds that are not live members (heals partitions)."""
        if self._multicast:
            self._announce()
        live = {m.address for m in self._members if m.state is MemberState.ALIVE}
        for seed in self._seeds:
            if seed not in live:
                self._send_push_pull(seed, join=True)
