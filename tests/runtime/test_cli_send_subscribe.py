"""`ringd send` and `ringd subscribe` as real processes against the control server of this
test process with a fake driver (fake_api.py): batching, JSON lines, clean exits, errors."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import trio
from fake_api import NODE, RING, Served, serving

from helpers import one_line_error

RINGD = [sys.executable, "-m", "ringd"]
PROCESS_TIMEOUT_S = 30.0


async def ringd(*args: str, stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    with trio.fail_after(PROCESS_TIMEOUT_S):
        return await trio.run_process([*RINGD, *args], stdin=stdin, capture_stdout=True,
                                      capture_stderr=True, check=False)


class Subscriber:
    """A running `ringd subscribe` whose stdout we read line by line."""

    def __init__(self, proc: trio.Process) -> None:
        self.proc = proc
        self.buf = b""

    async def line(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        with trio.fail_after(PROCESS_TIMEOUT_S):
            while b"\n" not in self.buf:
                data = await self.proc.stdout.receive_some()
                assert data, "subscriber closed its stdout"
                self.buf += data
        line, self.buf = self.buf.split(b"\n", 1)
        return json.loads(line)  # type: ignore[no-any-return]

    async def exit_code(self) -> tuple[int, str]:
        assert self.proc.stderr is not None
        with trio.fail_after(PROCESS_TIMEOUT_S):
            err = b""
            while chunk := await self.proc.stderr.receive_some():
                err += chunk
            return await self.proc.wait(), err.decode()


@asynccontextmanager
async def subscriber(s: Served, group: str) -> AsyncIterator[Subscriber]:
    joins = sum(1 for r in s.driver.requests if r.op == "group_join")
    proc = await trio.lowlevel.open_process([*RINGD, "subscribe", group, "--socket", str(s.path)],
                                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        await s.driver.wait_for(lambda: sum(1 for r in s.driver.requests if r.op == "group_join") > joins,
                                PROCESS_TIMEOUT_S)
        yield Subscriber(proc)
    finally:
        if proc.returncode is None:
            proc.kill()
        with trio.CancelScope(shield=True):
            await proc.wait()


async def test_send_and_subscribe(short_tmp: Path) -> None:
    async with serving(short_tmp / "api.sock") as s, subscriber(s, "chat") as sub:
        member = s.driver.requests[0].request.pid
        assert member == sub.proc.pid  # SO_PEERCRED names the subscribing process
        assert await sub.line() == {"type": "group", "group": "chat", "members": [f"{NODE}:{member}"],
                                    "joined": [f"{NODE}:{member}"], "left": [], "reason": "join"}
        done = await ringd("send", "chat", "hello wörld", "--socket", str(s.path))
        assert (done.returncode, done.stderr) == (0, b"")
        done = await ringd("send", "chat", "--safe", "--socket", str(s.path), stdin=b"a\n\n\xff\xfe\nlast")
        assert (done.returncode, done.stderr) == (0, b"")
        sends = [r.request for r in s.driver.requests if r.op == "send"]
        assert [(list(r.data), r.safe) for r in sends] == [
            (["hello wörld".encode()], False), ([b"a", b"", b"\xff\xfe", b"last"], True)]
        got = [await sub.line() for _ in range(5)]
        assert got[0] == {"type": "message", "group": "chat", "sender": NODE, "ring": RING, "seq": 0,
                          "data": "hello wörld"}
        assert [g.get("data", g.get("data_b64")) for g in got[1:]] == ["a", "", "//4=", "last"]
        assert [g["seq"] for g in got] == [0, 1, 2, 3, 4]
        s.driver.push_group("chat", {"ev": "config", "kind": "regular", "ring": "5.node1",
                                     "members": ["node1", "node2"]})
        assert await sub.line() == {"type": "config", "kind": "regular", "ring": "5.node1",
                                    "members": ["node1", "node2"]}
        sub.proc.send_signal(signal.SIGTERM)
        assert await sub.exit_code() == (0, "")


async def test_send_batches_stdin_lines(short_tmp: Path) -> None:
    async with serving(short_tmp / "api.sock") as s:
        lines = b"".join(b"line %d\n" % i for i in range(2000))
        done = await ringd("send", "bulk", "--socket", str(s.path), stdin=lines)
        assert (done.returncode, done.stderr) == (0, b"")
        sends = [list(r.request.data) for r in s.driver.requests if r.op == "send"]
        # Calls of at most 512 lines, coalesced by the client into fewer requests.
        assert len(sends) < 4
        assert [x for d in sends for x in d] == [b"line %d" % i for i in range(2000)]


async def test_send_errors_are_one_line(short_tmp: Path) -> None:
    done = await ringd("send", "g", "x", "--socket", str(short_tmp / "nobody.sock"))
    assert done.returncode != 0
    assert "no ringd daemon is running" in one_line_error(done.stderr.decode())
    async with serving(short_tmp / "api.sock") as s:
        done = await ringd("send", "g", "--socket", str(s.path), stdin=b"x" * (2 << 20) + b"\n")
        assert done.returncode != 0
        assert "exceed" in one_line_error(done.stderr.decode())


async def test_subscribe_ends_with_an_error_when_the_daemon_goes_away(short_tmp: Path) -> None:
    async with serving(short_tmp / "api.sock") as s, subscriber(s, "g") as sub:
        await sub.line()
        s.stop()
        code, err = await sub.exit_code()
        assert code != 0 and "closed the connection" in one_line_error(err)


async def test_subscribe_ends_cleanly_on_ctrl_c_and_broken_pipe(short_tmp: Path) -> None:
    async with serving(short_tmp / "api.sock") as s:
        async with subscriber(s, "g") as sub:
            await sub.line()
            sub.proc.send_signal(signal.SIGINT)
            assert await sub.exit_code() == (0, "")
        async with subscriber(s, "g") as sub:
            await sub.line()
            assert sub.proc.stdout is not None
            await sub.proc.stdout.aclose()  # like `ringd subscribe g | head -1`
            for seq in range(100):  # until it notices (the first writes may still fit the pipe)
                s.driver.push_group("g", {"ev": "message", "group": "g", "sender": NODE, "member": "m",
                                          "ring": RING, "seq": seq, "safe": False, "data": [b"x"]})
                if sub.proc.poll() is not None:
                    break
                with trio.move_on_after(0.05):  # poll
                    await sub.proc.wait()
            assert await sub.exit_code() == (0, "")
        assert os.path.exists(s.path)
