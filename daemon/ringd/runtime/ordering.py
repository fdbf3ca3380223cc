"""Ordered delivery in the daemon: the Totem core, the process-groups core and the client
requests that feed them, executed by the daemon's single driver loop.

Gossip feeds Totem (a member gossip declares dead or alive becomes a ``PeerDead`` /
``PeerAlive`` hint); Totem never steers gossip. The token goes by unicast to the address
gossip knows for the successor, everything else by multicast. A ``Broadcast`` reaches every
processor *including ourselves*: the kernel's looped-back copy is dropped by the driver (it
would arrive late and could be lost), so it is handed back to the core directly instead.

Backpressure: client sends are accepted while the bytes we published and have not yet seen
ordered stay under :data:`UNORDERED_BYTES_MAX`. Beyond that a waiting send is parked (its
connection reads nothing more meanwhile, so the client blocks), a non-waiting send gets a
try-again error. Nothing here queues without a bound.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import math
import random
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio

from ringd.config import Config
from ringd.core.events import MemberChanged, Received, Tick
from ringd.core.gossip import MemberView
from ringd.core.groups import GroupOpError, GroupsCore
from ringd.core.histogram import Histogram
from ringd.core.totem import TotemCore
from ringd.core.totem_events import (
    Broadcast,
    ConfigChange,
    ConfigKind,
    Deliver,
    PeerAlive,
    PeerDead,
    PersistRingSeq,
    Publish,
    ReadersBehind,
    SendRefused,
    SendTo,
)
from ringd.messages import Address, MemberState
from ringd.runtime.api_types import ApiConnection, ApiDisconnect, ApiRequest
from ringd.runtime.control import ControlStats
from ringd.runtime.state_files import read_counter, write_counter
from ringd.runtime.udp import UdpTransport
from ringd.totem_messages import (
    CommitToken,
    Join,
    Mcast,
    MergeDetect,
    Recovered,
    Token,
    TokenAck,
    TokenHoldCancel,
)
from ringd.wire import Codec, decode_payload, encode_payload

# Top-level datagram types the Totem core handles; everything else goes to gossip.
TOTEM_MESSAGE_TYPES: frozenset[type] = frozenset(
    {Token, Mcast, Recovered, Join, CommitToken, MergeDetect, TokenHoldCancel, TokenAck})
RING_SEQ_FILE = "ring_seq"
# Client bytes published but not yet ordered; beyond this, sends wait (or get try-again).
UNORDERED_BYTES_MAX = 4 << 20
# A client batch is cut into Totem messages of about one datagram, so packing stays cheap
# and one large batch does not hold the ring for a whole fragmented megabyte.
PUBLISH_BYTES_TARGET = 48 * 1024
# A local subscriber this far behind makes us hold the token a little (see _send_to), so the
# ring slows to what its readers take instead of outrunning them until they are dropped.
SUBSCRIBER_BACKLOG_HIGH_BYTES = 4 << 20
# Longest such hold per token visit: well below token_retransmit_s, so nobody resends it.
BACKPRESSURE_HOLD_MAX_FRACTION = 0.4
# Only a subscriber that read something this recently counts as behind: it makes us hold the
# token, and it also throttles the whole ring (see ReadersBehind), as a hold alone cannot
# stop a rotation's worth of new messages (up to window_size datagrams) arriving at every
# visit. One that stopped reading does neither: it is dropped once its buffer is full, and
# nobody else waits for it.
READER_PROGRESS_S = 0.25
# While they throttle it, how often we look whether they caught up (the token may be held
# idle meanwhile, so its arrival cannot be what tells us).
READERS_CHECK_S = 0.005
BACKPRESSURE_POLL_S = 0.001
# Longest wait for gossip to find other members before Totem starts anyway (alone).
TOTEM_START_GRACE_S = 0.5
# Header, MAC and Mcast fields around the packed chunks of one datagram.
DATAGRAM_ENVELOPE_BYTES = 2048
# Room for the GroupSend envelope around a largest-size application message.
GROUP_ENVELOPE_BYTES = 1024


def read_ring_seq(state_dir: Path, log: logging.Logger) -> int:
    # Missing or damaged: 0 is safe, because other members carry higher ring seqs in their
    # Joins and we adopt the highest.
    return read_counter(state_dir / RING_SEQ_FILE, log) or 0


def write_ring_seq(state_dir: Path, seq: int) -> None:
    write_counter(state_dir / RING_SEQ_FILE, seq)


@dataclass(slots=True)
class _PendingSend:
    """A client send request whose Totem messages are in flight."""

    request: ApiRequest | None  # None once answered (or its client went away)
    count: int  # application messages in it
    remaining: int  # its Totem messages not yet delivered locally
    safe: bool


@dataclass(slots=True)
class _Published:
    send: _PendingSend | None
    size: int
    at: float
    safe: bool


class OrderedDelivery:
    """Totem + groups + client requests of one daemon. Only the driver loop calls it."""

    def __init__(self, *, cfg: Config, transport: UdpTransport, codec: Codec,
                 api_connections: dict[int, ApiConnection], control_stats: ControlStats,
                 log: logging.Logger, now: float,
                 gossip_view: Callable[[], Iterable[MemberView]] = tuple) -> None:
        self.name = cfg.node_name
        self.cfg = cfg
        self.transport = transport
        self.codec = codec
        self.api_connections = api_connections
        self.control_stats = control_stats
        self.log = log
        self.state_dir = cfg.state_path
        self._totem_cfg = dataclasses.replace(
            cfg.totem, message_bytes_max=cfg.totem.message_bytes_max + GROUP_ENVELOPE_BYTES,
            mtu_bytes=min(cfg.totem.mtu_bytes, cfg.net.datagram_bytes_max - DATAGRAM_ENVELOPE_BYTES))
        self.totem = self._new_totem(now)
        self.gossip_view = gossip_view
        # Members that may be in the ring: the first ring_size_max alive ones by name. The
        # others are gossip-only observers; their Totem datagrams are ignored.
        self.eligible: frozenset[str] = frozenset({self.name})
        self.active = True  # False while we are an observer ourselves
        # Totem starts once gossip has told us who else is there (or after a grace period
        # when nobody answers): a newcomer that sent Joins before it knew the ring was full
        # would make the whole ring reconfigure for nothing.
        self.started = False
        self._start_at = now + TOTEM_START_GRACE_S
        self.observer_dropped = 0  # Totem datagrams ignored (from observers, or as one)
        self.groups = GroupsCore(self.name, encode_payload, decode_payload)
        self._group_events_seen = 0
        self.latency_agreed = Histogram()
        self.latency_safe = Histogram()
        self.ring_changed_wall = time.time()
        # Where to send a member's token: gossip's advertised address, else the source of
        # its last Totem datagram.
        self.addresses: dict[str, Address] = {}
        self.unknown_destination = 0  # tokens we could not address (counted, dropped)
        self.backpressure_holds = 0  # token visits held back for slow local subscribers
        self._readers_check_at = math.inf
        self._next_msg_id = 1
        self._published: dict[int, _Published] = {}
        self.unordered_bytes = 0
        self._parked: collections.deque[ApiRequest] = collections.deque()

    # --- inputs -------------------------------------------------------------------------

    def _new_totem(self, now: float) -> TotemCore:
        return TotemCore(name=self.name, config=self._totem_cfg, rng=random.Random(),
                         ring_seq=read_ring_seq(self.state_dir, self.log), now=now)

    def next_deadline(self) -> float:
        if not self.started:
            return self._start_at
        if not self.active:
            return math.inf
        if self.totem.readers_behind:
            return min(self.totem.next_deadline(), self._readers_check_at)
        return self.totem.next_deadline()

    async def tick(self, now: float) -> None:
        if not self.started:
            if now >= self._start_at:
                await self._start(now)
        elif self.active:
            if self.totem.readers_behind and now >= self._readers_check_at:
                await self._check_readers(now)
            await self._run(self.totem.handle(Tick(), now), now)

    async def _start(self, now: float) -> None:
        self.started = True
        if self.name in self.eligible:
            await self._join_ring(now)
        else:
            self._become_observer()

    async def _join_ring(self, now: float) -> None:
        """Run a fresh processor (like a restart): its timers start now."""
        self.active = True
        self.totem = self._new_totem(now)
        await self._run(self.totem.handle(Tick(), now), now)

    def _become_observer(self) -> None:
        self.active = False
        self.log.warning("the ring is full (totem.ring_size_max=%d): this daemon is a "
                         "gossip-only observer", self.cfg.totem.ring_size_max)

    async def received(self, event: Received, now: float) -> None:
        sender = event.sender
        if not self.started or not self.active or (
                sender not in self.eligible and sender in self.addresses):
            # A known member beyond the ring size (or we are one): not part of the ring.
            self.observer_dropped += 1
            return
        if sender not in self.addresses:
            self.addresses[sender] = event.source
        if type(event.msg) is Token:
            await self._check_readers(now)
        await self._run(self.totem.handle(event, now), now)

    async def member_changed(self, change: MemberChanged, now: float) -> None:
        """Gossip's view changed: keep the address book, recompute who may be in the ring,
        and hint Totem (a member that left the eligible set is dead to the ring)."""
        if change.node != self.name:
            self.addresses[change.node] = change.address
        alive = sorted(v.name for v in self.gossip_view()
                       if v.state in (MemberState.ALIVE, MemberState.SUSPECT))
        eligible = frozenset(alive[: self.cfg.totem.ring_size_max]) | (
            {self.name} if not alive else frozenset())
        gone, new = self.eligible - eligible, eligible - self.eligible
        self.eligible = eligible
        if not self.started:
            if len(alive) > 1:  # gossip found the others: we know where we stand
                await self._start(now)
            return
        if not gone and not new:
            return
        if self.name not in eligible:
            if self.active:
                self._become_observer()
            return
        if not self.active:
            self.log.info("room in the ring: joining it")
            await self._join_ring(now)
            return
        for node in sorted(gone - {self.name}):
            await self._run(self.totem.handle(PeerDead(node=node), now), now)
        for node in sorted(new - {self.name}):
            await self._run(self.totem.handle(PeerAlive(node=node), now), now)

    async def api_request(self, req: ApiRequest, now: float) -> None:
        op = req.op
        if not self.active and op in ("send", "group_join"):
            req.reply({"ok": False, "error": f"{op}: this daemon is a gossip-only observer (the ring "
                       f"already has totem.ring_size_max={self.cfg.totem.ring_size_max} members)"})
            return
        try:
            if op == "send":
                await self._send(req, now)
            elif op == "group_join":
                payload = self.groups.join(req.conn, req.pid, req.request["group"],
                                           self_discard=bool(req.request.get("self_discard", False)))
                await self._publish(payload, None, now)
                req.reply({"ok": True, "member": f"{self.name}:{req.pid}"})
            elif op == "group_leave":
                payload = self.groups.leave(req.conn, req.request["group"])
                await self._publish(payload, None, now)
                req.reply({"ok": True})
            elif op == "group_members":
                req.reply({"ok": True, "groups": self.groups.members(req.request.get("group"))})
            elif op == "ring":
                req.reply({"ok": True, **self.ring_info(now)})
            else:
                req.reply({"ok": False, "error": f"unknown op {op!r}"})
        except GroupOpError as exc:
            req.reply({"ok": False, "error": str(exc)})

    async def api_disconnect(self, event: ApiDisconnect, now: float) -> None:
        self._parked = collections.deque(r for r in self._parked if r.conn != event.conn)
        for pub in self._published.values():
            send = pub.send
            if send is not None and send.request is not None and send.request.conn == event.conn:
                pub.send = None  # nobody to answer any more; the messages still go out
        for payload in self.groups.disconnect(event.conn):
            await self._publish(payload, None, now)
        self.control_stats.subscribers = self.groups.subscribers()

    # --- status -------------------------------------------------------------------------

    def driver_stats(self) -> dict[str, int]:
        """What the driver itself counts (beside the Totem core's stats)."""
        return {"backpressure_holds": self.backpressure_holds, "observer_dropped": self.observer_dropped,
                "unknown_destination": self.unknown_destination}

    def ring_info(self, now: float) -> dict[str, Any]:
        totem = self.totem
        return {
            "state": totem.state.name.lower() if self.active else "observer",
            "ring": str(totem.ring_id) if self.active else None,
            "members": list(totem.members) if self.active else [],
            "held_out": sorted(totem.flaps.held(now)),
            "send_queue_len": len(totem.queue),
            "unordered_bytes": self.unordered_bytes,
        }

    # --- sends --------------------------------------------------------------------------

    async def _send(self, req: ApiRequest, now: float) -> None:
        items = req.request["data"]
        limit = self.cfg.totem.message_bytes_max
        for item in items:
            if len(item) > limit:
                req.reply({"ok": False, "error": f"message of {len(item)} bytes exceeds "
                           f"totem.message_bytes_max ({limit})"})
                return
        # Behind parked sends too: a connection may have several sends in flight, and
        # a later one must not overtake an earlier one that waits for room.
        if self.unordered_bytes >= UNORDERED_BYTES_MAX or self._parked:
            if req.request.get("wait", True):
                self._parked.append(req)
            else:
                req.reply({"ok": False, "again": True,
                           "error": "send window full (messages not yet ordered), try again"})
            return
        await self._publish_send(req, items, now)

    async def _publish_send(self, req: ApiRequest, items: list[bytes], now: float) -> None:
        group = req.request["group"]
        safe = bool(req.request.get("safe", False))
        batches: list[list[bytes]] = []
        size = PUBLISH_BYTES_TARGET
        for item in items:
            if size + len(item) > PUBLISH_BYTES_TARGET:
                batches.append([])
                size = 0
            batches[-1].append(item)
            size += len(item) + 3
        pending = _PendingSend(request=req, count=len(items), remaining=len(batches), safe=safe)
        if not batches:
            req.reply({"ok": True, "count": 0})
            return
        for batch in batches:
            payload = self.groups.send(req.conn, req.pid, group, batch)
            await self._publish(payload, pending, now, safe=safe)
        if not safe:
            req.reply({"ok": True, "count": len(items)})
            pending.request = None  # answered

    async def _publish(self, payload: bytes, send: _PendingSend | None, now: float, *,
                       safe: bool = False) -> None:
        msg_id = self._next_msg_id
        self._next_msg_id += 1
        self._published[msg_id] = _Published(send=send, size=len(payload), at=now, safe=safe)
        self.unordered_bytes += len(payload)
        await self._run(self.totem.handle(Publish(msg_id=msg_id, payload=payload, safe=safe), now), now)

    def _settle(self, msg_id: int, now: float, refused: str | None = None) -> None:
        pub = self._published.pop(msg_id, None)
        if pub is None:
            return
        self.unordered_bytes -= pub.size
        if refused is None:
            (self.latency_safe if pub.safe else self.latency_agreed).observe(now - pub.at)
        send = pub.send
        if send is None or send.request is None:
            return
        if refused is not None:
            send.request.reply({"ok": False, "error": f"send refused: {refused}"})
            send.request = None
            return
        send.remaining -= 1
        if send.remaining == 0 and send.safe:
            send.request.reply({"ok": True, "count": send.count})

    async def _unpark(self, now: float) -> None:
        while self._parked and self.unordered_bytes < UNORDERED_BYTES_MAX:
            req = self._parked.popleft()
            await self._publish_send(req, req.request["data"], now)

    # --- effects ------------------------------------------------------------------------

    async def _run(self, effects: list[Any], now: float) -> None:
        """Execute Totem effects in order; our own broadcasts go back into the core."""
        loopback: collections.deque[Any] = collections.deque()
        settled = False
        while True:
            for eff in effects:
                tp = type(eff)
                if tp is Broadcast:
                    data = self._encode(eff.msg)
                    if data is not None:
                        await self.transport.multicast(data)
                    loopback.append(eff.msg)
                elif tp is SendTo:
                    await self._send_to(eff.dest, eff.msg)
                elif tp is Deliver:
                    if eff.origin == self.name:
                        self._settle(eff.msg_id, now)
                        settled = True
                    self._to_clients(self.groups.on_deliver(eff))
                elif tp is ConfigChange:
                    await self._config_change(eff, now)
                elif tp is PersistRingSeq:
                    try:
                        write_ring_seq(self.state_dir, eff.seq)
                    except OSError as exc:
                        self.log.error("cannot persist ring seq in %s: %s", self.state_dir, exc)
                elif tp is SendRefused:
                    self._settle(eff.msg_id, now, refused=eff.reason)
                    settled = True
            if not loopback:
                break
            msg = loopback.popleft()
            effects = self.totem.handle(
                Received(msg=msg, sender=self.name, source=self.transport.local_address), now)
        if settled and self._parked:
            await self._unpark(now)

    async def _send_to(self, dest: str, msg: Any) -> None:
        address = self.addresses.get(dest)
        if address is None:
            self.unknown_destination += 1
            return
        if type(msg) is Token and self._reader_backlog(trio.current_time()) > SUBSCRIBER_BACKLOG_HIGH_BYTES:
            await self._wait_for_readers()
        data = self._encode(msg)
        if data is not None:
            await self.transport.send(address, data)

    async def _check_readers(self, now: float) -> None:
        """Tell Totem when local subscribers that still read fell behind or caught up."""
        self._readers_check_at = now + READERS_CHECK_S
        # Once throttling, go on until they are half-way down again: not on and off per visit.
        high = SUBSCRIBER_BACKLOG_HIGH_BYTES // 2 if self.totem.readers_behind else SUBSCRIBER_BACKLOG_HIGH_BYTES
        behind = self._reader_backlog(now) > high
        if behind != self.totem.readers_behind:
            await self._run(self.totem.handle(ReadersBehind(behind=behind), now), now)

    def _reader_backlog(self, now: float) -> int:
        """The largest backlog of a local subscriber that still reads. One that stopped
        (nothing taken for READER_PROGRESS_S) is neither waited for nor throttled for: it is
        dropped once its buffer is full, and at a low rate that could take for ever."""
        return max((c.queued_bytes for c in self.api_connections.values()
                    if now - c.drained_at < READER_PROGRESS_S), default=0)

    async def _wait_for_readers(self) -> None:
        """Give local subscribers time to catch up before the token (and new messages) move
        on: bounded, so the ring only slows down and never times out."""
        self.backpressure_holds += 1
        limit = BACKPRESSURE_HOLD_MAX_FRACTION * self.cfg.totem.token_retransmit_s
        with trio.move_on_after(limit):
            while self._reader_backlog(trio.current_time()) > SUBSCRIBER_BACKLOG_HIGH_BYTES:
                await trio.sleep(BACKPRESSURE_POLL_S)

    async def _config_change(self, change: ConfigChange, now: float) -> None:
        members = ",".join(change.members)
        self.log.info("%s configuration %s: %s", change.kind.value, change.ring_id, members)
        if change.kind is ConfigKind.REGULAR:
            self.ring_changed_wall = time.time()
        frames, payloads = self.groups.on_config(change)
        self._to_clients(frames)
        for payload in payloads:
            await self._publish(payload, None, now)
        self.control_stats.subscribers = self.groups.subscribers()

    def _to_clients(self, frames: list[Any]) -> None:
        if not frames:
            return
        conns = self.api_connections
        for item in frames:
            conn = conns.get(item.conn)
            if conn is not None:
                conn.push(item.frame, item.size)  # a full buffer makes the server drop that client
        events = self.groups.stats.group_events
        if events != self._group_events_seen:
            # Membership changed: recount (a walk over local members, so not per message).
            self._group_events_seen = events
            self.control_stats.subscribers = self.groups.subscribers()

    def _encode(self, msg: Any) -> bytes | None:
        try:
            return self.codec.encode(self.name, msg)
        except ValueError as exc:
            self.log.error("cannot encode %s: %s", type(msg).__name__, exc)
            return None
