"""Wire codec: round trips of every registered message, the trust boundary, auth, framing."""

from __future__ import annotations

import dataclasses
import enum
import tracemalloc
import types
import typing
from pathlib import Path
from typing import Any

import cbor2
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ringd.group_messages import GroupSend
from ringd.keyring import KeyFileError, Keyring, key_id, load_key
from ringd.messages import MESSAGE_TYPES, Address, Alive, Gossip, Message, Nack, Ping
from ringd.wire import (
    FRAME_BYTES_MAX,
    FRAME_ITEMS_MAX,
    HEADER_BYTES,
    INT_MAX,
    INT_MIN,
    REPLAY_WINDOW,
    TAG_BYTES,
    Codec,
    DropReason,
    FrameReader,
    ReplayWindow,
    WireError,
    cluster_id,
    count_items,
    decode_payload,
    pack_frame,
)

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
KEY = bytes(range(32))

# --- Strategies built from the type hints, so messages added later are covered too ------


def strategy_for(tp: Any) -> st.SearchStrategy[Any]:
    if tp is int:
        return st.integers(INT_MIN, INT_MAX)
    if tp is bool:
        return st.booleans()
    if tp is float:
        return st.floats(allow_nan=False, allow_infinity=False)
    if tp is str:
        return st.text(max_size=12)
    if tp is bytes:
        return st.binary(max_size=24)
    if isinstance(tp, type) and issubclass(tp, enum.IntEnum):
        return st.sampled_from(list(tp))
    if isinstance(tp, type) and issubclass(tp, Message):
        return st.deferred(lambda: message_strategy(tp))
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (types.UnionType, typing.Union):
        return st.one_of([st.none() if a is type(None) else strategy_for(a) for a in args])
    if origin is tuple:
        return st.lists(strategy_for(args[0]), max_size=3).map(tuple)
    if origin is dict:
        return st.dictionaries(st.text(max_size=6), strategy_for(args[1]), max_size=3)
    raise AssertionError(f"no strategy for {tp!r}")


def message_strategy(cls: type[Message]) -> st.SearchStrategy[Message]:
    if cls is Address:  # the decoder refuses hosts that are not IP addresses, ports beyond 16 bits
        return st.builds(Address, host=st.ip_addresses().map(str), port=st.integers(0, 65535))
    hints = typing.get_type_hints(cls)
    fields = {f.name: strategy_for(hints[f.name]) for f in dataclasses.fields(cls)}
    return st.builds(cls, **fields)


any_message = st.sampled_from(sorted(MESSAGE_TYPES)).flatmap(
    lambda tag: message_strategy(MESSAGE_TYPES[tag])
)
senders = st.text(min_size=1, max_size=20)


def cbor(obj: Any) -> bytes:
    """Plain CBOR of ``obj`` (through the public framing API; tests do not import cbor2)."""
    return pack_frame(obj)[4:]


def datagram(body: bytes, *, cluster: str = "ringd", version: int = 1, flags: int = 0) -> bytes:
    return b"RG" + bytes([version, flags]) + cluster_id(cluster) + body


def reason(codec: Codec, data: bytes) -> DropReason:
    with pytest.raises(WireError) as info:
        codec.decode_untrusted(data)
    assert "\n" not in str(info.value)
    return info.value.reason


def ping_with_updates() -> Ping:
    address = Address(host="127.0.0.1", port=7946)
    updates = tuple(
        Alive(node=f"node-{i}", incarnation=i, address=address, tags={"role": "db"}) for i in range(3)
    )
    return Ping(seq=12345, target="node-2", piggyback=updates)


# --- Round trips ----------------------------------------------------------------------


@pytest.mark.parametrize("tag", sorted(MESSAGE_TYPES), ids=lambda t: MESSAGE_TYPES[t].__name__)
@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_every_registered_message_round_trips(tag: int, data: st.DataObject) -> None:
    msg = data.draw(message_strategy(MESSAGE_TYPES[tag]))
    sender = data.draw(senders)
    for codec in (Codec("ringd"), Codec("ringd", key=KEY), Codec("ringd", key=KEY, auth_only=True)):
        encoded = Codec("ringd", keyring=codec.keyring, auth_only=codec.auth_only).encode(sender, msg)
        assert codec.decode_untrusted(encoded) == (sender, msg)
        assert len(encoded) == codec.envelope_bytes(sender) + codec.size_of(msg)


def test_totem_messages_are_registered_through_the_codec_import() -> None:
    from ringd.totem_messages import RingId

    codec = Codec("ringd")
    ring = RingId(seq=4, rep="a")
    assert codec.decode_untrusted(codec.encode("a", ring)) == ("a", ring)


def test_size_of_budgets_piggybacked_updates() -> None:
    codec = Codec("ringd")
    msg = ping_with_updates()
    empty = Ping(seq=msg.seq, target=msg.target)
    # one array header byte grows by nothing for < 24 items
    assert len(codec.encode("n", msg)) == len(codec.encode("n", empty)) + sum(
        codec.size_of(u) for u in msg.piggyback
    )


def test_encode_refuses_oversized_datagrams_and_bad_senders() -> None:
    codec = Codec("ringd", datagram_bytes_max=600)
    with pytest.raises(ValueError, match="exceeds"):
        codec.encode("n", Gossip(piggyback=ping_with_updates().piggyback * 10))
    with pytest.raises(ValueError):
        codec.encode("", Nack(seq=1))
    with pytest.raises(ValueError):
        codec.encode("x" * 256, Nack(seq=1))


# --- Drop reasons -----------------------------------------------------------------------


def test_wrong_cluster_bad_version_unknown_type_too_large() -> None:
    codec = Codec("ringd", datagram_bytes_max=600)
    good = codec.encode("n", Nack(seq=1))
    assert reason(Codec("other"), good) == DropReason.WRONG_CLUSTER
    assert reason(codec, good[:2] + b"\x02" + good[3:]) == DropReason.BAD_VERSION
    assert reason(codec, datagram(cbor(["n", [999, 1]]))) == DropReason.UNKNOWN_TYPE
    assert reason(codec, good + bytes(601 - len(good))) == DropReason.TOO_LARGE
    assert reason(codec, b"XX" + good[2:]) == DropReason.MALFORMED
    assert reason(codec, good[:HEADER_BYTES]) == DropReason.MALFORMED


ALIVE_PLAIN = [2, "b", 1, [1, "127.0.0.1", 9], {}]


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(cbor(["n", [11, True]]), id="bool-is-not-int"),
        pytest.param(cbor(["n", [11, 1 << 63]]), id="int-over-64-bit"),
        pytest.param(cbor(["n", [11, -(1 << 63) - 1]]), id="int-under-64-bit"),
        pytest.param(cbor(["n", [11, 1.0]]), id="float-is-not-int"),
        pytest.param(cbor(["n", [11]]), id="missing-field"),
        pytest.param(cbor(["n", [11, 1, 2]]), id="extra-field"),
        pytest.param(cbor(["n", [True, 1]]), id="bool-tag"),
        pytest.param(cbor(["", [11, 1]]), id="empty-sender"),
        pytest.param(cbor(["x" * 256, [11, 1]]), id="long-sender"),
        pytest.param(cbor([b"n", [11, 1]]), id="bytes-sender"),
        pytest.param(cbor(["n", [11, 1], 0]), id="body-too-long"),
        pytest.param(cbor({"n": [11, 1]}), id="body-not-array"),
        pytest.param(cbor(["n", [11, 1]]) + b"\x00", id="trailing-byte"),
        pytest.param(cbor(["n", [11, 1]])[:-1], id="truncated"),
        pytest.param(b"\x82\x61n\x82\x0b\xf7", id="undefined"),
        pytest.param(b"\x82\x61n\x82\x0b\xf0", id="simple-value"),
        pytest.param(b"\x82\x61n\x9f\x0b\x01\xff", id="indefinite-array"),
        pytest.param(b"\x82\x61n\x82\x0b\xc2\x41\x01", id="bignum-tag"),
        pytest.param(b"\x82\x61n\x82\x0b\xd8\x1d\x00", id="shared-ref-tag"),
        pytest.param(b"\x82\x61n\xd8\x1c\x82\x0b\x01", id="shareable-tag"),
        pytest.param(b"\xd9\xd9\xf7" + cbor(["n", [11, 1]]), id="self-describe-tag"),
        pytest.param(b"\x82\x61n\x82\x0b\xdb" + b"\xff" * 8 + b"\x01", id="huge-unknown-tag"),
        pytest.param(b"\x82\x61n\x82\x0b\x7b" + b"\xff" * 8, id="huge-text-length"),
        pytest.param(b"\x82\x61n\x82\x0b\x5b" + b"\x7f" + b"\xff" * 7, id="huge-bytes-length"),
        pytest.param(b"\x82\x61n\x9b" + b"\xff" * 8 + b"\x0b", id="huge-array-length"),
        pytest.param(b"\x82\x61n\xbb" + b"\xff" * 8 + b"\x0b", id="huge-map-length"),
        pytest.param(b"\x82\x61n\x82\x0b\x1b" + b"\xff" * 8, id="uint64-max"),
        pytest.param(b"\x82\x61n" + b"\x81" * 10_000 + b"\x00", id="deep-nesting"),
        pytest.param(b"\x82\x61\xff\x82\x0b\x01", id="bad-utf8-sender"),
        pytest.param(cbor(["n", [8, 1, "t", [ALIVE_PLAIN[:4]]]]), id="embedded-short"),
        pytest.param(cbor(["n", [8, 1, "t", [[11, 1]]]]), id="embedded-disallowed-type"),
        pytest.param(cbor(["n", [8, 1, "t", [[2, "b", 1, [1, "h", 9], {"k": 1}]]]]),
                     id="tags-not-str"),
        pytest.param(b"\x82\x61n\x84\x08\x01\x61t\x81\x85\x02\x61b\x01\x83\x01\x61h\x09"
                     b"\xa2\x61k\x61v\x61k\x61w", id="duplicate-map-key"),
        pytest.param(b"\x82\x61n\x84\x08\x01\x61t\x81\x85\x02\x61b\x01\x83\x01\x61h\x09"
                     b"\xa1\x01\x61v", id="int-map-key"),
        pytest.param(cbor(["n", [8, 1, "t", {"0": ALIVE_PLAIN}]]), id="tuple-as-map"),
    ],
)
def test_malformed_bodies(body: bytes) -> None:
    assert reason(Codec("ringd"), datagram(body)) == DropReason.MALFORMED


def test_valid_hand_made_body_decodes() -> None:
    """Guards the malformed cases above: the same shapes done right are accepted."""
    sender, msg = Codec("ringd").decode_untrusted(datagram(cbor(["n", [8, 1, "t", [ALIVE_PLAIN]]])))
    assert sender == "n"
    assert msg == Ping(seq=1, target="t", piggyback=(
        Alive(node="b", incarnation=1, address=Address(host="127.0.0.1", port=9)),))


def test_embedded_unknown_type() -> None:
    body = cbor(["n", [8, 1, "t", [[999, 1]]]])
    assert reason(Codec("ringd"), datagram(body)) == DropReason.UNKNOWN_TYPE


@pytest.mark.parametrize("items", [[b"a", 1], [b"a", "b"], [None], [[b"a"]]],
                         ids=["int", "text", "null", "nested"])
def test_an_array_of_byte_strings_holds_only_byte_strings(items: list[Any]) -> None:
    """Arrays of one exact type are checked in one pass: every element still counts."""
    good = decode_payload(cbor2.dumps([58, "g", "m", [b"a", b""]]))
    assert good == GroupSend(group="g", member="m", items=(b"a", b""))
    with pytest.raises(WireError) as info:
        decode_payload(cbor2.dumps([58, "g", "m", items]))
    assert info.value.reason == DropReason.MALFORMED


def test_huge_declared_lengths_do_not_allocate() -> None:
    codec = Codec("ringd")
    bodies = [
        b"\x82\x61n\x9b\x00\x00\x00\x01\x00\x00\x00\x00" + b"\x00" * 50,  # 2**32 items
        b"\x82\x61n\xba\x10\x00\x00\x00" + b"\x00" * 50,  # 2**28 pairs
        b"\x82\x61n\x5a\x80\x00\x00\x00" + b"\x00" * 50,  # 2**31 bytes
        b"\x82\x61n\x7b\x00\x00\x00\x01\x00\x00\x00\x00" + b"a" * 50,  # 2**32 chars
    ]
    tracemalloc.start()
    try:
        for body in bodies:
            tracemalloc.reset_peak()
            with pytest.raises(WireError):
                codec.decode_untrusted(datagram(body))
            _, peak = tracemalloc.get_traced_memory()
            assert peak < 1 << 20, f"{body[3:12].hex()}: peak {peak} bytes"
    finally:
        tracemalloc.stop()


# --- Fuzzing: only WireError ever comes out -------------------------------------------


def decode_only_wire_errors(codec: Codec, data: bytes) -> None:
    try:
        sender, msg = codec.decode_untrusted(data)
    except WireError as exc:
        assert isinstance(exc.reason, DropReason)
    else:
        assert isinstance(sender, str) and isinstance(msg, Message)


@FUZZ
@given(st.binary(max_size=400))
def test_random_bytes(data: bytes) -> None:
    decode_only_wire_errors(Codec("ringd"), data)
    decode_only_wire_errors(Codec("ringd"), datagram(data))
    decode_only_wire_errors(Codec("ringd", key=KEY), datagram(data, flags=2))
    decode_only_wire_errors(Codec("ringd", key=KEY, auth_only=True), datagram(data, flags=1))
    keyed = datagram(bytes.fromhex(key_id(KEY)) + data, flags=2)
    decode_only_wire_errors(Codec("ringd", key=KEY), keyed)


@st.composite
def mutated_datagrams(draw: st.DrawFn) -> bytes:
    data = bytearray(Codec("ringd").encode(draw(senders), draw(any_message)))
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["flip", "truncate", "extend", "set", "length"]))
        pos = draw(st.integers(HEADER_BYTES, max(HEADER_BYTES, len(data) - 1)))
        if kind == "flip" and pos < len(data):
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif kind == "truncate":
            del data[pos:]
        elif kind == "extend":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=16))
        elif kind == "set" and pos < len(data):
            data[pos] = draw(st.integers(0, 255))
        elif kind == "length":  # a header claiming a huge string/array/map length
            major = draw(st.sampled_from([0x40, 0x60, 0x80, 0xA0]))
            size = draw(st.sampled_from([(0x1A, 4), (0x1B, 8)]))
            data[pos:pos] = bytes([major | size[0]]) + draw(st.binary(min_size=size[1],
                                                                       max_size=size[1]))
    return bytes(data)


@FUZZ
@given(mutated_datagrams())
def test_mutated_datagrams(data: bytes) -> None:
    decode_only_wire_errors(Codec("ringd"), data)


def test_decode_accepts_bytearray_and_memoryview() -> None:
    codec = Codec("ringd")
    data = codec.encode("n", ping_with_updates())
    assert codec.decode_untrusted(bytearray(data)) == codec.decode_untrusted(memoryview(data))


# --- Authentication -------------------------------------------------------------------


def test_encrypted_round_trip_and_failures() -> None:
    keyed, plain = Codec("ringd", key=KEY), Codec("ringd")
    msg = ping_with_updates()
    data = Codec("ringd", key=KEY).encode("n", msg)
    assert data[3] == 2 and data[12:16] == bytes.fromhex(key_id(KEY))
    assert cbor(["n", [1]])[1:] not in data and b"node-1" not in data  # nothing readable
    assert keyed.decode_untrusted(data) == ("n", msg)
    assert reason(keyed, data) == DropReason.REPLAYED  # a second time
    assert reason(Codec("ringd", key=bytes(32)), data) == DropReason.UNKNOWN_KEY  # other key id
    assert reason(plain, data) == DropReason.AUTH_FAILED  # no key: cannot verify
    assert reason(Codec("ringd", key=KEY, auth_only=True), data) == DropReason.AUTH_FAILED
    fresh = Codec("ringd", key=KEY)
    assert reason(fresh, plain.encode("n", msg)) == DropReason.AUTH_FAILED  # not protected
    assert reason(fresh, data[:-TAG_BYTES]) == DropReason.BAD_TAG  # tag stripped
    assert reason(fresh, data[:25 + 1 + 12 + TAG_BYTES - 1]) == DropReason.MALFORMED  # no tag room
    assert reason(fresh, data[:-1]) == DropReason.BAD_TAG  # tag cut
    assert reason(fresh, data[:HEADER_BYTES + 3]) == DropReason.MALFORMED  # too short
    assert fresh.decode_untrusted(data) == ("n", msg)  # failures did not move the window


def test_auth_only_round_trip_is_readable_and_authenticated() -> None:
    sender = Codec("ringd", key=KEY, auth_only=True)
    keyed = Codec("ringd", key=KEY, auth_only=True)
    data = sender.encode("n", ping_with_updates())
    assert data[3] == 1 and b"node-1" in data  # plaintext on the wire
    assert keyed.decode_untrusted(data) == ("n", ping_with_updates())
    assert reason(keyed, data) == DropReason.REPLAYED
    assert reason(Codec("ringd", key=KEY), data) == DropReason.AUTH_FAILED  # we encrypt
    forged = data[:-1] + bytes([data[-1] ^ 1])
    assert reason(Codec("ringd", key=KEY, auth_only=True), forged) == DropReason.BAD_TAG


@pytest.mark.parametrize("auth_only", [False, True], ids=["encrypted", "auth-only"])
def test_every_tampered_byte_fails_authentication(auth_only: bool) -> None:
    data = Codec("ringd", key=KEY, auth_only=auth_only).encode("n", ping_with_updates())
    for pos in range(HEADER_BYTES, len(data)):
        tampered = bytearray(data)
        tampered[pos] ^= 0x40
        keyed = Codec("ringd", key=KEY, auth_only=auth_only)
        assert reason(keyed, bytes(tampered)) in (
            DropReason.BAD_TAG, DropReason.UNKNOWN_KEY, DropReason.MALFORMED), pos
        assert keyed.decode_untrusted(data)[1] == ping_with_updates(), pos


def test_tag_covers_the_cluster_id() -> None:
    a, b = Codec("a", key=KEY), Codec("b", key=KEY)
    data = a.encode("n", Nack(seq=1))
    assert reason(b, data) == DropReason.WRONG_CLUSTER
    replayed = data[:4] + cluster_id("b") + data[HEADER_BYTES:]
    assert reason(b, replayed) == DropReason.BAD_TAG


def test_key_id_selects_the_key_of_a_keyring() -> None:
    old, new = bytes(range(32)), bytes(range(1, 33))
    ring = Keyring([old, new])
    sender_ring = Keyring([new])
    receiver = Codec("ringd", keyring=ring)
    assert receiver.decode_untrusted(Codec("ringd", key=old).encode("a", Nack(seq=1)))[0] == "a"
    assert receiver.decode_untrusted(Codec("ringd", keyring=sender_ring).encode("b", Nack(seq=2)))[0] == "b"
    # The keyring changes under a running codec: removed keys stop working at once.
    ring.use(key_id(new))
    ring.remove(key_id(old))
    assert reason(receiver, Codec("ringd", key=old).encode("c", Nack(seq=3))) == DropReason.UNKNOWN_KEY
    sent = receiver.encode("r", Nack(seq=4))
    assert sent[12:16] == bytes.fromhex(key_id(new))


def test_nonces_never_repeat_and_sender_runs_are_ordered() -> None:
    first = Codec("ringd", key=KEY)
    second = Codec("ringd", key=KEY)  # a later run of the same sender
    assert second.epoch > first.epoch
    nonces = set()
    for codec in (first, second):
        for i in range(50):
            data = codec.encode("n", Nack(seq=i))
            nonces.add((data[16:24], data[-TAG_BYTES - 12 - 3:]))
    assert len(nonces) == 100
    receiver = Codec("ringd", key=KEY)
    late = second.encode("n", Nack(seq=1))
    early = first.encode("n", Nack(seq=1))
    receiver.decode_untrusted(late)
    assert reason(receiver, early) == DropReason.REPLAYED  # an earlier run of the sender


def test_replay_window_accepts_reordering_and_refuses_repeats() -> None:
    window = ReplayWindow()
    window.mark("a", 1, 5)
    assert not window.fresh("a", 1, 4)  # before the first datagram of the run we saw
    for counter in (7, 6, 9, 8):
        assert window.fresh("a", 1, counter)
        window.mark("a", 1, counter)
    assert not window.fresh("a", 1, 6) and not window.fresh("a", 1, 9)
    assert window.fresh("a", 1, 10) and window.fresh("b", 1, 3)
    window.mark("a", 1, 9 + REPLAY_WINDOW)
    assert not window.fresh("a", 1, 8)  # fell out of the window: too old to tell
    assert window.fresh("a", 1, 10)
    assert not window.fresh("a", 0, 10**6)  # an earlier epoch
    assert window.fresh("a", 2, 0)
    window.mark("a", 2, 0)
    assert not window.fresh("a", 1, 10)


def test_short_keys_are_refused() -> None:
    with pytest.raises(ValueError):
        Codec("ringd", key=b"short")


@pytest.mark.parametrize(
    ("content", "key"),
    [
        (KEY.hex().encode() + b"\n", KEY),
        (b"  " + KEY.hex().upper().encode() + b"  \n", KEY),
        (b"correct horse battery staple\n", b"correct horse battery staple"),
        (bytes(range(256)), bytes(range(256)).strip()),
    ],
)
def test_load_key(tmp_path: Path, content: bytes, key: bytes) -> None:
    path = tmp_path / "key"
    path.write_bytes(content)
    path.chmod(0o600)
    assert load_key(path) == key
    assert load_key(str(path)) == key


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (b"", "0 bytes"),
        (b"   \n", "0 bytes"),
        (b"00112233445566778899aabbccddeeff"[:30], "hex key has 15 bytes"),
        (b"tooshort", "raw key has 8 bytes"),
        (b"x" * 10000, "larger than"),
        (b"x" * 5000, "raw key has 5000 bytes, at most 4096"),
    ],
)
def test_load_key_errors(tmp_path: Path, content: bytes, problem: str) -> None:
    path = tmp_path / "key"
    path.write_bytes(content)
    path.chmod(0o600)
    with pytest.raises(KeyFileError, match=problem) as info:
        load_key(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_load_key_missing_and_directory(tmp_path: Path) -> None:
    with pytest.raises(KeyFileError, match="does not exist"):
        load_key(tmp_path / "nope")
    with pytest.raises(KeyFileError, match="directory"):
        load_key(tmp_path)


# --- Control framing --------------------------------------------------------------------

plain_data = st.recursive(
    st.none() | st.booleans() | st.integers(INT_MIN, INT_MAX)
    | st.floats(allow_nan=False) | st.text(max_size=10) | st.binary(max_size=10),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=4),
    max_leaves=20,
)


@FUZZ
@given(st.lists(plain_data, min_size=1, max_size=4), st.data())
def test_frames_round_trip_with_any_split(values: list[Any], data: st.DataObject) -> None:
    stream = b"".join(pack_frame(v) for v in values)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=6)))
    reader = FrameReader()
    out: list[Any] = []
    for start, end in zip([0, *cuts], [*cuts, len(stream)], strict=True):
        out += reader.feed(stream[start:end])
    assert out == values


def test_frames_byte_by_byte() -> None:
    value = {"op": "members", "n": [1, 2.5, None, True, b"x"]}
    stream = pack_frame(value) * 2
    reader = FrameReader()
    out = [frame for i in range(len(stream)) for frame in reader.feed(stream[i : i + 1])]
    assert out == [value, value]


def test_oversized_frame_header_is_refused_without_allocating() -> None:
    reader = FrameReader()
    tracemalloc.start()
    try:
        with pytest.raises(WireError) as info:
            reader.feed((FRAME_BYTES_MAX + 1).to_bytes(4, "big") + b"\x00" * 10)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert info.value.reason == DropReason.TOO_LARGE
    assert peak < 1 << 20
    with pytest.raises(WireError):  # framing is lost: the reader stays broken
        reader.feed(pack_frame(1))


def test_frame_at_the_limit_waits_for_its_bytes() -> None:
    reader = FrameReader()
    assert reader.feed(FRAME_BYTES_MAX.to_bytes(4, "big") + b"\x5a") == []


@pytest.mark.parametrize(
    "payload",
    [b"", b"\xf7", b"\x81\xf0", b"\xc1\x00", b"\x01\x02", b"\xff", b"\x9f\x01\xff", b"\x62a",
     b"\x82\x82\x41a\x01\x82\x41b\xf7", b"\xa1\x61a\x82\x01\xa1\x61b\xf7"],
    ids=["empty", "undefined", "simple", "tag", "trailing", "break", "indefinite", "short-text",
         "nested-undefined", "undefined-in-map-in-list"],
)
def test_malformed_frames(payload: bytes) -> None:
    with pytest.raises(WireError) as info:
        FrameReader().feed(len(payload).to_bytes(4, "big") + payload)
    assert info.value.reason == DropReason.MALFORMED


def _items(value: Any) -> int:
    """CBOR data items in ``value`` as cbor2 encodes it: one per value, key and container."""
    if isinstance(value, list):
        return 1 + sum(_items(v) for v in value)
    if isinstance(value, dict):
        return 1 + sum(1 + _items(v) for v in value.values())  # str keys: one item each
    return 1


@FUZZ
@given(plain_data)
def test_count_items_agrees_with_the_structure(value: Any) -> None:
    data = cbor2.dumps(value)
    assert count_items(data, 1 << 30) == _items(value)
    # Cut short anywhere inside a head or a string: refused, never an overrun.
    for cut in range(1, len(data)):
        try:
            count_items(data[:cut], 1 << 30)
        except WireError as exc:
            assert exc.reason == DropReason.MALFORMED


def test_a_frame_of_many_tiny_items_is_refused_before_decoding() -> None:
    """2 MiB of empty byte strings would decode into about 180 MB of Python objects."""
    flood = pack_frame({"op": "send", "group": "g", "data": [b""] * (2 << 20)})
    tracemalloc.start()
    try:
        with pytest.raises(WireError) as info:
            FrameReader().feed(flood)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert info.value.reason == DropReason.TOO_LARGE and "CBOR items" in str(info.value)
    assert peak < 4 * len(flood)  # copies of the frame's bytes; decoded, it took about 180 MB
    # Just inside the limit: the map, its three keys and values, the list and its messages.
    fits = {"op": "send", "group": "g", "data": [b""] * (FRAME_ITEMS_MAX - 7)}
    assert FrameReader().feed(pack_frame(fits)) == [fits]
    over = {"op": "send", "group": "g", "data": [b""] * (FRAME_ITEMS_MAX - 6)}
    with pytest.raises(WireError):
        FrameReader().feed(pack_frame(over))


def test_pack_frame_refuses_oversized() -> None:
    with pytest.raises(ValueError):
        pack_frame(b"x" * (FRAME_BYTES_MAX + 1))


def tagged(tag: int, item: bytes) -> bytes:
    if tag < 24:
        return bytes([0xC0 | tag]) + item
    for prefix, size in ((0xD8, 1), (0xD9, 2), (0xDA, 4), (0xDB, 8)):
        if tag < 1 << (8 * size):
            return bytes([prefix]) + tag.to_bytes(size, "big") + item
    raise AssertionError(tag)


@pytest.mark.parametrize("item", [b"\x01", b"\x80", b"\x61a", b"\x41a", b"\xa0"])
def test_no_cbor_tag_survives(item: bytes) -> None:
    """Every tag is refused, whether cbor2 knows it (bignum, sharing, sets...) or not."""
    codec = Codec("ringd")
    for tag in [*range(300), 1004, 43000, 55799, 65535, 1 << 31, (1 << 64) - 1]:
        body = b"\x82\x61n\x82\x0b" + tagged(tag, item)
        assert reason(codec, datagram(body)) == DropReason.MALFORMED, tag
        with pytest.raises(WireError):
            FrameReader().feed(len(tagged(tag, item)).to_bytes(4, "big") + tagged(tag, item))


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o620])
def test_key_file_open_to_group_or_others_is_refused(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "key"
    path.write_text(KEY.hex())
    path.chmod(mode)
    with pytest.raises(KeyFileError, match=f"permissions {mode:04o} are too open") as info:
        load_key(path)
    assert "chmod 600" in str(info.value) and "\n" not in str(info.value)
    path.chmod(0o400)
    assert load_key(path) == KEY
