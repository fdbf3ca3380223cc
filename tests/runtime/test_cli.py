"""The ``ringd`` command line: help, one-line errors, JSON contracts, ``ringd cluster``."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

import pytest
from typer.testing import CliRunner

from helpers import (
    FAST_SETTINGS,
    RINGD,
    ProcessRegistry,
    all_see,
    one_line_error,
    pid_alive,
    wait_until,
)
from ringd.cli import app
from ringd.config import env_var, knobs

CONVERGE_S = 25.0

RUN_FLAGS = [
    "--config", "--preset", "--name", "--cluster-name", "--bind", "--port", "--advertise",
    "--multicast-group", "--multicast-port", "--multicast-interface", "--multicast-ttl",
    "--no-multicast", "--seed", "--key-file", "--metrics-port", "--socket", "--state-dir",
    "--tag", "--log-level", "--set",
]


def test_run_help_documents_every_flag_and_every_config_key() -> None:
    result = CliRunner().invoke(app, ["run", "--help"], env={"COLUMNS": "400", "TERMINAL_WIDTH": "400"})
    assert result.exit_code == 0, result.output
    for flag in RUN_FLAGS:
        assert flag in result.output, flag
    for key in knobs():
        assert f"{key} = " in result.output, key
        assert env_var(key) in result.output, key
    assert "gossip.probe_interval_s = 0.4" in result.output  # the local preset's default


def _isolated(tmp: Path) -> list[str]:
    """Flags that keep a daemon that unexpectedly starts away from the default paths."""
    return ["--name", "cfgtest", "--port", "0", "--socket", str(tmp / "x.sock"),
            "--state-dir", str(tmp / "state"), "--cluster-name", "t-never-started"]


@pytest.mark.parametrize(
    ("args", "env", "needle"),
    [
        (["--set", "gossip.probe_timeout_s=-1"], {}, "gossip.probe_timeout_s: must be > 0"),
        (["--set", "gossip.no_such_knob=1"], {}, "gossip.no_such_knob: unknown key"),
        (["--port", "70000"], {}, "net.port: must be a port number"),
        ([], {"RINGD_NET_MULTICAST_TTL": "lots"}, "net.multicast_ttl: expected an integer"),
        (["--config", "BAD_TOML"], {}, "invalid TOML"),
        (["--key-file", "SHORT_KEY"], {}, "hex key has 2 bytes, need at least 16"),
        (["--key-file", "OPEN_KEY"], {}, "permissions 0644 are too open"),
        (["--set", "key_mode=rot13"], {}, "key_mode: must be one of encrypt, auth_only"),
        (["--tag", "novalue"], {}, "--tag expects KEY=VALUE"),
        (["--no-such-flag"], {}, "No such option: --no-such-flag"),
    ],
    ids=["negative-timeout", "unknown-key", "bad-port", "bad-env", "bad-toml", "short-key", "open-key",
         "bad-key-mode", "bad-tag",
         "unknown-flag"],
)
def test_bad_config_is_one_line_naming_the_problem(
        daemons: ProcessRegistry, short_tmp: Path, args: list[str], env: dict[str, str], needle: str) -> None:
    bad_toml = short_tmp / "bad.toml"
    bad_toml.write_text('name = "x"\n[gossip\nprobe_interval_s = 1\n')
    short_key = short_tmp / "short.key"
    short_key.write_text("abcd\n")
    short_key.chmod(0o600)
    open_key = short_tmp / "open.key"
    open_key.write_text("00" * 32 + "\n")
    open_key.chmod(0o644)
    files = {"BAD_TOML": bad_toml, "SHORT_KEY": short_key, "OPEN_KEY": open_key}
    args = [str(files[a]) if a in files else a for a in args]
    result = subprocess.run(
        [*RINGD, "run", *_isolated(short_tmp), *args],
        capture_output=True, text=True, timeout=30, env={**os.environ, **env}, stdin=subprocess.DEVNULL,
    )
    assert result.returncode != 0
    line = one_line_error(result.stderr)
    assert needle in line
    assert not (short_tmp / "x.sock").exists()


def test_port_in_use_and_busy_socket_are_one_line_errors(daemons: ProcessRegistry) -> None:
    first = daemons.daemon("node1").start()
    port = first.wait_ready()["bind"].rpartition(":")[2]

    same_port = daemons.daemon("node2", "--port", port).start()
    assert same_port.wait_exit() == 1
    assert "cannot open UDP sockets" in one_line_error(same_port.log())

    same_socket = daemons.daemon("node3", subdir="other")
    same_socket.socket = first.socket
    same_socket.start()
    assert same_socket.wait_exit() == 1
    assert "in use by a running daemon" in one_line_error(same_socket.log())
    assert first.running() and first.status()["name"] == "node1"


def test_members_and_status_json_contracts(daemons: ProcessRegistry) -> None:
    node1 = daemons.daemon("node1", "--tag", "role=web", "--tag", "zone=a").start()
    node2 = daemons.daemon("node2").start()
    nodes = [node1, node2]
    for node in nodes:
        node.wait_ready()
    wait_until(lambda: all_see(nodes, {"node1": "alive", "node2": "alive"}), CONVERGE_S, "convergence")

    result = daemons.run_cli("members", "--json", "--socket", str(node2.socket))
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)
    assert [r["name"] for r in rows] == ["node1", "node2"]
    for row in rows:
        assert set(row) == {"name", "state", "incarnation", "address", "tags"}
        assert row["state"] == "alive" and isinstance(row["incarnation"], int)
        host, _, port = row["address"].rpartition(":")
        assert host == "127.0.0.1" and int(port) > 0
    assert rows[0]["tags"] == {"role": "web", "zone": "a"}

    result = daemons.run_cli("status", "--json", "--socket", str(node1.socket))
    assert result.returncode == 0, result.stderr
    status = json.loads(result.stdout)
    assert status["name"] == "node1" and status["cluster"] == daemons.cluster_name
    assert status["members_alive"] == 2 and status["members_total"] == 2
    assert status["uptime_s"] > 0 and status["pid"] == node1.pid
    assert status["address"] == rows[0]["address"]
    assert isinstance(status["transport"]["dropped"], dict)
    assert status["transport"]["datagrams_in"] > 0
    assert isinstance(status["gossip"], dict) and isinstance(status["incarnation"], int)

    table = daemons.run_cli("members", "--socket", str(node1.socket))
    assert table.returncode == 0 and "node1" in table.stdout and "node2" in table.stdout
    plain = daemons.run_cli("status", "--socket", str(node1.socket))
    assert plain.returncode == 0 and "name: node1" in plain.stdout


@pytest.mark.parametrize("command", ["status", "members", "leave"])
def test_queries_without_a_daemon_are_one_line_errors(daemons: ProcessRegistry, short_tmp: Path,
                                                     command: str) -> None:
    result = daemons.run_cli(command, "--socket", str(short_tmp / "nobody.sock"))
    assert result.returncode == 1
    assert "no ringd daemon is running at" in one_line_error(result.stderr)


def _wait_cluster_json(path: Path, proc: subprocess.Popen[bytes], n: int) -> dict:
    def ready() -> dict | None:
        assert proc.poll() is None, f"ringd cluster exited early with {proc.returncode}"
        return json.loads(path.read_text()) if path.exists() else None

    doc = wait_until(ready, 40.0, "cluster.json")
    assert len(doc["nodes"]) == n
    for i, node in enumerate(doc["nodes"], start=1):
        assert set(node) >= {"name", "pid", "socket", "gossip", "metrics"}
        assert node["name"] == f"node{i}" and node["metrics"] is None
        host, _, port = node["gossip"].rpartition(":")
        assert host == "127.0.0.1" and int(port) > 0
        assert pid_alive(node["pid"])
    return doc


@pytest.mark.parametrize("stop", ["for", "sigterm"])
def test_cluster_command_starts_converges_and_cleans_up(daemons: ProcessRegistry, stop: str) -> None:
    from ringd import client

    directory = daemons.workdir / "c"
    n = 3 if stop == "for" else 2
    args = ["cluster", "--nodes", str(n), "--dir", str(directory),
            "--cluster-name", daemons.cluster_name, "--multicast-port", str(daemons.multicast_port)]
    args += [a for item in FAST_SETTINGS for a in ("--set", item)]
    if stop == "for":
        args += ["--for", "6"]
    out_path = daemons.workdir / "cluster.out"
    with open(out_path, "wb") as out:
        proc = daemons.popen_cli(*args, stdout=out, stderr=subprocess.STDOUT)
    cluster_json = directory / "cluster.json"
    doc = _wait_cluster_json(cluster_json, proc, n)

    def converged() -> bool:
        return all(client.status(node["socket"])["members_alive"] == n for node in doc["nodes"])

    wait_until(converged, CONVERGE_S, f"all {n} daemons to see {n} alive")
    line = f"converged: all {n} nodes see {n} alive, one ring "
    wait_until(lambda: line in out_path.read_text(), 10.0, "the launcher to report convergence")
    if stop == "sigterm":
        proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=40) == 0, out_path.read_text()
    assert not cluster_json.exists()
    for node in doc["nodes"]:
        wait_until(lambda pid=node["pid"]: not pid_alive(pid), 10.0, f"{node['name']} to be gone")
        assert not Path(node["socket"]).exists()
    logs = [directory / f"node{i}.log" for i in range(1, n + 1)]
    assert all(log.exists() and "listening on" in log.read_text() for log in logs)
