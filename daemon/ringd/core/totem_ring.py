"""Ordering on one ring: the datagram buffer, the token visit, flow control, delivery, GC.

A :class:`Ring` holds everything one configuration needs to order messages: the datagrams
received, keyed by seq; ``my_aru`` (all received up to); the delivery point; and what this
member last put on the token (its flow-control contribution, the aru it forwarded).

The token visit follows corosync's order: answer the retransmission requests, compute the
flow-control budget, multicast new datagrams, add our own gaps to the request list, update
the aru, forward. Delivery happens after the token has left (the caller does it).

Agreed delivery needs every lower seq received. Safe delivery needs every member to have
the datagram: the aru we forwarded and the aru that comes back one rotation later are both
at least its seq (``safe_aru``, the paper's "two successive visits"). A datagram is garbage
collected once it is delivered here and known received by every member.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ringd.config import TotemConfig
from ringd.core.totem_events import Broadcast, Deliver
from ringd.core.totem_packing import Reassembler
from ringd.core.totem_stats import TotemStats
from ringd.totem_messages import Mcast, Recovered, RingId, Token

RTR_ENTRIES_MAX = 64  # seqs one token may ask to be resent (corosync: 30)
RTR_BUDGET_MIN = 4  # retransmissions always allowed per visit, so a full window cannot starve them
OUTSTANDING_WINDOWS_MAX = 4  # new sends stop while seq - aru exceeds this many windows

Entry = Mcast | Recovered  # what a ring orders at a seq


class SendSource:
    """What a token visit multicasts: app datagrams (Operational) or old-ring ones (Recovery)."""

    def backlog(self) -> int:
        raise NotImplementedError

    def make(self, ring_id: RingId, seq: int, me: str) -> Entry | None:
        raise NotImplementedError


@dataclass(slots=True)
class VisitResult:
    """What one token visit did (the caller turns it into effects and timers)."""

    token: Token
    retransmitted: int
    sent: int
    failed_to_receive: bool


class Ring:
    """Ordering state of one configuration, as seen by member ``me``."""

    def __init__(self, *, ring_id: RingId, members: tuple[str, ...], me: str,
                 config: TotemConfig, stats: TotemStats) -> None:
        self.ring_id = ring_id
        self.members = members
        self.me = me
        self.config = config
        self.stats = stats
        index = members.index(me)
        self.next_member = members[(index + 1) % len(members)]
        self.is_rep = index == 0
        self.msgs: dict[int, Entry | object] = {}
        self.my_aru = 0
        self.high_seq = 0
        self.delivered_seq = 0
        self.gc_seq = 0
        self.safe_aru = 0
        self.forwarded_aru = 0
        self.forwarded_seq = -1  # the seq of the token we last forwarded (-1: none yet)
        self.last_token_seq = -1  # highest token_seq processed
        self.my_fcc = 0
        self.my_backlog = 0
        self.idle_visits = 0  # quiet visits in a row, counted while we would hold (see idle)
        self.my_last_seq = 0  # the highest seq we stamped in this ring (0: none)
        self.fail_recv_visits = 0
        self.last_visit_aru = -1

    # --- Receiving ----------------------------------------------------------------------

    def store(self, seq: int, entry: object) -> bool:
        """Keep ``entry`` at ``seq`` unless already held or collected; True if new."""
        msgs = self.msgs
        if seq <= self.gc_seq or seq in msgs:
            return False
        msgs[seq] = entry
        if seq > self.high_seq:
            self.high_seq = seq
        if seq == self.my_aru + 1:
            aru = seq
            while aru + 1 in msgs:
                aru += 1
            self.my_aru = aru
        return True

    def missing(self, upto: int, limit: int) -> list[int]:
        """Seqs in (my_aru, upto] we do not hold, at most ``limit`` of them."""
        msgs = self.msgs
        out: list[int] = []
        seq = self.my_aru + 1
        while seq <= upto and len(out) < limit:
            if seq not in msgs:
                out.append(seq)
            seq += 1
        return out

    # --- The token visit ----------------------------------------------------------------

    def visit(self, token: Token, source: SendSource, out: list, *, recovery: bool,
              install: int, throttle: bool = False) -> VisitResult:
        """Process the token for this ring and return the token to forward.

        ``recovery`` stamps the Recovery flags (``retrans_flg`` is raised while anyone
        sends or misses something); ``install`` is the quiet-rotation count to carry.
        ``throttle`` (our readers are behind) sends nothing new and claims the whole window.
        """
        cfg = self.config
        stats = self.stats
        me = self.me
        if token.seq > self.high_seq:
            self.high_seq = token.seq
        self.last_token_seq = token.token_seq

        # Flow control (paper §3.2, corosync fcc_calculate): our share of the window,
        # counting what the others sent in the last rotation and their backlog.
        fcc_others = max(0, token.fcc - self.my_fcc)
        backlog_others = max(0, token.backlog - self.my_backlog)
        my_backlog = source.backlog()
        allowed = min(cfg.max_messages, cfg.window_size - fcc_others)
        total_backlog = backlog_others + my_backlog
        if my_backlog and total_backlog:
            allowed = min(allowed, -(-cfg.window_size * my_backlog // total_backlog))
        allowed = 0 if throttle else max(0, allowed)

        # Answer retransmission requests; they count against the same budget.
        retx = 0
        rtr: list[int] = []
        if token.rtr:
            budget = max(allowed, RTR_BUDGET_MIN)
            msgs = self.msgs
            everyone_has = self.safe_aru
            for seq in token.rtr:
                if seq <= everyone_has:
                    # Asked for by a member that has since got it (from a late original or
                    # another member's resend). Nobody will answer once all have collected
                    # it, so such a request would ride the token for ever: taking room from
                    # real requests and keeping the ring from ever counting as idle.
                    stats.rtr_dropped += 1
                    continue
                entry = msgs.get(seq)
                if entry is not None and retx < budget and isinstance(entry, Mcast | Recovered) \
                        and entry.ring_id == self.ring_id:
                    out.append(Broadcast(msg=entry))
                    retx += 1
                else:
                    rtr.append(seq)
            stats.mcast_retx += retx

        # New datagrams, stamped with the next seqs.
        seq = token.seq
        budget = allowed - retx
        outstanding_max = token.aru + OUTSTANDING_WINDOWS_MAX * cfg.window_size
        if seq + budget > outstanding_max:
            budget = outstanding_max - seq
        sent = 0
        ring_id = self.ring_id
        while sent < budget:
            entry = source.make(ring_id, seq + 1, me)
            if entry is None:
                break
            seq += 1
            self.store(seq, entry)
            out.append(Broadcast(msg=entry))
            sent += 1
        if sent:
            self.my_last_seq = seq
            self.idle_visits = 0  # the quiet rotations count from what we just sent

        # Ask for what we miss (up to the token's seq).
        room = RTR_ENTRIES_MAX - len(rtr)
        if room > 0 and self.my_aru < seq:
            asked = set(rtr)
            for gap in self.missing(seq, room + len(asked)):
                if gap not in asked:
                    rtr.append(gap)
                    stats.rtr_requested += 1
                    if len(rtr) >= RTR_ENTRIES_MAX:
                        break

        # aru (paper §3.1): lowered by anyone behind, raised only by who lowered it.
        my_aru = self.my_aru
        aru, aru_id = token.aru, token.aru_id
        # Everyone had what the token said both when we forwarded it and now it is back.
        confirmed = min(self.forwarded_aru, aru)
        if confirmed > self.safe_aru:
            self.safe_aru = confirmed
        if my_aru < aru or aru_id == me or aru_id == "":
            aru = my_aru
            aru_id = "" if my_aru >= seq else me

        # Failed to receive: we hold the aru down visit after visit without progress.
        failed = False
        if aru_id == me and aru < seq and my_aru == self.last_visit_aru:
            self.fail_recv_visits += 1
            failed = self.fail_recv_visits > cfg.fail_recv_const
        else:
            self.fail_recv_visits = 0
        self.last_visit_aru = my_aru

        backlog_now = source.backlog()
        if recovery:
            flag = (False if self.is_rep else token.retrans_flg) or bool(retx or sent) \
                or my_aru < seq or backlog_now > 0
        else:
            flag = False
        # Throttling, our share is the whole window: everyone else's allowance is then
        # nothing until our next visit (the token's fcc exceeds the window meanwhile).
        self.my_fcc = max(retx + sent, cfg.window_size) if throttle else retx + sent
        self.my_backlog = backlog_now
        self.forwarded_aru = aru
        self.forwarded_seq = seq
        stats.mcast_tx += sent
        new = Token(ring_id=ring_id, token_seq=token.token_seq + 1, seq=seq, aru=aru,
                    aru_id=aru_id, rtr=tuple(rtr), fcc=fcc_others + self.my_fcc,
                    backlog=backlog_others + backlog_now, retrans_flg=flag, install=install)
        return VisitResult(token=new, retransmitted=retx, sent=sent, failed_to_receive=failed)

    def idle(self, token: Token, queued: int) -> bool:
        """The would-be holder's check before a visit: the token is back as we forwarded it, with
        aru == seq both ways, nothing asked for and nothing queued anywhere (or queued, but a
        member whose readers are behind claimed the whole window), more than
        ``seqno_unchanged_const`` times in a row.

        One such rotation proves every member had every datagram up to seq when the token
        passed it: each saw aru == seq and would have lowered it (or asked) if it lacked one.
        A token that comes back with aru == seq after we forwarded a lower aru proves less,
        as the member that had lowered it may have raised it after others that still lack
        something; hence the forwarded aru counts too.
        """
        quiet = (token.seq == self.forwarded_seq and self.forwarded_aru == token.seq
                 and token.aru == token.seq and not token.rtr
                 and ((token.backlog == 0 and queued == 0) or token.fcc >= self.config.window_size))
        self.idle_visits = self.idle_visits + 1 if quiet else 0
        return self.idle_visits > self.config.seqno_unchanged_const

    def holds_idle_token(self, token: Token) -> bool:
        """Whether we are the one member that holds this idle token: whoever stamped its
        latest datagram (the representative if nobody did), as that member is the likeliest
        to send next and then needs no round trip to get the token back."""
        if token.seq == 0:
            return self.is_rep
        return token.seq == self.my_last_seq

    # --- Delivery -----------------------------------------------------------------------

    def deliver(self, out: list, emit: Callable[[list, Mcast, int, RingId], None]) -> None:
        """Deliver, in seq order, what is agreed (all lower received) or safe (all have it)."""
        if self.delivered_seq < self.my_aru:
            self.deliver_upto(out, emit, limit=self.my_aru, safe_bound=self.safe_aru)

    def deliver_upto(self, out: list, emit: Callable[[list, Mcast, int, RingId], None], *,
                     limit: float, safe_bound: int) -> None:
        """Deliver in seq order up to ``limit``, stopping at the first gap or at a safe
        message above ``safe_bound`` (the one loop both Operational and Recovery use)."""
        seq = self.delivered_seq
        msgs = self.msgs
        ring_id = self.ring_id
        while seq < limit:
            entry = msgs.get(seq + 1)
            if entry is None:
                break
            if type(entry) is Mcast:
                if entry.safe and seq + 1 > safe_bound:
                    break
                emit(out, entry, seq + 1, ring_id)
            seq += 1
        self.delivered_seq = seq

    def collect(self) -> None:
        """Forget datagrams delivered here and received by every member."""
        upto = min(self.safe_aru, self.delivered_seq)
        if upto > self.gc_seq:
            msgs = self.msgs
            for seq in range(self.gc_seq + 1, upto + 1):
                msgs.pop(seq, None)
            self.gc_seq = upto


def emit_chunks(out: list, mcast: Mcast, seq: int, ring_id: RingId, reassembler: Reassembler,
                stats: TotemStats) -> None:
    """Turn one ordered datagram into Deliver effects (whole messages only)."""
    origin = mcast.origin
    for chunk in mcast.chunks:
        payload = reassembler.feed(origin, chunk)
        if payload is None:
            continue
        out.append(Deliver(ring_id=ring_id, seq=seq, origin=origin, msg_id=chunk.msg_id,
                           payload=payload, safe=chunk.safe))
        if chunk.safe:
            stats.deliveries_safe += 1
        else:
            stats.deliveries_agreed += 1

