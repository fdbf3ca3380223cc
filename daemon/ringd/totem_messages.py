"""Totem wire messages (tags 32-63). Owned by the Totem core; encoded generically by ``wire.py``.

Only :class:`RingId` is fixed by the shared contract; the Totem implementation adds its
messages (token, mcast, join, commit token, merge detect, token hold cancel) here.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ringd.messages import Message, register


@register(32)
@dataclass(frozen=True, slots=True, kw_only=True, order=True)
class RingId(Message):
    """A ring's identity: its sequence number (only grows, persisted) and representative."""

    seq: int
    rep: str

    def __str__(self) -> str:
        return f"{self.seq}.{self.rep}"


# --- Ordering (operational and recovery) ---------------------------------------------


@register(33)
@dataclass(frozen=True, slots=True, kw_only=True)
class Chunk(Message):
    """One application message, or one fragment of it (``index`` of ``count``)."""

    msg_id: int
    safe: bool
    index: int
    count: int
    data: bytes


@register(34)
@dataclass(frozen=True, slots=True, kw_only=True)
class Mcast(Message):
    """A datagram ordered at ``seq`` on ``ring_id``, packing chunks of ``origin``'s messages.

    ``safe`` is True when any chunk is safe: the whole datagram then waits for the aru.
    """

    ring_id: RingId
    seq: int
    origin: str
    safe: bool
    chunks: tuple[Chunk, ...]


@register(35)
@dataclass(frozen=True, slots=True, kw_only=True)
class Recovered(Message):
    """Entry ``old_seq`` of ``old_ring_id``, rebroadcast (encapsulated) at ``seq`` of the new ring.

    ``mcast`` is the old-ring datagram, or None when that old entry carried no application
    data (it was itself a recovery datagram of the old ring).
    """

    ring_id: RingId
    seq: int
    sender: str
    old_ring_id: RingId
    old_seq: int
    mcast: Mcast | None


@register(36)
@dataclass(frozen=True, slots=True, kw_only=True)
class Token(Message):
    """The ORF token (ordering, reliability, flow control), unicast to the next member.

    ``token_seq`` grows by one per hop (duplicates and stale copies are dropped); ``seq`` is
    the highest sequence number assigned on the ring; ``aru``/``aru_id`` the paper's
    all-received-up-to and who lowered it; ``rtr`` the seqs someone still misses;
    ``fcc``/``backlog`` the flow-control sums of every member's last contribution.
    In Recovery ``retrans_flg`` says someone still sent or missed something this rotation
    and ``install`` counts the quiet rotations seen by the representative.
    """

    ring_id: RingId
    token_seq: int
    seq: int
    aru: int
    aru_id: str
    rtr: tuple[int, ...]
    fcc: int
    backlog: int
    retrans_flg: bool
    install: int


# --- Membership ----------------------------------------------------------------------


@register(37)
@dataclass(frozen=True, slots=True, kw_only=True)
class Join(Message):
    """Gather: the processors the sender believes up (``proc``) and failed (``fail``)."""

    proc: tuple[str, ...]
    fail: tuple[str, ...]
    ring_seq: int  # the highest ring seq the sender has seen (or persisted)
    # Members the sender holds out as flapping, with the seconds its hold has left: the
    # receivers hold them out as long, so every member keeps the same ones out (see
    # ringd.core.totem_flap). Not part of consensus.
    held: dict[str, float] = field(default_factory=dict)


@register(38)
@dataclass(frozen=True, slots=True, kw_only=True)
class CommitEntry(Message):
    """One member's state on its old ring, filled in on the commit token's first rotation."""

    node: str
    old_ring_id: RingId
    fresh: bool  # no old ring at all (just started): no transitional configuration
    aru: int
    high_delivered: int
    high_received: int
    # Quorum inputs of this member (see ringd.core.quorum). They travel in the commit token
    # so that every member of the new ring decides primary / not primary from the same data.
    votes: int = 1
    expected_votes: int = 0
    waiting: bool = False  # wait_for_all: not yet in a primary component since it started
    two_node: bool = False


@register(39)
@dataclass(frozen=True, slots=True, kw_only=True)
class CommitToken(Message):
    """Built by the representative on consensus; circulates twice around ``members``."""

    ring_id: RingId
    token_seq: int
    members: tuple[str, ...]
    entries: tuple[CommitEntry, ...]


@register(40)
@dataclass(frozen=True, slots=True, kw_only=True)
class MergeDetect(Message):
    """Broadcast by the representative of an idle ring: other rings hearing it merge."""

    ring_id: RingId


@register(41)
@dataclass(frozen=True, slots=True, kw_only=True)
class TokenHoldCancel(Message):
    """A member has something to send: the representative releases the held token."""

    ring_id: RingId




@register(42)
@dataclass(frozen=True, slots=True, kw_only=True)
class TokenAck(Message):
    """'I already have this token': the answer to a resent (duplicate) token or commit token.

    It stops the sender's retransmissions, and tells a sender whose successor never
    answers that the token died there (token loss then fails that successor at once).
    """

    ring_id: RingId
    token_seq: int


TotemMessage = (Mcast | Recovered | Token | Join | CommitToken | MergeDetect | TokenHoldCancel
                | TokenAck)
