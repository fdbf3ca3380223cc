"""Worker processes of ``scripts/bench_ring.py``: one subscriber or one sender each, so the
benchmark's own Python work is spread over processes and is not the bottleneck of one.

Run as ``python scripts/bench_ring.py worker sub|send ...``. Coordination with the bench
process is by files: a subscriber creates ``--ready`` once its group has ``--expect``
members; a sender connects (and joins, with ``--join``) and then waits for ``--go`` to
exist; each worker writes one JSON object to ``--out`` when done.

Payload: a 19-byte header (kind ``D`` data / ``E`` end, sender id, counter, send time from
``time.monotonic_ns()``, which is one clock for every process on Linux) padded to ``--size``.
Lines for ``ringd send`` (``--mode cli``) must hold no newline, so theirs is text: ``d``,
sender id, counter and send time in decimal, padded with dots.

Sender modes (``--mode``), all flat out for ``--duration-s``:

  batch     ``--batch`` messages per ``send`` call, ``--inflight`` connections at once
  call      one message per ``await ring.send(g, m)``, from ``--tasks`` tasks of one connection
  submit    one message per ``await ring.submit(g, m)`` from one task, ``flush()`` at the end
  blocking  one message per ``BlockingRingClient.send`` (``--tasks`` ignored)
  blocking-submit  one message per ``BlockingRingClient.submit``, ``flush()`` at the end
  cli       ``ringd send GROUP`` reading ``--cli-lines`` lines from a file on stdin
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import struct
import sys
import time
from pathlib import Path
from typing import Any

import trio

from ringd.client import (
    BlockingRingClient,
    ClientError,
    GroupEvent,
    MessageBatch,
    RingClient,
    open_client,
)

HEADER = struct.Struct("<cHQQ")  # kind, sender id, counter, send time ns
DATA = b"D"
END = b"E"
TEXT_DATA = b"d"  # a text payload (ringd send reads lines): "d%05d %d %d" sender, counter, ns
SENDER_MODES = ("batch", "call", "submit", "blocking", "blocking-submit", "cli")
GO_POLL_S = 0.001
END_WAIT_S = 20.0


def payload(kind: bytes, sender_id: int, counter: int, size: int) -> bytes:
    """One message: header with the current monotonic time, zero padded to ``size`` bytes."""
    head = HEADER.pack(kind, sender_id, counter, time.monotonic_ns())
    return head + bytes(max(0, size - len(head)))


def text_payload(sender_id: int, counter: int, size: int) -> bytes:
    """One newline-free message for ``ringd send``, padded with dots to ``size`` bytes."""
    head = b"d%05d %d %d " % (sender_id, counter, time.monotonic_ns())
    return head + b"." * max(0, size - len(head))


def parse_header(item: bytes) -> tuple[bytes, int, int]:
    """(kind, sender id, send time ns) of a benchmark message, binary or text."""
    if item[:1] == TEXT_DATA:
        sid, _counter, sent_ns = item[1:].split(b" ", 3)[:3]
        return DATA, int(sid), int(sent_ns)
    kind, sid, _counter, sent_ns = HEADER.unpack_from(item)
    return kind, sid, sent_ns


class Tally:
    """What one process delivered of the benchmark group: counts, span, order hash, latencies."""

    def __init__(self, group: str, senders: int, own_id: int | None = None) -> None:
        self.group = group
        self.senders = senders
        self.own_id = own_id
        self.count = 0
        self.nbytes = 0
        self.first_ns: int | None = None
        self.last_ns: int | None = None
        self.order = hashlib.sha256()
        self.latency_ns: list[int] = []  # per delivered batch (per message when batch = 1)
        self.self_latency_ns: list[int] = []
        self.ends: set[int] = set()
        self.group_size = 0
        self._run: list[Any] | None = None  # [sender, ring, first seq, end seq] not yet hashed

    def done(self) -> bool:
        return len(self.ends) >= self.senders

    def add(self, b: MessageBatch, now_ns: int) -> None:
        if b.group != self.group or not b.data:
            return
        kind, sid, sent_ns = parse_header(b.data[0])
        if kind == END:
            self.ends.add(sid)
            return
        if self.first_ns is None:
            self.first_ns = now_ns
        self.last_ns = now_ns
        self.count += len(b.data)
        self.nbytes += sum(map(len, b.data))
        self.latency_ns.append(now_ns - sent_ns)
        if sid == self.own_id:
            self.self_latency_ns.append(now_ns - sent_ns)
        # Total order: the sequence of (sender, ring, seq), hashed as runs of consecutive seqs
        # so that it does not depend on how the daemon cut it into frames.
        run = self._run
        if run is not None and run[0] == b.sender and run[1] == b.ring and run[3] == b.first_seq:
            run[3] += len(b.data)
        else:
            self._flush_run()
            self._run = [b.sender, b.ring, b.first_seq, b.first_seq + len(b.data)]

    def _flush_run(self) -> None:
        if self._run is not None:
            self.order.update(("|".join(map(str, self._run)) + "\n").encode())
            self._run = None

    def result(self) -> dict[str, Any]:
        self._flush_run()
        return {
            "count": self.count, "bytes": self.nbytes, "first_ns": self.first_ns,
            "last_ns": self.last_ns, "order": self.order.hexdigest(), "ends": sorted(self.ends),
            "latency_ns": self.latency_ns, "self_latency_ns": self.self_latency_ns,
        }


async def consume(c: RingClient, tally: Tally, ready: Path | None, expect: int) -> None:
    """Read events until every sender's END arrived; create ``ready`` at group size ``expect``."""
    async for b in c.batches():
        now = time.monotonic_ns()
        if isinstance(b, MessageBatch):
            tally.add(b, now)
            if tally.done():
                return
        elif isinstance(b, GroupEvent) and b.group == tally.group:
            tally.group_size = len(b.members)
            if ready is not None and tally.group_size >= expect and not ready.exists():
                ready.write_text("ready\n")


async def run_sub(a: argparse.Namespace) -> dict[str, Any]:
    tally = Tally(a.group, a.senders)
    async with open_client(a.socket) as c:
        await c.join(a.group)
        with trio.move_on_after(a.timeout_s):
            await consume(c, tally, Path(a.ready), a.expect)
    return tally.result()


async def wait_go(go: Path, timeout_s: float) -> None:
    with trio.fail_after(timeout_s):
        while not go.exists():
            await trio.sleep(GO_POLL_S)  # poll for the start signal


async def run_send(a: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {"sent": 0, "send_calls": 0, "errors": []}
    # Joined, a sender is also its node's subscriber (like corosync's cpgbench): it counts
    # every delivery until every sender's END came back.
    tally = Tally(a.group, a.senders, own_id=a.sender_id)
    cli_input = _cli_input(a) if a.mode == "cli" else None
    async with trio.open_nursery() as nursery, open_client(a.socket) as first:
        if a.join:
            await first.join(a.group)
            nursery.start_soon(_self_reader, first, tally, Path(a.ready) if a.ready else None, a.expect)
        clients = [first]
        for _ in range(max(0, a.inflight - 1) if a.mode == "batch" else 0):
            clients.append(await RingClient.connect(a.socket))
            await clients[-1].__aenter__()
        blocking = BlockingRingClient(a.socket) if a.mode.startswith("blocking") else None
        try:
            await wait_go(Path(a.go), a.timeout_s)
            start = time.monotonic()
            end = start + a.duration_s
            if a.rate > 0:
                await _send_paced(first, a, end, out)
            elif a.mode == "batch":
                async with trio.open_nursery() as senders:
                    for c in clients:
                        senders.start_soon(_send_flat_out, c, a, end, out)
            elif a.mode == "call":
                async with trio.open_nursery() as senders:
                    for _ in range(a.tasks):
                        senders.start_soon(_send_per_call, first, a, end, out)
            elif a.mode == "submit":
                await _submit_per_call(first, a, end, out)
            elif blocking is not None:
                _blocking_per_call(blocking, a, end, out)
            else:
                assert cli_input is not None
                await _send_cli(a, cli_input, out)
            out["send_s"] = time.monotonic() - start
            for c in (blocking, *clients):
                if c is not None:
                    stats = c.stats
                    out["request_frames"] = out.get("request_frames", 0) + stats.send_requests
                    out["client_send_calls"] = out.get("client_send_calls", 0) + stats.send_calls
            await first.send(a.group, [payload(END, a.sender_id, 0, a.size)], safe=a.safe)
            if a.join:
                with trio.move_on_after(END_WAIT_S):
                    while not tally.done():
                        await trio.sleep(0.01)  # poll for our own END coming back
        finally:
            if blocking is not None:
                blocking.close()
            for c in clients[1:]:
                await c.aclose()
        nursery.cancel_scope.cancel()
    out["self_latency_ns"] = tally.self_latency_ns
    if a.join:
        out["tally"] = tally.result()
    return out


async def _send_per_call(c: RingClient, a: argparse.Namespace, end: float, out: dict[str, Any]) -> None:
    """One message per ``send`` call, waiting for each (one of ``--tasks`` such tasks)."""
    counter = 0
    while time.monotonic() < end:
        sent = await c.send(a.group, payload(DATA, a.sender_id, counter, a.size), safe=a.safe)
        out["sent"] += sent  # not `+= await ...`: that reads the total before the await
        out["send_calls"] += 1
        counter += 1


async def _submit_per_call(c: RingClient, a: argparse.Namespace, end: float, out: dict[str, Any]) -> None:
    """One message per ``submit`` call from one task; ``flush`` at the end."""
    counter = 0
    while time.monotonic() < end:
        await c.submit(a.group, payload(DATA, a.sender_id, counter, a.size), safe=a.safe)
        counter += 1
    sent = await c.flush()
    out["sent"] += sent
    out["send_calls"] += counter


def _blocking_per_call(c: BlockingRingClient, a: argparse.Namespace, end: float, out: dict[str, Any]) -> None:
    """One message per blocking ``send`` (or ``submit``, then ``flush``) call."""
    counter = 0
    if a.mode == "blocking-submit":
        while time.monotonic() < end:
            c.submit(a.group, payload(DATA, a.sender_id, counter, a.size), safe=a.safe)
            counter += 1
        out["sent"] += c.flush()
    else:
        while time.monotonic() < end:
            out["sent"] += c.send(a.group, payload(DATA, a.sender_id, counter, a.size), safe=a.safe)
            counter += 1
    out["send_calls"] += counter


def _cli_input(a: argparse.Namespace) -> Path:
    """A file of ``--cli-lines`` text messages for ``ringd send`` (written before "go")."""
    path = Path(a.out).with_suffix(".lines")
    with open(path, "wb") as fh:
        for k in range(a.cli_lines):
            fh.write(text_payload(a.sender_id, k, a.size) + b"\n")
    return path


async def _send_cli(a: argparse.Namespace, lines: Path, out: dict[str, Any]) -> None:
    """``ringd send GROUP`` reading the lines on stdin, as a user would pipe them."""
    with open(lines, "rb") as stdin:
        done = await trio.run_process([sys.executable, "-m", "ringd", "send", a.group, "--socket", a.socket,
                                       *(["--safe"] if a.safe else [])], stdin=stdin, capture_stderr=True,
                                      check=False)
    if done.returncode != 0:
        raise RuntimeError(f"ringd send failed: {done.stderr.decode(errors='replace').strip()}")
    out["sent"] += a.cli_lines
    out["send_calls"] += 1


async def _self_reader(c: RingClient, tally: Tally, ready: Path | None, expect: int) -> None:
    try:
        await consume(c, tally, ready, expect)
    except ClientError:
        return


async def _send_flat_out(c: RingClient, a: argparse.Namespace, end: float, out: dict[str, Any]) -> None:
    counter = 0
    period = a.inflight / a.msg_cap / a.batch if a.msg_cap > 0 else 0.0
    t0 = trio.current_time()
    while time.monotonic() < end:
        if period:
            await trio.sleep_until(t0 + counter * period)  # the capped send schedule
        item = payload(DATA, a.sender_id, counter, a.size)
        sent = await c.send(a.group, [item] * a.batch, safe=a.safe)
        out["sent"] += sent
        out["send_calls"] += 1
        counter += 1


async def _send_paced(c: RingClient, a: argparse.Namespace, end: float, out: dict[str, Any]) -> None:
    """``--rate`` messages/s, one per send call; each send is its own task so a slow (safe)
    send does not delay the next one."""
    period = 1.0 / a.rate
    # Independent senders: a random phase, so that N senders started by one "go" do not
    # all send in the same millisecond of every period (a lock-step burst no real clients
    # would produce, which measures queueing behind each other rather than latency).
    t0 = trio.current_time() + random.random() * period

    async def one(k: int) -> None:
        try:
            sent = await c.send(a.group, [payload(DATA, a.sender_id, k, a.size)], safe=a.safe)
            out["sent"] += sent
            out["send_calls"] += 1
        except ClientError as exc:
            out["errors"].append(str(exc))

    async with trio.open_nursery() as nursery:
        k = 0
        while time.monotonic() < end:
            await trio.sleep_until(t0 + k * period)  # the send schedule
            nursery.start_soon(one, k)
            k += 1


def add_worker_parser(sub: Any) -> None:
    """The ``worker`` subcommand's arguments."""
    w = sub.add_parser("worker", help="internal: one subscriber or sender process")
    w.add_argument("role", choices=["sub", "send"])
    w.add_argument("--socket", required=True)
    w.add_argument("--group", required=True)
    w.add_argument("--out", required=True)
    w.add_argument("--ready", default="")
    w.add_argument("--go", default="")
    w.add_argument("--expect", type=int, default=1, help="sub: group size to wait for")
    w.add_argument("--senders", type=int, default=1, help="sub: END markers to wait for")
    w.add_argument("--sender-id", type=int, default=0)
    w.add_argument("--size", type=int, default=100)
    w.add_argument("--batch", type=int, default=256)
    w.add_argument("--inflight", type=int, default=2, help="send, mode batch: connections sending at once")
    w.add_argument("--mode", choices=SENDER_MODES, default="batch", help="send: how messages are sent (see above)")
    w.add_argument("--tasks", type=int, default=1, help="send, mode call: tasks sending on one connection")
    w.add_argument("--cli-lines", type=int, default=200_000, help="send, mode cli: lines piped to `ringd send`")
    w.add_argument("--rate", type=float, default=0.0, help="send: msgs/s, one per send (0 = flat out)")
    w.add_argument("--msg-cap", type=float, default=0.0,
                   help="send, flat out: at most this many msgs/s per sender process (0 = no cap)")
    w.add_argument("--duration-s", type=float, default=5.0)
    w.add_argument("--safe", action="store_true")
    w.add_argument("--join", action="store_true", help="send: join the group, measure self-delivery")
    w.add_argument("--timeout-s", type=float, default=120.0)
    w.add_argument("--nice", type=int, default=0, help="raise this process's nice value by this much")


def worker_main(a: argparse.Namespace) -> None:
    fn = run_sub if a.role == "sub" else run_send
    if a.nice:
        os.nice(a.nice)
    try:
        result = trio.run(fn, a)
    except Exception as exc:  # noqa: BLE001 -- reported to the bench process, which prints it
        result = {"error": f"{type(exc).__name__}: {exc}"}
    Path(a.out).write_text(json.dumps(result))
