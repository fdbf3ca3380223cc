"""Fuzz targets for ringd's trust boundaries, and the checks every input goes through.

A :class:`Target` turns one input (bytes) into a call of a real decoder and states what
may come out: a decoded value, or one of the target's documented errors (``errors``).
:class:`Checker` runs inputs through a target and records, per input, what the fuzz
properties forbid:

- **crash**: any other exception, an error whose message is not one line, or a broken
  round trip (``decode(encode(x)) != x`` for an accepted ``x``);
- **hang**: one input taking longer than ``hang_s`` (measured twice before it counts);
- **alloc**: a tracemalloc peak above the target's bound, which grows linearly with the
  input (``alloc_base_bytes + alloc_per_input_byte * len(data)``): decoders may build
  objects from the bytes they are given, never more than a constant factor of them.

Targets are registered with :func:`register`; a new decoder (an encrypted datagram mode,
say) is one line, e.g.::

    register(datagram_target("datagram_aead", lambda: Codec("fuzz", key=KEY, ...), keyed=True))

Seed corpora are real traffic: the datagrams of a short seeded whole-node simulation
(gossip, Totem and group payloads through the real codec), one encoded sample of every
registered message, the frames the client library writes, and config files and values
like the README's.
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import enum
import functools
import hashlib
import io
import math
import os
import random
import shutil
import signal
import socket
import tempfile
import time
import tracemalloc
import types
import typing
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cbor2
import typer
from hypothesis import strategies as st

from ringd.cli import _split_pair
from ringd.config import Config, ConfigError, env_var, knobs, load_config
from ringd.core.requests import API_OPS, API_SEND_BYTES_MAX, OP_OF, BadRequest, parse_request
from ringd.keyring import KEY_BYTES_MIN, KeyFileError, load_key
from ringd.messages import MESSAGE_TYPES, Address, Message
from ringd.runtime.control import CONTROL_FRAME_BYTES_MAX, ControlServer
from ringd.wire import (
    HEADER_BYTES,
    INT_MAX,
    INT_MIN,
    Codec,
    DropReason,
    FrameReader,
    WireError,
    decode_payload,
    encode_payload,
    pack_frame,
)

CLUSTER = "fuzz"
KEY = bytes(range(32))  # a fixed test key: the fuzzer plays an insider that has it too
HANG_S_DEFAULT = 1.0
# An input is slow when it takes more than the hang threshold of CPU time, or this many
# times it in wall-clock time (a blocking call); a niced fuzzer on a busy machine may wait
# for the CPU much longer than it computes.
HANG_WALL_FACTOR = 10.0
# An input still running after this many times the threshold (wall clock) is interrupted
# by SIGALRM and counted as a hang.
HANG_INTERRUPT_FACTOR = 20.0


class PropertyFailed(AssertionError):
    """A decoder returned, but broke a property (round trip, invariant of its result)."""


class _Interrupted(BaseException):
    """Raised by the SIGALRM watchdog inside a hung input (a BaseException: decoders that
    turn every Exception into their own error type must not swallow it)."""


# --- Targets ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Target:
    """One trust boundary: ``run(data)`` decodes one input, raising only ``errors`` on
    refusal and :class:`PropertyFailed` when an accepted input breaks a property."""

    name: str
    doc: str
    run: Callable[[bytes], Any]
    errors: tuple[type[BaseException], ...]
    seeds: Callable[[], list[bytes]]
    input_bytes_max: int = 4096
    alloc_base_bytes: int = 256 << 10
    alloc_per_input_byte: int = 200
    # Inputs that are valid by construction (encoded from generated values), for the
    # Hypothesis engine; None: only mutated seeds and random bytes.
    structured: Callable[[], st.SearchStrategy[bytes]] | None = None
    # Before a coverage-guided run: instrument code the import hook cannot see.
    prepare_coverage: Callable[[Callable[[Any], Any]], None] | None = None
    # Tokens the coverage-guided engine may splice into inputs (a libFuzzer -dict).
    tokens: Callable[[], list[bytes]] | None = None
    # Where the input's CBOR starts (bytes before it are kept as they are), for the
    # structure-aware mutator; FRAMED: a length-prefixed frame; None: bytes only.
    cbor_offset: int | None = None

    def alloc_bound(self, size: int) -> int:
        return self.alloc_base_bytes + self.alloc_per_input_byte * size


TARGETS: dict[str, Target] = {}


def register(target: Target) -> Target:
    """Add a target to :data:`TARGETS` (names are unique)."""
    if target.name in TARGETS:
        raise ValueError(f"fuzz target {target.name} registered twice")
    TARGETS[target.name] = target
    return target


# --- Sample values of every registered message ------------------------------------------


def _sample(tp: Any, i: int) -> Any:
    """A deterministic, plausible value of type ``tp`` (variant ``i``)."""
    if tp is int:
        return (0, 1, 7946, 2**31, INT_MAX, INT_MIN, -1)[i % 7]
    if tp is bool:
        return bool(i % 2)
    if tp is float:
        return (0.5, 1e-3, 12345.0)[i % 3]
    if tp is str:
        return ("n1", "127.0.0.1", "group-a", "")[i % 4]
    if tp is bytes:
        return (b"hello", b"", bytes(range(16)))[i % 3]
    if isinstance(tp, type) and issubclass(tp, enum.IntEnum):
        return list(tp)[i % len(tp)]
    if isinstance(tp, type) and issubclass(tp, Message):
        return sample_message(tp, i)
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (types.UnionType, typing.Union):
        members = [a for a in args if a is not type(None)]
        if i % 3 == 2 and len(members) < len(args):
            return None
        return _sample(members[i % len(members)], i)
    if origin is tuple:
        return tuple(_sample(args[0], i + k) for k in range(i % 3 + 1))
    if origin is dict:
        return {f"k{k}": _sample(args[1], i + k) for k in range(i % 3)}
    raise TypeError(f"no sample for {tp!r}")


def sample_message(cls: type[Message], i: int = 0) -> Message:
    """An instance of a registered message class with sample field values."""
    if cls is Address:  # the decoder takes IP addresses and 16-bit ports only
        return Address(host=("127.0.0.1", "192.0.2.7", "::1")[i % 3], port=(7946, 0, 65535)[i % 3])
    hints = typing.get_type_hints(cls)
    return cls(**{f.name: _sample(hints[f.name], i + k)
                  for k, f in enumerate(dataclasses.fields(cls))})


def message_strategy(cls: type[Message]) -> st.SearchStrategy[Message]:
    """Hypothesis strategy for any instance of ``cls``, from its type hints."""
    if cls is Address:
        return st.builds(Address, host=st.ip_addresses().map(str), port=st.integers(0, 65535))
    hints = typing.get_type_hints(cls)
    return st.builds(cls, **{f.name: _strategy(hints[f.name]) for f in dataclasses.fields(cls)})


def _strategy(tp: Any) -> st.SearchStrategy[Any]:
    if tp is int:
        return st.integers(INT_MIN, INT_MAX)
    if tp is bool:
        return st.booleans()
    if tp is float:
        return st.floats(allow_nan=False, allow_infinity=False)
    if tp is str:
        return st.text(max_size=16)
    if tp is bytes:
        return st.binary(max_size=32)
    if isinstance(tp, type) and issubclass(tp, enum.IntEnum):
        return st.sampled_from(list(tp))
    if isinstance(tp, type) and issubclass(tp, Message):
        return st.deferred(lambda: message_strategy(tp))
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (types.UnionType, typing.Union):
        return st.one_of([st.none() if a is type(None) else _strategy(a) for a in args])
    if origin is tuple:
        return st.lists(_strategy(args[0]), max_size=4).map(tuple)
    if origin is dict:
        return st.dictionaries(st.text(max_size=8), _strategy(args[1]), max_size=4)
    raise TypeError(f"no strategy for {tp!r}")


def _family(tag: int) -> str:
    """'gossip' (1-31), 'totem' (32-55) or 'group' (56-63), as the tag ranges of messages.py."""
    return "gossip" if tag < 32 else "totem" if tag < 56 else "group"


def tags_of(family: str | None) -> list[int]:
    return sorted(t for t in MESSAGE_TYPES if family is None or _family(t) == family)


# --- Real traffic: a short seeded whole-node simulation through the codec --------------


@functools.cache
def captured_traffic() -> tuple[tuple[bytes, ...], tuple[bytes, ...]]:
    """(datagrams, group payloads) of a 3-node whole-node simulation with load, encoded
    by the real codec (cluster ``ringd-sim``), at most a few of each message type."""
    from ringd.sim.cluster import SimOptions
    from ringd.sim.runner import make_cluster
    from ringd.totem_messages import Mcast

    options = SimOptions(codec=True, whole_node=True, duration_s=1.5, partitions=False,
                         crashes=True, pauses=False, liveness=False, trace_len=1)
    cluster = make_cluster(7, 3, options)
    codec = cluster._codec  # the simulator's own codec; we only watch what it encodes
    encode = codec.encode
    per_type: Counter[str] = Counter()
    datagrams: list[bytes] = []
    payloads: list[bytes] = []

    def recording(sender: str, msg: Message) -> bytes:
        data = encode(sender, msg)
        kind = type(msg).__name__
        if per_type[kind] < 6:
            per_type[kind] += 1
            datagrams.append(data)
        if type(msg) is Mcast and len(payloads) < 40:
            for chunk in msg.chunks:
                try:
                    carried = decode_payload(chunk.data) if chunk.count == 1 else None
                except WireError:
                    continue  # an application's own bytes, not a group payload
                if carried is not None and _family(carried.TYPE) == "group":
                    payloads.append(chunk.data)
        return data

    codec.encode = recording
    cluster.run()
    return tuple(datagrams), tuple(payloads)


_PLAIN_CODEC = Codec(CLUSTER)
_HEADER_OF = {False: _PLAIN_CODEC.encode("x", sample_message(MESSAGE_TYPES[11]))[:HEADER_BYTES]}


def keyed_input(unsigned: bytes) -> bytes:
    """A plain datagram as the input of a keyed target: sender length, sender, message."""
    sender, msg = _PLAIN_CODEC.decode_untrusted(unsigned)
    name = sender.encode()
    return bytes([len(name)]) + name + encode_payload(msg)


# Keyed codecs keep state per sender name (derived keys, replay windows). A keyed target's
# codecs live for this many inputs: over a whole run their dicts would grow by a fuzzed
# name per input, and each resize of a table of 100,000 names (a spike of ~1.5 MB inside
# one tiny input) was reported as that input's allocation.
HARNESS_CODEC_INPUTS = 256


def _seal(holder: Codec, data: bytes) -> bytes:
    """What a key holder sends: ``holder`` (same keys as the receiver) seals the input's
    message bytes as they are, so the parser behind the key check is fuzzed."""
    if not data:
        return data
    size = data[0]
    try:
        sender = data[1:1 + size].decode()
        return holder._encode_keyed(sender, data[1 + size:])  # fuzzing only
    except (UnicodeDecodeError, ValueError):
        return data


def _cbor_text(text: str) -> bytes:
    return pack_frame(text)[4:]


def _message_tokens() -> list[bytes]:
    """CBOR heads of every message array, and the names that occur in real traffic."""
    out = [pack_frame([tag])[5:] for tag in MESSAGE_TYPES]  # the tag after the array head
    out += [bytes([0x80 + n]) + pack_frame(tag)[4:] for tag in MESSAGE_TYPES for n in (2, 3, 5)]
    out += [_cbor_text(t) for t in ("n1", "n2", "127.0.0.1", "group-a", "chat")]
    return out


def _datagram_tokens() -> list[bytes]:
    return [_HEADER_OF[False], *_message_tokens()]


# --- Datagram targets --------------------------------------------------------------------


def _datagram_seeds(keyed: bool) -> list[bytes]:
    """The simulation's datagrams (moved to our cluster id) and a sample of every message,
    without a trailer: keyed targets seal them (see :func:`datagram_target`)."""
    datagrams, _payloads = captured_traffic()
    seeds = [_HEADER_OF[False] + data[HEADER_BYTES:] for data in datagrams]
    seeds += [_PLAIN_CODEC.encode("n1", sample_message(MESSAGE_TYPES[tag], i))
              for tag in tags_of(None) for i in range(3)]
    return [b"\x00" + keyed_input(data) for data in seeds] if keyed else seeds


def datagram_target(name: str, make_codec: Callable[[], Codec], keyed: bool = False,
                    doc: str = "") -> Target:
    """A target for ``Codec.decode_untrusted`` of ``make_codec()``.

    ``keyed`` (a keyed codec): the first input byte picks the attacker: even = a key holder
    (a second codec of ``make_codec()`` seals the rest, so the parser behind the
    authentication is fuzzed), odd = an outsider (the rest as received: the authentication
    check itself is fuzzed).
    """
    codec, holder = make_codec(), make_codec()  # the receiver, and the key holder (keyed)
    inputs = 0

    def run(data: bytes) -> Any:
        nonlocal codec, holder, inputs
        if keyed:
            inputs += 1
            if inputs % HARNESS_CODEC_INPUTS == 0:
                codec, holder = make_codec(), make_codec()
            if not data:
                raise WireError(DropReason.MALFORMED, "empty")
            data = _seal(holder, data[1:]) if data[0] % 2 == 0 else data[1:]
        sender, msg = codec.decode_untrusted(data)
        _check_message_round_trip(msg)
        try:
            # A keyed codec refuses what it sent itself (a replay): re-encode with a peer's.
            again = (make_codec() if keyed else codec).encode(sender, msg)
        except ValueError as exc:
            # Only a size refusal is allowed: non-minimal CBOR (half floats, long int
            # heads) can re-encode larger than the datagram we accepted.
            if "exceeds datagram_bytes_max" not in str(exc):
                raise PropertyFailed(f"an accepted message does not encode: {exc}") from None
            return msg
        if codec.decode_untrusted(again) != (sender, msg):
            raise PropertyFailed(f"{type(msg).__name__}: decode(encode(x)) != x")
        return msg

    def structured() -> st.SearchStrategy[bytes]:
        any_tag = st.sampled_from(tags_of(None))
        msgs = any_tag.flatmap(lambda t: message_strategy(MESSAGE_TYPES[t]))
        senders = st.text(min_size=1, max_size=40)

        def encode(pair: tuple[str, Message]) -> bytes:
            try:
                unsigned = _PLAIN_CODEC.encode(*pair)
            except ValueError:
                return b""
            return b"\x00" + keyed_input(unsigned) if keyed else unsigned

        return st.tuples(senders, msgs).map(encode)

    return Target(
        name=name, doc=doc or f"Codec.decode_untrusted ({'keyed' if keyed else 'no key'})",
        run=run, errors=(WireError,), seeds=lambda: _datagram_seeds(keyed),
        input_bytes_max=65535, structured=structured, prepare_coverage=_instrument_schemas,
        tokens=_datagram_tokens, cbor_offset=None if keyed else HEADER_BYTES)


def _check_message_round_trip(msg: Message) -> None:
    """The message part alone: decode_payload(encode_payload(x)) == x; and every address
    in it is one a socket can send to without a name lookup."""
    if decode_payload(encode_payload(msg)) != msg:
        raise PropertyFailed(f"{type(msg).__name__}: payload round trip differs")
    stack: list[Any] = [msg]
    while stack:
        v = stack.pop()
        if type(v) is Address:
            _check_sendable(v)
        elif isinstance(v, Message):
            stack.extend(getattr(v, f.name) for f in dataclasses.fields(v))
        elif isinstance(v, tuple):
            stack.extend(v)


def _check_sendable(address: Address) -> None:
    try:
        socket.getaddrinfo(address.host, address.port, flags=socket.AI_NUMERICHOST)
    except (OSError, OverflowError, TypeError, ValueError, UnicodeError) as exc:
        raise PropertyFailed(f"accepted an address no socket can send to: {address!r} "
                             f"({type(exc).__name__})") from None


def _instrument_schemas(instrument: Callable[[Any], Any]) -> None:
    """The codec generates one decoder per message class with exec(); the import hook
    never sees them, so build them all now and instrument each."""
    from ringd import wire

    for cls in MESSAGE_TYPES.values():
        instrument(wire._schema(cls).decode)


# --- A node core fed decoded datagrams (what the runtime does after decoding) ----------

# Input: datagrams separated by this marker; each starts with one byte of elapsed time
# (in milliseconds) before it arrives.
DATAGRAM_MARK = b"\n\x1eRG\x1e\n"
_SIM_CLUSTER = "ringd-sim"  # the captured traffic's cluster; our node is its n1


def _node_core_run(data: bytes) -> Any:
    """A fresh node core (named n1, as in the captured run) gets each datagram that
    decodes, with ticks when its deadlines pass; nothing it does may raise."""
    from random import Random

    from ringd.core.events import Received, Start, Tick
    from ringd.core.node import NodeCore
    from ringd.sim.node_cluster import sim_config
    from ringd.sim.options import SimOptions

    codec = _sim_codec()
    core = NodeCore(sim_config("n1", SimOptions(), 3), address=Address(host="192.0.2.1", port=1),
                    seeds=[], incarnation=1, ring_seq=0, rng=Random(1), size_of=codec.size_of,
                    encode_payload=encode_payload, decode_payload=decode_payload, now=0.0)
    now = 0.0
    effects = core.handle(Start(), now)
    handled = 0
    for part in data.split(DATAGRAM_MARK)[:32]:
        if not part:
            continue
        now += part[0] * 0.001
        while core.next_deadline() <= now:
            effects += core.handle(Tick(), core.next_deadline())
        try:
            sender, msg = codec.decode_untrusted(part[1:])
        except WireError:
            continue
        source = Address(host="192.0.2.1", port=sum(sender.encode()) % 3)
        effects += core.handle(Received(msg=msg, sender=sender, source=source), now)
        handled += 1
        if len(effects) > 100_000:
            raise PropertyFailed(f"{len(effects)} effects from {handled} datagrams")
    return handled


@functools.cache
def _sim_codec() -> Codec:
    return Codec(_SIM_CLUSTER)


def _node_core_seeds() -> list[bytes]:
    datagrams, _payloads = captured_traffic()
    stream = DATAGRAM_MARK.join(b"\x01" + d for d in datagrams)
    singles = [b"\x00" + d for d in datagrams]
    return [stream, DATAGRAM_MARK.join(singles[:10]), *singles]


# --- The key file ---------------------------------------------------------------------


def _key_file_run(data: bytes) -> bytes:
    path = _config_dir() / "cluster.key"
    path.write_bytes(data)
    path.chmod(0o600)  # load_key refuses a key file group or others may read
    key = load_key(path)
    if type(key) is not bytes or len(key) < KEY_BYTES_MIN:
        raise PropertyFailed(f"load_key accepted a key of {len(key)} bytes")
    Codec(CLUSTER, key=key)  # every key load_key accepts makes a working codec
    return key


def _key_file_seeds() -> list[bytes]:
    return [KEY.hex().encode() + b"\n", KEY, b"  " + KEY.hex().upper().encode() + b"\r\n",
            bytes(range(64)), b"00" * 15]


# --- Message decoders (gossip / Totem / group payloads) ---------------------------------


def message_target(family: str) -> Target:
    """``decode_payload`` (one CBOR message array), seeded with ``family``'s messages."""
    tags = tags_of(family)

    def seeds() -> list[bytes]:
        out = [encode_payload(sample_message(MESSAGE_TYPES[t], i)) for t in tags for i in range(4)]
        datagrams, payloads = captured_traffic()
        if family == "group":
            out += list(payloads)
        for data in datagrams:
            try:
                _sender, msg = Codec("ringd-sim").decode_untrusted(data)
            except WireError:
                continue
            if _family(msg.TYPE) == family:
                out.append(encode_payload(msg))
        return out

    def run(data: bytes) -> Any:
        msg = decode_payload(data)
        if type(msg) not in MESSAGE_TYPES.values():
            raise PropertyFailed(f"decoded an unregistered type {type(msg).__name__}")
        _check_message_round_trip(msg)
        return msg

    def structured() -> st.SearchStrategy[bytes]:
        return st.sampled_from(tags).flatmap(
            lambda t: message_strategy(MESSAGE_TYPES[t])).map(encode_payload)

    return Target(name=f"{family}_messages",
                  doc=f"decode_payload of {family} messages (tags {tags[0]}-{tags[-1]})",
                  run=run, errors=(WireError,), seeds=seeds, input_bytes_max=8192,
                  structured=structured, prepare_coverage=_instrument_schemas,
                  tokens=_message_tokens, cbor_offset=0)


# --- Client API: frames and requests ------------------------------------------------------


def client_frames() -> list[bytes]:
    """The bytes the client library writes for each kind of call, as sent to the daemon."""
    from ringd.client.connection import ClientConnection

    out: list[bytes] = []
    conn = ClientConnection()
    calls: list[tuple[str, dict[str, Any]]] = [
        ("group_join", {"group": "chat"}), ("group_join", {"group": "chat", "self_discard": True}),
        ("group_leave", {"group": "chat"}), ("group_members", {}),
        ("group_members", {"group": "chat"}), ("ring", {}), ("status", {}), ("members", {}),
        ("events", {}), ("tags", {"tags": {"role": "db", "zone": "a"}}),
        ("event", {"name": "deploy", "payload": b"v1.2"}),
    ]
    for op, fields in calls:
        conn.request(op, fields)
        out.append(bytes(conn.outgoing()))
        conn.wrote(len(conn.outgoing()))
    for items, safe in (([b"hello"], False), ([b"a", b"b" * 300], True), ([b""], False)):
        conn.send("chat", items, safe=safe, wait=True)
        out.append(bytes(conn.outgoing()))
        conn.wrote(len(out[-1]))
    out.append(b"".join(out[:4]))  # pipelined requests in one read
    return out


def _split_feed(reader: FrameReader, data: bytes) -> list[Any]:
    """Feed ``data`` in pieces whose sizes come from its first byte (stream reassembly)."""
    if not data:
        return []
    step = data[0] + 1
    frames: list[Any] = []
    for i in range(1, len(data), step):
        frames.extend(reader.feed(data[i:i + step]))
    return frames


def _frames_run(data: bytes) -> Any:
    reader = FrameReader(CONTROL_FRAME_BYTES_MAX)
    frames = _split_feed(reader, data)
    for frame in frames:
        packed = pack_frame(frame)
        again = FrameReader(CONTROL_FRAME_BYTES_MAX).feed(packed)
        if len(again) != 1 or pack_frame(again[0]) != packed:
            raise PropertyFailed("frame: decode(encode(x)) != x")
    return frames


class _Inbox:
    """A daemon inbox stand-in that takes everything (for the control ops)."""

    def __init__(self) -> None:
        self.items: list[Any] = []

    def send_nowait(self, event: Any) -> None:
        self.items.append(event)


@functools.cache
def _control_server() -> tuple[ControlServer, Any]:
    import logging

    server = ControlServer(Path("/nonexistent/fuzz.sock"), logging.getLogger("fuzz"))
    daemon = types.SimpleNamespace(cfg=Config.local(), inbox_send=_Inbox())
    return server, daemon


# Control ops that read the whole daemon and take no fields: not input validation.
_DAEMON_READS = ("status", "members", "leave", "events")


def validate_request(request: Any) -> Any:
    """What the control server does with one decoded frame before the driver sees it:
    the id check, then ``parse_request`` (client API ops) or the control op's own checks.
    Returns the typed request, or the error reply; raises only on a bug."""
    server, daemon = _control_server()
    if isinstance(request, dict):
        request_id = request.get("id")
        if request_id is not None and type(request_id) is not int:
            return {"ok": False, "error": "'id' must be an integer"}
    op = request.get("op") if isinstance(request, dict) else None
    if op in API_OPS:
        assert isinstance(op, str)
        try:
            parsed = parse_request(op, request, conn=1, pid=2, request_id=3)
        except BadRequest as exc:
            return {"ok": False, "error": str(exc)}
        _check_request(op, request, parsed)
        return parsed
    if op in _DAEMON_READS:
        return None
    daemon.inbox_send.items.clear()
    reply, after = server._dispatch(daemon, request)  # the control ops' validation
    if after is not None or not isinstance(reply, dict) or type(reply.get("ok")) is not bool:
        raise PropertyFailed(f"control reply is not a map with 'ok': {reply!r}")
    if not reply["ok"] and not isinstance(reply.get("error"), str):
        raise PropertyFailed("control error reply without an error text")
    return reply


def _check_request(op: str, raw: dict[str, Any], parsed: Any) -> None:
    """Invariants of an accepted client API request."""
    if OP_OF.get(type(parsed)) != op:
        raise PropertyFailed(f"{op} parsed as {type(parsed).__name__}")
    group = getattr(parsed, "group", None)
    if group is not None and (type(group) is not str or not group or group != raw.get("group")):
        raise PropertyFailed(f"{op}: group {group!r} not the request's")
    data = getattr(parsed, "data", None)
    if data is not None:
        if not data or not all(type(d) is bytes for d in data):
            raise PropertyFailed("send: accepted data that is not non-empty bytes items")
        if parsed.size > API_SEND_BYTES_MAX:
            raise PropertyFailed("send: accepted more data than API_SEND_BYTES_MAX")


def _requests_run(data: bytes) -> Any:
    out = []
    for frame in FrameReader(CONTROL_FRAME_BYTES_MAX).feed(data):
        result = validate_request(frame)
        reply = result if isinstance(result, dict) else None
        if reply is not None and "error" in reply and (
                "\n" in reply["error"] or not reply["error"]):
            raise PropertyFailed(f"error reply is not one line: {reply['error']!r}")
        out.append(result)
    return out


# --- Client requests into a node core --------------------------------------------------

def _operational_core() -> tuple[Any, float]:
    """A fresh node core that is the operational ring of one (about 0.7 ms to build)."""
    from random import Random

    from ringd.core.events import Start, Tick
    from ringd.core.node import NodeCore

    codec = _sim_codec()
    core = NodeCore(Config(name="n1", cluster_name=_SIM_CLUSTER), address=Address(host="192.0.2.1", port=1),
                    seeds=[], incarnation=1, ring_seq=0, rng=Random(1), size_of=codec.size_of,
                    encode_payload=encode_payload, decode_payload=decode_payload, now=0.0)
    now = 0.0
    core.handle(Start(), now)
    while not (core.active and core.members == ("n1",) and core.state.name == "OPERATIONAL"):
        now = core.next_deadline()
        if now > 30.0:
            raise PropertyFailed("the ring of one did not form within 30 s")
        core.handle(Tick(), now)
    return core, now


def _node_requests_run(data: bytes) -> Any:
    """Every request the control server accepts goes to an operational node core, in order
    (1 ms apart), and the core runs 2 s more: nothing it does may raise, and every reply is
    a map with a boolean 'ok' and a one-line error. (A send whose first message was empty
    crashed the daemon here, 2026-12-07, before any fuzzing reached it.)"""
    from ringd.core.events import Reply, Tick

    core = None
    now = 0.0
    handled = 0
    for frame in FrameReader(CONTROL_FRAME_BYTES_MAX).feed(data):
        request = validate_request(frame)
        if request is None or isinstance(request, dict):
            continue  # refused (an error reply), or an op that reads the whole daemon
        if core is None:
            core, now = _operational_core()
        now += 0.001
        effects = core.handle(request, now)
        handled += 1
        end = now + 2.0
        while core.next_deadline() <= end:
            effects += core.handle(Tick(), max(now, core.next_deadline()))
            if len(effects) > 100_000:
                raise PropertyFailed(f"{len(effects)} effects from one request")
        for effect in effects:
            if type(effect) is Reply:
                body = effect.body
                if not isinstance(body, dict) or type(body.get("ok")) is not bool:
                    raise PropertyFailed(f"reply is not a map with a boolean 'ok': {body!r}")
                error = body.get("error")
                if error is not None and (not isinstance(error, str) or "\n" in error or not error):
                    raise PropertyFailed(f"error reply is not one line: {error!r}")
    return handled


def _requests_structured() -> st.SearchStrategy[bytes]:
    plain = st.recursive(
        st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats()
        | st.text(max_size=20) | st.binary(max_size=20),
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                   max_size=4),
        max_leaves=12)
    keys = st.sampled_from(["op", "id", "group", "data", "safe", "wait", "self_discard", "tags",
                            "name", "payload"])
    ops = st.sampled_from([*API_OPS, "tags", "event", "status", "nope", ""])
    request = st.builds(lambda op, extra: {"op": op, **extra}, ops | plain,
                        st.dictionaries(keys, plain, max_size=6))
    return st.lists(request, min_size=1, max_size=3).map(
        lambda frames: b"".join(pack_frame(f) for f in frames))


def _request_tokens() -> list[bytes]:
    words = ["op", "id", "group", "data", "safe", "wait", "self_discard", "tags", "name",
             "payload", *API_OPS, "status", "members", "leave", "event", "events"]
    return [_cbor_text(w) for w in words]


# --- Config loader: TOML file, RINGD_* environment, --set ------------------------------

# Input layout: TOML file bytes, then RINGD_* lines, then --set items, separated by 0x1e.
SEPARATOR = b"\x1e"


# Where the file-reading targets write each input; None: a temporary directory (in memory
# where /dev/shm exists), removed at exit. Workers set it under their output directory,
# because libFuzzer ends the process without running exit handlers.
scratch_dir: Path | None = None


@functools.cache
def _config_dir() -> Path:
    if scratch_dir is not None:
        scratch_dir.mkdir(parents=True, exist_ok=True)
        return scratch_dir
    base = "/dev/shm" if os.path.isdir("/dev/shm") else None
    path = Path(tempfile.mkdtemp(prefix="ringd-fuzz-", dir=base))
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    return path


class _Discard(io.TextIOBase):
    def write(self, text: str) -> int:
        return len(text)


_DISCARD = _Discard()


def _os_string(raw: bytes) -> str:
    """Bytes as the OS hands them to us (argv, environ): no NUL, undecodable as surrogates."""
    return raw.replace(b"\x00", b"").decode("utf-8", "surrogateescape")


def _config_run(data: bytes) -> Any:
    toml, _, rest = data.partition(SEPARATOR)
    env_part, _, set_part = rest.partition(SEPARATOR)
    path = _config_dir() / "config.toml"
    path.write_bytes(toml)
    env: dict[str, str] = {}
    for line in env_part.split(b"\n"):
        k, sep, v = line.partition(b"=")
        if sep:
            env[_os_string(k)] = _os_string(v)
    overrides: dict[str, Any] = {}
    with contextlib.redirect_stderr(_DISCARD):  # _split_pair prints its one-line error
        for item in filter(None, set_part.split(b"\n")):
            key, value = _split_pair("--set", _os_string(item))  # as `ringd run --set` parses
            overrides[key] = value
    cfg = load_config(path if toml else None, env=env, overrides=overrides)
    _check_config_round_trip(cfg)
    return cfg


def _check_config_round_trip(cfg: Config) -> None:
    """Every accepted config, written back as ``--set`` values, loads as the same config."""
    values: dict[str, Any] = {}
    for key in knobs():
        section, _, sub = key.partition(".")
        values[key] = getattr(getattr(cfg, section), sub) if sub else getattr(cfg, key)
    try:
        again = load_config(None, env={}, overrides=values)
    except ConfigError as exc:
        raise PropertyFailed(f"an accepted config does not load again: {exc}") from None
    if again != cfg:
        raise PropertyFailed("config: load(dump(x)) != x")


def config_seeds() -> list[bytes]:
    readme = (b'name = "db1"\ncluster_name = "prod"\npreset = "lan"\n\n[net]\n'
              b'bind_host = "192.0.2.10"\nseeds = ["192.0.2.11:7946"]\n\n[gossip]\n'
              b'probe_interval_s = 0.5\n')
    out = [readme, b"", b'tags = { role = "db", zone = "a" }\n[totem]\nwindow_size = 150\n',
           b'[net]\nport = 0\nmulticast_enabled = false\nseeds = ["127.0.0.1:7000", "[::1]:7001"]\n']
    env = b"\n".join(f"{env_var(k)}={v}".encode() for k, v in (
        ("gossip.probe_interval_s", "0.5"), ("net.port", "7950"), ("tags", "a=b,c=d"),
        ("net.multicast_enabled", "off"), ("net.seeds", "127.0.0.1:7000,127.0.0.1:7001")))
    sets = b"net.port=7951\ntotem.token_timeout_s=1.5\nname=n2\nlog_level=debug"
    out += [readme + SEPARATOR + env, SEPARATOR + env + SEPARATOR + sets,
            readme + SEPARATOR + SEPARATOR + sets]
    return out


def _config_tokens() -> list[bytes]:
    out = [SEPARATOR, b"[net]", b"[gossip]", b"[totem]", b" = ", b'"', b"true", b"inf", b"nan"]
    for key in knobs():
        out += [key.encode(), key.rpartition(".")[2].encode(), env_var(key).encode() + b"="]
    return out


def _config_structured() -> st.SearchStrategy[bytes]:
    keys = sorted(knobs())
    value = (st.text(max_size=12) | st.integers(-(2**66), 2**66).map(str)
             | st.floats(allow_nan=True).map(repr) | st.sampled_from(["true", "off", "lan", "1e3"]))
    sets = st.lists(st.tuples(st.sampled_from(keys) | st.text(max_size=8), value),
                    max_size=5).map(lambda kv: "\n".join(f"{k}={v}" for k, v in kv).encode(
                        "utf-8", "surrogatepass"))
    env = st.lists(st.tuples(st.sampled_from(keys), value), max_size=5).map(
        lambda kv: "\n".join(f"{env_var(k)}={v}" for k, v in kv).encode("utf-8", "surrogatepass"))
    toml_value = st.sampled_from(['"x"', "1", "-0.0", "inf", "nan", "true", "[]", '["a:1"]',
                                  "{}", '{ a = "b" }', "1979-05-27", "0x7f", "1_000", "1e400"])
    toml = st.lists(st.tuples(st.sampled_from(keys), toml_value), max_size=6).map(
        lambda kv: "".join(f"{k} = {v}\n" for k, v in kv).encode())
    return st.tuples(toml, env, sets).map(lambda t: SEPARATOR.join(t))


# --- Structure-aware mutation (for the coverage-guided engine) -------------------------

FRAMED = -1
_EDGE_VALUES: tuple[Any, ...] = (
    0, -1, 1, 23, 24, 255, 256, 65535, 65536, 70000, INT_MAX, INT_MAX + 1, INT_MIN, INT_MIN - 1,
    2**64, 0.0, -0.0, 1.5, math.inf, -math.inf, math.nan, True, False, None, "", "x", "\x00",
    "127.0.0.1", "::1", "\ud7ff\ue000", b"", b"\x00" * 3, [], {}, [[]], {"": ""})


def mutate_structure(data: bytes, rng: random.Random, offset: int) -> bytes | None:
    """``data`` with one value inside its CBOR replaced, removed, duplicated or nested
    (as cbor2 reads it leniently), re-encoded; None if it holds no CBOR there."""
    if offset == FRAMED:
        if len(data) < 4:
            return None
        size = int.from_bytes(data[:4], "big")
        inner = mutate_structure(data[4:4 + size], rng, 0)
        return None if inner is None else pack_frame_lenient(inner) + data[4 + size:]
    try:
        value = cbor2.loads(data[offset:])
    except Exception:
        return None
    holders: list[tuple[Any, Any]] = []  # (container, key) of every value inside
    stack = [value]
    while stack and len(holders) < 2000:
        v = stack.pop()
        if type(v) is list:
            holders += [(v, i) for i in range(len(v))]
            stack.extend(v)
        elif type(v) is dict:
            holders += [(v, k) for k in v]
            stack.extend(v.values())
    if not holders:
        return None
    container, key = rng.choice(holders)
    op = rng.randrange(6)
    if op == 0:
        container[key] = rng.choice(_EDGE_VALUES)
    elif op == 1 and type(container) is list:
        del container[key]
    elif op == 2 and type(container) is list:
        container.insert(key, container[key])
    elif op == 3:
        container[key] = [container[key]] if rng.random() < 0.5 else {"k": container[key]}
    elif op == 4 and type(container[key]) is int and 32 <= container[key] < 128:
        container[key] = rng.choice(list(MESSAGE_TYPES))  # another message's tag
    else:
        old = container[key]
        container[key] = (old * rng.randrange(2, 17) if type(old) in (str, bytes, list)
                          else rng.choice(_EDGE_VALUES))
    try:
        return data[:offset] + cbor2.dumps(value)
    except Exception:
        return None


def pack_frame_lenient(payload: bytes) -> bytes:
    return len(payload).to_bytes(4, "big") + payload


# --- Inputs for the Hypothesis engine -------------------------------------------------

# Bytes that mean something to CBOR (integer, string, array, map heads with their length
# sizes, indefinite lengths, tags, simple values, floats, break) and to length prefixes.
INTERESTING_BYTES = (0x00, 0x01, 0x17, 0x18, 0x19, 0x1A, 0x1B, 0x1F, 0x20, 0x3B, 0x40, 0x5B,
                     0x5F, 0x60, 0x7B, 0x7F, 0x80, 0x9B, 0x9F, 0xA0, 0xBB, 0xBF, 0xC0, 0xC2,
                     0xD8, 0xD9, 0xDB, 0xE0, 0xF4, 0xF5, 0xF6, 0xF7, 0xF8, 0xF9, 0xFA, 0xFB,
                     0xFF, 0x1E, 0x0A, 0x22, 0x3D, 0x5B, 0x5D)


@st.composite
def mutated(draw: st.DrawFn, base: st.SearchStrategy[bytes],
            others: tuple[bytes, ...]) -> bytes:
    """A few byte-level mutations of an input drawn from ``base`` (flip, insert, delete,
    interesting byte, splice with another seed, duplicate, truncate)."""
    data = bytearray(draw(base))
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.integers(0, 6))
        pos = draw(st.integers(0, len(data)))
        at = min(pos, len(data) - 1)
        if op == 0 and data:
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif op == 1:
            data[pos:pos] = draw(st.binary(min_size=1, max_size=8))
        elif op == 2:
            del data[pos:draw(st.integers(pos, pos + 16))]
        elif op == 3 and data:
            data[at] = draw(st.sampled_from(INTERESTING_BYTES))
        elif op == 4 and others:
            other = draw(st.sampled_from(others))
            data[pos:] = other[draw(st.integers(0, len(other))):]
        elif op == 5:
            data[pos:pos] = data[pos:draw(st.integers(pos, pos + 32))]
        elif op == 6:
            del data[pos:]
    return bytes(data)


def input_strategy(target: Target, seeds: list[bytes]) -> st.SearchStrategy[bytes]:
    """Random bytes, mutated seeds, and (where the target has them) structured inputs,
    valid by construction, as they are and mutated."""
    pool = tuple(seeds)
    parts = [st.binary(max_size=64)]
    if pool:
        parts += [st.sampled_from(pool), mutated(st.sampled_from(pool), pool),
                  mutated(st.sampled_from(pool), pool)]
    if target.structured is not None:
        structured = target.structured()
        parts += [structured, mutated(structured, pool)]
    return st.one_of(parts)


# --- The checker: properties of every input ---------------------------------------------


@dataclass(slots=True)
class Finding:
    kind: str  # "crash", "hang" or "alloc"
    detail: str
    data: bytes
    path: str = ""


@dataclass(slots=True)
class Stats:
    """What a run of one target saw."""

    target: str
    engine: str = ""
    inputs: int = 0
    accepted: int = 0
    refused: int = 0
    crashes: int = 0
    hangs: int = 0
    allocs: int = 0
    peak_alloc_bytes_max: int = 0
    peak_alloc_input_bytes: int = 0
    slowest_input_s: float = 0.0
    seconds: float = 0.0
    refusals: Counter[str] = field(default_factory=Counter)
    # Distinct findings (kind, exception type and place, or property) and their counts.
    finding_kinds: Counter[str] = field(default_factory=Counter)
    findings: list[dict[str, str]] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["refusals"] = dict(self.refusals.most_common(20))
        out["finding_kinds"] = dict(self.finding_kinds.most_common(50))
        out["inputs_per_s"] = round(self.inputs / self.seconds, 1) if self.seconds else 0.0
        return out


def _one_line(exc: BaseException) -> bool:
    text = str(exc)
    return bool(text) and "\n" not in text and "\r" not in text


class Checker:
    """Runs inputs through one target and records what each property says about them.

    Never raises for a finding: it is counted, kept in ``findings`` (and written under
    ``findings_dir`` when given), and the run goes on.
    """

    def __init__(self, target: Target, *, hang_s: float = HANG_S_DEFAULT,
                 findings_dir: Path | None = None, trace_alloc: bool = True,
                 findings_max: int = 50) -> None:
        self.target = target
        self.hang_s = hang_s
        self.findings_dir = findings_dir
        self.trace_alloc = trace_alloc
        self.findings_max = findings_max
        self.stats = Stats(target=target.name)
        self.findings: list[Finding] = []
        self._started = time.monotonic()
        self._started_tracing = False  # tracemalloc was started by us (close() stops it)
        signal.signal(signal.SIGALRM, _alarm)

    def close(self) -> None:
        """Stop the allocation tracing this checker started (none started: nothing)."""
        if self._started_tracing:
            self._started_tracing = False
            tracemalloc.stop()

    def __enter__(self) -> Checker:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def check(self, data: bytes) -> str:
        """Run one input; returns "accepted", "refused", "crash", "hang" or "alloc"."""
        data = data[:self.target.input_bytes_max]
        stats = self.stats
        stats.inputs += 1
        elapsed, wall, peak, outcome, detail, signature = self._run(data)
        if self._slow(elapsed, wall) and outcome not in ("hang", "crash"):
            # Once more before calling it a hang: the machine may have been busy.
            elapsed, wall, peak, outcome, detail, signature = self._run(data)
            if self._slow(elapsed, wall) and outcome != "crash":
                outcome = "hang"
                detail = f"{elapsed:.3f} s CPU, {wall:.3f} s wall (limit {self.hang_s} s)"
        if outcome != "hang":
            stats.slowest_input_s = max(stats.slowest_input_s, elapsed)
        if peak > stats.peak_alloc_bytes_max:
            stats.peak_alloc_bytes_max, stats.peak_alloc_input_bytes = peak, len(data)
        if outcome in ("accepted", "refused"):
            bound = self.target.alloc_bound(len(data))
            if self.trace_alloc and peak > bound:
                outcome = "alloc"
                detail = f"peak {peak} bytes > bound {bound} for {len(data)} input bytes"
        if outcome == "accepted":
            stats.accepted += 1
        elif outcome == "refused":
            stats.refused += 1
            stats.refusals[detail] += 1
        else:
            self._found(outcome, detail, signature or detail[:80], data)
        stats.seconds = time.monotonic() - self._started
        return outcome

    def _slow(self, cpu_s: float, wall_s: float) -> bool:
        return cpu_s > self.hang_s or wall_s > self.hang_s * HANG_WALL_FACTOR

    def _run(self, data: bytes) -> tuple[float, float, int, str, str, str]:
        target = self.target
        # The peak is what running the input allocated: measured from the traced memory at
        # its start. Tracing is started once and stays on (close() stops it), not started
        # and stopped per input: before CPython 3.12.5 (all of 3.11), tracemalloc.stop() and
        # clear_traces() never free the tracebacks they intern (CPython gh-121390), about 36
        # bytes for every allocating line an input ran, so a stop per input leaked 8-20 KB per
        # node_core input (4 GB after 200,000). Left on, it keeps each traceback once.
        tracing = self.trace_alloc
        base = 0
        if tracing:
            if not tracemalloc.is_tracing():  # else someone traces already (-X tracemalloc)
                tracemalloc.start(1)
                self._started_tracing = True
            tracemalloc.reset_peak()
            base = tracemalloc.get_traced_memory()[0]
        signal.setitimer(signal.ITIMER_REAL, self.hang_s * HANG_INTERRUPT_FACTOR)
        start, start_cpu = time.perf_counter(), time.thread_time()
        signature = ""
        try:
            target.run(data)
            outcome, detail = "accepted", ""
        except _Interrupted:
            outcome, detail = "hang", f"interrupted after {self.hang_s * HANG_INTERRUPT_FACTOR} s"
        except target.errors as exc:
            if _one_line(exc):
                outcome, detail = "refused", _refusal_kind(exc)
            else:
                outcome, detail = "crash", f"{type(exc).__name__} message is not one line: {exc!r}"
        except PropertyFailed as exc:
            signature = f"property: {str(exc).split(':')[0][:60]}"
            outcome, detail = "crash", f"property: {exc}"
        except Exception as exc:  # anything undocumented escaping the boundary is a crash
            signature = f"{type(exc).__name__} at {_where(exc)}"
            outcome, detail = "crash", f"{type(exc).__name__}: {_short(str(exc))} at {_where(exc)}"
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            wall = time.perf_counter() - start
            elapsed = time.thread_time() - start_cpu
            peak = tracemalloc.get_traced_memory()[1] - base if tracing else 0
        return elapsed, wall, peak, outcome, detail, signature

    def _found(self, kind: str, detail: str, signature: str, data: bytes) -> None:
        stats = self.stats
        if kind == "crash":
            stats.crashes += 1
        elif kind == "hang":
            stats.hangs += 1
        else:
            stats.allocs += 1
        key = f"{kind}: {signature}"
        stats.finding_kinds[key] += 1
        # Keep the first few inputs of each distinct finding.
        if len(self.findings) >= self.findings_max or stats.finding_kinds[key] > 3:
            return
        finding = Finding(kind, detail, data)
        if self.findings_dir is not None:
            self.findings_dir.mkdir(parents=True, exist_ok=True)
            name = f"{kind}-{hashlib.sha1(data).hexdigest()[:16]}"
            path = self.findings_dir / name
            path.write_bytes(data)
            finding.path = str(path)
        self.findings.append(finding)
        stats.findings.append({"kind": kind, "detail": detail, "input": data[:256].hex(),
                               "input_bytes": str(len(data)), "path": finding.path})


def _alarm(_signum: int, _frame: Any) -> None:
    raise _Interrupted


def _refusal_kind(exc: BaseException) -> str:
    reason = getattr(exc, "reason", None)
    if isinstance(reason, enum.Enum):
        return f"{type(exc).__name__}:{reason.value}"
    return type(exc).__name__


def _short(text: str, limit: int = 160) -> str:
    text = text.replace("\n", "\\n")
    return text if len(text) <= limit else text[:limit] + "..."


def _where(exc: BaseException) -> str:
    tb = exc.__traceback__
    last = None
    while tb is not None:
        last = tb
        tb = tb.tb_next
    if last is None:
        return "?"
    code = last.tb_frame.f_code
    return f"{Path(code.co_filename).name}:{last.tb_lineno} ({code.co_name})"


# --- Registration ---------------------------------------------------------------------

register(datagram_target("datagram", lambda: Codec(CLUSTER),
                         doc="Codec.decode_untrusted, no key (runtime/udp.py's receive path)"))
register(Target(
    name="key_file", doc="load_key: the key_file's contents (hex or raw bytes)",
    run=_key_file_run, errors=(KeyFileError,), seeds=_key_file_seeds, input_bytes_max=8192,
    alloc_per_input_byte=16))
register(Target(
    name="node_core", doc="NodeCore.handle of every decoded datagram (gossip, Totem, groups)",
    run=_node_core_run, errors=(), seeds=_node_core_seeds, input_bytes_max=65536,
    alloc_base_bytes=8 << 20, alloc_per_input_byte=400,
    tokens=lambda: [DATAGRAM_MARK, *_message_tokens()]))
register(datagram_target("datagram_mac", lambda: Codec(CLUSTER, key=KEY, auth_only=True),
                         keyed=True,
                         doc="Codec.decode_untrusted, key_mode=auth_only (keyed BLAKE2b MAC)"))
register(datagram_target("datagram_aead", lambda: Codec(CLUSTER, key=KEY),
                         keyed=True,
                         doc="Codec.decode_untrusted with key_file (AES-256-GCM)"))
register(message_target("gossip"))
register(message_target("totem"))
register(message_target("group"))
register(Target(
    name="frames", doc="FrameReader: the control socket's length-prefixed CBOR frames",
    run=_frames_run, errors=(WireError,), seeds=client_frames, input_bytes_max=65536,
    structured=_requests_structured, tokens=_request_tokens))
register(Target(
    name="requests", doc="control/client API request validation (parse_request, control ops)",
    run=_requests_run, errors=(WireError,), seeds=client_frames, input_bytes_max=65536,
    structured=_requests_structured, tokens=_request_tokens, cbor_offset=FRAMED))
register(Target(
    name="node_requests", doc="client API requests the control server accepts, handled by a node core",
    run=_node_requests_run, errors=(WireError,), seeds=client_frames, input_bytes_max=65536,
    structured=_requests_structured, tokens=_request_tokens, cbor_offset=FRAMED,
    alloc_base_bytes=8 << 20, alloc_per_input_byte=400))
register(Target(
    name="config", doc="load_config: TOML file + RINGD_* environment + --set",
    run=_config_run, errors=(ConfigError, typer.Exit), seeds=config_seeds,
    input_bytes_max=8192, structured=_config_structured, tokens=_config_tokens,
    # tomllib recurses once per nesting level up to the recursion limit: ~300 KiB of
    # frames, 1.5 MiB under atheris' instrumentation; bounded, but not by the input's size.
    alloc_base_bytes=4 << 20))

