"""Recovery: exchange the old ring's messages, then install the new configuration.

On entering Recovery every member knows, from the commit token, each new member's old ring
id, aru and highest received seq. Members that come from the same old ring as we do form
our *transitional* group. Between them, every old-ring datagram above the group's lowest
aru is rebroadcast on the new ring, encapsulated (:class:`Recovered`): the member with the
highest aru resends everything from the lowest aru up to its own aru, and every member
resends what it holds above that aru. The new ring orders and repairs these like any
datagram, so once the token has gone round with nothing sent or missing, every member of
the group holds the same old-ring datagrams.

Then each member delivers (paper §5, corosync ``memb_state_operational_enter``):

1. in the old regular configuration, the old-ring datagrams that follow without a gap
   from its delivery point: everything up to the highest seq any group member had
   already delivered (all of them must deliver those in the old configuration too), then
   agreed datagrams up to the first safe one (a safe one needs the whole old ring);
2. the transitional configuration (the group: old members moving on together);
3. the remaining old-ring datagrams in seq order, skipping gaps (no group member has
   them; their senders are not in the transitional configuration);
4. the regular configuration of the new ring.

Every group member holds the same datagrams and the same commit token, so they all deliver
the same messages in each configuration (failure atomicity).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from ringd.core.totem_events import ConfigChange, ConfigKind
from ringd.core.totem_ring import Entry, Ring, SendSource
from ringd.totem_messages import CommitEntry, Mcast, Recovered, RingId


def transitional_group(entries: dict[str, CommitEntry], me: str) -> list[CommitEntry]:
    """The new members that come from our old ring (none when we have no old ring)."""
    mine = entries[me]
    if mine.fresh:
        return []
    return [e for e in entries.values() if not e.fresh and e.old_ring_id == mine.old_ring_id]


@dataclass(slots=True)
class RecoverySource(SendSource):
    """Old-ring entries we must rebroadcast, oldest first (a token visit's send source)."""

    old_ring_id: RingId
    todo: list[tuple[int, Entry | object]]
    next_index: int = 0

    def backlog(self) -> int:
        return len(self.todo) - self.next_index

    def make(self, ring_id: RingId, seq: int, me: str) -> Entry | None:
        if self.next_index >= len(self.todo):
            return None
        old_seq, entry = self.todo[self.next_index]
        self.next_index += 1
        mcast = entry if type(entry) is Mcast else None
        return Recovered(ring_id=ring_id, seq=seq, sender=me, old_ring_id=self.old_ring_id,
                         old_seq=old_seq, mcast=mcast)


def plan_recovery(entries: dict[str, CommitEntry], me: str, old: Ring | None) -> RecoverySource:
    """What we rebroadcast so that every group member ends with the same old-ring datagrams."""
    group = transitional_group(entries, me)
    if old is None or len(group) < 2:
        ring_id = old.ring_id if old is not None else entries[me].old_ring_id
        return RecoverySource(old_ring_id=ring_id, todo=[])
    low = min(e.aru for e in group)
    high = max(e.high_received for e in group)
    best = min(group, key=lambda e: (-e.aru, e.node))  # highest aru, then lowest name
    start = low if best.node == me else best.aru
    msgs = old.msgs
    todo = [(seq, msgs[seq]) for seq in range(start + 1, max(high, old.high_seq) + 1)
            if seq in msgs]
    return RecoverySource(old_ring_id=old.ring_id, todo=todo)


def deliver_old_ring(*, old: Ring, group: list[CommitEntry], new_ring_id: RingId, out: list,
                     emit: Callable[[list, Mcast, int, RingId], None]) -> None:
    """Steps 1-3 above: old configuration, transitional configuration, the rest."""
    high_delivered = max(e.high_delivered for e in group)
    # Gaps stop it: what lies beyond is delivered after the transitional configuration.
    old.deliver_upto(out, emit, limit=math.inf, safe_bound=high_delivered)
    msgs, ring_id, seq = old.msgs, old.ring_id, old.delivered_seq
    members = tuple(sorted(e.node for e in group))
    votes = tuple(sorted(group, key=lambda e: e.node))
    out.append(ConfigChange(kind=ConfigKind.TRANSITIONAL, ring_id=new_ring_id, members=members,
                            votes=votes))
    for later in sorted(s for s in msgs if s > seq):
        entry = msgs[later]
        if type(entry) is Mcast:
            emit(out, entry, later, ring_id)
    old.delivered_seq = max(seq, old.high_seq)
