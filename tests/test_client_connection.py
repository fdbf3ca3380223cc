"""The client's sans-IO connection (ringd.client.connection) driven directly, with no socket:
a fake daemon reads the frames it writes and answers them."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

import pytest

from ringd.client import ClientError, ConnectionLost, ProtocolError, RequestFailed, TryAgain
from ringd.client.connection import SEND_BYTES_MAX, SEND_CALL_ITEMS_MAX, ClientConnection, Ticket
from ringd.wire import FrameReader, pack_frame

CLIENT = Path(__file__).resolve().parents[1] / "daemon" / "ringd" / "client"
FORBIDDEN = {"trio", "socket", "select", "time", "threading", "asyncio", "ringd.runtime", "ringd.config"}


class FakeDaemon:
    """Reads what the connection writes; answers with frames we build by hand."""

    def __init__(self, conn: ClientConnection) -> None:
        self.conn = conn
        self.reader = FrameReader(4 << 20)

    def take(self, limit: int | None = None) -> list[dict[str, Any]]:
        """Every frame the connection wants to write (at most ``limit`` bytes of it)."""
        view = self.conn.outgoing()
        data = bytes(view if limit is None else view[:limit])
        view.release()
        self.conn.wrote(len(data))
        return self.reader.feed(data)

    def reply(self, frame: dict[str, Any], **fields: Any) -> None:
        self.conn.receive_data(pack_frame({"id": frame["id"], **fields}))

    def ok(self, frame: dict[str, Any]) -> None:
        if frame["op"] == "send":
            self.reply(frame, ok=True, count=len(frame["data"]))
        else:
            self.reply(frame, ok=True)


def sends(conn: ClientConnection, key: tuple[str, bool, bool], *items: bytes) -> list[Ticket]:
    group, safe, wait = key
    return [conn.send(group, [item], safe=safe, wait=wait) for item in items]


def test_queued_sends_with_one_key_become_one_request_answered_for_each_call() -> None:
    conn = ClientConnection()
    daemon = FakeDaemon(conn)
    first = conn.send("g", [b"0"], safe=False, wait=True)
    [frame] = daemon.take()  # in flight: what is queued now waits for the next write
    later = sends(conn, ("g", False, True), b"1", b"22", b"333")
    assert conn.queued == 3 and conn.unanswered == 1
    [batch] = daemon.take()
    assert batch["data"] == [b"1", b"22", b"333"] and batch["group"] == "g"
    daemon.ok(frame)
    assert first.done and not any(t.done for t in later)
    daemon.ok(batch)
    assert [t.count for t in later] == [1, 1, 1] and all(t.result()["ok"] for t in later)
    assert (conn.stats.send_requests, conn.stats.send_calls, conn.stats.messages) == (2, 4, 4)
    assert conn.pending_send_bytes == 0 and conn.unanswered == 0


def test_other_keys_and_other_requests_split_requests_in_call_order() -> None:
    conn = ClientConnection()
    daemon = FakeDaemon(conn)
    sends(conn, ("g", False, True), b"a", b"b")
    sends(conn, ("g", True, True), b"c")  # safe: its own request
    conn.request("ring", {})
    sends(conn, ("g", False, True), b"d")  # not merged across the ring request
    sends(conn, ("h", False, True), b"e", b"f")
    frames = daemon.take()
    assert [(f["op"], f.get("group"), f.get("safe"), f.get("data")) for f in frames] == [
        ("send", "g", False, [b"a", b"b"]), ("send", "g", True, [b"c"]), ("ring", None, None, None),
        ("send", "g", False, [b"d"]), ("send", "h", False, [b"e", b"f"])]
    assert len({f["id"] for f in frames}) == 5


def test_a_request_never_exceeds_the_daemons_data_limit() -> None:
    conn = ClientConnection()
    daemon = FakeDaemon(conn)
    big = b"x" * (SEND_BYTES_MAX // 3)
    tickets = sends(conn, ("g", False, True), big, big, big, big)
    frames = daemon.take()
    assert [len(f["data"]) for f in frames] == [3, 1]
    assert all(sum(map(len, f["data"])) <= SEND_BYTES_MAX for f in frames)
    for f in frames:
        daemon.ok(f)
    assert all(t.count == 1 and t.done for t in tickets)
    with pytest.raises(RequestFailed, match=f"exceed {SEND_BYTES_MAX} per request"):
        conn.send("g", [b"y" * (SEND_BYTES_MAX + 1)], safe=False, wait=True)
    assert not conn.has_output()  # the refused call was never queued
    # So is one of more messages than a daemon frame may hold (empty ones carry no bytes).
    with pytest.raises(RequestFailed, match=f"exceed {SEND_CALL_ITEMS_MAX} per call"):
        conn.send("g", [b""] * (SEND_CALL_ITEMS_MAX + 1), safe=False, wait=True)
    assert not conn.has_output()
    # The largest call fits in one frame the daemon accepts.
    conn.send("g", [b""] * SEND_CALL_ITEMS_MAX, safe=False, wait=True)
    assert [len(f["data"]) for f in daemon.take()] == [SEND_CALL_ITEMS_MAX]


def test_a_failed_request_fails_every_call_in_it_with_its_own_error() -> None:
    conn = ClientConnection()
    daemon = FakeDaemon(conn)
    full = sends(conn, ("full", False, False), b"1", b"2")
    fine = sends(conn, ("g", False, True), b"3")
    refused, accepted = daemon.take()
    daemon.reply(refused, ok=False, error="ordered queue full, try again", again=True)
    daemon.ok(accepted)
    errors = [t.error for t in full]
    assert all(isinstance(e, TryAgain) for e in errors) and errors[0] is not errors[1]
    with pytest.raises(TryAgain, match="send: ordered queue full"):
        full[0].result()
    assert fine[0].result()["ok"] and fine[0].error is None


def test_calls_queued_during_a_partial_write_coalesce_and_the_stream_stays_whole() -> None:
    conn = ClientConnection()
    daemon = FakeDaemon(conn)
    sends(conn, ("g", False, True), b"a" * 100)
    assert daemon.take(limit=10) == []  # a partial frame: the rest stays in the connection
    sends(conn, ("g", False, True), b"b", b"c")
    assert [f["data"] for f in daemon.take()] == [[b"a" * 100]]  # the rest first, alone
    assert [f["data"] for f in daemon.take()] == [[b"b", b"c"]]


def test_a_withdrawn_call_is_never_sent() -> None:
    conn = ClientConnection()
    daemon = FakeDaemon(conn)
    keep, drop = sends(conn, ("g", False, True), b"keep", b"drop")
    assert conn.withdraw(drop)
    assert [f["data"] for f in daemon.take()] == [[b"keep"]]
    assert not conn.withdraw(keep)  # already packed: its reply will come
    assert isinstance(drop.error, ClientError)


def test_events_replies_and_the_end_of_the_connection() -> None:
    conn = ClientConnection("daemon at x.sock", events_max=2)
    daemon = FakeDaemon(conn)
    ticket = conn.request("ring", {})
    [frame] = daemon.take()
    event = {"ev": "config", "kind": "regular", "ring": "1.n1", "members": ["n1"]}
    conn.receive_data(pack_frame(event) + pack_frame(event))
    assert not conn.may_read(consumer=False) and conn.may_read(consumer=True)
    daemon.reply(frame, ok=True, ring="1.n1")
    assert ticket.result()["ring"] == "1.n1"
    assert conn.next_batch() is not None and conn.may_read(consumer=False)
    pending = conn.request("status", {})
    daemon.take()
    # An id-less error is about the connection: the oldest request gets it, and the
    # connection's end says why.
    conn.receive_data(pack_frame({"ok": False, "error": "too many control connections"}))
    with pytest.raises(RequestFailed, match="status: too many control connections"):
        pending.result()
    later = conn.request("ring", {})
    conn.end_of_stream()
    with pytest.raises(ConnectionLost, match="daemon at x.sock closed the connection: too many"):
        later.result()
    with pytest.raises(ConnectionLost):
        conn.request("ring", {})


def test_a_malformed_frame_ends_the_connection() -> None:
    conn = ClientConnection()
    FakeDaemon(conn).take()
    ticket = conn.send("g", [b"x"], safe=False, wait=True)
    conn.receive_data(pack_frame(["not", "a", "map"]))
    assert isinstance(conn.error, ProtocolError) and ticket.error is conn.error


def test_submitted_sends_are_tallied_for_flush() -> None:
    conn = ClientConnection()
    daemon = FakeDaemon(conn)
    for i in range(5):
        conn.send("g", [b"%d" % i], safe=False, wait=True, submitted=True)
    conn.send("full", [b"x"], safe=False, wait=False, submitted=True)
    conn.send("g", [b"not submitted"], safe=False, wait=True)
    frames = daemon.take()
    assert [len(f["data"]) for f in frames] == [5, 1, 1]
    daemon.ok(frames[0])
    assert conn.submitted_open == 1
    daemon.reply(frames[1], ok=False, error="full", again=True)
    daemon.ok(frames[2])
    assert conn.submitted_open == 0
    with pytest.raises(TryAgain):
        conn.submitted_result()  # the first error, once every submitted send was answered
    assert conn.submitted_result() == 0  # and the tally starts again
    conn.send("g", [b"a", b"b"], safe=False, wait=True, submitted=True)
    daemon.ok(daemon.take()[0])
    assert conn.submitted_result() == 2


def test_the_client_limit_is_the_daemons() -> None:
    from ringd.core.requests import API_SEND_BYTES_MAX

    assert SEND_BYTES_MAX == API_SEND_BYTES_MAX


@pytest.mark.parametrize("name", ["connection.py", "events.py", "errors.py"])
def test_the_connection_does_no_io(name: str) -> None:
    tree = ast.parse((CLIENT / name).read_text())
    imported = [alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names]
    imported += [node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)]
    bad = [m for m in imported if m in FORBIDDEN or m.split(".")[0] in FORBIDDEN
           or any(m.startswith(f + ".") for f in FORBIDDEN)]
    assert bad == []
