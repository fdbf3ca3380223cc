"""Online keyring changes for the whole cluster (``ringd keys``), through the ring.

A ``keys`` request on the control socket becomes a :class:`~ringd.key_messages.KeyOp`
published on the ring. Every ring member delivers it at the same point of the total
order, applies it to its keyring (the codec reads the same object, so a ``use`` changes
the key of every datagram encoded after that point), persists the keyring, and answers
with a :class:`~ringd.key_messages.KeyAck`, also through the ring. The requesting daemon
collects the answers of the members the ring had when its op was delivered, and replies
once all have answered or :data:`KEY_OP_TIMEOUT_S` has passed.

Gossip-only observers (daemons beyond ``totem.ring_size_max``) are not in the ring, so the
requesting daemon also sends them the op straight, as soon as the ring delivered it, and
again every :data:`KEY_RELAY_RESEND_S` until they answer (straight back) or the op times
out. They apply it when it arrives, not at the ring's point of order: they take no part in
ordered delivery, and every member accepts every installed key, so nothing is lost. Each
daemon remembers its last answers by request id, so a resent op is applied once.

Why a rotation loses nothing: every member accepts every installed key, and the key id in
each header picks the key. ``use`` is only sent once ``list`` shows every member holds the
key (the CLI checks), and it is answered only once every member switched; so by the time
an operator removes the old key, no member sends with it any more.
"""

from __future__ import annotations

import collections
import itertools
import logging
import secrets
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import trio

from ringd.core.events import KeyMessageDelivered
from ringd.key_messages import KEY_OPS, KeyAck, KeyOp
from ringd.keyring import (
    KeyFileError,
    Keyring,
    KeyringError,
    check_key_size,
    key_id,
    unwrap_key,
    wrap_key,
)
from ringd.messages import Message

# Longest wait for every ring member's answer to a keyring op.
KEY_OP_TIMEOUT_S: Final = 5.0
# How often an op is sent again to the observers that have not answered it yet.
KEY_RELAY_RESEND_S: Final = 0.5
PENDING_OPS_MAX: Final = 64
# Answers remembered by request id (a relayed op may arrive more than once).
ANSWERED_MAX: Final = 256


class KeyRequestError(Exception):
    """A ``keys`` request this daemon refuses before publishing it (one line)."""


@dataclass(slots=True)
class _Pending:
    alive: frozenset[str]  # gossip's alive members when the op was asked for
    expected: frozenset[str] | None = None  # who must answer, once the ring delivered our op
    observers: frozenset[str] = frozenset()  # those of them outside the ring (sent straight)
    acks: dict[str, KeyAck] = field(default_factory=dict)
    done: trio.Event = field(default_factory=trio.Event)

    def check(self) -> None:
        if self.expected is not None and self.expected <= self.acks.keys():
            self.done.set()


class KeyService:
    """The keyring of one daemon and its online changes."""

    def __init__(self, name: str, keyring: Keyring, path: Path, log: logging.Logger,
                 relay: Callable[[str, Message], None] | None = None) -> None:
        """``relay(dest, msg)`` sends an op or an answer straight to another daemon."""
        self.name = name
        self.keyring = keyring
        self.path = path
        self.log = log
        self._relay = relay if relay is not None else (lambda dest, msg: None)
        # Request ids must not repeat across restarts: an observer remembers answers by id.
        self._run_id = secrets.token_hex(4)
        self._ids = itertools.count(1)
        self._pending: dict[str, _Pending] = {}
        self._answered: collections.OrderedDict[str, KeyAck] = collections.OrderedDict()

    # --- the requesting side -------------------------------------------------------------

    def prepare(self, request: dict[str, Any], alive: Iterable[str] = ()) -> KeyOp:
        """The op a control request asks for; :class:`KeyRequestError` if it is malformed.
        ``alive``: the members gossip sees alive now; those the ring does not reach get the
        op straight."""
        op = request.get("action")
        if op not in KEY_OPS:
            raise KeyRequestError(f"'action' must be one of {', '.join(KEY_OPS)}")
        if len(self._pending) >= PENDING_OPS_MAX:
            raise KeyRequestError("too many keyring requests in progress, try again")
        kid, wrapped, wrap_id = "", b"", ""
        if op == "install":
            key = request.get("key")
            if type(key) is not bytes:
                raise KeyRequestError("install: 'key' must be bytes")
            # The key itself, as the client read it from its file: not file contents to
            # parse again (stripping "whitespace" would change a key that starts or ends
            # with such a byte, one random key in 20).
            try:
                check_key_size(key, "install: key")
            except KeyFileError as exc:
                raise KeyRequestError(str(exc)) from None
            kid = key_id(key)
            wrap_id = self.keyring.primary
            wrapped = wrap_key(self.keyring.primary_key, key)
        elif op in ("use", "remove"):
            kid = request.get("key_id")
            if type(kid) is not str or len(kid) != 8 or any(c not in "0123456789abcdef" for c in kid):
                raise KeyRequestError(f"{op}: 'key_id' must be 8 lower-case hex digits")
        request_id = f"{self.name}/{self._run_id}/{next(self._ids)}"
        key_op = KeyOp(request=request_id, op=op, key_id=kid, wrapped=wrapped, wrap_key_id=wrap_id)
        self._pending[request_id] = _Pending(alive=frozenset(alive))
        return key_op

    async def wait(self, op: KeyOp) -> dict[str, Any]:
        """The reply to a published op: every answer, and who did not answer in time."""
        pending = self._pending[op.request]
        try:
            with trio.move_on_after(KEY_OP_TIMEOUT_S):
                while not pending.done.is_set():
                    with trio.move_on_after(KEY_RELAY_RESEND_S):
                        await pending.done.wait()
                    for node in sorted(pending.observers - pending.acks.keys()):
                        self._relay(node, op)
        finally:
            del self._pending[op.request]
        expected = pending.expected
        if expected is None:
            return {"ok": False, "error": f"{op.op}: the request was not delivered on the "
                    f"ring within {KEY_OP_TIMEOUT_S:g} s (is the ring forming?)"}
        members = {node: {"error": ack.error, "primary": ack.primary, "keys": list(ack.keys)}
                   for node, ack in sorted(pending.acks.items())}
        missing = {node: "no answer (a gossip-only observer)" if node in pending.observers
                   else "no answer" for node in sorted(expected - pending.acks.keys())}
        return {"ok": True, "op": op.op, "key_id": op.key_id, "members": members,
                "missing": missing}

    # --- every member ---------------------------------------------------------------------

    def on_delivered(self, eff: KeyMessageDelivered) -> KeyAck | None:
        """Apply a delivered op (returns our answer to publish) or record an answer."""
        msg = eff.msg
        if type(msg) is KeyAck:
            pending = self._pending.get(msg.request)
            if pending is not None and msg.node == eff.origin:
                pending.acks[msg.node] = msg
                pending.check()
            return None
        assert type(msg) is KeyOp
        if eff.origin == self.name and not eff.relayed:
            pending = self._pending.get(msg.request)
            if pending is not None:
                ring = frozenset(eff.members) | {self.name}
                pending.observers = pending.alive - ring
                pending.expected = ring | pending.observers
                for node in sorted(pending.observers):
                    self._relay(node, msg)
                pending.check()
        answered = self._answered.get(msg.request)
        if answered is not None:  # a resent relay, or the ring's copy after a relayed one
            return answered
        error = self._apply(msg)
        if error:
            self.log.warning("keyring %s %s from %s not applied: %s", msg.op, msg.key_id,
                             eff.origin, error)
        elif msg.op != "list":
            self.log.info("keyring %s %s (from %s): primary %s, keys %s", msg.op, msg.key_id,
                          eff.origin, self.keyring.primary, ",".join(sorted(self.keyring.keys)))
        listing = self.keyring.listing()
        ack = KeyAck(request=msg.request, node=self.name, error=error,
                     primary=str(listing["primary"]), keys=tuple(sorted(self.keyring.keys)))
        self._answered[msg.request] = ack
        if len(self._answered) > ANSWERED_MAX:
            self._answered.popitem(last=False)
        return ack

    def _apply(self, msg: KeyOp) -> str:
        keyring = self.keyring
        try:
            if msg.op == "list":
                return ""
            if msg.op == "install":
                wrapping = keyring.keys.get(msg.wrap_key_id)
                if wrapping is None:
                    return f"the key it was wrapped with ({msg.wrap_key_id}) is not installed"
                key = unwrap_key(wrapping, msg.wrapped)
                if key_id(key) != msg.key_id:
                    return "the unwrapped key does not match its key id"
                keyring.install(key)
            elif msg.op == "use":
                keyring.use(msg.key_id)
            elif msg.op == "remove":
                keyring.remove(msg.key_id)
            else:
                return f"unknown keyring op {msg.op!r}"
        except KeyringError as exc:
            return str(exc)
        try:
            keyring.save(self.path)
        except OSError as exc:
            self.log.error("cannot persist the keyring in %s: %s", self.path, exc)
            return f"applied, but not persisted in {self.path}: {exc.strerror}"
        return ""
