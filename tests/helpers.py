"""Shared test helpers: real daemon processes on loopback, polling with deadlines.

Every process is started through :class:`ProcessRegistry`, which kills what is still
running by PID at teardown (the ``daemons`` fixture in ``conftest.py`` calls it even when
the test fails). Each test gets a unique cluster name and a random multicast port, so
parallel runs (and other developers' daemons) never interfere.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from ringd import client

T = TypeVar("T")

RINGD = [sys.executable, "-m", "ringd"]
# Timing loop for the tests that are not about the defaults: faster probes, so failures
# are detected in about a second. Still generous enough for a loaded 2-core machine.
FAST_SETTINGS = (
    "gossip.probe_interval_s=0.25",
    "gossip.probe_timeout_s=0.12",
    "gossip.announce_interval_s=0.5",
)
START_TIMEOUT_S = 20.0  # a daemon process answers status within this (interpreter start included)
POLL_PAUSE_S = 0.05


class ConditionTimeout(AssertionError):
    """A polled condition did not become true before its deadline."""


def wait_until(predicate: Callable[[], T], timeout_s: float, what: str) -> T:
    """Poll ``predicate`` until it returns something truthy; return that value.

    Exceptions from the predicate count as 'not yet' (daemons starting, sockets
    appearing) but the last one is reported if the deadline passes.
    """
    deadline = time.monotonic() + timeout_s
    last_error: BaseException | None = None
    while True:
        try:
            value = predicate()
            if value:
                return value
        except (client.ClientError, OSError, ValueError, KeyError) as exc:
            last_error = exc
        if time.monotonic() >= deadline:
            detail = f" (last error: {last_error})" if last_error else ""
            raise ConditionTimeout(f"timed out after {timeout_s:g} s waiting for {what}{detail}")
        time.sleep(POLL_PAUSE_S)  # poll


def unique_cluster_name() -> str:
    return f"t-{secrets.token_hex(5)}"


def random_multicast_port() -> int:
    """A random UDP port that is free on this host right now (for the multicast group)."""
    rng = secrets.SystemRandom()
    for _ in range(100):
        port = rng.randrange(20000, 60000)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            try:
                probe.bind(("0.0.0.0", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free UDP port found")


def fast_args() -> list[str]:
    out: list[str] = []
    for item in FAST_SETTINGS:
        out += ["--set", item]
    return out


class DaemonProcess:
    """One ``python -m ringd run`` process with its own socket, state dir and log file."""

    def __init__(self, name: str, workdir: Path, cluster_name: str, multicast_port: int,
                 args: Sequence[str] = (), state_dir: Path | None = None) -> None:
        self.name = name
        self.workdir = workdir
        self.socket = workdir / f"{name}.sock"
        self.state_dir = state_dir or workdir / name
        self.cluster_name = cluster_name
        self.multicast_port = multicast_port
        self.args = list(args)
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = workdir / f"{name}.log"
        self.starts = 0

    def command(self) -> list[str]:
        return [
            *RINGD, "run",
            "--name", self.name,
            "--cluster-name", self.cluster_name,
            "--port", "0",
            "--multicast-port", str(self.multicast_port),
            "--socket", str(self.socket),
            "--state-dir", str(self.state_dir),
            *self.args,
        ]

    def start(self) -> DaemonProcess:
        self.starts += 1
        log_path = self.workdir / f"{self.name}.{self.starts}.log"
        self.log_path = log_path
        with open(log_path, "wb") as log:
            self.proc = subprocess.Popen(self.command(), stdin=subprocess.DEVNULL, stdout=log,
                                         stderr=subprocess.STDOUT)
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def status(self) -> dict[str, Any]:
        return client.status(self.socket, timeout_s=3.0)

    def members(self) -> dict[str, dict[str, Any]]:
        return {m["name"]: m for m in client.members(self.socket, timeout_s=3.0)}

    def wait_ready(self, timeout_s: float = START_TIMEOUT_S) -> dict[str, Any]:
        """Poll until the daemon answers status; fail early with its log if it exits."""

        def ready() -> dict[str, Any] | None:
            if not self.running():
                raise AssertionError(f"{self.name} exited with {self.proc and self.proc.returncode}:\n{self.log()}")
            return self.status()

        return wait_until(ready, timeout_s, f"{self.name} to answer status")

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def terminate(self) -> None:
        if self.running():
            assert self.proc is not None
            self.proc.send_signal(signal.SIGTERM)

    def wait_exit(self, timeout_s: float = 10.0) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout=timeout_s)


class ProcessRegistry:
    """Starts daemons and CLI processes for one test; ``cleanup()`` kills leftovers by PID."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.cluster_name = unique_cluster_name()
        self.multicast_port = random_multicast_port()
        self.daemons: list[DaemonProcess] = []
        self.others: list[subprocess.Popen[bytes]] = []

    def daemon(self, name: str, *args: str, fast: bool = True, state_dir: Path | None = None,
               cluster_name: str | None = None, subdir: str | None = None) -> DaemonProcess:
        """Create (not start) a daemon of this test's cluster (files in ``subdir`` if given)."""
        extra = (fast_args() if fast else []) + list(args)
        workdir = self.workdir
        if subdir:
            workdir = self.workdir / subdir
            workdir.mkdir(exist_ok=True)
        d = DaemonProcess(name, workdir, cluster_name or self.cluster_name, self.multicast_port,
                          extra, state_dir)
        self.daemons.append(d)
        return d

    def start_cluster(self, n: int, *args: str, fast: bool = True) -> list[DaemonProcess]:
        nodes = [self.daemon(f"node{i}", *args, fast=fast).start() for i in range(1, n + 1)]
        for node in nodes:
            node.wait_ready()
        return nodes

    def run_cli(self, *args: str, timeout_s: float = 30.0) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*RINGD, *args], capture_output=True, text=True, timeout=timeout_s,
                              stdin=subprocess.DEVNULL)

    def popen_cli(self, *args: str, **kwargs: Any) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen([*RINGD, *args], stdin=subprocess.DEVNULL, **kwargs)
        self.others.append(proc)
        return proc

    def cleanup(self) -> None:
        procs = [d.proc for d in self.daemons if d.proc is not None] + self.others
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
        for proc in procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        # Processes started by a `ringd cluster` we started: found by our unique directory.
        for pid in pids_with_argument(str(self.workdir)):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def pids_with_argument(marker: str) -> list[int]:
    """PIDs of our own processes whose command line contains ``marker`` (a unique path)."""
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if entry.stat().st_uid != os.getuid():
                continue
            cmdline = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if any(marker.encode() in part for part in cmdline) and b"ringd" in b" ".join(cmdline):
            out.append(int(entry.name))
    return out


def pid_alive(pid: int) -> bool:
    """True if ``pid`` exists and is not a zombie."""
    try:
        stat_text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat_text.rsplit(")", 1)[1].split()[0] != "Z"


def all_see(nodes: Sequence[DaemonProcess], expected: dict[str, str]) -> bool:
    """Every node's view has every ``expected`` member in the given state."""
    for node in nodes:
        view = node.members()
        for name, state in expected.items():
            if name not in view or view[name]["state"] != state:
                return False
    return True


def one_line_error(stderr: str) -> str:
    """The error output must be exactly one non-empty line (no traceback)."""
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one error line, got:\n{stderr}"
    assert "Traceback" not in stderr
    return lines[0]


def load_json(text: str) -> Any:
    return json.loads(text)
