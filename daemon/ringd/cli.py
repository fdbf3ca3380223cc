"""The ``ringd`` command line (Typer). Parse arguments, build a Config, call the runtime.

Every error is one line on stderr (``ringd: error: ...``) and a non-zero exit code; no
tracebacks for operator mistakes.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from typer.core import TyperGroup

from ringd import client
from ringd.config import Config, ConfigError, env_var, knobs, load_config


def fail(message: str, code: int = 1) -> NoReturn:
    """Print one error line on stderr and exit."""
    print(f"ringd: error: {message}", file=sys.stderr, flush=True)
    raise typer.Exit(code)


class _OneLineErrorGroup(TyperGroup):
    """Usage errors (unknown option, bad value) as one line instead of a help panel."""

    def main(self, args: Any = None, prog_name: Any = None, complete_var: Any = None,
             standalone_mode: bool = True, **extra: Any) -> Any:
        try:
            rv = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except typer.TyperException as exc:  # usage errors (click's ClickException)
            if type(exc).__name__ == "NoArgsIsHelpError":
                sys.exit(exc.exit_code)  # the help text has been printed already
            ctx = getattr(exc, "ctx", None)
            where = f" (see `{ctx.command_path} --help`)" if ctx is not None else ""
            print(f"ringd: error: {exc.format_message()}{where}", file=sys.stderr, flush=True)
            rv = exc.exit_code
        except typer.Abort:
            print("ringd: aborted", file=sys.stderr, flush=True)
            rv = 130
        code = rv if isinstance(rv, int) else 0
        if not standalone_mode:
            return code
        sys.exit(code)


app = typer.Typer(
    cls=_OneLineErrorGroup,
    help="ringd: gossip membership (SWIM/Lifeguard) and Totem ordered delivery, one Trio daemon.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


# --- ringd run -----------------------------------------------------------------------------


def _knob_value(cfg: Config, key: str) -> Any:
    section, _, sub = key.partition(".")
    return getattr(getattr(cfg, section), sub) if sub else getattr(cfg, key)


def _show_default(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, tuple):
        return "[" + ", ".join(json.dumps(v if isinstance(v, str) else "=".join(v)) for v in value) + "]"
    return str(value)


def config_keys_epilog() -> str:
    """Every config key with its local-preset default, env var and help (for ``run --help``)."""
    defaults = Config.local()
    lines = [
        escape("Config keys (TOML: top-level keys, and [net], [gossip], [totem], [quorum] tables; flag: --set KEY=VALUE; "
        "precedence: preset < --config file < RINGD_* env < flags). KEY = local-preset default, env var: help:"),
        "",
    ]
    for key, f in knobs().items():
        default = _show_default(_knob_value(defaults, key))
        lines.append(escape(f"{key} = {default}, {env_var(key)}: {f.metadata.get('help', '')}"))
    return "\n".join(lines)


def _split_pair(flag: str, item: str) -> tuple[str, str]:
    key, sep, value = item.partition("=")
    if not sep or not key.strip():
        fail(f"{flag} expects KEY=VALUE, got {item!r}", 2)
    return key.strip(), value


@app.command(epilog=config_keys_epilog())
def run(
    config: Annotated[Path | None, typer.Option("--config", "-c", help="TOML config file.")] = None,
    preset: Annotated[str | None, typer.Option("--preset", help="Timing preset: local or lan (key preset).")] = None,
    name: Annotated[str | None, typer.Option("--name", help="Node name, unique in the cluster (key name).")] = None,
    cluster_name: Annotated[str | None, typer.Option("--cluster-name", help="Cluster name (key cluster_name).")] = None,
    bind: Annotated[str | None, typer.Option("--bind", help="Unicast bind address (key net.bind_host).")] = None,
    port: Annotated[int | None, typer.Option("--port", help="Unicast UDP port, 0 = any free (key net.port).")] = None,
    advertise: Annotated[str | None, typer.Option("--advertise", help="Address peers use to reach us (key net.advertise_host).")] = None,
    multicast_group: Annotated[str | None, typer.Option("--multicast-group", help="Multicast group (key net.multicast_group).")] = None,
    multicast_port: Annotated[int | None, typer.Option("--multicast-port", help="Multicast UDP port (key net.multicast_port).")] = None,
    multicast_interface: Annotated[str | None, typer.Option("--multicast-interface", help="Address of the interface joining the group (key net.multicast_interface).")] = None,
    multicast_ttl: Annotated[int | None, typer.Option("--multicast-ttl", help="Multicast TTL (key net.multicast_ttl).")] = None,
    no_multicast: Annotated[bool, typer.Option("--no-multicast", help="Disable multicast; use seeds only (key net.multicast_enabled=false).")] = False,
    seed: Annotated[list[str] | None, typer.Option("--seed", metavar="HOST:PORT", help="Peer to contact by unicast; repeatable (key net.seeds).")] = None,
    key_file: Annotated[Path | None, typer.Option("--key-file", help="Shared cluster key file; enables datagram authentication (key key_file).")] = None,
    metrics_port: Annotated[int | None, typer.Option("--metrics-port", help="Port of the /metrics HTTP server, 0 = disabled (key metrics_port).")] = None,
    socket: Annotated[Path | None, typer.Option("--socket", help="Control socket path (key socket).")] = None,
    state_dir: Annotated[Path | None, typer.Option("--state-dir", help="Directory for persistent state (key state_dir).")] = None,
    tag: Annotated[list[str] | None, typer.Option("--tag", metavar="KEY=VALUE", help="Member tag; repeatable (key tags).")] = None,
    log_level: Annotated[str | None, typer.Option("--log-level", help="debug, info, warning or error (key log_level).")] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", metavar="KEY=VALUE", help="Any config key (see below); repeatable. The dedicated flags above win over --set.")] = None,
) -> None:
    """Run a daemon in the foreground until SIGTERM/SIGINT (graceful leave) or `ringd leave`."""
    overrides: dict[str, Any] = {}
    for item in set_ or ():
        key, value = _split_pair("--set", item)
        overrides[key] = value
    flags: dict[str, Any] = {
        "preset": preset,
        "name": name,
        "cluster_name": cluster_name,
        "net.bind_host": bind,
        "net.port": port,
        "net.advertise_host": advertise,
        "net.multicast_group": multicast_group,
        "net.multicast_port": multicast_port,
        "net.multicast_interface": multicast_interface,
        "net.multicast_ttl": multicast_ttl,
        "net.multicast_enabled": False if no_multicast else None,
        "net.seeds": tuple(seed) if seed else None,
        "key_file": str(key_file) if key_file is not None else None,
        "metrics_port": metrics_port,
        "socket": str(socket) if socket is not None else None,
        "state_dir": str(state_dir) if state_dir is not None else None,
        "tags": tuple(_split_pair("--tag", t) for t in tag) if tag else None,
        "log_level": log_level,
    }
    overrides.update({k: v for k, v in flags.items() if v is not None})
    try:
        cfg = load_config(config, overrides=overrides)
    except ConfigError as exc:
        fail(str(exc))

    import trio  # imported here so `ringd members` etc. start faster

    from ringd.runtime.node import run_daemon

    code = trio.run(run_daemon, cfg)
    raise typer.Exit(code)


# --- queries -------------------------------------------------------------------------------

SOCKET_HELP = "Control socket of the daemon (default: the default daemon's socket)."


def _call(fn: Any, *args: Any) -> Any:
    try:
        return fn(*args)
    except client.ClientError as exc:
        fail(str(exc))


@app.command()
def members(
    as_json: Annotated[bool, typer.Option("--json", help='JSON list of {"name", "state", "incarnation", "address", "tags"}.')] = False,
    socket: Annotated[Path | None, typer.Option("--socket", help=SOCKET_HELP)] = None,
) -> None:
    """Show the membership as this daemon sees it."""
    rows = _call(client.members, socket)
    if as_json:
        print(json.dumps(rows))
        return
    table = Table(box=None, header_style="bold")
    for column in ("name", "state", "incarnation", "address", "tags"):
        table.add_column(column)
    colours = {"alive": "green", "suspect": "yellow", "dead": "red", "left": "dim"}
    for row in rows:
        state = row["state"]
        tags = ",".join(f"{k}={v}" for k, v in sorted(row.get("tags", {}).items()))
        table.add_row(escape(row["name"]), f"[{colours.get(state, 'white')}]{state}[/]",
                      str(row["incarnation"]), row["address"], escape(tags))
    Console().print(table)


@app.command()
def status(
    as_json: Annotated[bool, typer.Option("--json", help="The whole status object as JSON.")] = False,
    socket: Annotated[Path | None, typer.Option("--socket", help=SOCKET_HELP)] = None,
) -> None:
    """Show this daemon's status: identity, membership counts, uptime, counters."""
    info = _call(client.status, socket)
    if as_json:
        print(json.dumps(info))
        return
    for key in ("name", "cluster", "address", "incarnation", "members_alive", "members_total",
                "health_score", "uptime_s", "pid", "version", "socket", "multicast", "metrics"):
        print(f"{key}: {info.get(key)}")
    transport = info.get("transport") or {}
    dropped = transport.get("dropped") or {}
    print(f"datagrams: in {transport.get('datagrams_in')} out {transport.get('datagrams_out')}"
          f" dropped {sum(dropped.values())} {json.dumps(dropped) if dropped else ''}".rstrip())
    totem = info.get("totem")
    if totem:
        held = ",".join(totem.get("held_out") or []) or "-"
        print(f"totem: {totem.get('state')} ring {totem.get('ring')} members "
              f"{','.join(totem.get('members') or []) or '-'} held out {held}")
    quorum = info.get("quorum")
    if quorum:
        print(f"quorum: {_quorum_line(quorum)}")
    groups = info.get("groups")
    if groups:
        print(f"groups: {len(groups.get('groups') or {})} subscribers {groups.get('subscribers')}")


def _quorum_line(q: dict[str, Any]) -> str:
    state = "quorate" if q.get("quorate") else "not quorate"
    where = f" in {q.get('kind')} {q.get('ring')}" if q.get("ring") else ""
    return (f"{state}: {q.get('votes')} of {q.get('expected_votes')} expected votes, quorum "
            f"{q.get('quorum')}{where}")


quorum_app = typer.Typer(help="Show this daemon's quorum, or override the expected votes.",
                         add_completion=False)
app.add_typer(quorum_app, name="quorum")


@quorum_app.callback(invoke_without_command=True)
def quorum(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help='{"quorate", "votes", "expected_votes", "quorum", ...}.')] = False,
    socket: Annotated[Path | None, typer.Option("--socket", help=SOCKET_HELP)] = None,
) -> None:
    """Show whether this daemon is in a primary component (quorate), with votes present,
    expected votes and the quorum."""
    if ctx.invoked_subcommand is not None:
        ctx.obj = socket
        return
    info = _call(client.quorum, socket)
    if as_json:
        print(json.dumps(info))
        return
    print(_quorum_line(info))
    options = [k for k in ("wait_for_all", "last_man_standing", "two_node") if info.get(k)]
    print(f"this daemon: {info.get('my_votes')} vote(s), expected votes {info.get('my_expected_votes')}"
          f"{', waiting for all' if info.get('waiting') else ''}"
          f"{', options ' + ','.join(options) if options else ''}")


@quorum_app.command("expected")
def quorum_expected(
    ctx: typer.Context,
    votes: Annotated[int, typer.Argument(min=1, max=100000, help="The new expected votes.")],
    socket: Annotated[Path | None, typer.Option("--socket", help=SOCKET_HELP)] = None,
) -> None:
    """Operator override: every member of this daemon's configuration sets its expected votes
    to VOTES (ordered through the ring and logged on every daemon). Lowering it can make a
    minority primary: only do it when the other side is known to be down."""
    path = socket if socket is not None else ctx.obj
    _call(client.set_expected_votes, path, votes)
    print(f"expected votes set to {votes} (ordered through the ring; see `ringd quorum`)")


@app.command()
def leave(socket: Annotated[Path | None, typer.Option("--socket", help=SOCKET_HELP)] = None) -> None:
    """Leave the cluster gracefully (announced, not detected); the daemon exits."""
    name = _call(client.leave, socket)
    print(f"{name or 'daemon'} left the cluster")


@app.command()
def tags(
    pairs: Annotated[list[str], typer.Argument(metavar="KEY=VALUE...", help="The new tags (they replace the old ones).")],
    socket: Annotated[Path | None, typer.Option("--socket", help=SOCKET_HELP)] = None,
) -> None:
    """Replace this daemon's tags; gossip disseminates them to every member."""
    new = dict(_split_pair("tag", p) for p in pairs)
    _call(client.set_tags, socket, new)
    print("tags set: " + ",".join(f"{k}={v}" for k, v in sorted(new.items())))


@app.command()
def event(
    name: Annotated[str, typer.Argument(help="Event name.")],
    payload: Annotated[str, typer.Argument(help="Payload text (name + payload <= 512 bytes).")] = "",
    socket: Annotated[Path | None, typer.Option("--socket", help=SOCKET_HELP)] = None,
) -> None:
    """Send a small user event to every member by gossip (best effort, unordered, like `serf event`)."""
    _call(client.send_event, socket, name, payload.encode())


@app.command()
def events(
    as_json: Annotated[bool, typer.Option("--json", help="JSON list of {origin, ltime, name, data}.")] = False,
    socket: Annotated[Path | None, typer.Option("--socket", help=SOCKET_HELP)] = None,
) -> None:
    """Show the user events this daemon received recently."""
    rows = [
        {"origin": e["origin"], "ltime": e["ltime"], "name": e["name"],
         "data": e["payload"].decode("utf-8", "replace")}
        for e in _call(client.events, socket)
    ]
    if as_json:
        print(json.dumps(rows))
        return
    for r in rows:
        print(f"{r['origin']}#{r['ltime']} {r['name']} {r['data']}")


# --- ordered delivery: ringd send / ringd subscribe ----------------------------------------

# `ringd send` submits stdin lines in calls of at most this many lines / bytes (fewer
# Python objects per line; the client coalesces the calls into requests).
SEND_BATCH_LINES_MAX = 512
SEND_BATCH_BYTES_MAX = 256 << 10
STDIN_READ_BYTES = 1 << 16


def _first_client_error(group: BaseExceptionGroup[Any]) -> client.ClientError | None:
    for exc in group.exceptions:
        if isinstance(exc, client.ClientError):
            return exc
        if isinstance(exc, BaseExceptionGroup):
            inner = _first_client_error(exc)
            if inner is not None:
                return inner
    return None


def _run_client(fn: Any, *args: Any) -> Any:
    """``trio.run(fn, *args)`` with client errors as one line (also from inside nurseries)."""
    import trio

    try:
        return trio.run(fn, *args)
    except client.ClientError as exc:
        fail(str(exc))
    except BaseExceptionGroup as group:
        error = _first_client_error(group)
        if error is None:
            raise
        fail(str(error))


async def _stdin_batches() -> Any:
    """Lines of stdin (without the newline) in batches for one send request each."""
    import trio

    stdin = trio.wrap_file(sys.stdin.buffer)
    batch: list[bytes] = []
    size = 0
    rest = b""
    while True:
        chunk = await stdin.read1(STDIN_READ_BYTES)
        lines = (rest + chunk).split(b"\n")
        rest = lines.pop() if chunk else b""
        if not chunk and lines == [b""]:
            lines = []  # input ended with a newline: no empty last message
        for line in lines:
            batch.append(line)
            size += len(line)
            if len(batch) >= SEND_BATCH_LINES_MAX or size >= SEND_BATCH_BYTES_MAX:
                yield batch
                batch, size = [], 0
        if not chunk:
            break
    if batch:
        yield batch


async def _send_main(path: Path | None, group: str, message: str | None, safe: bool) -> int:
    async with client.open_client(path) as ring:
        if message is not None:
            return await ring.send(group, message, safe=safe)
        # Each batch of lines is submitted without waiting for its reply; the client
        # coalesces them into few requests and flush() waits until all are answered.
        async for batch in _stdin_batches():
            await ring.submit(group, batch, safe=safe)
        return await ring.flush()


@app.command()
def send(
    group: Annotated[str, typer.Argument(help="Group to send to (we need not be a member).")],
    message: Annotated[str | None, typer.Argument(help="The message; without it every stdin line is one message.")] = None,
    safe: Annotated[bool, typer.Option("--safe", help="Return once every ring member has the messages (safe delivery), not once they are queued (agreed).")] = False,
    socket: Annotated[Path | None, typer.Option("--socket", help=SOCKET_HELP)] = None,
) -> None:
    """Send messages to a group in total order; exits 0 once the daemon accepted them all."""
    _run_client(_send_main, socket, group, message, safe)


async def _subscribe_main(path: Path | None, group: str) -> bool:
    """Print the group's events until a signal (True) or until stdout's reader left (False)."""
    import signal

    import trio

    async with client.open_client(path) as ring, trio.open_nursery() as nursery:

        async def stop_on_signal(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
            with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                task_status.started()
                async for _ in signals:
                    nursery.cancel_scope.cancel()

        # Started before the join: a join answered at once would print the first events
        # without ever letting a start_soon task install the handler.
        await nursery.start(stop_on_signal)
        await ring.join(group)
        async for batch in ring.batches():
            lines = [json.dumps(client.event_json(e)) + "\n" for e in client.expand(batch)]
            try:
                sys.stdout.write("".join(lines))
                sys.stdout.flush()  # one flush per delivered batch
            except BrokenPipeError:
                nursery.cancel_scope.cancel()
                return False
    return True


@app.command()
def subscribe(
    group: Annotated[str, typer.Argument(help="Group to join.")],
    socket: Annotated[Path | None, typer.Option("--socket", help=SOCKET_HELP)] = None,
) -> None:
    """Join a group and print its events as JSON lines: {"type": "message"|"config"|"group", ...}.
    Stops cleanly on Ctrl-C/SIGTERM; fails if the daemon goes away or drops us."""
    import os

    try:
        stdout_open = _run_client(_subscribe_main, socket, group)
    except KeyboardInterrupt:  # Ctrl-C before our signal handler was installed
        return
    if not stdout_open:
        # The reader of our output went away (e.g. `| head`): a normal end. Point stdout at
        # /dev/null so the interpreter's final flush does not complain.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


# --- ringd cluster -------------------------------------------------------------------------


@app.command()
def cluster(
    nodes: Annotated[int, typer.Option("--nodes", "-n", min=1, max=64, help="Number of daemons.")] = 3,
    directory: Annotated[Path | None, typer.Option("--dir", help="Directory for sockets, state, logs and cluster.json (default: a new temp dir).")] = None,
    base_port: Annotated[int, typer.Option("--base-port", min=0, max=65535, help="Node K gets unicast port BASE+K-1 (default 0: any free port).")] = 0,
    metrics_base_port: Annotated[int, typer.Option("--metrics-base-port", min=0, max=65535, help="Node K serves /metrics on port BASE+K-1 (default 0: no metrics).")] = 0,
    for_s: Annotated[float | None, typer.Option("--for", min=0.0, metavar="SECONDS", help="Stop everything SECONDS after all daemons are up (default: until Ctrl-C).")] = None,
    cluster_name: Annotated[str | None, typer.Option("--cluster-name", help="Cluster name (default: a fresh random one, so it never merges with other daemons).")] = None,
    multicast_port: Annotated[int | None, typer.Option("--multicast-port", help="Multicast port (default: the daemons' default; other clusters' datagrams are dropped by name).")] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", metavar="KEY=VALUE", help="Config key passed to every daemon; repeatable.")] = None,
    prometheus: Annotated[bool, typer.Option("--prometheus", help="Also run Prometheus (Debian package `prometheus`) on 127.0.0.1 scraping every daemon (DIR/prometheus.yml); prints its URL.")] = False,
) -> None:
    """Start N local daemons as separate processes, show the membership converge live,
    write DIR/cluster.json, and stop them all on Ctrl-C/SIGTERM (or after --for)."""
    import trio

    from ringd.runtime.launcher import ClusterSpec, LauncherError, run_cluster

    for item in set_ or ():
        _split_pair("--set", item)
    spec = ClusterSpec(
        nodes=nodes,
        directory=directory,
        base_port=base_port,
        metrics_base_port=metrics_base_port,
        run_for_s=for_s,
        cluster_name=cluster_name,
        multicast_port=multicast_port,
        extra_settings=tuple(set_ or ()),
        prometheus=prometheus,
    )
    try:
        code = trio.run(run_cluster, spec)
    except LauncherError as exc:
        fail(str(exc))
    raise typer.Exit(code)


# --- ringd simulate ------------------------------------------------------------------------
# The simulator is pure Python with no trio; its options live beside it in ringd.sim.command.
from ringd.sim.command import simulate  # noqa: E402

app.command("simulate", help="Run the Totem core in the seeded deterministic simulator and check EVS.")(
    simulate
)


# --- ringd watch ---------------------------------------------------------------------------


@app.command()
def watch(
    directory: Annotated[Path | None, typer.Option("--dir", help="A `ringd cluster --dir` directory: one row per daemon of DIR/cluster.json, and the members as the first reachable one sees them.")] = None,
    socket: Annotated[Path | None, typer.Option("--socket", help=SOCKET_HELP)] = None,
    interval: Annotated[float, typer.Option("--interval", min=0.1, metavar="SECONDS", help="Refresh interval.")] = 1.0,
    once: Annotated[bool, typer.Option("--once", help="Print one frame and exit (for scripts); rates since the previous frame then show n/a.")] = False,
) -> None:
    """Live view of members, the Totem ring and message rates of one daemon or a local
    cluster, refreshed in place until Ctrl-C/SIGTERM (exit code 0)."""
    from ringd.watch import WatchError, WatchSpec, run_watch

    if directory is not None and socket is not None:
        fail("use either --dir or --socket, not both", 2)
    try:
        code = run_watch(WatchSpec(directory=directory, socket=socket, interval_s=interval, once=once))
    except WatchError as exc:
        fail(str(exc))
    raise typer.Exit(code)


# --- ringd keys ----------------------------------------------------------------------------

keys_app = typer.Typer(
    cls=_OneLineErrorGroup, no_args_is_help=True, add_completion=False,
    help="Cluster keys: generate a key file, and list, install, switch and remove keys on every "
         "member through the running daemons (like `serf keys`).")
app.add_typer(keys_app, name="keys")

# A keys request waits for every ring member's answer (ringd.runtime.keys.KEY_OP_TIMEOUT_S).
KEYS_TIMEOUT_S = 15.0


def _keys_request(socket: Path | None, action: str, **fields: Any) -> dict[str, Any]:
    return _call(lambda: client.request(socket, "keys", action=action, timeout_s=KEYS_TIMEOUT_S,
                                        **fields))


def _not_applied(reply: dict[str, Any]) -> dict[str, str]:
    """Members that did not apply the op, with why."""
    out = {node: info["error"] for node, info in reply["members"].items() if info["error"]}
    out.update(reply["missing"])
    return out


def _keys_outcome(reply: dict[str, Any], what: str) -> None:
    """Exit non-zero naming the members that did not apply the change."""
    failed = _not_applied(reply)
    if failed:
        fail(f"{what}: not applied by {len(failed)} member(s): "
             + "; ".join(f"{node} ({why})" for node, why in sorted(failed.items())))
    print(f"{what}: applied by {len(reply['members'])} member(s): {', '.join(reply['members'])}")


@keys_app.command("generate")
def keys_generate(path: Annotated[Path, typer.Argument(help="New key file (refused if it exists).")]) -> None:
    """Write a new key (32 random bytes, hex) to PATH with mode 0600; print its key id."""
    from ringd.keyring import generate_key_file

    try:
        kid = generate_key_file(path)
    except FileExistsError:
        fail(f"{path} already exists (refusing to overwrite a key)")
    except OSError as exc:
        fail(f"cannot write {path}: {exc.strerror}")
    print(kid)


@keys_app.command("list")
def keys_list(
    as_json: Annotated[bool, typer.Option("--json", help='JSON {"members": {name: {"primary", "keys", "error"}}, "missing": {name: why}}.')] = False,
    socket: Annotated[Path | None, typer.Option("--socket", help=SOCKET_HELP)] = None,
) -> None:
    """Every member's installed keys and primary key (asked through the ring, and straight
    of gossip-only observers)."""
    reply = _keys_request(socket, "list")
    if as_json:
        print(json.dumps({"members": reply["members"], "missing": reply["missing"]}))
    else:
        table = Table(box=None, header_style="bold")
        for column in ("member", "primary", "keys"):
            table.add_column(column)
        for node, info in reply["members"].items():
            table.add_row(escape(node), info["primary"], ",".join(info["keys"]))
        for node, why in reply["missing"].items():
            table.add_row(escape(node), "?", f"[red]{escape(why)}[/]")
        Console().print(table)
    if reply["missing"]:
        fail("no answer from: " + ", ".join(f"{n} ({w})" for n, w in reply["missing"].items()))


@keys_app.command("install")
def keys_install(
    path: Annotated[Path, typer.Argument(help="Key file (mode 0600), e.g. from `ringd keys generate`.")],
    socket: Annotated[Path | None, typer.Option("--socket", help=SOCKET_HELP)] = None,
) -> None:
    """Install the key of PATH on every member (it stays secondary until `keys use`)."""
    from ringd.keyring import KeyFileError, key_id, load_key

    try:
        key = load_key(path)
    except KeyFileError as exc:
        fail(str(exc))
    reply = _keys_request(socket, "install", key=key)
    _keys_outcome(reply, f"install {key_id(key)}")


@keys_app.command("use")
def keys_use(
    kid: Annotated[str, typer.Argument(metavar="KEY_ID", help="Installed key to make primary.")],
    socket: Annotated[Path | None, typer.Option("--socket", help=SOCKET_HELP)] = None,
) -> None:
    """Make KEY_ID the primary key of every member, at one point of the ring's total order.

    Refused, changing nothing, unless every member already holds the key."""
    listing = _keys_request(socket, "list")
    lacking = sorted(node for node, info in listing["members"].items() if kid not in info["keys"])
    lacking += sorted(listing["missing"])
    if lacking:
        fail(f"use {kid}: refused, not installed on (or no answer from): {', '.join(lacking)} "
             "(run `ringd keys install` first); nothing changed")
    reply = _keys_request(socket, "use", key_id=kid)
    _keys_outcome(reply, f"use {kid}")


@keys_app.command("remove")
def keys_remove(
    kid: Annotated[str, typer.Argument(metavar="KEY_ID", help="Key to remove (not the primary one).")],
    socket: Annotated[Path | None, typer.Option("--socket", help=SOCKET_HELP)] = None,
) -> None:
    """Remove KEY_ID from every member's keyring; the primary key cannot be removed."""
    reply = _keys_request(socket, "remove", key_id=kid)
    _keys_outcome(reply, f"remove {kid}")
