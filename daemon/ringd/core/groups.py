"""Process groups (like Corosync CPG) on top of Totem's total order: a sans-IO core.

Two kinds of state are kept apart:

* the *delivered view* (group -> members) changes only when an ordered input arrives
  (:meth:`GroupsCore.on_deliver` of a join, leave or sync payload, :meth:`GroupsCore.on_config`),
  so every daemon that installs the same configurations computes the same sequence of views
  and emits the same group events;
* the *local bookkeeping* (which local connection asked for which membership, its
  ``self_discard`` flag) changes at once on local requests; it only decides which local
  connections receive the events, never what the events are.

A local request (:meth:`~GroupsCore.join`, :meth:`~GroupsCore.leave`,
:meth:`~GroupsCore.disconnect`, :meth:`~GroupsCore.send`) only returns payload bytes; the
runtime publishes them on the ring and the change happens when they come back in order.

Bytes are encoded and decoded by injected callables (``ringd.wire.encode_payload`` /
``decode_payload`` in the daemon), so this module knows no codec.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Final

from ringd.core.totem_events import ConfigChange, ConfigKind, Deliver
from ringd.group_messages import GroupJoin, GroupLeave, GroupMember, GroupSend, GroupSync
from ringd.messages import Message, only_of
from ringd.quorum_messages import QuorumExpected
from ringd.totem_messages import RingId

GROUP_NAME_BYTES_MAX: Final = 255
LEAVE_REASONS: Final = frozenset({"leave", "disconnect"})
# Items one datagram can carry is below its size in bytes (< 65536), so seqs never collide.
SEQ_STRIDE: Final = 1 << 16


class GroupOpError(Exception):
    """A local request that cannot be done (bad group name, already joined, not joined)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ToClient:
    """One event frame for one local connection (plain data, ready for ``wire.pack_frame``).

    The ``data`` list of a message frame is shared by every frame of the same delivery:
    treat frames as read-only.
    """

    conn: int
    frame: dict[str, Any]
    size: int = 0  # payload bytes of a message frame (bounds the client's buffer)


@dataclass(slots=True)
class GroupStats:
    """Counters for metrics. Membership counters count changes of the delivered view."""

    joins: int = 0  # members added (join or sync)
    leaves: int = 0  # members removed (leave, disconnect, nodedown or sync)
    messages_delivered: int = 0  # application items delivered in order (once, not per conn)
    bad_payloads: int = 0  # delivered payloads that were undecodable, wrong-typed or invalid
    group_events: int = 0  # group frames produced (once per change, not per conn)
    syncs_sent: int = 0
    syncs_received: int = 0


@dataclass(slots=True)
class _LocalMember:
    """A local process's membership request; ``wanted`` is False once it asked to leave."""

    conn: int
    self_discard: bool
    wanted: bool


def check_group(group: object) -> str:
    """``group`` if it is a valid group name (the one rule, for the API and the ring)."""
    if type(group) is not str or not group:
        raise GroupOpError("'group' must be a non-empty string")
    try:
        size = len(group.encode("utf-8"))
    except UnicodeEncodeError:
        raise GroupOpError("group name is not valid UTF-8") from None
    if size > GROUP_NAME_BYTES_MAX:
        raise GroupOpError(f"group name longer than {GROUP_NAME_BYTES_MAX} UTF-8 bytes")
    return group


def _group_ok(group: str) -> bool:
    try:
        check_group(group)
    except GroupOpError:
        return False
    return True


def _node_of(member: str) -> str:
    return member.rpartition(":")[0]


def _member_of(member: str, node: str) -> bool:
    """``member`` is a well-formed id of a process on ``node``."""
    head, sep, pid = member.rpartition(":")
    return sep == ":" and head == node and pid.isdigit()


class GroupsCore:
    """Process-group membership and message fan-out for one daemon (sans-IO)."""

    def __init__(
        self,
        node: str,
        encode: Callable[[Message], bytes],
        decode: Callable[[bytes], Message],
    ) -> None:
        self.node = node
        self.stats = GroupStats()
        self._encode = encode
        self._decode = decode
        # Delivered view: the same on every daemon of a configuration.
        self._groups: dict[str, set[str]] = {}
        # Local bookkeeping: group -> member -> request, and conn -> group -> member.
        self._local: dict[str, dict[str, _LocalMember]] = {}
        self._conn_groups: dict[int, dict[str, str]] = {}
        # "seq" of an item: its datagram's Totem seq * SEQ_STRIDE + its place among the
        # items delivered from that datagram. Unlike a running count it stays the same on
        # every daemon even when one of them skips a gap during recovery.
        self._seq_key: tuple[RingId, int] | None = None
        self._seq_next = 0
        # The last regular configuration: told to a connection when it first becomes a member.
        # The configuration we are in: the last regular one, or the transitional one after
        # it while the old ring's rest is delivered. A newcomer is told this one.
        self._current: ConfigChange | None = None
        # Members of the transitional configuration since the last regular one (None: none).
        self._transitional: frozenset[str] | None = None
        # Members whose sync of the current configuration we have not delivered yet.
        self._syncs_awaited: set[str] = set()
        # The regular configuration we published our sync in (once per configuration).
        self._synced_in: RingId | None = None
        # Payloads to publish that came of a delivery (a sync answering another's sync);
        # the caller publishes and clears them.
        self.to_publish: list[bytes] = []
        # Quorum fields of the configuration we are in (primary, votes, expected): on
        # configuration frames, and "primary" marks every message delivered in it. Empty
        # when the caller decides no quorum (then frames carry no such fields).
        self._quorum: dict[str, Any] = {}
        # Ordered quorum payloads delivered (not group payloads); the caller takes them.
        self.quorum_payloads: list[tuple[Deliver, QuorumExpected]] = []

    # --- Local requests ----------------------------------------------------------------

    def join(self, conn: int, pid: int, group: str, *, self_discard: bool = False) -> bytes:
        """Ask to add process ``pid`` (on connection ``conn``) to ``group``: payload to publish."""
        check_group(group)
        member = f"{self.node}:{pid}"
        by_member = self._local.setdefault(group, {})
        entry = by_member.get(member)
        if entry is not None and entry.wanted:
            raise GroupOpError(f"process {pid} already joined group {group!r}")
        if entry is not None and entry.conn != conn:
            # A leave of the same process is still in flight from an older connection:
            # the new connection takes the membership over.
            self._conn_groups.get(entry.conn, {}).pop(group, None)
        by_member[member] = _LocalMember(conn=conn, self_discard=self_discard, wanted=True)
        self._conn_groups.setdefault(conn, {})[group] = member
        return self._encode(GroupJoin(group=group, member=member))

    def leave(self, conn: int, group: str) -> bytes:
        """Ask to remove ``conn``'s process from ``group``: payload to publish."""
        member = self._conn_groups.get(conn, {}).get(group)
        entry = None if member is None else self._local[group][member]
        if entry is None or not entry.wanted:
            raise GroupOpError(f"not a member of group {group!r}")
        entry.wanted = False
        return self._encode(GroupLeave(group=group, member=member, reason="leave"))

    def disconnect(self, conn: int) -> list[bytes]:
        """``conn`` closed: a "disconnect" leave per group it joined; it gets no more frames."""
        payloads: list[bytes] = []
        for group, member in sorted(self._conn_groups.pop(conn, {}).items()):
            by_member = self._local[group]
            entry = by_member.pop(member)
            if not by_member:
                del self._local[group]
            if entry.wanted:
                payloads.append(self._encode(GroupLeave(group=group, member=member,
                                                        reason="disconnect")))
        return payloads

    def send(self, conn: int, pid: int, group: str, items: Sequence[bytes]) -> bytes:
        """A batch of messages from process ``pid`` to ``group``: payload to publish.

        The sender need not be a member. ``conn`` is not needed to build the payload; it is
        part of the signature so that every local request names its connection.
        """
        check_group(group)
        batch = tuple(items)
        if not batch:
            raise GroupOpError("nothing to send")
        if not only_of(batch, bytes):
            raise GroupOpError("every message must be bytes")
        return self._encode(GroupSend(group=group, member=f"{self.node}:{pid}", items=batch))

    # --- Ordered input -----------------------------------------------------------------

    def on_deliver(self, d: Deliver) -> list[ToClient]:
        """An ordered payload: update the delivered view and fan out frames to local conns.

        Payloads that do not decode, are not group payloads, or claim a member of another
        node than their origin are counted in ``stats.bad_payloads`` and ignored.
        """
        try:
            msg = self._decode(d.payload)
        except Exception:  # the decoder is injected; whatever it raises, the payload is bad
            self.stats.bad_payloads += 1
            return []
        return self.on_message(d, msg)

    def on_message(self, d: Deliver, msg: Any) -> list[ToClient]:
        """:meth:`on_deliver` for a payload the caller decoded already (``d.payload`` is
        ``msg``'s bytes)."""
        if type(msg) is GroupSend:
            if _group_ok(msg.group) and _member_of(msg.member, d.origin):
                return self._deliver_send(d, msg)
        elif type(msg) is GroupJoin:
            if _group_ok(msg.group) and _member_of(msg.member, d.origin):
                return self._change(msg.group, joined=(msg.member,), left=(), reason="join")
        elif type(msg) is GroupLeave:
            if (_group_ok(msg.group) and _member_of(msg.member, d.origin)
                    and msg.reason in LEAVE_REASONS):
                return self._change(msg.group, joined=(), left=(msg.member,), reason=msg.reason)
        elif type(msg) is QuorumExpected:
            self.quorum_payloads.append((d, msg))
            return []
        elif type(msg) is GroupSync:
            if msg.node == d.origin and all(
                    type(gm) is GroupMember and _group_ok(gm.group)
                    and _member_of(gm.member, d.origin) for gm in msg.members):
                current = self._current
                if (current is not None and current.kind is ConfigKind.REGULAR
                        and d.ring_id == current.ring_id and self._synced_in != current.ring_id):
                    # A member syncs in this configuration and we did not: it may lack what
                    # we know (its view came another way), so ours goes out too.
                    self._synced_in = current.ring_id
                    self.stats.syncs_sent += 1
                    self.to_publish.append(self._encode(self._sync_payload()))
                return self._deliver_sync(msg)
        self.stats.bad_payloads += 1
        return []

    def on_config(self, c: ConfigChange, quorum: dict[str, Any] | None = None
                  ) -> tuple[list[ToClient], list[bytes]]:
        """A configuration change: frames for local conns, and payloads to publish.

        ``quorum`` (primary, votes, expected) goes on the configuration frame, and its
        ``primary`` marks the messages delivered in this configuration.

        Transitional: a config frame, then a "nodedown" group frame per group that lost
        members of nodes outside the configuration. Regular: a config frame and, when nodes
        joined us (merge, first ring), a :class:`GroupSync` payload listing our members; also
        when the previous configuration ended before every sync of its merge was delivered
        (its members may then hold different views, and moving on together, as a subset,
        would otherwise keep them different for good). A member that did not sync answers
        the first sync it delivers with its own (:attr:`to_publish`), so once anyone syncs,
        everyone does and all end with one view.
        """
        members = frozenset(c.members)
        if quorum is not None:
            self._quorum = dict(quorum)
        if c.kind is ConfigKind.TRANSITIONAL:
            out = self._config_frames(c)
            out.extend(self._nodedown(members))
            self._transitional = members
            self._current = c
            return out, []
        # Regular members include the transitional ones, so nodedown here is only a guard
        # against a missing transitional configuration; its frames precede the config frame.
        out = self._nodedown(members)
        out.extend(self._config_frames(c))
        payloads: list[bytes] = []
        merged = self._transitional is None or not members <= self._transitional
        if merged or self._syncs_awaited:
            payloads.append(self._encode(self._sync_payload()))
            self.stats.syncs_sent += 1
            self._syncs_awaited = set(members)
            self._synced_in = c.ring_id
        self._transitional = None
        self._current = c
        return out, payloads

    def on_quorum(self, quorum: dict[str, Any], reason: str) -> list[ToClient]:
        """Our configuration's quorum changed within it (an ordered override): a quorum
        frame for every local member connection."""
        self._quorum = dict(quorum)
        current = self._current
        frame = {"ev": "quorum", "reason": reason, **quorum,
                 "ring": None if current is None else str(current.ring_id),
                 "kind": None if current is None else current.kind.value}
        return [ToClient(conn=conn, frame=dict(frame)) for conn in sorted(self._member_conns())]

    # --- Queries -----------------------------------------------------------------------

    def members(self, group: str | None = None) -> dict[str, list[str]]:
        """The delivered view, sorted: every non-empty group, or just ``group`` (maybe [])."""
        if group is not None:
            return {group: sorted(self._groups.get(group, ()))}
        return {g: sorted(ms) for g, ms in sorted(self._groups.items())}

    def subscribers(self) -> int:
        """How many local connections are members (delivered) of at least one group."""
        return len(self._member_conns())

    # --- Internals ---------------------------------------------------------------------

    def _deliver_send(self, d: Deliver, msg: GroupSend) -> list[ToClient]:
        key = (d.ring_id, d.seq)
        if self._seq_key != key:
            self._seq_key = key
            self._seq_next = 0
        first_seq = d.seq * SEQ_STRIDE + self._seq_next
        self._seq_next += len(msg.items)
        self.stats.messages_delivered += len(msg.items)
        delivered = self._groups.get(msg.group)
        local = self._local.get(msg.group)
        if not delivered or not local:
            return []
        conns = sorted({e.conn for m, e in local.items()
                        if m in delivered and not (e.self_discard and m == msg.member)})
        if not conns:
            return []
        # One shared list for every frame: no per-item work on the hot path.
        data = list(msg.items)
        base = {"ev": "message", "group": msg.group, "sender": d.origin, "member": msg.member,
                "ring": str(d.ring_id), "seq": first_seq, "safe": d.safe, "data": data}
        if self._quorum:
            base["primary"] = self._quorum["primary"]
        size = len(d.payload)
        return [ToClient(conn=conn, frame=dict(base), size=size) for conn in conns]

    def _deliver_sync(self, msg: GroupSync) -> list[ToClient]:
        self.stats.syncs_received += 1
        self._syncs_awaited.discard(msg.node)
        listed: dict[str, set[str]] = {}
        for gm in msg.members:
            listed.setdefault(gm.group, set()).add(gm.member)
        out: list[ToClient] = []
        for group in sorted(set(listed) | set(self._groups)):
            known = self._groups.get(group, set())
            wanted = listed.get(group, set())
            stale = [m for m in known if m not in wanted and _node_of(m) == msg.node]
            out.extend(self._change(group, joined=(), left=stale, reason="leave"))
            out.extend(self._change(group, joined=wanted - known, left=(), reason="join"))
        return out

    def _nodedown(self, alive: frozenset[str]) -> list[ToClient]:
        out: list[ToClient] = []
        for group in sorted(self._groups):
            gone = [m for m in self._groups[group] if _node_of(m) not in alive]
            out.extend(self._change(group, joined=(), left=gone, reason="nodedown"))
        return out

    def _change(self, group: str, *, joined: Iterable[str], left: Iterable[str],
                reason: str) -> list[ToClient]:
        """Apply one membership change to the delivered view; frames for local members.

        Members already in (for joins) or already out (for leaves) are ignored, so repeated
        or raced requests (a join and a sync listing it) are harmless; nothing changed means
        no frame.
        """
        current = self._groups.get(group, set())
        added = sorted(m for m in set(joined) if m not in current)
        removed = sorted(m for m in set(left) if m in current)
        if not added and not removed:
            return []
        newcomers = self._new_member_conns(group, added)
        current = self._groups.setdefault(group, current)
        current.update(added)
        current.difference_update(removed)
        if not current:
            del self._groups[group]
        self.stats.joins += len(added)
        self.stats.leaves += len(removed)
        self.stats.group_events += 1
        frame = {"ev": "group", "group": group, "members": sorted(current),
                 "joined": added, "left": removed, "reason": reason}
        local = self._local.get(group, {})
        conns = {e.conn for m, e in local.items() if m in current}
        conns.update(local[m].conn for m in removed if m in local)
        # A local process that asked to leave is forgotten once it is out of the view.
        for m in removed:
            entry = local.get(m)
            if entry is not None and not entry.wanted:
                self._forget(group, m, entry.conn)
        out = []
        if newcomers and self._current is not None:
            # A new subscriber learns the configuration it is in before anything else.
            out = [ToClient(conn=conn, frame=self._config_frame(self._current)) for conn in newcomers]
        out.extend(ToClient(conn=conn, frame=dict(frame)) for conn in sorted(conns))
        return out

    def _new_member_conns(self, group: str, added: list[str]) -> list[int]:
        """Local connections that become a member of their first group through ``added``."""
        local = self._local.get(group, {})
        conns = {local[m].conn for m in added if m in local}
        return sorted(conns - self._member_conns()) if conns else []

    def _forget(self, group: str, member: str, conn: int) -> None:
        by_member = self._local[group]
        del by_member[member]
        if not by_member:
            del self._local[group]
        groups = self._conn_groups.get(conn)
        if groups is not None and groups.get(group) == member:
            del groups[group]
            if not groups:
                del self._conn_groups[conn]

    def _member_conns(self) -> set[int]:
        return {e.conn for group, by_member in self._local.items()
                for m, e in by_member.items() if m in self._groups.get(group, ())}

    def _config_frames(self, c: ConfigChange) -> list[ToClient]:
        frame = self._config_frame(c)
        return [ToClient(conn=conn, frame=dict(frame)) for conn in sorted(self._member_conns())]

    def _config_frame(self, c: ConfigChange) -> dict[str, Any]:
        return {"ev": "config", "kind": c.kind.value, "ring": str(c.ring_id),
                "members": sorted(c.members), **self._quorum}

    def _sync_payload(self) -> GroupSync:
        # Our processes' memberships as asked locally (not only as delivered): a join or
        # leave still in flight is ordered after this sync (sender FIFO) or already
        # delivered before it, and either way every daemon ends with the same view.
        pairs = sorted((group, m) for group, by_member in self._local.items()
                       for m, e in by_member.items() if e.wanted)
        return GroupSync(node=self.node,
                         members=tuple(GroupMember(group=g, member=m) for g, m in pairs))
