"""Keyring payloads (tags 61-62), carried inside Totem application messages.

Like the process-group payloads they are never datagrams of their own: a daemon publishes
``encode_payload(msg)`` on the ring and every ring member gets it in the same total order.
That order is what makes an online key rotation safe: every member applies ``install``,
``use`` and ``remove`` at the same point of the message stream, and answers with a
:class:`KeyAck` through the ring, which the requesting daemon collects (``ringd keys``).
"""

from __future__ import annotations

from dataclasses import dataclass

from ringd.messages import Message, register

KEY_OPS = ("list", "install", "use", "remove")


@register(61)
@dataclass(frozen=True, slots=True, kw_only=True)
class KeyOp(Message):
    """Apply ``op`` (one of :data:`KEY_OPS`) to every member's keyring.

    ``request`` is unique per requesting daemon (``"node/n"``). ``install`` carries the new
    key wrapped under the requester's primary key ``wrap_key_id``
    (:func:`ringd.keyring.wrap_key`), so it never crosses the network readable, even with
    ``key_mode=auth_only``.
    """

    request: str
    op: str
    key_id: str
    wrapped: bytes
    wrap_key_id: str


@register(62)
@dataclass(frozen=True, slots=True, kw_only=True)
class KeyAck(Message):
    """``node``'s answer to ``request``: ``error`` is empty when it applied the op; its
    keyring after it (key ids only)."""

    request: str
    node: str
    error: str
    primary: str
    keys: tuple[str, ...]


KeyPayload = KeyOp | KeyAck
