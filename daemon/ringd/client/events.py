"""Events the daemon delivers to a client (messages, ring configurations, group changes),
decoded from their frames. No I/O here."""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Any

from ringd.client.errors import ProtocolError


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

    def messages(self) -> list[MessageEvent]:
        """The batch as one :class:`MessageEvent` per item."""
        return [MessageEvent(self.group, self.sender, self.member, self.ring, self.first_seq + i, item,
                             self.safe) for i, item in enumerate(self.data)]


@dataclass(frozen=True, slots=True)
class ConfigEvent:
    """A ring configuration: ``kind`` is ``"transitional"`` (the survivors of the old ring)
    or ``"regular"`` (the new ring); ``members`` are node names."""

    kind: str
    ring: str
    members: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class GroupEvent:
    """A group's membership changed: ``reason`` is join, leave, disconnect or nodedown."""

    group: str
    members: tuple[str, ...]
    joined: tuple[str, ...]
    left: tuple[str, ...]
    reason: str


Event = MessageEvent | ConfigEvent | GroupEvent
Batch = MessageBatch | ConfigEvent | GroupEvent


def _strs(frame: dict[str, Any], key: str) -> tuple[str, ...]:
    value = frame[key]
    if type(value) is not list or not all(type(v) is str for v in value):
        raise TypeError(key)
    return tuple(value)


def _typed(frame: dict[str, Any], key: str, tp: type) -> Any:
    value = frame[key]
    if type(value) is not tp:
        raise TypeError(key)
    return value


def decode_event(frame: Any) -> Batch:
    """An event frame (``{"ev": ...}``) as a dataclass; :class:`ProtocolError` if invalid."""
    try:
        kind = frame["ev"]
        if kind == "message":
            data = frame["data"]
            if type(data) is not list or not all(type(d) is bytes for d in data):
                raise TypeError("data")
            return MessageBatch(_typed(frame, "group", str), _typed(frame, "sender", str),
                                _typed(frame, "member", str), _typed(frame, "ring", str),
                                _typed(frame, "seq", int), tuple(data), _typed(frame, "safe", bool))
        if kind == "config":
            return ConfigEvent(_typed(frame, "kind", str), _typed(frame, "ring", str), _strs(frame, "members"))
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
        try:
            out["data"] = event.data.decode()
        except UnicodeDecodeError:
            out["data_b64"] = base64.b64encode(event.data).decode()
        return out
    if isinstance(event, ConfigEvent):
        return {"type": "config", "kind": event.kind, "ring": event.ring, "members": list(event.members)}
    return {"type": "group", "group": event.group, "members": list(event.members),
            "joined": list(event.joined), "left": list(event.left), "reason": event.reason}
