"""``ringd watch``: a live terminal view of one daemon, or of a local ``ringd cluster``.

Rendering is pure: functions from the dicts the control socket returns (``status`` and
``members`` replies) to rich renderables, so tests render canned replies without a daemon.
Message rates come from two successive ``status`` replies of the same daemon process.
The loop (:func:`run_watch`) polls every interval, refreshes a :class:`rich.live.Live` in
place on a terminal (prints one frame per poll otherwise), and stops cleanly on
SIGINT/SIGTERM. Fields a daemon does not report yet (``totem`` before Issue 4) show "n/a".
"""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from ringd.client import ClientError, ControlClient, DaemonNotRunning, resolve_socket

NA = "n/a"
# One poll of one daemon (status + members on one connection) must finish within this;
# a stopped (SIGSTOP) or overloaded daemon then shows as unreachable instead of freezing the view.
POLL_TIMEOUT_S = 2.0
# Width used when stdout is not a terminal (pipes, files, tests): rich would default to 80
# columns and elide long addresses and ring member lists.
PIPE_WIDTH_COLUMNS = 160
MEMBER_STATE_STYLES = {"alive": "green", "suspect": "yellow", "dead": "red", "left": "dim"}
RING_STATE_STYLES = {"operational": "green", "gather": "yellow", "commit": "yellow", "recovery": "yellow"}


class WatchError(Exception):
    """``ringd watch`` cannot start (bad directory, unreadable cluster.json); one line."""


# --- what is polled ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Target:
    """One daemon to poll: a display name and its control socket."""

    name: str
    socket: Path


@dataclass(frozen=True, slots=True, kw_only=True)
class Sample:
    """One poll of one daemon: its status and members replies, or why there are none."""

    target: Target
    taken_at_s: float  # local monotonic clock, a fallback when the status has no uptime
    status: Mapping[str, Any] | None = None
    members: Sequence[Mapping[str, Any]] | None = None
    error: str | None = None

    @property
    def reachable(self) -> bool:
        return self.status is not None


def load_cluster(directory: Path) -> tuple[str, list[Target]]:
    """The cluster name and daemons of ``DIR/cluster.json`` (written by ``ringd cluster --dir``)."""
    if not directory.is_dir():
        raise WatchError(f"{directory} is not a directory")
    path = directory / "cluster.json"
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        raise WatchError(f"no cluster.json in {directory}; start a cluster with "
                         f"`ringd cluster --dir {directory}`") from None
    except OSError as exc:
        raise WatchError(f"cannot read {path}: {exc.strerror}") from None
    except ValueError as exc:
        raise WatchError(f"{path} is not valid JSON: {exc}") from None
    nodes = doc.get("nodes") if isinstance(doc, dict) else None
    if not isinstance(nodes, list) or not nodes:
        raise WatchError(f"{path} has no \"nodes\" list")
    targets = []
    for node in nodes:
        if not (isinstance(node, dict) and isinstance(node.get("name"), str)
                and isinstance(node.get("socket"), str)):
            raise WatchError(f"{path}: every node needs a string \"name\" and \"socket\"")
        targets.append(Target(node["name"], Path(node["socket"])))
    cluster = doc.get("cluster")
    return (cluster if isinstance(cluster, str) else NA), targets


# --- rates ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RateSpec:
    """A rate shown in the view: the sum of counters at ``paths`` in the status reply.
    A path ending at a map sums its values (e.g. gossip ``msgs_sent`` per message type)."""

    key: str
    label: str
    paths: tuple[tuple[str, ...], ...]


RATES: tuple[RateSpec, ...] = (
    RateSpec("deliveries", "totem deliveries (agreed + safe)",
             (("totem", "stats", "deliveries_agreed"), ("totem", "stats", "deliveries_safe"))),
    RateSpec("app_sent", "totem app messages sent", (("totem", "stats", "app_sent"),)),
    RateSpec("tokens", "totem tokens received", (("totem", "stats", "token_rx"),)),
    RateSpec("gossip_out", "gossip messages sent", (("gossip", "msgs_sent"),)),
    RateSpec("gossip_in", "gossip messages received", (("gossip", "msgs_received"),)),
    RateSpec("datagrams_in", "datagrams in", (("transport", "datagrams_in"),)),
    RateSpec("datagrams_out", "datagrams out", (("transport", "datagrams_out"),)),
    RateSpec("bytes_in", "bytes in", (("transport", "bytes_in"),)),
    RateSpec("bytes_out", "bytes out", (("transport", "bytes_out"),)),
)
Rates = dict[str, float | None]


def _read_number(status: Mapping[str, Any], path: tuple[str, ...]) -> float | None:
    node: Any = status
    for key in path:
        if not isinstance(node, Mapping) or key not in node:
            return None
        node = node[key]
    if isinstance(node, Mapping):
        values = [v for v in node.values() if isinstance(v, (int, float)) and not isinstance(v, bool)]
        return float(sum(values))
    if isinstance(node, (int, float)) and not isinstance(node, bool):
        return float(node)
    return None


def counters(status: Mapping[str, Any]) -> Rates:
    """The current value of every :data:`RATES` counter (None when the daemon lacks it)."""
    out: Rates = {}
    for spec in RATES:
        values = [v for v in (_read_number(status, p) for p in spec.paths) if v is not None]
        out[spec.key] = sum(values) if values else None
    return out


def _same_process(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    return a.get("pid") == b.get("pid") and a.get("started_at") == b.get("started_at")


def elapsed_s(previous: Sample, current: Sample) -> float | None:
    """Seconds between two samples of the same daemon process, None if it restarted.
    The daemon's own ``uptime_s`` is preferred: our poll latency does not distort it."""
    if previous.status is None or current.status is None:
        return None
    if not _same_process(previous.status, current.status):
        return None
    up0, up1 = previous.status.get("uptime_s"), current.status.get("uptime_s")
    if isinstance(up0, (int, float)) and isinstance(up1, (int, float)):
        dt = float(up1) - float(up0)
    else:
        dt = current.taken_at_s - previous.taken_at_s
    return dt if dt > 0 else None


def rates(previous: Sample | None, current: Sample) -> Rates:
    """Per-second rates between two samples; None where unknown (first sample, daemon down
    or restarted, counter missing or gone backwards)."""
    unknown: Rates = {spec.key: None for spec in RATES}
    if previous is None or current.status is None or previous.status is None:
        return unknown
    dt = elapsed_s(previous, current)
    if dt is None:
        return unknown
    before, after = counters(previous.status), counters(current.status)
    out: Rates = {}
    for key in unknown:
        a, b = before[key], after[key]
        out[key] = (b - a) / dt if a is not None and b is not None and b >= a else None
    return out


def averages(status: Mapping[str, Any] | None) -> Rates:
    """Per-second rates averaged over the daemon's uptime (known from a single sample)."""
    uptime = status.get("uptime_s") if status is not None else None
    if status is None or not isinstance(uptime, (int, float)) or uptime <= 0:
        return {spec.key: None for spec in RATES}
    return {k: (v / uptime if v is not None else None) for k, v in counters(status).items()}


@dataclass(slots=True)
class RateTracker:
    """Remembers the last reachable sample per daemon to turn the next one into rates."""

    _previous: dict[str, Sample] = field(default_factory=dict)

    def update(self, sample: Sample) -> Rates:
        out = rates(self._previous.get(sample.target.name), sample)
        if sample.reachable:
            self._previous[sample.target.name] = sample
        return out


# --- pure rendering ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RingView:
    """The ``totem`` part of a status reply as display strings ("n/a" when absent)."""

    state: str
    ring: str
    members: tuple[str, ...] | None
    held_out: tuple[str, ...] | None


def _ring_id_text(ring: Any) -> str:
    if isinstance(ring, Mapping) and "seq" in ring and "rep" in ring:
        return f"{ring['seq']}.{ring['rep']}"  # a RingId sent as a map
    return NA if ring is None else str(ring)


def _names(value: Any) -> tuple[str, ...] | None:
    if isinstance(value, (list, tuple)):
        return tuple(str(v) for v in value)
    return None


def ring_view(status: Mapping[str, Any] | None) -> RingView:
    """Ring state, ring id, members and held-out nodes from ``status["totem"]``."""
    totem = status.get("totem") if status is not None else None
    if not isinstance(totem, Mapping):
        return RingView(NA, NA, None, None)
    state = totem.get("state")
    return RingView(
        state=NA if state is None else str(state).lower(),
        ring=_ring_id_text(totem.get("ring")),
        members=_names(totem.get("members")),
        held_out=_names(totem.get("held_out")),
    )


def quorum_text(status: Mapping[str, Any] | None) -> Text:
    """"quorate" / "not quorate" with votes present, expected votes and the quorum, from
    ``status["quorum"]`` ("n/a" when the daemon does not report it)."""
    quorum = status.get("quorum") if status is not None else None
    if not isinstance(quorum, Mapping) or not isinstance(quorum.get("quorate"), bool):
        return Text(NA)
    quorate = quorum["quorate"]
    detail = (f" ({quorum.get('votes', NA)}/{quorum.get('expected_votes', NA)} votes, "
              f"quorum {quorum.get('quorum', NA)})")
    return Text(("quorate" if quorate else "not quorate") + detail,
                style="green" if quorate else "bold red")


def format_rate(value: float | None) -> str:
    """A rate per second for display: "n/a" when unknown."""
    if value is None:
        return NA
    return f"{value:.0f}" if value >= 100 else f"{value:.1f}"


def _styled(value: str, styles: Mapping[str, str]) -> Text:
    return Text(value, style=styles.get(value, ""))


def _names_text(names: tuple[str, ...] | None) -> str:
    if names is None:
        return NA
    return ", ".join(names) if names else "(none)"


def members_table(members: Sequence[Mapping[str, Any]], ring: RingView | None = None,
                  title: str | None = None) -> Table:
    """One row per member: name, state, incarnation, address, tags (and its ring role
    when the daemon reports a Totem ring)."""
    table = Table(title=title, title_justify="left", header_style="bold", box=None)
    columns = ["name", "state", "incarnation", "address", "tags"]
    show_ring = ring is not None and ring.members is not None
    if show_ring:
        columns.append("ring")
    for column in columns:
        table.add_column(column)
    for m in sorted(members, key=lambda m: str(m.get("name", ""))):
        name = str(m.get("name", "?"))
        tags = m.get("tags") or {}
        tag_text = ",".join(f"{k}={v}" for k, v in sorted(tags.items())) if isinstance(tags, Mapping) else ""
        row: list[str | Text] = [
            Text(name), _styled(str(m.get("state", "?")), MEMBER_STATE_STYLES),
            str(m.get("incarnation", "")), str(m.get("address", "")), Text(tag_text),
        ]
        if show_ring and ring is not None:
            if ring.held_out and name in ring.held_out:
                row.append(Text("held out", style="yellow"))
            elif ring.members and name in ring.members:
                row.append(Text("member", style="green"))
            else:
                row.append("")
        table.add_row(*row)
    return table


def ring_table(ring: RingView, quorum: Text | None = None) -> Table:
    """Ring state, ring id, ring members, held-out nodes (and the quorum) as a grid."""
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column()
    grid.add_row("ring state", _styled(ring.state, RING_STATE_STYLES))
    grid.add_row("ring id", ring.ring)
    grid.add_row("ring members", Text(_names_text(ring.members)))
    grid.add_row("held out", Text(_names_text(ring.held_out)))
    if quorum is not None:
        grid.add_row("quorum", quorum)
    return grid


def rates_table(now: Rates, average: Rates) -> Table:
    """Every :data:`RATES` entry: the rate since the previous poll and since daemon start."""
    table = Table(header_style="bold", box=None)
    table.add_column("messages")
    table.add_column("per s now", justify="right")
    table.add_column("per s avg", justify="right")
    for spec in RATES:
        table.add_row(spec.label, format_rate(now.get(spec.key)), format_rate(average.get(spec.key)))
    return table


def _identity_line(status: Mapping[str, Any]) -> Text:
    parts = [
        f"daemon {status.get('name', '?')} ({status.get('address', '?')})",
        f"cluster {status.get('cluster', NA)}",
        f"incarnation {status.get('incarnation', NA)}",
        f"alive {status.get('members_alive', NA)}/{status.get('members_total', NA)}",
        f"health {status.get('health_score', NA)}",
        f"up {_uptime_text(status.get('uptime_s'))}",
    ]
    if status.get("leaving"):
        parts.append("LEAVING")
    return Text("  ".join(parts), style="bold")


def _uptime_text(uptime: Any) -> str:
    if not isinstance(uptime, (int, float)):
        return NA
    seconds = int(uptime)
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


def _unreachable_text(sample: Sample) -> Text:
    return Text(f"{sample.target.name}: unreachable: {sample.error or 'no answer'}", style="red")


def render_daemon(sample: Sample, now: Rates) -> RenderableType:
    """The view of one daemon: identity, ring, members, message rates."""
    if sample.status is None:
        return _unreachable_text(sample)
    ring = ring_view(sample.status)
    return Group(
        _identity_line(sample.status),
        Text(""),
        ring_table(ring, quorum_text(sample.status)),
        Text(""),
        members_table(sample.members or [], ring),
        Text(""),
        rates_table(now, averages(sample.status)),
    )


def _daemon_state(sample: Sample) -> Text:
    if sample.status is None:
        return Text("unreachable", style="red")
    if sample.status.get("leaving"):
        return Text("leaving", style="yellow")
    return Text("up", style="green")


def cluster_table(samples: Sequence[Sample], now: Mapping[str, Rates]) -> Table:
    """One row per daemon of a local cluster: reachability, alive count, ring state and id."""
    table = Table(header_style="bold", box=None)
    for column in ("node", "daemon", "pid", "alive", "ring state", "ring id", "ring size", "quorum"):
        table.add_column(column)
    for column in ("deliveries/s", "datagrams in/s", "datagrams out/s"):
        table.add_column(column, justify="right")
    for sample in samples:
        st = sample.status
        rate = now.get(sample.target.name, {})
        if st is None:
            table.add_row(sample.target.name, _daemon_state(sample), *[""] * 9)
            continue
        ring = ring_view(st)
        table.add_row(
            sample.target.name, _daemon_state(sample), str(st.get("pid", NA)),
            f"{st.get('members_alive', NA)}/{st.get('members_total', NA)}",
            _styled(ring.state, RING_STATE_STYLES), ring.ring,
            NA if ring.members is None else str(len(ring.members)), quorum_text(st),
            format_rate(rate.get("deliveries")), format_rate(rate.get("datagrams_in")),
            format_rate(rate.get("datagrams_out")),
        )
    return table


def render_cluster(cluster: str, samples: Sequence[Sample], now: Mapping[str, Rates]) -> RenderableType:
    """The view of a local cluster: a row per daemon, then the members and ring as the first
    reachable daemon sees them."""
    parts: list[RenderableType] = [
        Text(f"cluster {cluster}: {len(samples)} daemons, "
             f"{sum(s.reachable for s in samples)} reachable", style="bold"),
        Text(""),
        cluster_table(samples, now),
    ]
    errors = [s for s in samples if not s.reachable]
    parts += [_unreachable_text(s) for s in errors]
    first = next((s for s in samples if s.reachable), None)
    if first is not None and first.status is not None:
        ring = ring_view(first.status)
        parts += [Text(""), members_table(first.members or [], ring,
                                          title=f"members as {escape(first.target.name)} sees them")]
    return Group(*parts)


def frame(title: str, body: RenderableType, interval_s: float | None) -> RenderableType:
    """A whole frame: a header line (time, refresh interval) above ``body``."""
    every = f", every {interval_s:g} s (Ctrl-C to quit)" if interval_s is not None else ""
    header = Text(f"ringd watch {title}  {time.strftime('%H:%M:%S')}{every}", style="dim")
    return Group(header, body)


# --- polling and the loop ------------------------------------------------------------------


async def poll(target: Target, timeout_s: float = POLL_TIMEOUT_S) -> Sample:
    """Ask one daemon for status and members; an unreachable daemon is a Sample with an error."""
    status: dict[str, Any] | None = None
    members: list[dict[str, Any]] | None = None
    error: str | None = None
    try:
        with trio.fail_after(timeout_s):
            async with await ControlClient.connect(target.socket) as ctl:
                status = await ctl.request("status")
                reply = await ctl.request("members")
        listed = reply.get("members")
        members = listed if isinstance(listed, list) else []
        status.pop("ok", None)
    except trio.TooSlowError:
        status, error = None, f"no answer within {timeout_s:g} s"
    except DaemonNotRunning:
        status, error = None, f"no daemon at {target.socket}"
    except ClientError as exc:
        status, error = None, str(exc)
    return Sample(target=target, taken_at_s=time.monotonic(), status=status,
                  members=members if status is not None else None, error=error)


@dataclass(frozen=True, slots=True, kw_only=True)
class WatchSpec:
    """What ``ringd watch`` shows: a cluster directory, or one socket (default daemon if None)."""

    directory: Path | None = None
    socket: Path | None = None
    interval_s: float = 1.0
    once: bool = False


class Watcher:
    """Polls the targets and turns each round into a frame (rates need the previous round)."""

    def __init__(self, spec: WatchSpec) -> None:
        self.spec = spec
        self.tracker = RateTracker()
        if spec.directory is not None:
            self.cluster: str | None
            self.cluster, self.targets = load_cluster(spec.directory)
        else:
            path = resolve_socket(spec.socket)
            self.cluster, self.targets = None, [Target(path.stem, path)]

    async def poll_all(self) -> list[Sample]:
        samples: list[Sample | None] = [None] * len(self.targets)

        async def one(i: int, target: Target) -> None:
            samples[i] = await poll(target, min(POLL_TIMEOUT_S, max(self.spec.interval_s, 0.5)))

        async with trio.open_nursery() as nursery:
            for i, target in enumerate(self.targets):
                nursery.start_soon(one, i, target)
        return [s for s in samples if s is not None]

    def render(self, samples: Sequence[Sample]) -> RenderableType:
        now = {s.target.name: self.tracker.update(s) for s in samples}
        interval = None if self.spec.once else self.spec.interval_s
        if self.cluster is not None:
            return frame(f"--dir {self.spec.directory}", render_cluster(self.cluster, samples, now), interval)
        sample = samples[0]
        return frame(str(sample.target.socket), render_daemon(sample, now[sample.target.name]), interval)

    async def next_frame(self) -> RenderableType:
        return self.render(await self.poll_all())


async def _cancel_on_signal(scope: trio.CancelScope,
                            *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        task_status.started()
        async for _ in signals:
            scope.cancel()
            return


async def watch_loop(watcher: Watcher, console: Console) -> None:
    """Refresh in place every interval until SIGINT/SIGTERM (one frame with ``once``)."""
    if watcher.spec.once:
        console.print(await watcher.next_frame())
        return
    async with trio.open_nursery() as nursery:
        await nursery.start(_cancel_on_signal, nursery.cancel_scope)
        if console.is_terminal:
            with Live(console=console, auto_refresh=False, transient=False) as live:
                while True:
                    next_at = trio.current_time() + watcher.spec.interval_s
                    live.update(await watcher.next_frame(), refresh=True)
                    await trio.sleep_until(next_at)
        else:
            # No cursor control on a pipe or file: append one frame per poll (a time series).
            while True:
                next_at = trio.current_time() + watcher.spec.interval_s
                console.print(await watcher.next_frame())
                console.print()
                console.file.flush()
                await trio.sleep_until(next_at)


def _interrupt(signum: int, stack: Any) -> None:
    raise KeyboardInterrupt


def run_watch(spec: WatchSpec, console: Console | None = None) -> int:
    """Run ``ringd watch``; returns the exit code (0 after Ctrl-C/SIGTERM).
    Raises :class:`WatchError` when the cluster directory cannot be used."""
    if spec.interval_s <= 0:
        raise WatchError("--interval must be positive")
    watcher = Watcher(spec)
    if console is None:
        console = Console()
        if not console.is_terminal:
            console.width = PIPE_WIDTH_COLUMNS
    # Until the Trio signal receiver is installed, a SIGTERM should end us as quietly as Ctrl-C.
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        trio.run(watch_loop, watcher, console)
    except KeyboardInterrupt:
        pass
    except BaseExceptionGroup as group:
        _, rest = group.split(KeyboardInterrupt)
        if rest is not None:
            raise
    finally:
        signal.signal(signal.SIGTERM, previous)
    return 0
