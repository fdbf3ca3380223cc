"""Inputs to and effects out of the protocol cores (one frozen dataclass each).

A core is driven as ``effects = core.handle(event, now)``; between inputs the driver
sleeps until ``core.next_deadline()`` and then hands it a :class:`Tick`. Cores never read
the clock, never touch sockets and never use the global random.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ringd.messages import Address, Message

# --- Inputs ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Received:
    """A decoded, authenticated datagram from ``source`` (its UDP address) sent by ``sender``."""

    msg: Message
    sender: str
    source: Address


@dataclass(frozen=True, slots=True, kw_only=True)
class Tick:
    """The driver woke at (or after) ``next_deadline()``."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Start:
    """Begin: announce ourselves, contact seeds."""


@dataclass(frozen=True, slots=True, kw_only=True)
class LeaveCluster:
    """Graceful leave: disseminate Left, then report :class:`LeaveDone`."""


@dataclass(frozen=True, slots=True, kw_only=True)
class SetTags:
    """Replace our tags (disseminated with a higher incarnation)."""

    tags: dict[str, str]


@dataclass(frozen=True, slots=True, kw_only=True)
class SendUserEvent:
    """Disseminate a small application event by gossip."""

    name: str
    payload: bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class ClientBacklog:
    """What the runtime observed of one client connection's outgoing buffer: ``queued_bytes``
    not yet taken by the kernel, and when it last took some (``drained_at``, the runtime's
    clock). The node core decides from these whether local readers hold the ring up."""

    conn: int
    queued_bytes: int
    drained_at: float


@dataclass(frozen=True, slots=True, kw_only=True)
class PublishInternal:
    """Order a daemon-internal payload (a keyring op or answer) on the ring, agreed."""

    payload: bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class RelayInternal:
    """Send a keyring op or answer straight to ``dest``: the way to a gossip-only observer,
    which the ring does not reach (and back from it)."""

    dest: str
    msg: Message


Input = Received | Tick | Start | LeaveCluster | SetTags | SendUserEvent


# --- Effects --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Send:
    """Unicast ``msg`` to ``dest``."""

    dest: Address
    msg: Message


@dataclass(frozen=True, slots=True, kw_only=True)
class Multicast:
    """Send ``msg`` to the multicast group (the runtime decides self-delivery explicitly)."""

    msg: Message


@dataclass(frozen=True, slots=True, kw_only=True)
class MemberChanged:
    """A member's state (or incarnation/tags) changed in our view."""

    node: str
    old_state: str | None  # MemberState name, None for a newly seen member
    new_state: str
    incarnation: int
    address: Address
    tags: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True, kw_only=True)
class UserEventDelivered:
    """A gossip user event reached us (once per (origin, ltime))."""

    origin: str
    ltime: int
    name: str
    payload: bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class LeaveDone:
    """Our Left update has been disseminated (or the leave deadline passed)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Fatal:
    """The core cannot go on (e.g. our name is held by another live daemon)."""

    reason: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Log:
    """A transition worth a log line (cores do not log; the runtime does)."""

    level: str
    text: str
    fields: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True, kw_only=True)
class Reply:
    """Answer client request ``request_id`` with ``body`` (``{"ok": True, ...}`` or an error)."""

    request_id: int
    body: dict[str, Any]


@dataclass(frozen=True, slots=True, kw_only=True)
class Persist:
    """Durably store counter ``key`` (``"incarnation"``, ``"ring_seq"``) before going on."""

    key: str
    value: int


@dataclass(frozen=True, slots=True, kw_only=True)
class KeyMessageDelivered:
    """A keyring payload (:mod:`ringd.key_messages`) delivered in total order, by ``origin``,
    while the ring had ``members``; the runtime applies it to the keyring. ``relayed``: it
    came straight from ``origin`` (:class:`RelayInternal`), not through the ring."""

    origin: str
    msg: Message
    members: tuple[str, ...]
    relayed: bool = False


Effect = Send | Multicast | MemberChanged | UserEventDelivered | LeaveDone | Fatal | Log
