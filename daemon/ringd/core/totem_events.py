"""Inputs to and effects out of the Totem core, beside the shared ones in ``events.py``.

The Totem core reuses :class:`ringd.core.events.Received` and :class:`~ringd.core.events.Tick`
as inputs. Members are identified by node name (str); ring order is the sorted order of
names. The runtime maps names to addresses; the simulator uses names directly.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from ringd.core.events import Multicast
from ringd.messages import Message
from ringd.totem_messages import CommitEntry, RingId

# --- Inputs ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Publish:
    """An application message to order. ``msg_id`` is chosen by the caller, unique per sender."""

    msg_id: int
    payload: bytes
    safe: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class PeerAlive:
    """Gossip says ``node`` is alive and ring-capable (hint: may trigger a merge)."""

    node: str


@dataclass(frozen=True, slots=True, kw_only=True)
class VoteInfo:
    """What this member brings to the quorum decision of a new configuration. Totem only
    carries it (in its commit token entry); the node core's quorum module decides."""

    votes: int = 1
    expected_votes: int = 0
    waiting: bool = False
    two_node: bool = False


DEFAULT_VOTES = VoteInfo()


@dataclass(frozen=True, slots=True, kw_only=True)
class PeerDead:
    """Gossip says ``node`` is dead or left (hint: a ring member → Gather at once)."""

    node: str


@dataclass(frozen=True, slots=True, kw_only=True)
class ReadersBehind:
    """Local receivers of delivered messages are (``behind=True``) or are no longer behind.

    While behind, this member claims the whole flow-control window at each of its token
    visits, so no member (itself included) orders new messages until its readers catch up;
    retransmissions still flow. The runtime says so only for readers that keep reading:
    one that stopped must not hold the ring up (it is dropped instead).
    """

    behind: bool


# --- Effects --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class SendTo:
    """Unicast ``msg`` to member ``dest`` (token, commit token)."""

    dest: str
    msg: Message


# Totem multicasts with the node's own effect: one vocabulary. The node core also hands our
# own copy back to Totem at once (the kernel's looped-back copy would arrive late, if at all).
Broadcast = Multicast


class ConfigKind(enum.Enum):
    TRANSITIONAL = "transitional"
    REGULAR = "regular"


@dataclass(frozen=True, slots=True, kw_only=True)
class Deliver:
    """Deliver one application message, in total order, within configuration ``ring_id``."""

    ring_id: RingId  # the configuration it is delivered in (old ring id for transitional)
    seq: int  # its Totem sequence number on the ring it was ordered on
    origin: str
    msg_id: int
    payload: bytes
    safe: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class ConfigChange:
    """Install a configuration: transitional (old ∩ new) then regular (new ring)."""

    kind: ConfigKind
    ring_id: RingId
    members: tuple[str, ...]
    # The members' commit token entries (their quorum inputs), the same at every member.
    votes: tuple[CommitEntry, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class PersistRingSeq:
    """Durably store ``seq`` before going on; a restart passes it back to the core."""

    seq: int


@dataclass(frozen=True, slots=True, kw_only=True)
class SendRefused:
    """A Publish could not be queued (backpressure: send queue full, or too large)."""

    msg_id: int
    reason: str


@dataclass(frozen=True, slots=True, kw_only=True)
class RingLeft:
    """We stopped belonging to ring ``ring_id``: back to Gather from Operational in it, or
    from Commit or Recovery towards it. From then on no message can become safe in it
    through us (its token cannot complete a rotation). Logged, so that real histories can
    be checked for one primary component at a time as the simulator's are."""

    ring_id: RingId
    reason: str  # a Reason value: why we went back to Gather


TotemEffect = SendTo | Multicast | Deliver | ConfigChange | PersistRingSeq | SendRefused | RingLeft
