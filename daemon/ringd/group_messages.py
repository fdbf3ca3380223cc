"""Process-group payloads (tags 56-60), carried inside Totem application messages.

They are never sent as datagrams of their own: the runtime publishes
``ringd.wire.encode_payload(msg)`` on the ring, and every daemon decodes the delivered bytes
with ``ringd.wire.decode_payload`` and feeds them to :class:`ringd.core.groups.GroupsCore`.
Because they travel in total order, every daemon applies the same joins, leaves and messages
in the same order.

A member id is ``f"{node}:{pid}"``: the daemon's node name and the client process id.
"""

from __future__ import annotations

from dataclasses import dataclass

from ringd.messages import Message, register


@register(56)
@dataclass(frozen=True, slots=True, kw_only=True)
class GroupJoin(Message):
    """``member`` (a process on the sending node) joins ``group``."""

    group: str
    member: str


@register(57)
@dataclass(frozen=True, slots=True, kw_only=True)
class GroupLeave(Message):
    """``member`` leaves ``group``; ``reason`` is "leave" (asked) or "disconnect"."""

    group: str
    member: str
    reason: str


@register(58)
@dataclass(frozen=True, slots=True, kw_only=True)
class GroupSend(Message):
    """A batch of application messages from ``member`` to every member of ``group``."""

    group: str
    member: str
    items: tuple[bytes, ...]


@register(59)
@dataclass(frozen=True, slots=True, kw_only=True)
class GroupMember(Message):
    """One (group, member) pair, an element of :class:`GroupSync`."""

    group: str
    member: str


@register(60)
@dataclass(frozen=True, slots=True, kw_only=True)
class GroupSync(Message):
    """After a merge: every group membership of ``node``'s local processes.

    Receivers add the listed members they do not know and drop the members of ``node``
    that are not listed, so the merged sides agree again.
    """

    node: str
    members: tuple[GroupMember, ...]


GroupPayload = GroupJoin | GroupLeave | GroupSend | GroupSync
