"""Inputs the fuzz targets found (or that their properties were written for), kept as
regression cases: each must now be refused with a one-line documented error, or accepted
whole, and never crash."""

from __future__ import annotations

from pathlib import Path

import pytest

from fuzz_targets import SEPARATOR, TARGETS, Checker
from ringd.messages import Address, Alive, Announce, Gossip, MemberRecord, Nack, PushPull
from ringd.wire import Codec, DropReason, WireError


def _datagram(msg: object) -> bytes:
    return Codec("fuzz").encode("evil", msg)  # type: ignore[arg-type]


def _alive(host: str, port: int) -> Gossip:
    return Gossip(piggyback=(Alive(node="evil", incarnation=1,
                                   address=Address(host=host, port=port)),))


# (target, input, text the refusal must contain)
CASES = [
    # A member address no socket can send to: sendto() raised OverflowError / TypeError
    # (not OSError) and ended the daemon at its first probe; a host name meant a DNS lookup.
    ("datagram", _datagram(_alive("127.0.0.1", 70000)), "Address.port"),
    ("datagram", _datagram(_alive("127.0.0.1", -1)), "Address.port"),
    ("datagram", _datagram(_alive("127.0.0.1\x00", 7946)), "Address.host"),
    ("datagram", _datagram(_alive("ringd.invalid", 7946)), "Address.host"),
    ("datagram", _datagram(_alive("fe80::1%\x00", 7946)), "Address.host"),  # a NUL in a zone
    ("datagram", _datagram(_alive("", 7946)), "Address.host"),
    ("datagram", _datagram(Announce(address=Address(host="192&0.2.1", port=1),
                                    incarnation=1)), "Address.host"),
    ("datagram", _datagram(PushPull(members=(MemberRecord(
        node="evil", incarnation=1, state=0, address=Address(host="::1", port=65536)),),
        reply=False)), "Address.port"),
    # Config: a TOML file that is not UTF-8 raised UnicodeDecodeError (found by atheris,
    # one byte long).
    ("config", b"\xa2", "not UTF-8"),
    ("config", b'\xffame = "db1"\n', "not UTF-8"),
    # RINGD_TAGS with bytes that are not UTF-8 (surrogate-escaped by the OS) raised
    # UnicodeEncodeError while measuring the tags.
    ("config", SEPARATOR + b"RINGD_TAGS=a=b,c\xff\xff=d", "tags: not valid UTF-8"),
    # A seed port of Unicode digits passed str.isdigit() and made int() raise ValueError;
    # so did a port of more than 4300 digits.
    ("config", SEPARATOR + SEPARATOR + "net.seeds=127.0.0.1:\u00b2".encode(), "net.seeds"),
    ("config", SEPARATOR + b"RINGD_NET_SEEDS=127.0.0.1:" + b"9" * 5000, "net.seeds"),
    # A NUL in a path was accepted, and the daemon died creating its socket directory.
    ("config", b'state_dir = "/tmp/a\\u0000b"\n', "state_dir: must not contain a NUL"),
    ("config", SEPARATOR + SEPARATOR + b"socket=/tmp/x\x01", None),  # fine: no NUL
    # A key_file name too long for the file system made Path.is_file() raise OSError, and
    # one with a carriage return made a two-line error (found by atheris).
    ("config", SEPARATOR + b"RINGD_KEY_FILE=" + b"k" * 300, "File name too long"),
    ("config", SEPARATOR + b"RINGD_KEY_FILE=ken_tie\xed\rout", "is not a readable file"),
    # Arrays or inline tables nested a few hundred deep made tomllib raise RecursionError
    # (the long atheris run was closing in on it: its deepest inputs were flagged for their
    # allocations first).
    ("config", b"a = " + b"[" * 1000, "nested too deeply"),
    ("config", b"a = " + b"{a=" * 1000, "nested too deeply"),
    ("config", b't = 0\nt =  ' + b"[" * 92 + b'\x0f["\\u0]  ' + b"[" * 70 + b"si]\n&",
     "invalid TOML"),
    # 440 levels deep, just below the recursion limit: flagged for its 1.5 MiB peak under
    # atheris' instrumentation (300 KiB without it).
    ("config", b't = 0\nt =  [[[[[[[[[[[[[[[[[[[[[  [[[[[[[ [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[  [[[[[[[[[[[[[[[[[[[[[[[[[  [[[ [[[[[[[ [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[  [[[[[[[[[[[[[[[[[[[[[[[[[  [[[ [[[[[[[ [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[["\\u0]si]\n&',
     "invalid TOML"),
    # An unknown key with a newline (a quoted TOML key) made a two-line error.
    ("config", b'"a\\nb" = 1\n', "unknown key"),
    # Multicasts that named our node as their sender, on its ring of one: stored, they left
    # the ring's token with an aru past its seq, so it was never held and the ring of one
    # passed it to itself without end, each turn due at once (found by atheris as a hang).
    ("node_core", (Path(__file__).parent / "cases" / "node_core-own-name-token-spin.bin").read_bytes(),
     None),
    # The same spin from a multicast on our ring of one (8.n1) sent by n2, not a member of
    # it: Totem checked only the ring id before storing it (found by atheris on the fixed
    # code; multicasts on our ring from non-members are now dropped and counted).
    ("node_core", (Path(__file__).parent / "cases" / "node_core-nonmember-mcast-token-spin.bin").read_bytes(),
     None),
    # A send whose first message is empty: packing it into payloads raised IndexError and
    # ended the daemon (found by reading the code; the node_requests target finds it within
    # 30,000 inputs on that code).
    ("node_requests", (Path(__file__).parent / "cases" / "node_requests-empty-first-message.bin").read_bytes(),
     None),
]


@pytest.mark.parametrize(("name", "data", "needle"), CASES,
                         ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_regression_input_is_handled(name: str, data: bytes, needle: str | None) -> None:
    checker = Checker(TARGETS[name], hang_s=5.0)
    outcome = checker.check(data)
    assert [f.detail for f in checker.findings] == []
    if needle is None:
        assert outcome == "accepted"
        return
    assert outcome == "refused"
    with pytest.raises(TARGETS[name].errors) as info:
        TARGETS[name].run(data)
    assert needle in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("auth_only", [True, False], ids=["auth_only", "aead"])
def test_replay_error_of_a_sender_with_a_carriage_return_is_one_line(auth_only: bool) -> None:
    """Found by atheris in the keyed codec: the replay error named its sender raw."""
    key = bytes(range(32))
    sender = Codec("fuzz", key=key, auth_only=auth_only)
    receiver = Codec("fuzz", key=key, auth_only=auth_only)
    data = sender.encode("n\r", Nack(seq=1))
    assert receiver.decode_untrusted(data) == ("n\r", Nack(seq=1))
    with pytest.raises(WireError) as info:
        receiver.decode_untrusted(data)
    assert info.value.reason is DropReason.REPLAYED and "\n" not in str(info.value) \
        and "\r" not in str(info.value)
