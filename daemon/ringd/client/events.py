"""Events the daemon delivers to a client (messages, ring configurations, group changes),
decoded from their frames. No I/O here."""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Any

from ringd.client.errors import ProtocolError
from ringd.messages import only_of


@dataclass(frozen=True, slots=True)
class MessageEvent:
    """One application message delivered in total order. ``sender`` is the sending node,
    ``member`` the sending process (``node:pid``); ``seq`` counts delivered messages of
    all groups on ring ``ring`` (``"seq.rep"``); ``safe``: every ring member has it."""

    group: str
    sender: str
    member: str
    ring: str
    seq: int
    data: bytes
    safe: bool
    # Delivered in a primary component (None: the daemon decided no quorum).
    primary: bool | None = None


@dataclass(frozen=True, slots=True)
class MessageBatch:
    """One delivered send request (a whole event frame): item ``i`` has seq ``first_seq + i``.
    The client library may have coalesced several send calls of one sender into it."""

    group: str
    sender: str
    member: str
    ring: str
    first_seq: int
    data: tuple[bytes, ...]
    safe: bool
    primary: bool | None = None

    def messages(self) -> list[MessageEvent]:
        """The batch as one :class:`MessageEvent` per item."""
        return [MessageEvent(self.group, self.sender, self.member, self.ring, self.first_seq + i, item,
                             self.safe, self.primary) for i, item in enumerate(self.data)]


@dataclass(frozen=True, slots=True)
class ConfigEvent:
    """A ring configuration: ``kind`` is ``"transitional"`` (the survivors of the old ring)
    or ``"regular"`` (the new ring); ``members`` are node names. ``primary``: it holds a
    quorum of the ``expected`` votes (``votes`` present); every member says the same."""

    kind: str
    ring: str
    members: tuple[str, ...]
    primary: bool | None = None
    votes: int | None = None
    expected: int | None = None


@dataclass(frozen=True, slots=True)
class QuorumEvent:
    """The quorum of our configuration changed within it (expected votes changed by the
    operator or by last man standing), at the same place of the order on every member."""

    ring: str | None
    kind: str | None
    primary: bool
    votes: int
    expected: int
    reason: str


@dataclass(frozen=True, slots=True)
class GroupEvent:
    """A group's membership changed: ``reason`` is join, leave, disconnect or nodedown."""

    group: str
    members: tuple[str, ...]
    joined: tuple[str, ...]
    left: tuple[str, ...]
    reason: str


Event = MessageEvent | ConfigEvent | GroupEvent | QuorumEvent
Batch = MessageBatch | ConfigEvent | GroupEvent | QuorumEvent


def _strs(frame: dict[str, Any], key: str) -> tuple[str, ...]:
    value = frame[key]
    if type(value) is not list or not only_of(value, str):
        raise TypeError(key)
    return tuple(value)


def _typed(frame: dict[str, Any], key: str, tp: type) -> Any:
    value = frame[key]
    if type(value) is not tp:
        raise TypeError(key)
    return value


def _optional(frame: dict[str, Any], key: str, tp: type) -> Any:
    return None if frame.get(key) is None else _typed(frame, key, tp)


def decode_event(frame: Any) -> Batch:
    """An event frame (``{"ev": ...}``) as a dataclass; :class:`ProtocolError` if invalid."""
    try:
        kind = frame["ev"]
        if kind == "message":
            data = frame["data"]
            if type(data) is not list or not only_of(data, bytes):
                raise TypeError("data")
            return MessageBatch(_typed(frame, "group", str), _typed(frame, "sender", str),
                                _typed(frame, "member", str), _typed(frame, "ring", str),
                                _typed(frame, "seq", int), tuple(data), _typed(frame, "safe", bool),
                                _optional(frame, "primary", bool))
        if kind == "config":
            return ConfigEvent(_typed(frame, "kind", str), _typed(frame, "ring", str), _strs(frame, "members"),
                               _optional(frame, "primary", bool), _optional(frame, "votes", int),
                               _optional(frame, "expected", int))
        if kind == "quorum":
            return QuorumEvent(_optional(frame, "ring", str), _optional(frame, "kind", str),
                               _typed(frame, "primary", bool), _typed(frame, "votes", int),
                               _typed(frame, "expected", int), _typed(frame, "reason", str))
        if kind == "group":
            return GroupEvent(_typed(frame, "group", str), _strs(frame, "members"), _strs(frame, "joined"),
                              _strs(frame, "left"), _typed(frame, "reason", str))
    except (KeyError, TypeError) as exc:
        if not isinstance(frame, dict):
            raise ProtocolError(f"an event frame must be a map, not {type(frame).__name__}") from None
        raise ProtocolError(f"invalid {frame.get('ev')!r} event frame (field {exc.args[0]!r})") from None
    raise ProtocolError(f"unknown event type {kind!r}")


def expand(batch: Batch) -> list[Event]:
    """A decoded event frame as the events it holds (a message batch: one per item)."""
    return batch.messages() if isinstance(batch, MessageBatch) else [batch]


def event_json(event: Event) -> dict[str, Any]:
    """The JSON object ``ringd subscribe`` prints for one event."""
    if isinstance(event, MessageEvent):
        out: dict[str, Any] = {"type": "message", "group": event.group, "sender": event.sender,
                               "ring": event.ring, "seq": event.seq}
        if event.primary is not None:
            out["primary"] = event.primary
        try:
            out["data"] = event.data.decode()
        except UnicodeDecodeError:
            out["data_b64"] = base64.b64encode(event.data).decode()
        return out
    if isinstance(event, ConfigEvent):
        out = {"type": "config", "kind": event.kind, "ring": event.ring, "members": list(event.members)}
        if event.primary is not None:
            out.update(primary=event.primary, votes=event.votes, expected=event.expected)
        return out
    if isinstance(event, QuorumEvent):
        return {"type": "quorum", "ring": event.ring, "kind": event.kind, "primary": event.primary,
                "votes": event.votes, "expected": event.expected, "reason": event.reason}
    return {"type": "group", "group": event.group, "members": list(event.members),
            "joined": list(event.joined), "left": list(event.left), "reason": event.reason}
