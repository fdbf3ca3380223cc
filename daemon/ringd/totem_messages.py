"""Totem wire messages (tags 32-63). Owned by the Totem core; encoded generically by ``wire.py``.

Only :class:`RingId` is fixed by the shared contract; the Totem implementation adds its
messages (token, mcast, join, commit token, merge detect, token hold cancel) here.
"""

from __future__ import annotations

from dataclasses import dataclass

from ringd.messages import Message, register


@register(32)
@dataclass(frozen=True, slots=True, kw_only=True, order=True)
class RingId(Message):
    """A ring's identity: its sequence number (only grows, persisted) and representative."""

    seq: int
    rep: str

    def __str__(self) -> str:
        return f"{self.seq}.{self.rep}"
