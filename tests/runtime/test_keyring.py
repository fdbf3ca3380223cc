"""The keyring and its online ops without sockets: KeyService instances of several members
exchanging their ops and answers through a stand-in for the ring's total order."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest
import trio

from ringd.core.events import KeyMessageDelivered
from ringd.key_messages import KeyAck, KeyOp
from ringd.keyring import (
    KEYRING_FILE,
    KeyFileError,
    Keyring,
    KeyringError,
    generate_key_file,
    key_id,
    load_key,
)
from ringd.runtime.keys import KEY_RELAY_RESEND_S, KeyRequestError, KeyService
from ringd.wire import Codec, DropReason, WireError

OLD, NEW = bytes(range(32)), bytes(range(100, 132))
LOG = logging.getLogger("test")


Relayed = list[tuple[str, str, KeyOp | KeyAck]]  # (from, to, message) sent straight


def services(tmp: Path, names: tuple[str, ...], relayed: Relayed | None = None) -> dict[str, KeyService]:
    out = {}
    for name in names:
        (tmp / name).mkdir()
        relay = None if relayed is None else (
            lambda dest, msg, src=name: relayed.append((src, dest, msg)))
        out[name] = KeyService(name, Keyring([OLD]), tmp / name / KEYRING_FILE, LOG, relay=relay)
    return out


def deliver_relayed(members: dict[str, KeyService], relayed: Relayed, reachable: set[str],
                    copies: int = 1) -> None:
    """What the node cores and the network do with ops and answers sent straight: each
    reaches a daemon in ``reachable`` (``copies`` times), whose answer goes straight back."""
    while relayed:
        src, dest, msg = relayed.pop(0)
        if dest not in reachable:
            continue
        for _ in range(copies):
            ack = members[dest].on_delivered(
                KeyMessageDelivered(origin=src, msg=msg, members=(), relayed=True))
            if ack is not None:
                relayed.append((dest, src, ack))


def ring_deliver(members: dict[str, KeyService], origin: str, msg: KeyOp | KeyAck,
                 ring: tuple[str, ...] | None = None) -> None:
    """Deliver ``msg`` to every member in turn, then their answers, as the ring would."""
    ring = ring or tuple(members)
    acks = []
    for name in ring:
        ack = members[name].on_delivered(KeyMessageDelivered(origin=origin, msg=msg, members=ring))
        if ack is not None:
            acks.append(ack)
    for ack in acks:
        for name in ring:
            members[name].on_delivered(KeyMessageDelivered(origin=ack.node, msg=ack, members=ring))


async def run_op(members: dict[str, KeyService], origin: str, request: dict,
                 ring: tuple[str, ...] | None = None, alive: tuple[str, ...] = (),
                 relayed: Relayed | None = None, reachable: set[str] | None = None,
                 copies: int = 1) -> dict:
    op = members[origin].prepare(request, alive)
    async with trio.open_nursery() as nursery:
        result: dict = {}

        async def wait() -> None:
            result.update(await members[origin].wait(op))
            nursery.cancel_scope.cancel()

        async def network() -> None:
            # The network under the test's fake clock: it carries what was sent since.
            while relayed is not None:
                deliver_relayed(members, relayed, reachable or set(members), copies)
                await trio.sleep(0.1)  # poll

        nursery.start_soon(wait)
        await trio.testing.wait_all_tasks_blocked()
        ring_deliver(members, origin, op, ring)
        nursery.start_soon(network)
    return result


async def test_install_use_remove_through_the_ring(tmp_path: Path) -> None:
    members = services(tmp_path, ("a", "b", "c"))
    old, new = key_id(OLD), key_id(NEW)
    done = await run_op(members, "a", {"action": "install", "key": NEW})
    assert done["missing"] == {} and all(not m["error"] for m in done["members"].values())
    assert all(m["keys"] == sorted([old, new]) and m["primary"] == old for m in done["members"].values())

    # A datagram under the new key is accepted by every member before anyone uses it.
    receiver = Codec("c", keyring=members["c"].keyring)
    assert receiver.decode_untrusted(Codec("c", key=NEW).encode("x", KeyAck(
        request="r", node="x", error="", primary="", keys=())))[0] == "x"

    done = await run_op(members, "b", {"action": "use", "key_id": new})
    assert {m["primary"] for m in done["members"].values()} == {new}
    sender = Codec("c", keyring=members["a"].keyring)
    assert sender.encode("a", KeyAck(request="r", node="a", error="", primary="", keys=()))[12:16] \
        == bytes.fromhex(new)

    refused = await run_op(members, "c", {"action": "remove", "key_id": new})
    assert all("primary key" in m["error"] for m in refused["members"].values())
    done = await run_op(members, "c", {"action": "remove", "key_id": old})
    assert all(m["keys"] == [new] and not m["error"] for m in done["members"].values())
    with pytest.raises(WireError) as info:
        receiver.decode_untrusted(Codec("c", key=OLD).encode("y", KeyAck(
            request="r", node="y", error="", primary="", keys=())))
    assert info.value.reason is DropReason.UNKNOWN_KEY

    # Every member persisted it (mode 0600): a restarted daemon keeps its keys.
    for name in members:
        path = tmp_path / name / KEYRING_FILE
        assert os.stat(path).st_mode & 0o777 == 0o600
        again = Keyring.load(path)
        assert again is not None and again.listing() == {"primary": new, "keys": [new]}


async def test_members_that_do_not_answer_or_lack_the_key_are_named(
        tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    relayed: Relayed = []
    members = services(tmp_path, ("a", "b", "c"), relayed)
    # c is alive but not in the ring, and what is sent straight to it is lost.
    done = await run_op(members, "a", {"action": "use", "key_id": key_id(NEW)}, ring=("a", "b"),
                        alive=("a", "b", "c"), relayed=relayed, reachable={"a", "b"})
    assert done["missing"] == {"c": "no answer (a gossip-only observer)"}
    assert all("not installed" in m["error"] for m in done["members"].values())
    assert members["a"].keyring.primary == key_id(OLD)  # nothing changed


async def test_gossip_only_observers_get_every_op_straight_and_apply_it_once(
        tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    relayed: Relayed = []
    members = services(tmp_path, ("a", "b", "c", "d"), relayed)
    ring, alive = ("a", "b"), ("a", "b", "c", "d")
    old, new = key_id(OLD), key_id(NEW)
    # Every relayed op reaches each observer twice (a resend that crossed its answer).
    done = await run_op(members, "a", {"action": "install", "key": NEW}, ring=ring,
                        alive=alive, relayed=relayed, copies=2)
    assert done["missing"] == {} and set(done["members"]) == set(alive)
    assert all(m == {"error": "", "primary": old, "keys": sorted([old, new])}
               for m in done["members"].values())
    done = await run_op(members, "b", {"action": "use", "key_id": new}, ring=ring, alive=alive,
                        relayed=relayed, copies=2)
    assert {m["primary"] for m in done["members"].values()} == {new}
    done = await run_op(members, "b", {"action": "remove", "key_id": old}, ring=ring, alive=alive,
                        relayed=relayed, copies=2)
    # A second copy of the remove, applied again, would answer "not installed".
    assert done["missing"] == {} and all(m == {"error": "", "primary": new, "keys": [new]}
                                         for m in done["members"].values()), done
    for name in ("c", "d"):
        assert Keyring.load(tmp_path / name / KEYRING_FILE).listing() == {"primary": new, "keys": [new]}


async def test_an_observer_that_misses_the_first_copy_gets_a_resend(
        tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    relayed: Relayed = []
    members = services(tmp_path, ("a", "b", "c"), relayed)
    op = members["a"].prepare({"action": "install", "key": NEW}, ("a", "b", "c"))
    async with trio.open_nursery() as nursery:
        result: dict = {}

        async def wait() -> None:
            result.update(await members["a"].wait(op))

        nursery.start_soon(wait)
        await trio.testing.wait_all_tasks_blocked()
        ring_deliver(members, "a", op, ("a", "b"))
        assert [(src, dest) for src, dest, _ in relayed] == [("a", "c")]
        relayed.clear()  # lost on the way
        with trio.fail_after(2 * KEY_RELAY_RESEND_S):  # fake clock: the resend is due by then
            while not relayed:
                await trio.sleep(0.01)  # poll
        deliver_relayed(members, relayed, {"a", "b", "c"})
    assert result["missing"] == {} and key_id(NEW) in result["members"]["c"]["keys"]


async def test_a_key_that_starts_or_ends_with_a_whitespace_byte_is_installed_as_it_is(
        tmp_path: Path) -> None:
    """The client sends the key it read from its file; the daemon parsed it again as file
    contents and stripped it, installing another key (one random key in about 20)."""
    members = services(tmp_path, ("a", "b"))
    for key in (b" " + bytes(range(40, 71)), bytes(range(40, 71)) + b"\n"):
        done = await run_op(members, "a", {"action": "install", "key": key})
        assert all(key_id(key) in m["keys"] and not m["error"] for m in done["members"].values()), done


async def test_bad_key_requests_are_refused_before_the_ring(tmp_path: Path) -> None:
    a = services(tmp_path, ("a",))["a"]
    for request, needle in [({"action": "rotate"}, "'action' must be one of"),
                            ({"action": "install", "key": "text"}, "'key' must be bytes"),
                            ({"action": "install", "key": b"short"}, "need at least 16"),
                            ({"action": "use", "key_id": "XYZ"}, "8 lower-case hex digits")]:
        with pytest.raises(KeyRequestError, match=needle):
            a.prepare(request)


def test_an_install_wrapped_under_an_unknown_key_is_refused(tmp_path: Path) -> None:
    members = services(tmp_path, ("a", "b"))
    members["a"].keyring.install(NEW)
    members["a"].keyring.use(key_id(NEW))
    op = members["a"].prepare({"action": "install", "key": bytes(range(50, 82))})
    ack = members["b"].on_delivered(KeyMessageDelivered(origin="a", msg=op, members=("a", "b")))
    assert ack is not None and "is not installed" in ack.error


def test_generated_key_file(tmp_path: Path) -> None:
    path = tmp_path / "k"
    kid = generate_key_file(path)
    assert os.stat(path).st_mode & 0o777 == 0o600
    assert key_id(load_key(path)) == kid and len(load_key(path)) == 32
    with pytest.raises(FileExistsError):
        generate_key_file(path)


def test_keyring_rules_and_damaged_files(tmp_path: Path) -> None:
    ring = Keyring([OLD])
    with pytest.raises(KeyringError, match="primary key"):
        ring.remove(key_id(OLD))
    with pytest.raises(KeyringError, match="not installed"):
        ring.use(key_id(NEW))
    path = tmp_path / KEYRING_FILE
    path.write_text("{not json")
    path.chmod(0o600)
    with pytest.raises(KeyFileError, match="unreadable"):
        Keyring.load(path)
    ring.save(path)
    path.chmod(0o644)
    with pytest.raises(KeyFileError, match="too open"):
        Keyring.load(path)
