"""The blocking client: a :class:`~ringd.client.connection.ClientConnection` on a plain
non-blocking stdlib socket and ``poll()`` (no threads, no Trio), and the one-call control
helpers the CLI and scripts use."""

from __future__ import annotations

import collections
import os
import select
import socket as stdlib_socket
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

from ringd.client.connection import (
    READ_BYTES_MAX,
    REQUEST_TIMEOUT_S,
    SUBMIT_FRAME_BYTES,
    SUBMIT_FRAME_CALLS,
    SUBMIT_PENDING_BYTES_MAX,
    ClientConnection,
    ConnectionStats,
    Ticket,
    message_items,
    plain_reply,
)
from ringd.client.errors import ClientError, ConnectionLost, DaemonTimeout, ProtocolError
from ringd.client.events import Batch, Event, decode_event, expand
from ringd.client.socket_path import connect_error, resolve_socket

# Event frames a BlockingRingClient keeps while the application is busy with requests.
BLOCKING_EVENT_FRAMES_MAX = 65536


class BlockingRingClient:
    """:class:`~ringd.client.RingClient`'s API as plain blocking calls (no threads, no Trio).
    Events that arrive while waiting for a reply are kept for :meth:`events`.

    :meth:`send` returns once the daemon answered. To pipeline from a single thread, use
    :meth:`submit` (returns at once) and :meth:`flush` (waits for every submitted send):
    submitted sends are coalesced into few requests."""

    def __init__(self, path: str | Path | None = None, *, timeout_s: float | None = None) -> None:
        """Connect to the daemon at ``path``; ``timeout_s`` bounds each request (None: wait)."""
        self.path = resolve_socket(path)
        self.timeout_s = timeout_s
        sock = stdlib_socket.socket(stdlib_socket.AF_UNIX, stdlib_socket.SOCK_STREAM)
        try:
            sock.settimeout(timeout_s)
            sock.connect(os.fspath(self.path))
        except TimeoutError:
            sock.close()
            raise DaemonTimeout(f"daemon at {self.path} did not accept within {timeout_s:g} s") from None
        except OSError as exc:
            sock.close()
            raise connect_error(self.path, exc) from None
        sock.setblocking(False)
        self._sock = sock
        self._poll = select.poll()
        self._poll.register(sock, select.POLLIN)
        self._polling_out = False
        self._conn = ClientConnection(f"daemon at {self.path}", events_max=BLOCKING_EVENT_FRAMES_MAX)
        self._expanded: collections.deque[Event] = collections.deque()

    def __enter__(self) -> BlockingRingClient:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        try:
            if exc_type is None and self._conn.submitted_open and self._conn.error is None:
                self.flush()  # like closing a file: what was submitted goes out
        finally:
            self.close()

    def close(self) -> None:
        """Close the connection (the daemon drops our group memberships). Submitted sends
        not yet written are dropped: :meth:`flush` first (leaving ``with`` does)."""
        self._conn.fail(ConnectionLost(f"connection to {self.path} closed by this client"))
        self._sock.close()

    @property
    def stats(self) -> ConnectionStats:
        """The connection's counters (request frames, send calls coalesced into them, ...)."""
        return self._conn.stats

    # --- requests ---------------------------------------------------------------------

    def request(self, op: str, **fields: Any) -> dict[str, Any]:
        """Send ``{"op": op, **fields}`` and return the reply map (``ok`` true), else raise."""
        ticket = self._conn.request(op, fields)
        self._run_until(lambda: ticket.done, op)
        return ticket.result()

    def send(self, group: str, data: bytes | str | Sequence[bytes | str], *,
             safe: bool = False, wait: bool = True) -> int:
        """See :meth:`RingClient.send`: returns once the daemon queued the messages (``safe``:
        once every ring member has them); sends submitted before go out with it."""
        ticket = self._conn.send(group, message_items(data), safe=safe, wait=wait)
        self._run_until(lambda: ticket.done, "send")
        ticket.result()
        return ticket.count

    def submit(self, group: str, data: bytes | str | Sequence[bytes | str], *,
               safe: bool = False, wait: bool = True) -> Ticket:
        """Queue a send without waiting for its reply; returns its :class:`Ticket`. Like a
        buffered file write: it goes out with a later write, at the latest once 64 KiB are
        queued or at :meth:`flush`, coalesced with the sends around it. Nothing is promised
        until :meth:`flush` returns or the ticket is ``done``. Blocks only while over 1 MiB
        of send data is unanswered."""
        conn = self._conn
        if conn.pending_send_bytes >= SUBMIT_PENDING_BYTES_MAX:
            self._run_until(lambda: conn.pending_send_bytes < SUBMIT_PENDING_BYTES_MAX // 2, "submit")
        ticket = conn.send(group, message_items(data), safe=safe, wait=wait, submitted=True)
        if not conn.unanswered or conn.queued_bytes >= SUBMIT_FRAME_BYTES or conn.queued >= SUBMIT_FRAME_CALLS:
            self._write_some()
        return ticket

    def flush(self) -> int:
        """Write every submitted send and wait until all are answered; returns their message
        count. If any failed, raises the first one's error (after all were answered; each
        ticket holds its own outcome)."""
        conn = self._conn
        self._run_until(lambda: conn.submitted_open == 0, "flush")
        return conn.submitted_result()

    def join(self, group: str, *, self_discard: bool = False) -> str:
        """See :meth:`RingClient.join`."""
        return str(self.request("group_join", group=group, self_discard=self_discard).get("member", ""))

    def leave(self, group: str) -> None:
        """See :meth:`RingClient.leave`."""
        self.request("group_leave", group=group)

    def members(self, group: str | None = None) -> dict[str, list[str]]:
        """See :meth:`RingClient.members`."""
        groups = self.request("group_members", **({} if group is None else {"group": group})).get("groups")
        if not isinstance(groups, dict):
            raise ProtocolError("group_members reply without groups")
        return groups

    def ring(self) -> dict[str, Any]:
        """See :meth:`RingClient.ring`."""
        return plain_reply(self.request("ring"))

    def status(self) -> dict[str, Any]:
        """The daemon's status object."""
        return plain_reply(self.request("status"))

    def quorum(self) -> dict[str, Any]:
        """See :meth:`RingClient.quorum`."""
        return plain_reply(self.request("quorum"))

    def wait_closed(self) -> None:
        """Return once the daemon closes the connection (e.g. it exited after ``leave``)."""
        try:
            self._run_until(lambda: False, "leave")
        except ConnectionLost:
            return

    # --- events -----------------------------------------------------------------------

    def batches(self, timeout: float | None = None) -> Iterator[Batch]:
        """Event frames (see :meth:`RingClient.batches`); stops after ``timeout`` seconds
        without an event (None: never). Raises :class:`ConnectionLost` if the daemon closed."""
        events = self._conn.events
        while True:
            while events:
                yield decode_event(events.popleft())
            if not self._receive(timeout):
                return

    def events(self, timeout: float | None = None) -> Iterator[Event]:
        """Every event in delivery order, one :class:`MessageEvent` per message; stops after
        ``timeout`` seconds without an event (None: never)."""
        events = self._conn.events
        while True:
            while self._expanded:
                yield self._expanded.popleft()
            while events:
                self._expanded.extend(expand(decode_event(events.popleft())))
            if self._expanded:
                continue
            if not self._receive(timeout):
                return

    # --- I/O --------------------------------------------------------------------------

    def _run_until(self, done: Callable[[], bool], what: str) -> None:
        """Write and read until ``done()``; raise the connection's error if it ended first,
        :class:`DaemonTimeout` after ``timeout_s``."""
        conn = self._conn
        deadline = None if self.timeout_s is None else time.monotonic() + self.timeout_s
        while not done():
            if conn.error is not None:
                raise conn.error
            self._write_some()
            if done() or conn.error is not None:
                continue
            if not self._wait_io(deadline):
                raise DaemonTimeout(f"daemon at {self.path} did not answer {what!r} within {self.timeout_s:g} s")

    def _receive(self, timeout: float | None) -> bool:
        """Write what is queued, then wait for frames; False if ``timeout`` passed first."""
        conn = self._conn
        if conn.error is not None:
            raise conn.error
        self._write_some()
        deadline = None if timeout is None else time.monotonic() + timeout
        before = conn.stats.event_frames
        while conn.stats.event_frames == before:
            if conn.error is not None:
                raise conn.error
            if not self._wait_io(deadline):
                return False
        return True

    def _wait_io(self, deadline: float | None) -> bool:
        """Wait until the socket is readable (or writable, while output waits) and do that
        I/O; False if ``deadline`` passed first."""
        want_out = self._conn.has_output()
        if want_out != self._polling_out:
            self._poll.modify(self._sock, select.POLLIN | (select.POLLOUT if want_out else 0))
            self._polling_out = want_out
        while True:
            timeout_ms = None if deadline is None else max(0, int((deadline - time.monotonic()) * 1000 + 0.999))
            ready = self._poll.poll(timeout_ms)
            if ready:
                break
            if deadline is not None and time.monotonic() >= deadline:
                return False
        revents = ready[0][1]
        if revents & ~select.POLLOUT:  # readable, or hung up / error: recv tells which
            self._read_some()
        if revents & select.POLLOUT:
            self._write_some()
        return True

    def _write_some(self) -> None:
        """Write what the kernel takes now of what is queued."""
        conn = self._conn
        while conn.has_output() and conn.error is None:
            view = conn.outgoing()
            try:
                n = self._sock.send(view)
            except BlockingIOError:
                return
            except OSError:
                conn.end_of_stream()
                return
            finally:
                view.release()
            conn.wrote(n)

    def _read_some(self) -> None:
        conn = self._conn
        try:
            data = self._sock.recv(READ_BYTES_MAX)
        except BlockingIOError:
            return
        except OSError:
            conn.end_of_stream()
            return
        if not data:
            conn.end_of_stream()
            return
        conn.receive_data(data)
        if len(conn.events) > BLOCKING_EVENT_FRAMES_MAX:
            conn.fail(ClientError(f"more than {BLOCKING_EVENT_FRAMES_MAX} unread event frames: "
                                  "read events() or leave the group"))


# --- one-call control helpers (CLI, scripts, tests) ----------------------------------------


def request(path: str | Path | None, op: str, *, timeout_s: float = REQUEST_TIMEOUT_S,
            **fields: Any) -> dict[str, Any]:
    """One control request ``{"op": op, **fields}``; returns the reply without ``ok``."""
    with BlockingRingClient(path, timeout_s=timeout_s) as client:
        return plain_reply(client.request(op, **fields))


def status(path: str | Path | None = None, *, timeout_s: float = REQUEST_TIMEOUT_S) -> dict[str, Any]:
    """The daemon's status object (name, members_alive, uptime_s, transport, gossip, ...)."""
    return request(path, "status", timeout_s=timeout_s)


def set_tags(path: str | Path | None, tags: dict[str, str]) -> None:
    """Replace the daemon's tags; gossip disseminates them."""
    request(path, "tags", tags=tags)


def send_event(path: str | Path | None, name: str, payload: bytes = b"") -> None:
    """Disseminate a small user event by gossip (best effort, unordered, like ``serf event``)."""
    request(path, "event", name=name, payload=payload)


def events(path: str | Path | None = None) -> list[dict[str, Any]]:
    """The user events this daemon received recently (bounded), oldest first."""
    out = request(path, "events").get("events")
    if not isinstance(out, list):
        raise ProtocolError("events reply without an event list")
    return out


def members(path: str | Path | None = None, *, timeout_s: float = REQUEST_TIMEOUT_S) -> list[dict[str, Any]]:
    """The membership as this daemon sees it, sorted by name."""
    reply = request(path, "members", timeout_s=timeout_s)
    out = reply.get("members")
    if not isinstance(out, list):
        raise ProtocolError(f"members reply without a member list: {reply!r:.80}")
    return out


def quorum(path: str | Path | None = None, *, timeout_s: float = REQUEST_TIMEOUT_S) -> dict[str, Any]:
    """The daemon's quorum state: quorate, votes, expected_votes, quorum, options."""
    return request(path, "quorum", timeout_s=timeout_s)


def set_expected_votes(path: str | Path | None, expected: int, *,
                       timeout_s: float = REQUEST_TIMEOUT_S) -> None:
    """Operator override: every member of the daemon's configuration sets its expected votes
    to ``expected`` (ordered through the ring, logged by every daemon)."""
    request(path, "quorum_expected", timeout_s=timeout_s, expected=expected)


def leave(path: str | Path | None = None, *, timeout_s: float = REQUEST_TIMEOUT_S) -> str:
    """Ask the daemon to leave gracefully and wait until it has closed the connection
    (it does so on exit). Returns the daemon's name."""
    with BlockingRingClient(path, timeout_s=timeout_s) as client:
        reply = client.request("leave")
        try:
            client.wait_closed()
        except DaemonTimeout:
            raise DaemonTimeout(f"daemon at {client.path} did not finish leaving within {timeout_s:g} s") from None
    return str(reply.get("name", ""))
