"""NodeCore: one whole ringd node as a sans-IO state machine.

It composes the gossip core (SWIM + Lifeguard), the Totem core (ordering) and the process
groups core, and owns everything that used to sit between them in the runtime:

* **ring eligibility and observers**: the first ``totem.ring_size_max`` alive members (by
  name) may be in the ring; the others are gossip-only observers whose Totem datagrams are
  ignored, and a node that is one runs no Totem until there is room;
* **the start grace**: Totem starts once gossip has told us who else is there, or after
  :data:`TOTEM_START_GRACE_S` alone (a newcomer that sent Joins before it knew the ring was
  full would make the whole ring reconfigure for nothing);
* **gossip hints**: a member that leaves the eligible set is ``PeerDead`` to Totem, one that
  enters it ``PeerAlive`` (flap damping of those hints is Totem's :class:`FlapDamper`);
* **our own broadcasts**: a Totem multicast (a :class:`Multicast` effect) goes out, and is handed
  back to Totem at the next turn, before any other input (the kernel's looped-back copy is
  dropped unread by the runtime);
* **client sends**: cut into Totem messages of about one datagram, tracked until ordered,
  with backpressure (:data:`UNORDERED_BYTES_MAX`) and the replies of agreed and safe sends;
* **quorum** (:mod:`ringd.core.quorum`): our votes ride in Totem's commit token, every
  configuration is decided primary or not from it (a ``QuorumStatus`` effect; config frames
  carry it, message frames are marked ``primary``), sends from a non-primary component are
  refused by the group's policy, and expected-votes changes are ordered payloads;
* **slow local readers**: from the :class:`ClientBacklog` observations of the runtime it
  throttles the ring (``ReadersBehind``) and holds a token visit back for a bounded time.
  Such a hold is a deadline of this core: while it lasts the core takes no input but
  ``ClientBacklog`` and ``Tick`` (see :attr:`accepting_input`), as the daemon's socket
  buffers hold datagrams while a process is busy.

Inputs: gossip's (``Received``, ``Tick``, ``Start``, ``LeaveCluster``, ``SetTags``,
``SendUserEvent``), the client requests of :mod:`ringd.core.requests`, ``ClientGone`` and
``ClientBacklog``. Effects (one vocabulary for the whole node): ``Send`` (datagram to an
address), ``Multicast``, ``ToClient`` (an event frame for a client connection), ``Reply``,
``Persist``, ``ConfigChange``, ``QuorumStatus``, ``MemberChanged``, ``UserEventDelivered``, ``Log``,
``LeaveDone``, ``Fatal`` — and, when built with ``record_deliveries``, Totem's
``Publish``, ``SendRefused`` and ``Deliver`` (the simulator's checkers read them; the daemon
does not need them).
"""

from __future__ import annotations

import collections
import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass
from random import Random
from typing import Any, Final

from ringd.config import Config
from ringd.core.events import (
    ClientBacklog,
    KeyMessageDelivered,
    Log,
    MemberChanged,
    Multicast,
    Persist,
    PublishInternal,
    Received,
    RelayInternal,
    Reply,
    Send,
    Tick,
)
from ringd.core.gossip import GossipCore
from ringd.core.groups import GroupOpError, GroupsCore, ToClient
from ringd.core.histogram import Histogram
from ringd.core.quorum import QuorumCore
from ringd.core.requests import (
    ClientGone,
    JoinGroup,
    LeaveGroup,
    QueryMembers,
    QueryQuorum,
    QueryRing,
    SendMessages,
    SetExpectedVotes,
)
from ringd.core.totem import TOTEM_MESSAGE_TYPES, TotemCore
from ringd.core.totem_events import (
    ConfigChange,
    Deliver,
    PeerAlive,
    PeerDead,
    PersistRingSeq,
    Publish,
    ReadersBehind,
    RingLeft,
    SendRefused,
    SendTo,
)
from ringd.key_messages import KeyAck, KeyOp
from ringd.messages import Address, MemberState, Message
from ringd.quorum_messages import QuorumExpected
from ringd.totem_messages import Token

# Client bytes published but not yet ordered; beyond this, sends wait (or get try-again).
UNORDERED_BYTES_MAX: Final = 4 << 20
# A client batch is cut into Totem messages of about one datagram, so packing stays cheap
# and one large batch does not hold the ring for a whole fragmented megabyte.
PUBLISH_BYTES_TARGET: Final = 48 * 1024
# A local subscriber this far behind makes us hold the token a little, so the ring slows to
# what its readers take instead of outrunning them until they are dropped.
SUBSCRIBER_BACKLOG_HIGH_BYTES: Final = 4 << 20
# Longest such hold per token visit: well below token_retransmit_s, so nobody resends it.
BACKPRESSURE_HOLD_MAX_FRACTION: Final = 0.4
# Only a subscriber that read something this recently counts as behind: it makes us hold the
# token, and it also throttles the whole ring (see ReadersBehind), as a hold alone cannot
# stop a rotation's worth of new messages arriving at every visit. One that stopped reading
# does neither: it is dropped once its buffer is full, and nobody else waits for it.
READER_PROGRESS_S: Final = 0.25
# While they throttle it, how often we look whether they caught up (the token may be held
# idle meanwhile, so its arrival cannot be what tells us).
READERS_CHECK_S: Final = 0.005
# During a token hold for slow readers, how often the runtime reports their backlog.
BACKPRESSURE_POLL_S: Final = 0.001
# Longest wait for gossip to find other members before Totem starts anyway (alone).
TOTEM_START_GRACE_S: Final = 0.5
# Header, MAC and Mcast fields around the packed chunks of one datagram.
DATAGRAM_ENVELOPE_BYTES: Final = 2048
# Room for the GroupSend envelope around a largest-size application message.
GROUP_ENVELOPE_BYTES: Final = 1024

INCARNATION: Final = "incarnation"
RING_SEQ: Final = "ring_seq"

_TICK: Final = Tick()


@dataclass(slots=True)
class NodeStats:
    """What the node core counts beside its cores' own stats."""

    backpressure_holds: int = 0  # token visits held back for slow local subscribers
    observer_dropped: int = 0  # Totem datagrams ignored (from observers, or as one)
    unknown_destination: int = 0  # tokens we could not address (dropped)
    key_relays_dropped: int = 0  # keyring ops or answers from, or for, a daemon gossip does not know
    own_name_dropped: int = 0  # Totem datagrams that name us as their sender (forged)


@dataclass(slots=True)
class _PendingSend:
    """A client send request whose Totem messages are in flight."""

    request_id: int | None  # None once answered (or its client went away)
    conn: int
    count: int  # application messages in it
    remaining: int  # its Totem messages not yet delivered locally
    safe: bool
    group: str = ""
    nonprimary: bool = False  # a message of it was delivered outside a primary component


@dataclass(slots=True)
class _Published:
    send: _PendingSend | None
    payload: bytes
    at: float
    safe: bool


@dataclass(frozen=True, slots=True)
class _Loopback:
    """Our own broadcast, to hand back to Totem once the current effects are out."""

    msg: Message


class NodeCore:
    """One node: gossip + Totem + groups + client requests. Drive with :meth:`handle`,
    sleep until :meth:`next_deadline`, feed input only while :attr:`accepting_input`."""

    def __init__(self, cfg: Config, *, address: Address, seeds: list[Address], incarnation: int,
                 ring_seq: int, rng: Random, size_of: Callable[[Message], int],
                 encode_payload: Callable[[Message], bytes],
                 decode_payload: Callable[[bytes], Message], now: float,
                 record_deliveries: bool = False, msg_id_base: int = 0,
                 expected_votes: int = 0) -> None:
        self.name = cfg.node_name
        self.cfg = cfg
        self.address = address
        self.record_deliveries = record_deliveries
        self._rng = rng
        self.gossip = GossipCore(
            name=cfg.node_name, address=address, config=cfg.gossip,
            rng=Random(rng.getrandbits(64)), tags=cfg.tags_dict, seeds=seeds,
            incarnation=incarnation, multicast=cfg.net.multicast_enabled, size_of=size_of,
            datagram_bytes_max=cfg.net.datagram_bytes_max)
        self._incarnation_persisted = incarnation
        self._gossip_at = math.inf
        self._totem_cfg = dataclasses.replace(
            cfg.totem, message_bytes_max=cfg.totem.message_bytes_max + GROUP_ENVELOPE_BYTES,
            mtu_bytes=min(cfg.totem.mtu_bytes, cfg.net.datagram_bytes_max - DATAGRAM_ENVELOPE_BYTES))
        self.ring_seq_persisted = ring_seq
        self.quorum = QuorumCore(cfg.quorum, name=cfg.node_name, expected_persisted=expected_votes)
        self._encode_payload = encode_payload
        self.totem = self._new_totem(now)
        self.groups = GroupsCore(self.name, encode_payload, decode_payload)
        self._decode_payload = decode_payload
        self.stats = NodeStats()
        # Members that may be in the ring: the first ring_size_max alive ones by name.
        self.eligible: frozenset[str] = frozenset({self.name})
        self.active = True  # False while we are an observer ourselves
        self.started = False  # Totem runs (after the start grace)
        self._start_at = now + TOTEM_START_GRACE_S
        # Where to send a member's token: gossip's advertised address, else the source of
        # its last Totem datagram.
        self.addresses: dict[str, Address] = {}
        self.latency_agreed = Histogram()
        self.latency_safe = Histogram()
        self._next_msg_id = msg_id_base + 1  # the simulator keeps ids unique across restarts
        self._published: dict[int, _Published] = {}
        self.unordered_bytes = 0
        self._parked: collections.deque[SendMessages] = collections.deque()
        # Client connections with bytes queued: conn -> (queued bytes, last drained at).
        self._backlogs: dict[int, tuple[int, float]] = {}
        self._readers_check_at = math.inf
        # Totem effects not executed yet, and our own broadcasts to hand back afterwards.
        self._work: collections.deque[Any] = collections.deque()
        self._loopback: collections.deque[Message] = collections.deque()
        self._loopback_at = math.inf
        self._draining = False
        self._nested: list[Any] = []
        self._settled = False
        # A token visit held back for slow readers: until when, and the next backlog look.
        self._hold_until = math.inf
        self._hold_poll_at = math.inf
        self._hold_released: Any = None  # the held SendTo, let through once
        self._deferred: collections.deque[Any] = collections.deque()
        self._out: list[Any] = []

    # --- public API ---------------------------------------------------------------------

    @property
    def accepting_input(self) -> bool:
        """False while a token visit is held for slow readers: then only ``ClientBacklog``
        and ``Tick`` move the core (anything else is queued inside until the hold ends)."""
        return self._hold_until == math.inf

    @property
    def turn_pending(self) -> bool:
        """Work for the very next turn that waits for nothing: our own multicasts, handed
        back to Totem once they are out. A driver may give it a :class:`Tick` as soon as
        the current effects are executed, before it reads more input."""
        return bool(self._loopback) and self._hold_until == math.inf

    @property
    def incarnation(self) -> int:
        return self.gossip.incarnation

    @property
    def state(self) -> Any:
        """The Totem state (an observer keeps its last processor's)."""
        return self.totem.state

    @property
    def ring_id(self) -> Any:
        return self.totem.ring_id

    @property
    def members(self) -> tuple[str, ...]:
        return self.totem.members

    def handle(self, event: Any, now: float) -> list[Any]:
        """Process one input at ``now``; returns the effects to execute, in order."""
        self._out = out = []
        if self._hold_until != math.inf:
            tp = type(event)
            if tp is ClientBacklog:
                self._on_backlog(event)
            elif tp is not Tick:
                self._deferred.append(event)
            self._hold_poll_at = now + BACKPRESSURE_POLL_S
            if not self._try_release(now):
                return out
            self._run([], now)  # what waited in _work
            self._flush_loopback(now)
            while self._deferred and self._hold_until == math.inf:
                self._dispatch(self._deferred.popleft(), now)
            if tp is not Tick or self._hold_until != math.inf:
                return out
        elif self._loopback:
            self._flush_loopback(now)
            if self._hold_until != math.inf:  # that started a hold: this input waits for it
                if type(event) is ClientBacklog:
                    self._on_backlog(event)
                elif type(event) is not Tick:
                    self._deferred.append(event)
                return out
        if type(event) is Received and type(event.msg) in TOTEM_MESSAGE_TYPES:
            self._totem_received(event, now)  # most input: no pass through _dispatch
        else:
            self._dispatch(event, now)
        return out

    def next_deadline(self) -> float:
        """When the core next needs a :class:`Tick` (absolute; ``math.inf`` if never)."""
        if self._hold_until != math.inf:
            return min(self._hold_until, self._hold_poll_at)
        if self._loopback:
            return self._loopback_at
        if not self.started:
            return min(self._gossip_at, self._start_at)
        if not self.active:
            return self._gossip_at
        totem_at = self.totem.next_deadline()
        quorum_at = self.quorum.next_deadline()
        if quorum_at < totem_at:
            totem_at = quorum_at
        if self.totem.readers_behind and self._readers_check_at < totem_at:
            totem_at = self._readers_check_at
        return totem_at if totem_at < self._gossip_at else self._gossip_at

    def ring_info(self, now: float) -> dict[str, Any]:
        """Totem state, ring id, members and held-out (flapping) members, for status."""
        totem = self.totem
        return {
            "state": totem.state.name.lower() if self.active else "observer",
            "ring": str(totem.ring_id) if self.active else None,
            "members": list(totem.members) if self.active else [],
            "held_out": sorted(totem.flaps.held(now)),
            "send_queue_len": len(totem.queue),
            "unordered_bytes": self.unordered_bytes,
        }

    # --- dispatch -----------------------------------------------------------------------

    def _dispatch(self, event: Any, now: float) -> None:
        tp = type(event)
        if tp is Received:
            mt = type(event.msg)
            if mt in TOTEM_MESSAGE_TYPES:
                self._totem_received(event, now)
            elif mt is KeyOp or mt is KeyAck:
                self._key_relay_received(event)
            else:
                self._gossip(event, now)
        elif tp is Tick:
            self._tick(now)
        elif tp is SendMessages:
            self._send(event, now)
        elif tp is ClientBacklog:
            self._on_backlog(event)
        elif tp is JoinGroup or tp is LeaveGroup or tp is QueryMembers or tp is QueryRing:
            self._request(event, now)
        elif tp is QueryQuorum or tp is SetExpectedVotes:
            self._quorum_request(event, now)
        elif tp is ClientGone:
            self._client_gone(event, now)
        elif tp is RelayInternal:
            address = self.addresses.get(event.dest)
            if address is None:
                self.stats.key_relays_dropped += 1
            else:
                self._out.append(Send(dest=address, msg=event.msg))
        elif tp is PublishInternal:
            if self.active:
                self._publish(event.payload, None, now)
            else:
                self._out.append(Log(level="warning", text="internal message not published: "
                                     "this daemon is not in the ring"))
        else:  # Start, LeaveCluster, SetTags, SendUserEvent
            self._gossip(event, now)

    def _tick(self, now: float) -> None:
        if now >= self._gossip_at:
            self._gossip(_TICK, now)
        if not self.started:
            if now >= self._start_at:
                self._start(now)
        elif self.active:
            totem = self.totem
            if totem.readers_behind and now >= self._readers_check_at:
                self._check_readers(now)
            if now >= totem.next_deadline():
                self._run(totem.handle(_TICK, now), now)
            if now >= self.quorum.next_deadline():
                lms = self.quorum.due(now)
                if lms is not None:
                    self._out.append(Log(level="info", text=(
                        f"quorum: last man standing: {lms.expected} votes stayed "
                        f"{self.cfg.quorum.last_man_standing_window_s} s; proposing them as "
                        "expected votes")))
                    self._publish(self._encode_payload(lms), None, now)

    # --- gossip -------------------------------------------------------------------------

    def _gossip(self, event: Any, now: float) -> None:
        gossip = self.gossip
        effects = gossip.handle(event, now)
        self._gossip_at = gossip.next_deadline()
        out = self._out
        for eff in effects:
            out.append(eff)
            if type(eff) is MemberChanged:
                self._member_changed(eff, now)
        if gossip.incarnation != self._incarnation_persisted:
            self._incarnation_persisted = gossip.incarnation
            out.append(Persist(key=INCARNATION, value=gossip.incarnation))

    def _member_changed(self, change: MemberChanged, now: float) -> None:
        """Gossip's view changed: keep the address book, recompute who may be in the ring,
        and hint Totem (a member that left the eligible set is dead to the ring)."""
        if change.node != self.name:
            self.addresses[change.node] = change.address
        alive = sorted(v.name for v in self.gossip.members()
                       if v.state in (MemberState.ALIVE, MemberState.SUSPECT))
        eligible = frozenset(alive[: self.cfg.totem.ring_size_max]) | (
            {self.name} if not alive else frozenset())
        gone, new = self.eligible - eligible, eligible - self.eligible
        self.eligible = eligible
        if not self.started:
            if len(alive) > 1:  # gossip found the others: we know where we stand
                self._start(now)
            return
        if not gone and not new:
            return
        if self.name not in eligible:
            if self.active:
                self._become_observer(leaving=self.name not in alive)
            return
        if not self.active:
            self._out.append(Log(level="info", text="room in the ring: joining it"))
            self._join_ring(now)
            return
        for node in sorted(gone - {self.name}):
            self._run(self.totem.handle(PeerDead(node=node), now), now)
        for node in sorted(new - {self.name}):
            self._run(self.totem.handle(PeerAlive(node=node), now), now)

    # --- Totem lifecycle ----------------------------------------------------------------

    def _new_totem(self, now: float) -> TotemCore:
        return TotemCore(name=self.name, config=self._totem_cfg, rng=Random(self._rng.getrandbits(64)),
                         ring_seq=self.ring_seq_persisted, now=now, vote_info=self.quorum.vote_info)

    def _start(self, now: float) -> None:
        self.started = True
        if self.name in self.eligible:
            self._join_ring(now)
        else:
            self._become_observer()

    def _join_ring(self, now: float) -> None:
        """Run a fresh processor (like a restart): its timers start now. What was published
        while no processor ran (before the start grace ended, or as an observer) was never
        sent: it goes to the new processor, in order."""
        self.active = True
        self.totem = self._new_totem(now)
        self._run(self.totem.handle(_TICK, now), now)
        for msg_id, pub in list(self._published.items()):
            self._run(self.totem.handle(Publish(msg_id=msg_id, payload=pub.payload, safe=pub.safe),
                                        now), now)

    def _become_observer(self, leaving: bool = False) -> None:
        """Stop running Totem (the ring is full, or we are leaving the cluster). Messages
        our processor accepted but has not delivered may or may not have reached the ring:
        their senders get an error rather than a guess."""
        was_running = self.started and self.active
        if was_running:
            attached = self.totem.attached_ring()
            if attached is not None:
                self._out.append(_ring_left_log(attached, "leaving" if leaving else "observer"))
        self.active = False
        if leaving:
            self._out.append(Log(level="info", text="left the ring (leaving the cluster)"))
        else:
            self._out.append(Log(level="warning", text=(
                f"the ring is full (totem.ring_size_max={self.cfg.totem.ring_size_max}): this "
                "daemon is a gossip-only observer")))
        self._quorum_effects(self.quorum.on_observer())
        if was_running:
            why = "this daemon left the ring" if leaving else "this daemon became a gossip-only observer"
            for msg_id in list(self._published):
                self._settle(msg_id, 0.0, refused=why)

    def _key_relay_received(self, event: Received) -> None:
        """A keyring op or answer sent straight to us (we are, or were, outside the ring):
        accepted from a daemon gossip knows, which is also where an answer can go."""
        if event.sender not in self.addresses or event.sender == self.name:
            self.stats.key_relays_dropped += 1
            return
        self._out.append(KeyMessageDelivered(origin=event.sender, msg=event.msg,
                                             members=(), relayed=True))

    def _totem_received(self, event: Received, now: float) -> None:
        sender = event.sender
        if sender == self.name:
            # Our own multicasts come back through _flush_loopback, never as input: this one
            # is forged (or from a daemon misusing our name). Taken, a forged multicast on
            # our ring of one made its token spin without end (found by fuzzing).
            self.stats.own_name_dropped += 1
            return
        if not self.started or not self.active or (
                sender not in self.eligible and sender in self.addresses):
            # A known member beyond the ring size (or we are one): not part of the ring.
            self.stats.observer_dropped += 1
            return
        if sender not in self.addresses:
            self.addresses[sender] = event.source
        if type(event.msg) is Token:
            self._check_readers(now)
        self._run(self.totem.handle(event, now), now)

    # --- executing Totem's effects ---------------------------------------------------------

    def _run(self, effects: list[Any], now: float) -> None:
        """Execute Totem effects in order. Effects of a nested call (a publish while
        executing) go before the rest, as a call would; our own broadcasts go back into
        Totem at the next turn (see _flush_loopback)."""
        if self._draining:
            self._nested.extend(effects)
            return
        self._work.extend(effects)
        if self._hold_until != math.inf:
            return  # the rest waits in _work for the readers hold to end
        self._draining = True
        try:
            self._drain_work(now)
        finally:
            self._draining = False

    def _drain_work(self, now: float) -> None:
        work = self._work
        loopback = self._loopback
        nested = self._nested
        out = self._out
        name = self.name
        while True:
            while work or nested:
                if nested:
                    work.extendleft(reversed(nested))
                    nested.clear()
                eff = work.popleft()
                tp = type(eff)
                if tp is Deliver:
                    if eff.origin == name:
                        self._settle(eff.msg_id, now)
                    if self.record_deliveries:
                        out.append(eff)
                    groups = self.groups
                    try:
                        msg = self._decode_payload(eff.payload)
                    except Exception:  # injected decoder: whatever it raises, the payload is bad
                        groups.stats.bad_payloads += 1
                        continue
                    if type(msg) is KeyOp or type(msg) is KeyAck:
                        out.append(KeyMessageDelivered(origin=eff.origin, msg=msg,
                                                       members=self.totem.members))
                        continue
                    frames = groups.on_message(eff, msg)
                    if frames:
                        out.extend(frames)
                    if groups.quorum_payloads:
                        self._quorum_payloads(now)
                    if groups.to_publish:  # our sync, answering another member's
                        for payload in groups.to_publish:
                            self._publish(payload, None, now)
                        groups.to_publish.clear()
                elif tp is Multicast:  # Totem's broadcast: out now, back to us next turn
                    out.append(eff)
                    if not loopback:
                        self._loopback_at = now
                    loopback.append(eff.msg)
                elif tp is SendTo:
                    if not self._send_to(eff, now):
                        work.appendleft(eff)
                        return  # held for slow readers: the rest waits with it
                elif tp is ConfigChange:
                    out.append(eff)
                    self._quorum_effects(self.quorum.on_config(eff, now))
                    frames, payloads = self.groups.on_config(
                        eff, self.quorum.status.client_fields())
                    out.extend(frames)
                    for payload in payloads:
                        self._publish(payload, None, now)
                elif tp is PersistRingSeq:
                    if eff.seq > self.ring_seq_persisted:
                        self.ring_seq_persisted = eff.seq
                    out.append(Persist(key=RING_SEQ, value=eff.seq))
                elif tp is SendRefused:
                    if self.record_deliveries:
                        out.append(eff)
                    self._settle(eff.msg_id, now, refused=eff.reason)
                elif tp is RingLeft:
                    out.append(_ring_left_log(eff.ring_id, eff.reason))
            if self._settled and self._parked:
                self._settled = False
                self._unpark(now)
                if work or nested:
                    continue
            self._settled = False
            return

    def _flush_loopback(self, now: float) -> None:
        """Hand our own multicasts back to Totem. They wait for the next turn (a deadline of
        ``now``, and before any other input): the datagram goes out first, so the other
        members do not wait for our own processing of it."""
        loopback = self._loopback
        source = self.address
        while loopback and self._hold_until == math.inf:
            msg = loopback.popleft()
            self._run(self.totem.handle(Received(msg=msg, sender=self.name, source=source), now), now)

    def _send_to(self, eff: SendTo, now: float) -> bool:
        """Unicast for Totem; False when a token visit must wait for slow local readers."""
        address = self.addresses.get(eff.dest)
        if address is None:
            self.stats.unknown_destination += 1
            return True
        if type(eff.msg) is Token and self._backlogs and eff is not self._hold_released:
            if self._reader_backlog(now) > SUBSCRIBER_BACKLOG_HIGH_BYTES:
                self.stats.backpressure_holds += 1
                self._hold_until = now + BACKPRESSURE_HOLD_MAX_FRACTION * self.cfg.totem.token_retransmit_s
                self._hold_poll_at = now + BACKPRESSURE_POLL_S
                self._hold_released = eff
                return False
        self._hold_released = None
        self._out.append(Send(dest=address, msg=eff.msg))
        return True

    def _try_release(self, now: float) -> bool:
        """End a readers hold once they caught up or its time is up."""
        if now < self._hold_until and self._reader_backlog(now) > SUBSCRIBER_BACKLOG_HIGH_BYTES:
            return False
        self._hold_until = self._hold_poll_at = math.inf
        return True

    # --- slow readers ---------------------------------------------------------------------

    def _on_backlog(self, event: ClientBacklog) -> None:
        if event.queued_bytes > 0:
            self._backlogs[event.conn] = (event.queued_bytes, event.drained_at)
        else:
            self._backlogs.pop(event.conn, None)

    def _reader_backlog(self, now: float) -> int:
        """The largest backlog of a local subscriber that still reads. One that stopped
        (nothing taken for READER_PROGRESS_S) is neither waited for nor throttled for: it is
        dropped once its buffer is full, and at a low rate that could take for ever."""
        return max((queued for queued, drained_at in self._backlogs.values()
                    if now - drained_at < READER_PROGRESS_S), default=0)

    def _check_readers(self, now: float) -> None:
        """Tell Totem when local subscribers that still read fell behind or caught up."""
        self._readers_check_at = now + READERS_CHECK_S
        behind_now = self.totem.readers_behind
        if not behind_now and not self._backlogs:
            return
        # Once throttling, go on until they are half-way down again: not on and off per visit.
        high = SUBSCRIBER_BACKLOG_HIGH_BYTES // 2 if behind_now else SUBSCRIBER_BACKLOG_HIGH_BYTES
        behind = self._reader_backlog(now) > high
        if behind != behind_now:
            self._run(self.totem.handle(ReadersBehind(behind=behind), now), now)

    # --- quorum ------------------------------------------------------------------------------

    def _quorum_effects(self, effects: list[Any]) -> None:
        """Effects of the quorum core; our commit token entry follows its inputs."""
        self._out.extend(effects)
        self.totem.vote_info = self.quorum.vote_info

    def _quorum_payloads(self, now: float) -> None:
        """Ordered QuorumExpected payloads: every member applies them at the same place."""
        groups = self.groups
        delivered, groups.quorum_payloads = groups.quorum_payloads, []
        for d, msg in delivered:
            before = self.quorum.status
            effects = self.quorum.on_expected(msg, d, now)
            self._quorum_effects(effects)
            after = self.quorum.status
            if after is not before:
                self._out.extend(groups.on_quorum(after.client_fields(), after.reason))

    def _quorum_request(self, req: QueryQuorum | SetExpectedVotes, now: float) -> None:
        if type(req) is QueryQuorum:
            self._reply(req.request_id, {"ok": True, **self.quorum.info()})
            return
        assert isinstance(req, SetExpectedVotes)
        if not self.active:
            self._reply(req.request_id, self._observer_refusal("quorum_expected"))
            return
        status = self.quorum.status
        self._out.append(Log(level="warning", text=(
            f"quorum: operator sets expected votes to {req.expected} (was "
            f"{status.expected_votes}; {status.describe()})")))
        msg = QuorumExpected(expected=req.expected, reason="operator",
                             ring_id=self.totem.ring_id, by=self.name)
        self._publish(self._encode_payload(msg), None, now)
        self._reply(req.request_id, {"ok": True, "expected": req.expected})

    # --- client requests -------------------------------------------------------------------

    def _reply(self, request_id: int, body: dict[str, Any]) -> None:
        self._out.append(Reply(request_id=request_id, body=body))

    def _observer_refusal(self, op: str) -> dict[str, Any]:
        return {"ok": False, "error": f"{op}: this daemon is a gossip-only observer (the ring "
                f"already has totem.ring_size_max={self.cfg.totem.ring_size_max} members)"}

    def _request(self, req: JoinGroup | LeaveGroup | QueryMembers | QueryRing, now: float) -> None:
        tp = type(req)
        try:
            if tp is JoinGroup:
                assert isinstance(req, JoinGroup)
                if not self.active:
                    self._reply(req.request_id, self._observer_refusal("group_join"))
                    return
                payload = self.groups.join(req.conn, req.pid, req.group, self_discard=req.self_discard)
                self._publish(payload, None, now)
                self._reply(req.request_id, {"ok": True, "member": f"{self.name}:{req.pid}"})
            elif tp is LeaveGroup:
                assert isinstance(req, LeaveGroup)
                payload = self.groups.leave(req.conn, req.group)
                self._publish(payload, None, now)
                self._reply(req.request_id, {"ok": True})
            elif tp is QueryMembers:
                assert isinstance(req, QueryMembers)
                self._reply(req.request_id, {"ok": True, "groups": self.groups.members(req.group)})
            else:
                self._reply(req.request_id, {"ok": True, **self.ring_info(now)})
        except GroupOpError as exc:
            self._reply(req.request_id, {"ok": False, "error": str(exc)})

    def _client_gone(self, event: ClientGone, now: float) -> None:
        conn = event.conn
        self._parked = collections.deque(r for r in self._parked if r.conn != conn)
        for pub in self._published.values():
            send = pub.send
            if send is not None and send.conn == conn:
                send.request_id = None  # nobody to answer any more; the messages still go out
        self._backlogs.pop(conn, None)
        for payload in self.groups.disconnect(conn):
            self._publish(payload, None, now)

    def _send(self, req: SendMessages, now: float) -> None:
        if not self.active:
            self._reply(req.request_id, self._observer_refusal("send"))
            return
        if self.quorum.refuses(req.group, req.safe):
            self.quorum.stats.sends_refused += 1
            self._reply(req.request_id, {"ok": False, "error": "refused, " +
                                         self.quorum.refusal(req.group, req.safe)})
            return
        limit = self.cfg.totem.message_bytes_max
        longest = max(map(len, req.data), default=0)
        if longest > limit:
            self._reply(req.request_id, {"ok": False, "error": f"message of {longest} bytes "
                                         f"exceeds totem.message_bytes_max ({limit})"})
            return
        # Behind parked sends too: a connection may have several sends in flight, and
        # a later one must not overtake an earlier one that waits for room.
        if self.unordered_bytes >= UNORDERED_BYTES_MAX or self._parked:
            if req.wait:
                self._parked.append(req)
            else:
                self._reply(req.request_id, {"ok": False, "again": True, "error":
                                             "send window full (messages not yet ordered), try again"})
            return
        self._publish_send(req, now)

    def _publish_send(self, req: SendMessages, now: float) -> None:
        batches: list[list[bytes]] = []
        size = 0
        for item in req.data:
            # A new payload when this one is full, and for the first message (even an empty
            # one: a first b"" used to find no payload to join, and crashed the daemon).
            if not batches or size + len(item) > PUBLISH_BYTES_TARGET:
                batches.append([])
                size = 0
            batches[-1].append(item)
            size += len(item) + 3
        pending = _PendingSend(request_id=req.request_id, conn=req.conn, count=len(req.data),
                               remaining=len(batches), safe=req.safe, group=req.group)
        for batch in batches:
            try:
                payload = self.groups.send(req.conn, req.pid, req.group, batch)
            except GroupOpError as exc:  # the request was validated: only a bug gets here
                self._reply(req.request_id, {"ok": False, "error": str(exc)})
                return
            self._publish(payload, pending, now, safe=req.safe)
        if not req.safe and pending.request_id is not None:
            self._reply(req.request_id, {"ok": True, "count": len(req.data)})
            pending.request_id = None  # answered

    def _publish(self, payload: bytes, send: _PendingSend | None, now: float, *,
                 safe: bool = False) -> None:
        msg_id = self._next_msg_id
        self._next_msg_id += 1
        self._published[msg_id] = _Published(send=send, payload=payload, at=now, safe=safe)
        self.unordered_bytes += len(payload)
        publish = Publish(msg_id=msg_id, payload=payload, safe=safe)
        if self.record_deliveries:
            self._out.append(publish)  # what was offered to Totem, for the checkers
        self._run(self.totem.handle(publish, now), now)

    def _settle(self, msg_id: int, now: float, refused: str | None = None) -> None:
        pub = self._published.pop(msg_id, None)
        if pub is None:
            return
        self._settled = True
        self.unordered_bytes -= len(pub.payload)
        if refused is None:
            (self.latency_safe if pub.safe else self.latency_agreed).observe(now - pub.at)
        send = pub.send
        if send is None or send.request_id is None:
            return
        if refused is not None:
            self._reply(send.request_id, {"ok": False, "error": f"send refused: {refused}"})
            send.request_id = None
            return
        send.remaining -= 1
        quorum = self.quorum
        if send.safe and quorum.refuses(send.group, True):
            # Accepted while primary, delivered after the component lost its quorum (marked
            # primary=false): the sender of a safe send must not take it as decided.
            send.nonprimary = True
        if send.remaining == 0 and send.safe:
            if send.nonprimary:
                quorum.stats.sends_refused += 1
                self._reply(send.request_id, {"ok": False, "error": (
                    "delivered only in a non-primary component (marked primary=false): "
                    + quorum.refusal(send.group, True))})
            else:
                self._reply(send.request_id, {"ok": True, "count": send.count})

    def _unpark(self, now: float) -> None:
        while self._parked and self.unordered_bytes < UNORDERED_BYTES_MAX:
            self._publish_send(self._parked.popleft(), now)


def _ring_left_log(ring_id: Any, why: str) -> Log:
    # "left ring <id>: <why>" is parsed by scripts/netlab.py (the one-primary check).
    return Log(level="info", text=f"left ring {ring_id}: {why}")


__all__ = ["NodeCore", "NodeStats", "ToClient"]
