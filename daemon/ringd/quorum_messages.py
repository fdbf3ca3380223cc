"""Quorum payloads (tag 63), carried inside Totem application messages like group payloads.

A change of expected votes within a configuration must happen at the same place of the
delivery order on every member, or members would disagree about being primary: so it is
published on the ring and applied when delivered (see :mod:`ringd.core.quorum`).
"""

from __future__ import annotations

from dataclasses import dataclass

from ringd.messages import Message, register
from ringd.totem_messages import RingId


@register(63)
@dataclass(frozen=True, slots=True, kw_only=True)
class QuorumExpected(Message):
    """Set every member's expected votes to ``expected``.

    ``reason`` is ``"operator"`` (``ringd quorum expected N``: applied wherever delivered)
    or ``"last_man_standing"`` (applied only if delivered in the regular configuration
    ``ring_id`` it was decided in, so a late copy cannot shrink a later configuration).
    """

    expected: int
    reason: str
    ring_id: RingId
    by: str  # the node that published it (for the log)


QUORUM_REASONS = ("operator", "last_man_standing")
