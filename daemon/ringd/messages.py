"""Wire messages as frozen dataclasses: no bytes, no cbor here.

Every message class is registered with a unique small integer type tag via
:func:`register`. ``wire.py`` encodes and decodes any registered class generically from
its field annotations, so adding a message means adding a dataclass here (or in
``totem_messages.py``) and nothing else.

Tag ranges: 1-31 gossip (this module), 32-63 Totem (``totem_messages``), 64-95 client API.

Field types the codec understands: ``int``, ``float``, ``bool``, ``str``, ``bytes``,
registered message classes (embedded with their tag), ``X | None``, unions of registered
classes, ``tuple[X, ...]`` and ``dict[str, str]``.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

T = TypeVar("T", bound="Message")

MESSAGE_TYPES: dict[int, type[Message]] = {}


class Message:
    """Base of every wire message. ``TYPE`` is the wire tag."""

    __slots__ = ()
    TYPE: ClassVar[int]


def register(tag: int):  # type: ignore[no-untyped-def]
    """Class decorator: give a message class its wire tag (unique, never reused)."""

    def wrap(cls: type[T]) -> type[T]:
        if tag in MESSAGE_TYPES:
            raise RuntimeError(f"wire tag {tag} used by {MESSAGE_TYPES[tag].__name__} and {cls.__name__}")
        cls.TYPE = tag
        MESSAGE_TYPES[tag] = cls
        return cls

    return wrap


def only_of(items: Any, tp: type) -> bool:
    """Every item of ``items`` is exactly of type ``tp``, checked in one C pass (no Python
    step per item: batches of messages run to thousands of items)."""
    return set(map(type, items)) <= {tp}


class MemberState(enum.IntEnum):
    """SWIM member states; the int values are on the wire."""

    ALIVE = 0
    SUSPECT = 1
    DEAD = 2
    LEFT = 3


@register(1)
@dataclass(frozen=True, slots=True, kw_only=True)
class Address(Message):
    """A UDP endpoint."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


# --- Membership updates (piggybacked on probes and acks) -----------------------------


@register(2)
@dataclass(frozen=True, slots=True, kw_only=True)
class Alive(Message):
    """``node`` is alive at ``incarnation``; carries its address and tags."""

    node: str
    incarnation: int
    address: Address
    tags: dict[str, str] = field(default_factory=dict)


@register(3)
@dataclass(frozen=True, slots=True, kw_only=True)
class Suspect(Message):
    """``source`` suspects ``node`` at ``incarnation``."""

    node: str
    incarnation: int
    source: str


@register(4)
@dataclass(frozen=True, slots=True, kw_only=True)
class Dead(Message):
    """``source`` declares ``node`` dead at ``incarnation``."""

    node: str
    incarnation: int
    source: str


@register(5)
@dataclass(frozen=True, slots=True, kw_only=True)
class Left(Message):
    """``node`` left gracefully at ``incarnation`` (announced, not detected)."""

    node: str
    incarnation: int


@register(6)
@dataclass(frozen=True, slots=True, kw_only=True)
class UserEvent(Message):
    """A small application event disseminated by gossip (at-least-once, unordered)."""

    origin: str
    ltime: int  # Lamport time at the origin; (origin, ltime) identifies the event
    name: str
    payload: bytes


Update = Alive | Suspect | Dead | Left | UserEvent


# --- Probes -------------------------------------------------------------------------


@register(8)
@dataclass(frozen=True, slots=True, kw_only=True)
class Ping(Message):
    """Direct probe of ``target`` (its name, so a wrong recipient can tell)."""

    seq: int
    target: str
    piggyback: tuple[Update, ...] = ()


@register(9)
@dataclass(frozen=True, slots=True, kw_only=True)
class PingReq(Message):
    """Ask the recipient to probe ``target`` at ``target_address`` on our behalf."""

    seq: int
    target: str
    target_address: Address
    piggyback: tuple[Update, ...] = ()


@register(10)
@dataclass(frozen=True, slots=True, kw_only=True)
class Ack(Message):
    """Answer to a Ping (or relayed answer to a PingReq) with the same ``seq``."""

    seq: int
    piggyback: tuple[Update, ...] = ()


@register(11)
@dataclass(frozen=True, slots=True, kw_only=True)
class Nack(Message):
    """An indirect helper's 'target did not answer me in time' (Lifeguard)."""

    seq: int


@register(12)
@dataclass(frozen=True, slots=True, kw_only=True)
class Gossip(Message):
    """A gossip round's packet: only piggybacked updates."""

    piggyback: tuple[Update, ...] = ()


# --- State sync and discovery ---------------------------------------------------------


@register(13)
@dataclass(frozen=True, slots=True, kw_only=True)
class MemberRecord(Message):
    """One member's full state, as exchanged by push-pull."""

    node: str
    incarnation: int
    state: int  # MemberState value
    address: Address
    tags: dict[str, str] = field(default_factory=dict)


@register(14)
@dataclass(frozen=True, slots=True, kw_only=True)
class PushPull(Message):
    """Full-state exchange; ``reply`` is False on the request and True on the answer."""

    members: tuple[MemberRecord, ...]
    reply: bool
    join: bool = False


@register(15)
@dataclass(frozen=True, slots=True, kw_only=True)
class Announce(Message):
    """Multicast discovery beacon: 'I exist at this address'. ``alone``: the sender knows no
    other live member (e.g. it just restarted while the others already learned its new
    incarnation from gossip), so whoever hears it answers with its full state."""

    address: Address
    incarnation: int
    alone: bool = False


@register(16)
@dataclass(frozen=True, slots=True, kw_only=True)
class NameConflict(Message):
    """Sent to a newcomer that claims a name held by a live member at another address.

    ``holder_uptime_s``: how long the holder had been running when it sent this itself, or
    a negative number when a third party sends it (the holder's age unknown). Two daemons
    started under one name tell each other at once; the one that ran longer keeps it."""

    node: str
    holder_address: Address
    holder_uptime_s: float = -1.0
