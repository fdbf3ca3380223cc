"""The wire codec: the only module that knows bytes (and the only importer of cbor2).

Datagram envelope (version 1). Every datagram starts with::

    offset  size  field
    0       2     magic b"RG"
    2       1     version (1)
    3       1     flags: 0 = plain, 1 = authenticated only (auth_only), 2 = encrypted
    4       8     cluster id: BLAKE2b-64 of the UTF-8 cluster name (personalised)

A plain datagram (no key configured) goes on with one CBOR item, the array
``[sender, message]``. A keyed datagram goes on with::

    12      4     key id (selects the key: nothing is decrypted by trial)
    16      8     sender epoch: orders the sender's runs (see new_epoch)
    24      1     n = length of the sender name
    25      n     sender name (UTF-8)
    25+n    12    nonce: 4-byte salt of the sender's run || 8-byte counter
    37+n    m     encrypted: AES-256-GCM ciphertext of the CBOR message, then its 16-byte
                  tag; authenticated only: the CBOR message, then a keyed BLAKE2b-128 MAC
                  over everything before it

The header (bytes 0..37+n) is the associated data of AES-GCM, or covered by the MAC, so
the version, cluster id, key id, sender, epoch and counter cannot be altered. The AES key
is derived per (cluster key, sender, epoch), so the counter alone keeps nonces unique.

A *message* is the CBOR array ``[tag, field_1, ..., field_k]``: its registered type tag
(``ringd.messages.register``) followed by its dataclass field values in declaration
order, with no field names. Field values map to CBOR as: ``int`` -> integer (signed
64-bit range), ``float`` -> float (finite), ``bool``, ``str`` -> text, ``bytes`` -> bytes,
``IntEnum`` subclasses -> integer, ``X | None`` -> null or X, registered classes and unions of them -> embedded message
array (its tag says which class), ``tuple[X, ...]`` -> array, ``dict[str, X]`` -> map.

Decoding (:meth:`Codec.decode_untrusted`) is the trust boundary and checks, in order:
size <= ``datagram_bytes_max`` (TOO_LARGE), magic (MALFORMED), version (BAD_VERSION),
flags (MALFORMED), cluster id (WRONG_CLUSTER), whether the datagram is protected the way
we protect ours (AUTH_FAILED), then, for keyed datagrams, before any CBOR is parsed: the
key id (UNKNOWN_KEY), the replay window (REPLAYED) and the AES-GCM tag or MAC (BAD_TAG,
compared in constant time); then the CBOR body (MALFORMED, or UNKNOWN_TYPE for an
unregistered tag). Nothing else ever escapes it.

Replay: each receiver keeps a sliding window per sender over (epoch, counter) of the
datagrams that authenticated (:class:`ReplayWindow`), so a recorded datagram sent again is
dropped as REPLAYED, and so is one from an earlier run of its sender, and a copy of one
of our own datagrams sent back at us. The windows live in memory: a receiver that
restarts starts each one at the first datagram it gets from the sender, and takes every
earlier counter as seen (see :class:`ReplayWindow` and README, Security).

Why the CBOR parse cannot be made to allocate much: the datagram is capped first, and
cbor2 (checked on 6.3) neither pre-allocates arrays/maps from their declared count nor
strings from their declared length (it reads in 64 KiB chunks and fails at the end of
the buffer), so every object it builds is backed by at least one byte of the capped
input. We also refuse indefinite lengths, duplicate and non-string map keys, nesting
deeper than :data:`DEPTH_MAX`, every CBOR tag (shared references could otherwise turn a
small datagram into a huge walk, bignums into huge ints), and trailing bytes. The decoded
tree is then checked against the message schema with exact types (``bool`` is not an
``int``), so undefined and other simple values are refused too.

The control / client API uses :func:`pack_frame` and :class:`FrameReader`: a 4-byte
big-endian length followed by one CBOR item of plain data (dict, list, str, int, bytes,
bool, None, float).
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import hashlib
import hmac
import io
import ipaddress
import math
import os
import struct
import time
import types
import typing
from collections.abc import Callable
from typing import Any, Final

import cbor2
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

import ringd.group_messages  # noqa: F401  (registers the process-group payloads)
import ringd.key_messages  # noqa: F401  (registers the keyring payloads)
import ringd.totem_messages  # noqa: F401  (registers the Totem messages with the codec)
from ringd.keyring import KEY_BYTES_MIN, Keyring, root_key
from ringd.messages import MESSAGE_TYPES, Address, Message, only_of

MAGIC: Final = b"RG"
VERSION: Final = 1
FLAG_MAC: Final = 0x01
FLAG_AEAD: Final = 0x02
HEADER_BYTES: Final = 12
TAG_BYTES: Final = 16
MAC_BYTES: Final = TAG_BYTES
NONCE_BYTES: Final = 12
# Counters of one sender remembered below the highest seen: datagrams reordered further
# back are dropped as replays (our sockets reorder by at most a receive batch or two).
REPLAY_WINDOW: Final = 4096
_WINDOW_MASK: Final = (1 << REPLAY_WINDOW) - 1
REPLAY_SENDERS_MAX: Final = 65536
DERIVED_KEYS_MAX: Final = 4096
CLUSTER_ID_BYTES: Final = 8
SENDER_CHARS_MAX: Final = 255
DEPTH_MAX: Final = 32  # CBOR container nesting; messages nest far less deep
INT_MIN: Final = -(1 << 63)
INT_MAX: Final = (1 << 63) - 1
FRAME_BYTES_MAX: Final = 16 << 20
FRAME_DEPTH_MAX: Final = 64
# CBOR data items in one frame. An item can be one byte (an empty byte string) and becomes a
# Python object of 30-90 bytes, so 2 MiB of them cost about a second and 180 MB to decode.
# A frame longer than this many bytes is counted first, without building anything. (The
# client library never puts more than 16,384 messages in one request.)
FRAME_ITEMS_MAX: Final = 1 << 17

_HEADER = struct.Struct(">2sBB8s")
_KEYED = struct.Struct(">2sBB8s4sQB")  # the header up to the sender name
_KEYED_TAIL = struct.Struct(">4sQB")  # key id, epoch, sender name length
_FRAME_LEN = struct.Struct(">I")


class DropReason(enum.Enum):
    """Why a datagram was dropped; the values are metric label values."""

    MALFORMED = "malformed"
    WRONG_CLUSTER = "wrong_cluster"
    BAD_VERSION = "bad_version"
    UNKNOWN_TYPE = "unknown_type"
    AUTH_FAILED = "auth_failed"  # not protected the way we protect ours (or we have no key)
    UNKNOWN_KEY = "unknown_key"  # keyed with a key id that is not in our keyring
    BAD_TAG = "bad_tag"  # the AES-GCM tag or the MAC does not verify
    REPLAYED = "replayed"  # already received, or from an earlier run of its sender
    TOO_LARGE = "too_large"


class WireError(Exception):
    """Bytes from a peer that we refuse; ``reason`` says why, ``str()`` is one line."""

    def __init__(self, reason: DropReason, detail: str = "") -> None:
        self.reason = reason
        super().__init__(f"{reason.value}: {detail}" if detail else reason.value)


# --- Tag rejection ---------------------------------------------------------------------

class _TagRefused(Exception):
    pass


def _refuse_tag(*_args: Any) -> Any:
    raise _TagRefused


# Tags cbor2 6.3 decodes by itself (probed over 0..70000); every other tag reaches
# tag_hook. Both routes raise, so no tag survives decoding.
_BUILTIN_TAGS: Final = (0, 1, 2, 3, 4, 5, 25, 28, 29, 30, 35, 36, 37, 52, 54, 100, 256, 258,
                        260, 261, 1004, 43000, 55799)
_CBOR_STRICT: Final[dict[str, Any]] = {
    "tag_hook": _refuse_tag,
    "semantic_decoders": dict.fromkeys(_BUILTIN_TAGS, _refuse_tag),
    "allow_indefinite": False,
    "allow_duplicate_keys": False,
    "strict_hashable_types": True,
}


def _loads_exact(data: bytes, depth_max: int) -> Any:
    """Decode exactly one CBOR item filling ``data``; trailing bytes are malformed."""
    fp = io.BytesIO(data)
    value = cbor2.CBORDecoder(fp, max_depth=depth_max, **_CBOR_STRICT).decode()
    if fp.tell() != len(data):
        raise WireError(DropReason.MALFORMED, "trailing bytes after CBOR item")
    return value


# --- Per-class schemas -----------------------------------------------------------------

_Encoder = Callable[[Any], Any] | None  # None: the value is already plain CBOR data
_Decoder = Callable[[Any], Any]  # checks an untrusted value and converts it


def _bad(detail: str) -> WireError:
    return WireError(DropReason.MALFORMED, detail)


@dataclasses.dataclass(frozen=True, slots=True)
class _Schema:
    """How one message class maps to and from its plain CBOR array."""

    cls: type[Message]
    tag: int
    encode: Callable[[Any], list[Any]]  # message -> [tag, values...]
    decode: Callable[[list[Any]], Message]  # untrusted array (tag already checked) -> message


_SCHEMAS: dict[type, _Schema] = {}


def _schema(cls: type) -> _Schema:
    schema = _SCHEMAS.get(cls)
    if schema is None:
        schema = _SCHEMAS[cls] = _build_schema(cls)
    return schema


# Rules beyond the field types, for classes whose values the runtime hands to the OS: each
# returns the decoded message or raises WireError (MALFORMED).
@functools.lru_cache(maxsize=1024)  # the same few member addresses arrive again and again
def _is_ip_literal(host: str) -> bool:
    if "%" in host:  # an IPv6 zone may hold anything, a NUL too; ringd never sends one
        return False
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _check_address(address: Address) -> Address:
    """A peer's address must be sendable: ``sendto`` raises OverflowError (not OSError)
    for a port outside 0..65535 and TypeError for a NUL in the host (an IPv6 zone too),
    and resolves a host name with a blocking DNS lookup. ringd only ever advertises IP
    addresses."""
    if not 0 <= address.port <= 65535:
        raise _bad("Address.port: not in 0..65535")
    if not _is_ip_literal(address.host):
        raise _bad("Address.host: not an IP address")
    return address


_CHECKS: Final[dict[type, Callable[[Any], Any]]] = {Address: _check_address}

# Field types checked inline by the generated decoder: the condition that makes a value
# ``{x}`` bad.
_INLINE_CHECKS: Final[dict[Any, str]] = {
    int: "type({x}) is not int or not INT_MIN <= {x} <= INT_MAX",
    bool: "type({x}) is not bool",
    str: "type({x}) is not str",
    bytes: "type({x}) is not bytes",
    float: "type({x}) is not float or not isfinite({x})",
}


def _build_schema(cls: type) -> _Schema:
    """Generate the encode/decode functions of one class (as dataclasses generates __init__).

    The codec is on the hot path; straight-line code with the primitive type checks
    inlined is about twice as fast as looping over per-field decoder closures.
    """
    if not (isinstance(cls, type) and issubclass(cls, Message) and dataclasses.is_dataclass(cls)):
        raise TypeError(f"{cls!r} is not a message dataclass")
    tag = _schema_tag(cls, cls.__name__)
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    env: dict[str, Any] = {"cls": cls, "bad": _bad, "INT_MIN": INT_MIN, "INT_MAX": INT_MAX,
                           "isfinite": math.isfinite}
    enc_items = [str(tag)]
    dec_lines = [
        "def decode(v):",
        f"    if len(v) != {len(names) + 1}:",
        f"        raise bad('{cls.__name__} needs {len(names)} fields')",
        f"    _tag, {''.join(f'x{i}, ' for i in range(len(names)))}= v",
    ]
    kwargs = []
    for i, name in enumerate(names):
        where = f"{cls.__name__}.{name}"
        tp = hints[name]
        check = _INLINE_CHECKS.get(tp)
        if check is not None:
            dec_lines += [f"    if {check.format(x=f'x{i}')}:",
                          f"        raise bad('{where}: expected {tp.__name__}')"]
            kwargs.append(f"{name}=x{i}")
        else:
            kwargs.append(f"{name}=d{i}(x{i})")
        enc, dec = _field_codec(tp, where)
        env[f"d{i}"] = dec
        if enc is None:
            enc_items.append(f"m.{name}")
        else:
            env[f"e{i}"] = enc
            enc_items.append(f"e{i}(m.{name})")
    if cls in _CHECKS:
        env["check"] = _CHECKS[cls]
        dec_lines.append(f"    return check(cls({', '.join(kwargs)}))")
    else:
        dec_lines.append(f"    return cls({', '.join(kwargs)})")
    enc_lines = ["def encode(m):", f"    return [{', '.join(enc_items)}]"]
    exec("\n".join(dec_lines + enc_lines), env)  # noqa: S102 - source built from field names
    return _Schema(cls, tag, env["encode"], env["decode"])


def _is_message_class(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, Message)


def _field_codec(tp: Any, where: str) -> tuple[_Encoder, _Decoder]:
    """(encoder, decoder) for one annotated type; TypeError for unsupported types."""
    if tp is int:
        return None, _dec_int
    if tp is bool:
        return None, _dec_bool
    if tp is float:
        return float, _dec_float
    if tp is str:
        return None, _dec_str
    if tp is bytes:
        return None, _dec_bytes
    if isinstance(tp, type) and issubclass(tp, enum.IntEnum):
        enum_cls = tp
        return None, lambda v: enum_cls(_dec_int(v))  # ValueError -> MALFORMED
    if _is_message_class(tp):
        return _to_plain, _union_decoder({_schema_tag(tp, where): tp})
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (types.UnionType, typing.Union):
        members = [a for a in args if a is not type(None)]
        if len(members) < len(args):  # X | None
            inner = members[0] if len(members) == 1 else typing.Union[tuple(members)]  # noqa: UP007
            enc, dec = _field_codec(inner, where)
            return _optional(enc, dec)
        if all(_is_message_class(a) for a in members):
            return _to_plain, _union_decoder({_schema_tag(a, where): a for a in members})
    if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
        enc, dec = _field_codec(args[0], where)
        return _tuple_codec(enc, dec)
    if origin is dict and len(args) == 2 and args[0] is str:
        enc, dec = _field_codec(args[1], where)
        return _dict_codec(enc, dec)
    raise TypeError(f"{where}: type {tp!r} is not supported by the wire codec")


def _schema_tag(cls: type, where: str) -> int:
    tag = cls.__dict__.get("TYPE")
    if MESSAGE_TYPES.get(tag) is not cls:
        raise TypeError(f"{where}: {cls.__name__} is not a registered message")
    return tag  # type: ignore[no-any-return]


def _dec_int(v: Any) -> int:
    if type(v) is int and INT_MIN <= v <= INT_MAX:
        return v
    raise _bad("expected a 64-bit integer")


def _dec_bool(v: Any) -> bool:
    if type(v) is bool:
        return v
    raise _bad("expected a bool")


def _dec_float(v: Any) -> float:
    if type(v) is float and math.isfinite(v):
        return v
    raise _bad("expected a finite float")


def _dec_str(v: Any) -> str:
    if type(v) is str:
        return v
    raise _bad("expected a text string")


def _dec_bytes(v: Any) -> bytes:
    if type(v) is bytes:
        return v
    raise _bad("expected a byte string")


# Decoders that only check an exact type (no range or finiteness to check).
_EXACT_TYPES: Final[dict[Any, type]] = {_dec_bool: bool, _dec_str: str, _dec_bytes: bytes}


def _optional(enc: _Encoder, dec: _Decoder) -> tuple[_Encoder, _Decoder]:
    def decode(v: Any) -> Any:
        return None if v is None else dec(v)

    if enc is None:
        return None, decode
    inner = enc
    return (lambda v: None if v is None else inner(v)), decode


def _tuple_codec(enc: _Encoder, dec: _Decoder) -> tuple[_Encoder, _Decoder]:
    exact = _EXACT_TYPES.get(dec)

    def decode(v: Any) -> tuple[Any, ...]:
        if type(v) is not list:
            raise _bad("expected an array")
        if exact is not None:  # e.g. a batch of messages: the type check in C, no call per item
            if not only_of(v, exact):
                raise _bad(f"expected an array of {exact.__name__}")
            return tuple(v)
        return tuple(map(dec, v))

    if enc is None:
        return None, decode  # cbor2 writes tuples as arrays
    inner = enc
    return (lambda v: list(map(inner, v))), decode


def _dict_codec(enc: _Encoder, dec: _Decoder) -> tuple[_Encoder, _Decoder]:
    exact = _EXACT_TYPES.get(dec)

    def decode(v: Any) -> dict[str, Any]:
        if type(v) is not dict:
            raise _bad("expected a map")
        if exact is not None:  # e.g. dict[str, str]: check in place, keep cbor2's fresh dict
            for k, x in v.items():
                if type(k) is not str or type(x) is not exact:
                    raise _bad(f"expected a map of str to {exact.__name__}")
            return v
        for k in v:
            if type(k) is not str:
                raise _bad("expected text map keys")
        return {k: dec(x) for k, x in v.items()}

    if enc is None:
        return None, decode
    inner = enc
    return (lambda v: {k: inner(x) for k, x in v.items()}), decode


def _union_decoder(allowed: dict[int, type]) -> _Decoder:
    def decode(v: Any) -> Message:
        if type(v) is not list or not v:
            raise _bad("expected a message array")
        tag = v[0]
        if type(tag) is not int:
            raise _bad("message tag is not an integer")
        cls = allowed.get(tag)
        if cls is None:
            if tag in MESSAGE_TYPES:
                raise _bad(f"message type {tag} not allowed here")
            raise WireError(DropReason.UNKNOWN_TYPE, f"unknown message type {tag}")
        return (_SCHEMAS.get(cls) or _schema(cls)).decode(v)

    return decode


def _to_plain(msg: Any) -> list[Any]:
    """A message as the plain list cbor2 encodes: [tag, field values...]."""
    return (_SCHEMAS.get(type(msg)) or _schema(type(msg))).encode(msg)


# --- The datagram codec ----------------------------------------------------------------

def cluster_id(cluster_name: str) -> bytes:
    """The 8-byte cluster id carried in every datagram header."""
    return hashlib.blake2b(cluster_name.encode(), digest_size=CLUSTER_ID_BYTES,
                           person=b"ringd-cluster").digest()


_epoch_last = 0


def new_epoch(previous: int = 0) -> int:
    """A sender epoch above ``previous`` (the one persisted by the last run) and above every
    epoch handed out before in this process: microseconds of the wall clock, or one more."""
    global _epoch_last
    _epoch_last = max(previous + 1, _epoch_last + 1, time.time_ns() // 1000)
    return _epoch_last


class ReplayWindow:
    """Per-sender sliding windows over (epoch, counter) of authenticated datagrams.

    A datagram is fresh if its epoch is newer than the sender's, or equal with a counter
    above the highest seen, or within the last :data:`REPLAY_WINDOW` counters and not seen
    (the IPsec/WireGuard anti-replay window). Windows only move for datagrams that
    authenticated, so forgeries cannot shift them. Reordering between our two sockets and
    their batches is far below the window.

    A window starts full: the counters below the first one we see of a sender's run count
    as seen. So a receiver that restarted refuses copies of what the sender sent before
    (all but what a replay slips in before the sender's first genuine datagram reaches
    it); the price is that a datagram reordered behind that first one is dropped, once per
    sender run, and the protocols resend it.
    """

    __slots__ = ("_windows",)

    def __init__(self) -> None:
        # sender -> [epoch, highest counter, bitmap of counters seen below it]
        self._windows: dict[str, list[int]] = {}

    def fresh(self, sender: str, epoch: int, counter: int) -> bool:
        w = self._windows.get(sender)
        if w is None or epoch > w[0]:
            return True
        if epoch < w[0]:
            return False  # an earlier run of the sender
        top = w[1]
        if counter > top:
            return True
        back = top - counter
        return back < REPLAY_WINDOW and not (w[2] >> back) & 1

    def mark(self, sender: str, epoch: int, counter: int) -> None:
        """Record an authenticated datagram (checked :meth:`fresh` just before)."""
        windows = self._windows
        w = windows.get(sender)
        if w is None or epoch > w[0]:
            if w is None and len(windows) >= REPLAY_SENDERS_MAX:
                del windows[next(iter(windows))]  # the longest-known sender goes
            windows[sender] = [epoch, counter, _WINDOW_MASK]
            return
        top = w[1]
        if counter > top:
            w[2] = ((w[2] << (counter - top)) | 1) & _WINDOW_MASK
            w[1] = counter
        else:
            w[2] |= 1 << (top - counter)


class Codec:
    """Encodes messages into datagrams of one cluster and decodes untrusted datagrams.

    Without keys, datagrams are plain and keyed ones are refused (we cannot verify them).
    With a key (or a :class:`~ringd.keyring.Keyring`), every datagram is encrypted and
    authenticated with AES-256-GCM, or only authenticated (keyed BLAKE2b) with
    ``auth_only``; the other kinds are refused, and so are replays.

    ``epoch`` orders this sender's runs (see :func:`new_epoch`); the daemon persists it.
    The codec is stateful: each keyed datagram takes the next nonce counter, and decoding
    records what was received, so a datagram decodes once.
    """

    def __init__(self, cluster_name: str, key: bytes | None = None, *,
                 keyring: Keyring | None = None, auth_only: bool = False,
                 epoch: int | None = None, datagram_bytes_max: int = 65000) -> None:
        if key is not None:
            if len(key) < KEY_BYTES_MIN:
                raise ValueError(f"key must have at least {KEY_BYTES_MIN} bytes")
            keyring = Keyring([key])
        self.cluster_name = cluster_name
        self.datagram_bytes_max = datagram_bytes_max
        self.keyring = keyring
        self.auth_only = auth_only
        self._cluster_id = cluster_id(cluster_name)
        self._header = _HEADER.pack(MAGIC, VERSION, 0, self._cluster_id)
        self._flag = FLAG_MAC if auth_only else FLAG_AEAD
        self.epoch = new_epoch() if epoch is None else epoch
        # Nonce = salt || counter. Why nonces never repeat under one AES key: the AES key
        # is derived per (key, sender, epoch) (see _aead_key) and the counter never repeats
        # within a codec. A sender's epoch is above the one persisted by its previous run
        # and above the wall clock's microseconds at start, so the same (sender, epoch)
        # needs both a lost state directory and a clock set back to that exact microsecond;
        # even then the random 32-bit salt must collide too (or two live daemons share a
        # name, which gossip refuses, and started in the same microsecond).
        self._salt = os.urandom(4)
        self._counter = 0
        self._replay = ReplayWindow()
        self._generation = -1
        self._aead: dict[tuple[str, str, int], AESGCM] = {}
        self._mac: dict[str, Any] = {}
        self._prefixes: dict[str, tuple[bytes, Any]] = {}

    @property
    def authenticated(self) -> bool:
        """True when this codec signs (and maybe encrypts) and verifies datagrams."""
        return self.keyring is not None

    @property
    def encrypted(self) -> bool:
        return self.keyring is not None and not self.auth_only

    # --- derived keys ----------------------------------------------------------------------

    def _sync_keyring(self) -> None:
        """Drop what was derived from keys the keyring no longer holds (or holds differently)."""
        keyring = self.keyring
        assert keyring is not None
        if self._generation != keyring.generation:
            self._generation = keyring.generation
            self._aead.clear()
            self._mac.clear()
            self._prefixes.clear()

    def _aead_key(self, kid: str, sender: str, epoch: int) -> AESGCM | None:
        cache = self._aead
        cipher = cache.get((kid, sender, epoch))
        if cipher is None:
            key = self.keyring.keys.get(kid)  # type: ignore[union-attr]
            if key is None:
                return None
            # A per-(sender, run) AES key from the cluster key: BLAKE2b keyed with the root
            # key is a PRF (libsodium's crypto_kdf works the same way).
            material = hashlib.blake2b(
                struct.pack(">Q", epoch) + sender.encode(), key=root_key(key), digest_size=32,
                person=b"ringd-aead-v1").digest()
            if len(cache) >= DERIVED_KEYS_MAX:
                cache.clear()
            cipher = cache[(kid, sender, epoch)] = AESGCM(material)
        return cipher

    def _mac_key(self, kid: str) -> Any:
        mac = self._mac.get(kid)
        if mac is None:
            key = self.keyring.keys.get(kid)  # type: ignore[union-attr]
            if key is None:
                return None
            mac_key = hashlib.blake2b(root_key(key), digest_size=32, person=b"ringd-mac-key").digest()
            mac = self._mac[kid] = hashlib.blake2b(key=mac_key, digest_size=TAG_BYTES,
                                                   person=b"ringd-mac-v2")
        return mac

    # --- encoding --------------------------------------------------------------------------

    def encode(self, sender: str, msg: Message) -> bytes:
        """One datagram carrying ``msg`` from ``sender``; ValueError if it would be too large."""
        if not 0 < len(sender) <= SENDER_CHARS_MAX:
            raise ValueError(f"sender name must have 1..{SENDER_CHARS_MAX} characters")
        if self.keyring is None:
            data = self._header + cbor2.dumps([sender, _to_plain(msg)])
        else:
            data = self._encode_keyed(sender, cbor2.dumps(_to_plain(msg)))
        if len(data) > self.datagram_bytes_max:
            raise ValueError(f"{type(msg).__name__} datagram of {len(data)} bytes exceeds "
                             f"datagram_bytes_max ({self.datagram_bytes_max})")
        return data

    def _encode_keyed(self, sender: str, body: bytes) -> bytes:
        self._sync_keyring()
        entry = self._prefixes.get(sender)
        if entry is None:
            keyring = self.keyring
            assert keyring is not None
            name = sender.encode()
            if len(name) > SENDER_CHARS_MAX:
                raise ValueError(f"sender name must have at most {SENDER_CHARS_MAX} bytes")
            kid = keyring.primary
            prefix = (_KEYED.pack(MAGIC, VERSION, self._flag, self._cluster_id, bytes.fromhex(kid),
                                  self.epoch, len(name)) + name + self._salt)
            tool = self._mac_key(kid) if self.auth_only else self._aead_key(kid, sender, self.epoch)
            entry = self._prefixes[sender] = (prefix, tool)
        prefix, tool = entry
        counter = self._counter
        self._counter = counter + 1
        # What we send counts as seen: a copy replayed at us is refused like any replay
        # (our own multicast loop is dropped unread by source address, a replay is not).
        self._replay.mark(sender, self.epoch, counter)
        header = prefix + counter.to_bytes(8, "big")
        if self.auth_only:
            mac = tool.copy()
            mac.update(header)
            mac.update(body)
            return header + body + mac.digest()
        return header + tool.encrypt(header[-NONCE_BYTES:], body, header)

    def size_of(self, msg: Message) -> int:
        """Encoded size of ``msg`` as embedded in a body (e.g. one piggybacked update)."""
        return len(cbor2.dumps(_to_plain(msg)))

    def envelope_bytes(self, sender: str) -> int:
        """Bytes a datagram from ``sender`` adds around its message (header, tag, arrays)."""
        return len(self.encode(sender, _EMPTY)) - self.size_of(_EMPTY)

    # --- decoding --------------------------------------------------------------------------

    def decode_untrusted(self, data: bytes) -> tuple[str, Message]:
        """(sender, message) from a peer's datagram, or :class:`WireError` -- nothing else."""
        try:
            return self._decode(data)
        except WireError:
            raise
        except Exception as exc:  # cbor2 and constructors may raise anything on garbage
            raise WireError(DropReason.MALFORMED, type(exc).__name__) from None

    def _decode(self, data: bytes) -> tuple[str, Message]:
        size = len(data)
        if size > self.datagram_bytes_max:
            raise WireError(DropReason.TOO_LARGE, f"{size} bytes")
        if size <= HEADER_BYTES or data[:2] != MAGIC:
            raise _bad("not a ringd datagram")
        _magic, version, flags, cluster = _HEADER.unpack_from(data)
        if version != VERSION:
            raise WireError(DropReason.BAD_VERSION, f"version {version}")
        if flags not in (0, FLAG_MAC, FLAG_AEAD):
            raise _bad(f"unknown flags {flags:#x}")
        if cluster != self._cluster_id:
            raise WireError(DropReason.WRONG_CLUSTER)
        if flags:
            return self._decode_keyed(data, flags)
        if self.keyring is not None:
            raise WireError(DropReason.AUTH_FAILED, "datagram is not authenticated")
        body = _loads_exact(bytes(data[HEADER_BYTES:]), DEPTH_MAX)
        if type(body) is not list or len(body) != 2:
            raise _bad("body is not [sender, message]")
        sender, plain = body
        if type(sender) is not str or not 0 < len(sender) <= SENDER_CHARS_MAX:
            raise _bad("bad sender name")
        return sender, _decode_message(plain)

    def _decode_keyed(self, data: bytes, flags: int) -> tuple[str, Message]:
        """Key id, replay and tag are checked before any CBOR is parsed."""
        keyring = self.keyring
        if keyring is None:
            raise WireError(DropReason.AUTH_FAILED, "datagram is keyed but we have no key")
        if flags != self._flag:
            mode = "authenticated only" if flags == FLAG_MAC else "encrypted"
            raise WireError(DropReason.AUTH_FAILED, f"datagram is {mode}, we use the other mode")
        size = len(data)
        if size < _KEYED.size:
            raise _bad("keyed header truncated")
        kid_bytes, epoch, name_len = _KEYED_TAIL.unpack_from(data, HEADER_BYTES)
        header_end = _KEYED.size + name_len + NONCE_BYTES
        if name_len == 0 or size < header_end + TAG_BYTES:
            raise _bad("keyed datagram too short")
        header = bytes(data[:header_end])
        sender = header[_KEYED.size:_KEYED.size + name_len].decode()  # UnicodeError: malformed
        counter = int.from_bytes(header[-8:], "big")
        self._sync_keyring()
        kid = kid_bytes.hex()
        if kid not in keyring.keys:
            raise WireError(DropReason.UNKNOWN_KEY, f"key id {kid}")
        replay = self._replay
        if not replay.fresh(sender, epoch, counter):
            raise WireError(DropReason.REPLAYED, f"{sender!r} epoch {epoch} counter {counter}")
        if flags == FLAG_AEAD:
            cipher = self._aead_key(kid, sender, epoch)
            assert cipher is not None
            try:
                # A view, not a copy: datagrams carrying Totem batches run to 60 KB.
                body = cipher.decrypt(header[-NONCE_BYTES:], memoryview(data)[header_end:], header)
            except InvalidTag:
                raise WireError(DropReason.BAD_TAG, "AES-GCM tag does not verify") from None
        else:
            mac = self._mac_key(kid).copy()
            end = size - TAG_BYTES
            mac.update(data[:end])
            if not hmac.compare_digest(mac.digest(), data[end:]):
                raise WireError(DropReason.BAD_TAG, "bad MAC")
            body = bytes(data[header_end:end])
        replay.mark(sender, epoch, counter)
        return sender, _decode_message(_loads_exact(body, DEPTH_MAX))


def _decode_message(plain: Any) -> Message:
    if type(plain) is not list or not plain or type(plain[0]) is not int:
        raise _bad("bad message array")
    cls = MESSAGE_TYPES.get(plain[0])
    if cls is None:
        raise WireError(DropReason.UNKNOWN_TYPE, f"unknown message type {plain[0]}")
    return (_SCHEMAS.get(cls) or _schema(cls)).decode(plain)


@dataclasses.dataclass(frozen=True, slots=True)
class _Empty(Message):
    """Stand-in message with no fields, to measure envelope overhead (never registered)."""


_EMPTY = _Empty()
_SCHEMAS[_Empty] = _Schema(_Empty, 0, lambda _m: [0], lambda _v: _EMPTY)


# --- Payloads inside Totem messages ---------------------------------------------------

def encode_payload(msg: Message) -> bytes:
    """A registered message as bytes to carry inside another message (no header, no MAC:
    the datagram that carries it is already checked)."""
    return cbor2.dumps(_to_plain(msg))


def decode_payload(data: bytes) -> Message:
    """Inverse of :func:`encode_payload` for bytes from the ring; only :class:`WireError`."""
    try:
        return _decode_message(_loads_exact(data, DEPTH_MAX))
    except WireError:
        raise
    except Exception as exc:
        raise WireError(DropReason.MALFORMED, type(exc).__name__) from None


# --- Control / client API framing ------------------------------------------------------

_PLAIN_LEAVES: Final = (str, int, bytes, bool, float, type(None))
_PLAIN_LEAF_SET: Final = frozenset(_PLAIN_LEAVES)


def pack_frame(obj: Any) -> bytes:
    """One frame: 4-byte big-endian length + CBOR of plain data; ValueError if too large."""
    payload = cbor2.dumps(obj)
    if len(payload) > FRAME_BYTES_MAX:
        raise ValueError(f"frame of {len(payload)} bytes exceeds {FRAME_BYTES_MAX}")
    return _FRAME_LEN.pack(len(payload)) + payload


def _check_plain(root: Any) -> None:
    """Refuse anything but dict/list/str/int/bytes/bool/None/float (e.g. undefined)."""
    if type(root) in _PLAIN_LEAF_SET:
        return
    stack = [root]
    while stack:
        v = stack.pop()
        t = type(v)
        if t is list:
            items = v
        elif t is dict:
            items = v.values()  # keys are str/bytes (strict_hashable_types)
        else:
            raise _bad(f"unsupported value of type {t.__name__}")
        # The types of a container's items in one C pass: a batch of messages costs no
        # Python step per message.
        types = set(map(type, items))
        if types <= _PLAIN_LEAF_SET:
            continue
        for it in types - _PLAIN_LEAF_SET:
            if it is not list and it is not dict:
                raise _bad(f"unsupported value of type {it.__name__}")
        stack.extend(x for x in items if type(x) is list or type(x) is dict)


class FrameReader:
    """Splits a byte stream into frames and decodes them.

    After a :class:`WireError` the stream is unusable (framing is lost); close it.
    """

    def __init__(self, frame_bytes_max: int = FRAME_BYTES_MAX) -> None:
        self._buf = bytearray()
        self._frame_bytes_max = frame_bytes_max
        self._error: WireError | None = None

    def feed(self, data: bytes) -> list[Any]:
        """Append received bytes; return every frame completed by them, in order."""
        if self._error is not None:
            raise self._error
        self._buf += data
        out: list[Any] = []
        try:
            while len(self._buf) >= _FRAME_LEN.size:
                (length,) = _FRAME_LEN.unpack_from(self._buf)
                if length > self._frame_bytes_max:
                    raise WireError(DropReason.TOO_LARGE, f"frame of {length} bytes")
                end = _FRAME_LEN.size + length
                if len(self._buf) < end:
                    break
                payload = bytes(self._buf[_FRAME_LEN.size:end])
                del self._buf[:end]
                out.append(_decode_frame(payload))
        except WireError as exc:
            self._error = exc
            raise
        return out


def _head_steps() -> tuple[int, ...]:
    """By CBOR head byte: how far the item's head (and a short string's content) reaches,
    when the head alone says (> 0); else -(argument bytes | 16 if a string) for a head
    whose argument follows (additional information 24..27), and 0 for a head outside the
    strict subset we decode (28..31: no indefinite lengths)."""
    steps = []
    for head in range(256):
        major, info = head >> 5, head & 31
        string = major == 2 or major == 3
        if info < 24:
            steps.append(1 + (info if string else 0))
        elif info <= 27:
            steps.append(-((1 << (info - 24)) | (16 if string else 0)))
        else:
            steps.append(0)
    return tuple(steps)


_HEAD_STEPS: Final = _head_steps()
_ARG_UNPACK: Final = {size: struct.Struct(fmt).unpack_from
                      for size, fmt in ((1, ">B"), (2, ">H"), (4, ">I"), (8, ">Q"))}


def count_items(data: bytes, limit: int) -> int:
    """How many CBOR data items ``data`` holds (every head counts: each array or map, each
    key and value, each tag), walking the heads without decoding anything. WireError
    (TOO_LARGE) as soon as there are more than ``limit``; MALFORMED for a head the strict
    decoder would refuse anyway, or one that runs past the end."""
    pos, end, count = 0, len(data), 0
    steps = _HEAD_STEPS
    while pos < end:
        count += 1
        if count > limit:
            raise WireError(DropReason.TOO_LARGE, f"frame of more than {limit} CBOR items")
        step = steps[data[pos]]
        if step > 0:
            pos += step
            continue
        if step == 0:
            raise WireError(DropReason.MALFORMED, f"CBOR head 0x{data[pos]:02x}")
        size = -step & 15
        pos += 1
        if pos + size > end:
            raise WireError(DropReason.MALFORMED, "CBOR head past the end")
        if -step & 16:  # a byte or text string: skip its content too
            pos += size + _ARG_UNPACK[size](data, pos)[0]
        else:
            pos += size
    if pos > end:
        raise WireError(DropReason.MALFORMED, "CBOR string past the end")
    return count


def _decode_frame(payload: bytes) -> Any:
    if len(payload) > FRAME_ITEMS_MAX:  # a shorter one cannot hold more items than bytes
        count_items(payload, FRAME_ITEMS_MAX)
    try:
        value = _loads_exact(payload, FRAME_DEPTH_MAX)
        _check_plain(value)
        return value
    except WireError:
        raise
    except Exception as exc:
        raise WireError(DropReason.MALFORMED, type(exc).__name__) from None
