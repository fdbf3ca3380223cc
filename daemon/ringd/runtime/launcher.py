"""``ringd cluster``: N local daemons as separate OS processes, for development.

Starts ``python -m ringd run`` N times (own session each, so a terminal Ctrl-C reaches
only the launcher, which then stops them in order), waits until every daemon answers
``status``, writes ``DIR/cluster.json``, shows the membership converge (a live table on a
terminal, a line per change otherwise), and on Ctrl-C/SIGTERM or after ``--for`` stops
every daemon it started by PID: SIGTERM (graceful leave), then SIGKILL for leftovers.

With ``prometheus`` set it also runs a real Prometheus (the Debian package ``prometheus``)
on loopback: every daemon gets a metrics port, ``DIR/prometheus.yml`` scrapes them all every
second, the TSDB lives in ``DIR/prometheus-data``, and the server is stopped with the
cluster, by PID.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import trio
from rich.console import Console
from rich.live import Live
from rich.table import Table

from ringd.client import ClientError, ControlClient

STARTUP_TIMEOUT_S = 30.0  # every daemon must answer status within this (slow, loaded machines)
POLL_INTERVAL_S = 0.25
STATUS_TIMEOUT_S = 1.0
STOP_WAIT_S = 5.0  # after SIGTERM; daemons leave within ~2 s, then SIGKILL
LOOPBACK = "127.0.0.1"
PROMETHEUS_BINARY = "prometheus"
PROMETHEUS_PACKAGE = "prometheus"  # Debian/Ubuntu package with the binary
# Short, so a dashboard shows a failover within seconds; fine for a handful of local daemons.
PROMETHEUS_SCRAPE_INTERVAL_S = 1
PROMETHEUS_READY_TIMEOUT_S = 30.0  # TSDB open and web server up, on a slow machine
PROMETHEUS_JOB = "ringd"


class LauncherError(Exception):
    """The cluster cannot be started; ``str()`` is one line."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ClusterSpec:
    nodes: int
    directory: Path | None = None
    base_port: int = 0
    metrics_base_port: int = 0  # node K serves /metrics on BASE+K-1; 0 = no metrics
    run_for_s: float | None = None
    cluster_name: str | None = None
    multicast_port: int | None = None
    extra_settings: tuple[str, ...] = ()  # KEY=VALUE, passed as --set to every daemon
    prometheus: bool = False  # also run a Prometheus scraping every daemon
    prometheus_port: int = 0  # its web port on 127.0.0.1; 0 = a free one


@dataclass(slots=True)
class NodeProcess:
    name: str
    socket: Path
    state_dir: Path
    log_path: Path
    proc: trio.Process
    status: dict[str, Any] | None = None
    members: list[dict[str, Any]] = field(default_factory=list)

    @property
    def state(self) -> str:
        if self.proc.returncode is not None:
            return f"exited ({self.proc.returncode})"
        if self.status is None:
            return "starting"
        return "leaving" if self.status.get("leaving") else "running"

    @property
    def alive_seen(self) -> int | None:
        return None if self.status is None else int(self.status.get("members_alive", 0))


def daemon_command(spec: ClusterSpec, cluster_name: str, k: int, directory: Path) -> list[str]:
    name = f"node{k}"
    port = spec.base_port + k - 1 if spec.base_port else 0
    cmd = [
        sys.executable, "-m", "ringd", "run",
        "--name", name,
        "--cluster-name", cluster_name,
        "--port", str(port),
        "--socket", str(directory / f"{name}.sock"),
        "--state-dir", str(directory / name),
    ]
    if spec.multicast_port is not None:
        cmd += ["--multicast-port", str(spec.multicast_port)]
    if spec.metrics_base_port:
        cmd += ["--metrics-port", str(spec.metrics_base_port + k - 1)]
    for item in spec.extra_settings:
        cmd += ["--set", item]
    return cmd


async def _start_node(spec: ClusterSpec, cluster_name: str, k: int, directory: Path) -> NodeProcess:
    name = f"node{k}"
    log_path = directory / f"{name}.log"
    with open(log_path, "wb") as log_file:
        proc = await trio.lowlevel.open_process(
            daemon_command(spec, cluster_name, k, directory),
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=log_file,
            start_new_session=True,
        )
    return NodeProcess(name, directory / f"{name}.sock", directory / name, log_path, proc)


async def _poll(node: NodeProcess) -> None:
    if node.proc.returncode is not None:
        node.status = None
        return
    try:
        with trio.move_on_after(STATUS_TIMEOUT_S):
            async with await ControlClient.connect(node.socket) as ctl:
                status = await ctl.request("status")
                members = await ctl.request("members")
            node.status, node.members = status, members.get("members", [])
    except ClientError:
        pass  # not up yet, or going away: keep the last known view


def _last_log_line(path: Path) -> str:
    try:
        lines = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return lines[-1] if lines else ""


def _write_cluster_json(path: Path, cluster_name: str, multicast: str | None, nodes: list[NodeProcess],
                        prometheus: PrometheusProcess | None = None) -> None:
    doc = {
        "cluster": cluster_name,
        "multicast": multicast,
        "prometheus": None if prometheus is None else {"url": prometheus.url, "pid": prometheus.proc.pid},
        "nodes": [
            {
                "name": n.name,
                "pid": n.proc.pid,
                "socket": str(n.socket),
                "gossip": (n.status or {}).get("address"),
                "metrics": (n.status or {}).get("metrics"),
                "log": str(n.log_path),
            }
            for n in nodes
        ],
    }
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(doc, indent=2) + "\n")
    os.replace(tmp, path)


def _ring(node: NodeProcess) -> tuple[str, str, int] | None:
    """(Totem state, ring id, ring size) from the node's last status, if it reported one."""
    totem = (node.status or {}).get("totem")
    if not isinstance(totem, dict):
        return None
    return str(totem.get("state", "")), str(totem.get("ring", "")), len(totem.get("members") or ())


def _one_ring(nodes: list[NodeProcess]) -> str | None:
    """The ring id when every node is Operational on the same ring of all of them."""
    rings = {_ring(node) for node in nodes}
    if len(rings) != 1:
        return None
    (ring,) = rings
    if ring is None or ring[0] != "operational" or ring[2] != len(nodes):
        return None
    return ring[1]


def _converged(nodes: list[NodeProcess]) -> bool:
    n = len(nodes)
    return all(node.state == "running" and node.alive_seen == n for node in nodes) and \
        _one_ring(nodes) is not None


def _ring_text(node: NodeProcess) -> str:
    ring = _ring(node)
    return "" if ring is None else f"{ring[1]} ({ring[2]} members, {ring[0]})"


def _table(nodes: list[NodeProcess], title: str) -> Table:
    table = Table(title=title, title_justify="left", header_style="bold")
    for column in ("node", "pid", "gossip", "state", "sees alive", "incarnation", "ring"):
        table.add_column(column)
    n = len(nodes)
    for node in nodes:
        st = node.status or {}
        seen = node.alive_seen
        colour = "green" if seen == n else "yellow"
        table.add_row(
            node.name, str(node.proc.pid), str(st.get("address", "")), node.state,
            "" if seen is None else f"[{colour}]{seen}/{n}[/]", str(st.get("incarnation", "")),
            _ring_text(node),
        )
    return table


class _View:
    """A live table on a terminal; one printed line per change otherwise."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self._live: Live | None = None
        self._last: dict[str, str] = {}
        self._last_converged: bool | None = None

    @contextmanager
    def active(self) -> Iterator[_View]:
        if self.console.is_terminal:
            with Live(console=self.console, refresh_per_second=4, transient=False) as live:
                self._live = live
                yield self
                self._live = None
        else:
            yield self

    def note(self, text: str) -> None:
        self.console.print(text, highlight=False, soft_wrap=True)

    def update(self, nodes: list[NodeProcess], header: str) -> None:
        converged = _converged(nodes)
        n = len(nodes)
        summary = (f"converged: all {n} nodes see {n} alive, one ring {_one_ring(nodes)} of {n}"
                   if converged else "converging...")
        if self._live is not None:
            self._live.update(_table(nodes, f"{header}\n{summary}"))
            return
        for node in nodes:
            seen = node.alive_seen
            line = f"{node.name}: {node.state}" + ("" if seen is None else f", sees {seen}/{n} alive")
            ring = _ring_text(node)
            if ring:
                line += f", ring {ring}"
            if self._last.get(node.name) != line:
                self._last[node.name] = line
                self.note(line)
        if converged != self._last_converged:
            if converged or self._last_converged is not None:
                self.note(summary if converged else "not converged any more")
            self._last_converged = converged


def free_port_run(count: int) -> int:
    """A loopback TCP port P such that P..P+count-1 are all free right now."""
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.bind((LOOPBACK, 0))
            base = probe.getsockname()[1]
        if base + count > 65536:
            continue
        probes: list[socket.socket] = []
        try:
            for port in range(base, base + count):
                sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                probes.append(sock)
                sock.bind((LOOPBACK, port))
            return base
        except OSError:
            continue
        finally:
            for sock in probes:
                sock.close()
    raise LauncherError(f"no {count} consecutive free TCP ports found on {LOOPBACK}")


def prometheus_config(cluster_name: str, targets: list[tuple[str, int]]) -> str:
    """``prometheus.yml`` scraping ``(node name, metrics port)`` targets on loopback.

    JSON is valid YAML, so no YAML library is needed. Every target carries a ``node``
    label; the dashboards themselves only rely on ``job`` and ``instance``.
    """
    interval = f"{PROMETHEUS_SCRAPE_INTERVAL_S}s"
    doc = {
        "global": {"scrape_interval": interval, "evaluation_interval": interval,
                   "scrape_timeout": interval},
        "scrape_configs": [{
            "job_name": PROMETHEUS_JOB,
            "static_configs": [
                {"targets": [f"{LOOPBACK}:{port}"], "labels": {"node": name, "cluster": cluster_name}}
                for name, port in targets
            ],
        }],
    }
    return "# Generated by `ringd cluster --prometheus`.\n" + json.dumps(doc, indent=2) + "\n"


@dataclass(slots=True)
class PrometheusProcess:
    """The Prometheus server of a dev cluster."""

    url: str
    log_path: Path
    proc: trio.Process

    async def wait_ready(self, timeout_s: float = PROMETHEUS_READY_TIMEOUT_S) -> None:
        """Poll ``/-/ready``; LauncherError if it exits or is not ready in time."""
        with trio.move_on_after(timeout_s):
            while True:
                if self.proc.returncode is not None:
                    raise LauncherError(f"prometheus exited with code {self.proc.returncode}: "
                                        f"{_last_log_line(self.log_path)} (log: {self.log_path})")
                if await trio.to_thread.run_sync(_http_ok, f"{self.url}/-/ready"):
                    return
                await trio.sleep(POLL_INTERVAL_S)
        raise LauncherError(f"prometheus did not become ready within {timeout_s:g} s (log: {self.log_path})")

    async def stop(self, console: Console) -> None:
        await _stop_processes([("prometheus", self.proc)], console)


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=STATUS_TIMEOUT_S) as reply:
            return bool(reply.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def find_prometheus() -> str:
    """The path of the ``prometheus`` binary, or LauncherError saying how to install it."""
    path = shutil.which(PROMETHEUS_BINARY)
    if path is None:
        raise LauncherError(f"`{PROMETHEUS_BINARY}` not found on PATH: install the Debian package "
                            f"`{PROMETHEUS_PACKAGE}` (sudo apt-get install {PROMETHEUS_PACKAGE})")
    return path


async def start_prometheus(binary: str, directory: Path, port: int) -> PrometheusProcess:
    """Start Prometheus on ``127.0.0.1:port`` with ``directory/prometheus.yml`` (already written)."""
    data = directory / "prometheus-data"
    log_path = directory / "prometheus.log"
    cmd = [
        binary,
        f"--config.file={directory / 'prometheus.yml'}",
        f"--web.listen-address={LOOPBACK}:{port}",
        f"--storage.tsdb.path={data}",
        "--storage.tsdb.retention.time=1d",
    ]
    with open(log_path, "wb") as log_file:
        proc = await trio.lowlevel.open_process(cmd, stdin=subprocess.DEVNULL, stdout=log_file,
                                                stderr=log_file, start_new_session=True)
    return PrometheusProcess(url=f"http://{LOOPBACK}:{port}", log_path=log_path, proc=proc)


async def _stop_all(nodes: list[NodeProcess], console: Console) -> None:
    """SIGTERM every daemon we started (by PID), wait, SIGKILL leftovers, reap all."""
    await _stop_processes([(n.name, n.proc) for n in nodes], console)


async def _stop_processes(procs: list[tuple[str, trio.Process]], console: Console) -> None:
    """SIGTERM each (named) process we started, wait, SIGKILL leftovers, reap all."""
    running = [(name, proc) for name, proc in procs if proc.returncode is None]
    for _name, proc in running:
        try:
            proc.terminate()
        except ProcessLookupError:
            pass
    with trio.move_on_after(STOP_WAIT_S):
        for _name, proc in running:
            await proc.wait()
    for name, proc in running:
        if proc.returncode is None:
            console.print(f"{name} (pid {proc.pid}) did not stop: killing it",
                          highlight=False, soft_wrap=True)
            try:
                proc.kill()
            except ProcessLookupError:
                pass
            await proc.wait()


async def _watch_signals(scope: trio.CancelScope, console: Console,
                         *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        task_status.started()
        async for signum in signals:
            console.print(f"{signal.Signals(signum).name}: stopping the cluster", highlight=False, soft_wrap=True)
            scope.cancel()
            return


async def _monitor(spec: ClusterSpec, nodes: list[NodeProcess], view: _View, header: str,
                   cluster_json: Path, cluster_name: str, prometheus: PrometheusProcess | None = None) -> int:
    started = trio.current_time()
    up_since: float | None = None
    while True:
        async with trio.open_nursery() as polls:
            for node in nodes:
                polls.start_soon(_poll, node)
        now = trio.current_time()
        if up_since is None:
            exited = [n for n in nodes if n.proc.returncode is not None]
            if exited:
                n = exited[0]
                view.note(f"ringd: error: {n.name} exited with code {n.proc.returncode} during startup: "
                          f"{_last_log_line(n.log_path)} (log: {n.log_path})")
                return 1
            if all(n.status is not None for n in nodes):
                multicast = nodes[0].status.get("multicast") if nodes[0].status else None
                _write_cluster_json(cluster_json, cluster_name, multicast, nodes, prometheus)
                view.note(f"all {len(nodes)} daemons up; wrote {cluster_json}")
                up_since = now
            elif now - started > STARTUP_TIMEOUT_S:
                late = ", ".join(n.name for n in nodes if n.status is None)
                view.note(f"ringd: error: {late} did not answer within {STARTUP_TIMEOUT_S:g} s")
                return 1
        view.update(nodes, header)
        if up_since is not None and spec.run_for_s is not None and now - up_since >= spec.run_for_s:
            view.note(f"--for {spec.run_for_s:g} s elapsed: stopping the cluster")
            return 0
        await trio.sleep(POLL_INTERVAL_S)


async def run_cluster(spec: ClusterSpec) -> int:
    """Run the cluster until a signal or ``run_for_s``; always stop every daemon started."""
    directory = spec.directory or Path(tempfile.mkdtemp(prefix="ringd-cluster-"))
    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise LauncherError(f"cannot create {directory}: {exc.strerror}") from None
    cluster_json = directory / "cluster.json"
    if cluster_json.exists():
        raise LauncherError(f"{cluster_json} exists: another `ringd cluster` may be using {directory}")
    cluster_name = spec.cluster_name or f"dev-{secrets.token_hex(3)}"
    prometheus_binary: str | None = None
    prometheus_port = 0
    if spec.prometheus:
        prometheus_binary = find_prometheus()  # before anything starts
        prometheus_port = spec.prometheus_port or free_port_run(1)
        if not spec.metrics_base_port:
            spec = replace(spec, metrics_base_port=free_port_run(spec.nodes))
        (directory / "prometheus.yml").write_text(prometheus_config(
            cluster_name, [(f"node{k}", spec.metrics_base_port + k - 1) for k in range(1, spec.nodes + 1)]))
    console = Console()
    view = _View(console)
    header = f"cluster {cluster_name}: {spec.nodes} daemons in {directory}"
    nodes: list[NodeProcess] = []
    prometheus: PrometheusProcess | None = None
    exit_code = 0
    console.print(f"{header} (logs: {directory}/nodeK.log)", highlight=False, soft_wrap=True)
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(_watch_signals, nursery.cancel_scope, console)
            # In name order (node1, node10, node11, ..., node2, ...): the ring takes the first
            # totem.ring_size_max names, so its members come up first and form it at once,
            # instead of each later name that sorts earlier reconfiguring it again.
            for k in sorted(range(1, spec.nodes + 1), key=lambda k: f"node{k}"):
                nodes.append(await _start_node(spec, cluster_name, k, directory))
            nodes.sort(key=lambda n: int(n.name.removeprefix("node")))
            if prometheus_binary is not None:
                prometheus = await start_prometheus(prometheus_binary, directory, prometheus_port)
                try:
                    await prometheus.wait_ready()
                    console.print(f"prometheus: {prometheus.url} (scraping {spec.nodes} daemons every "
                                  f"{PROMETHEUS_SCRAPE_INTERVAL_S} s; config {directory / 'prometheus.yml'}, "
                                  f"log {prometheus.log_path})", highlight=False, soft_wrap=True)
                except LauncherError as exc:
                    console.print(f"ringd: error: {exc}", highlight=False, soft_wrap=True)
                    exit_code = 1
            if exit_code == 0:
                with view.active():
                    exit_code = await _monitor(spec, nodes, view, header, cluster_json, cluster_name,
                                               prometheus)
            nursery.cancel_scope.cancel()
    finally:
        with trio.CancelScope(shield=True):
            if prometheus is not None:
                await prometheus.stop(console)
            await _stop_all(nodes, console)
        cluster_json.unlink(missing_ok=True)
        if nodes:
            codes = ", ".join(f"{n.name} {n.proc.returncode}" for n in nodes)
            console.print(f"stopped all daemons (exit codes: {codes}); logs in {directory}",
                          highlight=False, soft_wrap=True)
    return exit_code
