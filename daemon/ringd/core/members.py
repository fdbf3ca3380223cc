"""The member table and every rule deciding whether an update changes it.

Like h11's ``_state.py``: all precedence rules live here, as small pure functions, and
they do not know whether the member is us (the core handles "about ourselves" first and
refutes instead of applying).

Precedence (SWIM with incarnation numbers; only a member raises its own incarnation):

=========  ==========================================================================
update     applies when
=========  ==========================================================================
Alive      member unknown, or incarnation strictly higher than ours for it
Suspect    member alive or suspect, incarnation >= ours for it
Dead       member alive or suspect, incarnation >= ours for it
Left       member not left (or left at a lower incarnation), incarnation >= ours for it
=========  ==========================================================================

So Left is final for its incarnation: only an Alive with a higher incarnation (a rejoin)
brings the member back, and nothing ever suspects a left member.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

from ringd.messages import Address, MemberState

MEMBERS_LEN_MAX = 10000  # members kept; updates about further unknown nodes are dropped

LIVE_STATES = (MemberState.ALIVE, MemberState.SUSPECT)
GONE_STATES = (MemberState.DEAD, MemberState.LEFT)


@dataclass(slots=True)
class Member:
    """Our view of one member (mutable; copied into a MemberView for callers)."""

    name: str
    state: MemberState
    incarnation: int
    address: Address
    tags: dict[str, str] = field(default_factory=dict)
    state_since: float = 0.0


def alive_applies(cur: Member | None, incarnation: int) -> bool:
    return cur is None or incarnation > cur.incarnation


def suspect_applies(cur: Member | None, incarnation: int) -> bool:
    return cur is not None and cur.state in LIVE_STATES and incarnation >= cur.incarnation


def dead_applies(cur: Member | None, incarnation: int) -> bool:
    return cur is not None and cur.state in LIVE_STATES and incarnation >= cur.incarnation


def left_applies(cur: Member | None, incarnation: int) -> bool:
    if cur is None or incarnation < cur.incarnation:
        return False
    return cur.state is not MemberState.LEFT or incarnation > cur.incarnation


def must_refute(own_incarnation: int, incarnation: int) -> bool:
    """A Suspect/Dead/Left about us at ``incarnation`` must be refuted (it is not stale)."""
    return incarnation >= own_incarnation


def conflicting_claim(cur: Member | None, address: Address, incarnation: int) -> bool:
    """A node claims ``cur``'s name from another address while ``cur`` is alive and the
    claim is not newer: the holder keeps the name (a legitimate restart of the holder
    persists its incarnation, so it comes back higher)."""
    return (
        cur is not None
        and cur.state is MemberState.ALIVE
        and cur.address != address
        and incarnation <= cur.incarnation
    )


class MemberTable:
    """Members by name, including ourselves, bounded by ``len_max``."""

    def __init__(self, len_max: int = MEMBERS_LEN_MAX) -> None:
        self._members: dict[str, Member] = {}
        self._counts = dict.fromkeys(MemberState, 0)  # kept so counting is O(1) per packet
        self.len_max = len_max

    def __len__(self) -> int:
        return len(self._members)

    def __iter__(self) -> Iterator[Member]:
        return iter(self._members.values())

    def get(self, name: str) -> Member | None:
        return self._members.get(name)

    def full(self) -> bool:
        return len(self._members) >= self.len_max

    def add(self, member: Member) -> None:
        if member.name in self._members:
            raise KeyError(f"member {member.name} already present")
        if self.full():
            raise OverflowError("member table full")
        self._members[member.name] = member
        self._counts[member.state] += 1

    def set_state(self, member: Member, state: MemberState) -> None:
        """Change a member's state (keeps the per-state counts right)."""
        self._counts[member.state] -= 1
        self._counts[state] += 1
        member.state = state

    def remove(self, name: str) -> None:
        member = self._members.pop(name, None)
        if member is not None:
            self._counts[member.state] -= 1

    def names(self, states: tuple[MemberState, ...], exclude: str = "") -> list[str]:
        """Names of members in ``states`` (table order, deterministic), minus ``exclude``."""
        return [m.name for m in self._members.values() if m.state in states and m.name != exclude]

    def count(self, states: tuple[MemberState, ...]) -> int:
        return sum(self._counts[s] for s in states)
