"""Client API requests as typed inputs of the node core, validated once at the API boundary.

The control server receives plain CBOR maps from applications. :func:`parse_request` turns
one into exactly one of the frozen dataclasses below (or raises :class:`BadRequest` with a
one-line reason); nothing after it looks at the map again, so defaults and rules live here
only. ``conn`` names the client connection, ``pid`` its process, ``request_id`` the
runtime's handle for the reply (the core answers with :class:`~ringd.core.node_effects.Reply`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

from ringd.core.groups import GroupOpError, check_group
from ringd.messages import only_of

# Application data in one send request (all items together).
API_SEND_BYTES_MAX: Final = 1 << 20
# Largest expected votes an operator may set (as quorum.expected_votes allows).
EXPECTED_VOTES_MAX: Final = 100000


class BadRequest(Exception):
    """A client API request that cannot be accepted; ``str()`` is one line."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ClientRequest:
    """Fields every client request has."""

    conn: int
    pid: int
    request_id: int


@dataclass(frozen=True, slots=True, kw_only=True)
class JoinGroup(ClientRequest):
    """Add the client's process to ``group``; ``self_discard``: it gets none of its own messages."""

    group: str
    self_discard: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class LeaveGroup(ClientRequest):
    """Remove the client's process from ``group``."""

    group: str


@dataclass(frozen=True, slots=True, kw_only=True)
class SendMessages(ClientRequest):
    """Order ``data`` (one or more messages, kept consecutive) to ``group``.

    ``safe``: answered once every ring member has them (else once queued for the ring).
    ``wait``: with no room in the send window, wait for it (else answer try-again at once).
    """

    group: str
    data: tuple[bytes, ...]
    safe: bool = False
    wait: bool = True

    @property
    def size(self) -> int:
        return sum(map(len, self.data))


@dataclass(frozen=True, slots=True, kw_only=True)
class QueryMembers(ClientRequest):
    """The delivered membership of ``group`` (every group when None)."""

    group: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class QueryRing(ClientRequest):
    """The Totem state, ring id and members as this node sees them."""


@dataclass(frozen=True, slots=True, kw_only=True)
class QueryQuorum(ClientRequest):
    """The quorum state: quorate, votes present, expected votes, quorum, options."""


@dataclass(frozen=True, slots=True, kw_only=True)
class SetExpectedVotes(ClientRequest):
    """Operator override: every member of our configuration sets its expected votes to
    ``expected`` (ordered through the ring, logged on every daemon)."""

    expected: int


@dataclass(frozen=True, slots=True, kw_only=True)
class ClientGone:
    """Connection ``conn`` ended: its group memberships end ("disconnect")."""

    conn: int


Request = (JoinGroup | LeaveGroup | SendMessages | QueryMembers | QueryRing | QueryQuorum
           | SetExpectedVotes)

# The ops of the client API and the request each becomes.
OP_OF: Final[dict[type, str]] = {JoinGroup: "group_join", LeaveGroup: "group_leave",
                                 SendMessages: "send", QueryMembers: "group_members",
                                 QueryRing: "ring", QueryQuorum: "quorum",
                                 SetExpectedVotes: "quorum_expected"}
API_OPS: Final = tuple(OP_OF.values())


def _group(request: dict[str, Any], op: str) -> str:
    try:
        return check_group(request.get("group"))
    except GroupOpError as exc:
        raise BadRequest(f"{op}: {exc}") from None


def _flag(request: dict[str, Any], op: str, key: str, default: bool) -> bool:
    value = request.get(key, default)
    if type(value) is not bool:
        raise BadRequest(f"{op}: {key!r} must be a bool")
    return value


def parse_request(op: str, request: dict[str, Any], *, conn: int, pid: int,
                  request_id: int) -> Request:
    """The typed request for client API op ``op``; :class:`BadRequest` if it is malformed."""
    ids = {"conn": conn, "pid": pid, "request_id": request_id}
    if op == "send":
        group = _group(request, op)
        data = request.get("data")
        if type(data) is bytes:
            items: tuple[bytes, ...] = (data,)
        elif type(data) is list and only_of(data, bytes):
            items = tuple(data)
        else:
            raise BadRequest("send: 'data' must be bytes or a list of bytes")
        if not items:
            raise BadRequest("send: 'data' holds no message")
        size = sum(map(len, items))
        if size > API_SEND_BYTES_MAX:
            raise BadRequest(f"send: {size} bytes of data exceed {API_SEND_BYTES_MAX} per request")
        return SendMessages(**ids, group=group, data=items, safe=_flag(request, op, "safe", False),
                            wait=_flag(request, op, "wait", True))
    if op == "group_join":
        return JoinGroup(**ids, group=_group(request, op),
                         self_discard=_flag(request, op, "self_discard", False))
    if op == "group_leave":
        return LeaveGroup(**ids, group=_group(request, op))
    if op == "group_members":
        return QueryMembers(**ids, group=None if request.get("group") is None else _group(request, op))
    if op == "ring":
        return QueryRing(**ids)
    if op == "quorum":
        return QueryQuorum(**ids)
    if op == "quorum_expected":
        expected = request.get("expected")
        if type(expected) is not int or not 1 <= expected <= EXPECTED_VOTES_MAX:
            raise BadRequest(f"quorum_expected: 'expected' must be an integer 1..{EXPECTED_VOTES_MAX}")
        return SetExpectedVotes(**ids, expected=expected)
    raise BadRequest(f"unknown op {op!r}")
