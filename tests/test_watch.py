"""``ringd watch``: pure rendering of canned status/members replies, rate computation, and
the command against real daemons (``--once`` and the live loop stopped by a signal)."""

from __future__ import annotations

import io
import json
import signal
import subprocess
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console, RenderableType

from helpers import ProcessRegistry, one_line_error, wait_until
from ringd.watch import (
    NA,
    RateTracker,
    Sample,
    Target,
    WatchError,
    averages,
    counters,
    load_cluster,
    rates,
    render_cluster,
    render_daemon,
    ring_view,
)

CONVERGE_S = 30.0
RING_STATES = {"operational", "gather", "commit", "recovery"}


def render(renderable: RenderableType) -> str:
    console = Console(file=io.StringIO(), width=200, color_system=None)
    console.print(renderable)
    return console.file.getvalue()  # type: ignore[attr-defined]


def status(name: str = "node1", *, uptime_s: float = 10.0, pid: int = 4242, totem: bool = True,
           delivered: int = 100, datagrams_in: int = 1000, gossip_sent: int = 50) -> dict[str, Any]:
    out: dict[str, Any] = {
        "name": name, "cluster": "c1", "address": "127.0.0.1:7946", "incarnation": 3,
        "members_alive": 2, "members_total": 3, "health_score": 0, "leaving": False,
        "uptime_s": uptime_s, "started_at": 1700000000.0, "pid": pid,
        "transport": {"datagrams_in": datagrams_in, "datagrams_out": 900, "bytes_in": 10,
                      "bytes_out": 20, "dropped": {}},
        "gossip": {"msgs_sent": {"ping": gossip_sent - 10, "ack": 10}, "msgs_received": {"ping": 5}},
    }
    if totem:
        out["totem"] = {
            "state": "operational", "ring": "7.node1", "members": ["node1", "node2"],
            "held_out": ["node3"],
            "stats": {"deliveries_agreed": delivered - 20, "deliveries_safe": 20, "app_sent": 40,
                      "token_rx": 500},
        }
        out["quorum"] = {"quorate": False, "votes": 2, "expected_votes": 5, "quorum": 3}
    return out


MEMBERS = [
    {"name": "node2", "state": "alive", "incarnation": 1, "address": "127.0.0.1:7002", "tags": {}},
    {"name": "node1", "state": "alive", "incarnation": 3, "address": "127.0.0.1:7946",
     "tags": {"role": "web", "zone": "a"}},
    {"name": "node3", "state": "suspect", "incarnation": 9, "address": "127.0.0.1:7003", "tags": {}},
]


def sample(st: dict[str, Any] | None, *, name: str = "node1", at_s: float = 0.0,
           error: str | None = None) -> Sample:
    return Sample(target=Target(name, Path(f"/tmp/{name}.sock")), taken_at_s=at_s, status=st,
                  members=MEMBERS if st is not None else None, error=error)


def row_of(text: str, first: str) -> list[str]:
    """The whitespace-separated cells of the rendered line starting with ``first``."""
    lines = [line.split() for line in text.splitlines() if line.split()[:1] == [first]]
    assert lines, f"no line starting with {first!r} in:\n{text}"
    return lines[0]


# --- pure rendering ------------------------------------------------------------------------


def test_daemon_view_shows_members_ring_and_rates() -> None:
    previous = sample(status(uptime_s=10.0, delivered=100, datagrams_in=1000))
    current = sample(status(uptime_s=12.0, delivered=160, datagrams_in=1400))
    text = render(render_daemon(current, rates(previous, current)))

    assert row_of(text, "node1") == ["node1", "alive", "3", "127.0.0.1:7946", "role=web,zone=a", "member"]
    assert row_of(text, "node2") == ["node2", "alive", "1", "127.0.0.1:7002", "member"]
    assert row_of(text, "node3") == ["node3", "suspect", "9", "127.0.0.1:7003", "held", "out"]
    names = [line.split()[0] for line in text.splitlines() if line.split()[:1] in (["node1"], ["node2"], ["node3"])]
    assert names == ["node1", "node2", "node3"]  # sorted by name
    assert "ring state    operational" in text
    assert "ring id       7.node1" in text
    assert "ring members  node1, node2" in text
    assert "held out      node3" in text
    assert "alive 2/3" in text and "cluster c1" in text
    # 60 deliveries and 400 datagrams in 2 s of daemon uptime; averages over 12 s of uptime.
    assert row_of(text, "totem")[-2:] == ["30.0", "13.3"]
    assert "datagrams in" in text and "200" in row_of(text, "datagrams")


def test_daemon_view_shows_quorate_or_not() -> None:
    st = status()
    text = render(render_daemon(sample(st), rates(None, sample(st))))
    assert row_of(text, "quorum") == ["quorum", "not", "quorate", "(2/5", "votes,", "quorum", "3)"]
    st["quorum"] = {"quorate": True, "votes": 3, "expected_votes": 5, "quorum": 3}
    text = render(render_daemon(sample(st), rates(None, sample(st))))
    assert row_of(text, "quorum")[:2] == ["quorum", "quorate"]
    assert f"quorum        {NA}" in render(render_daemon(sample(status(totem=False)),
                                                         rates(None, sample(status(totem=False)))))


def test_daemon_view_without_totem_says_na() -> None:
    st = status(totem=False)
    text = render(render_daemon(sample(st), rates(None, sample(st))))
    assert f"ring state    {NA}" in text and f"ring id       {NA}" in text
    assert f"ring members  {NA}" in text
    assert row_of(text, "node1")[-1] == "role=web,zone=a"  # no ring column
    deliveries = row_of(text, "totem")
    assert deliveries[-2:] == [NA, NA]
    assert row_of(text, "gossip")[-2:] == [NA, "5.0"]  # 50 sent over 10 s


def test_unreachable_daemon_is_one_line_not_a_crash() -> None:
    down = sample(None, error="no daemon at /tmp/node1.sock")
    text = render(render_daemon(down, rates(None, down)))
    assert text.strip() == "node1: unreachable: no daemon at /tmp/node1.sock"


def test_cluster_view_has_a_row_per_daemon_and_members_of_first_reachable() -> None:
    samples = [
        sample(None, name="node1", error="no daemon at /tmp/node1.sock"),
        sample(status("node2"), name="node2"),
        sample(status("node3", totem=False), name="node3"),
    ]
    text = render(render_cluster("c1", samples, {"node2": {"deliveries": 4.0}}))
    assert "cluster c1: 3 daemons, 2 reachable" in text
    assert row_of(text, "node1")[:2] == ["node1", "unreachable"]
    assert row_of(text, "node2") == ["node2", "up", "4242", "2/3", "operational", "7.node1", "2",
                                     "not", "quorate", "(2/5", "votes,", "quorum", "3)", "4.0", NA, NA]
    assert row_of(text, "node3") == ["node3", "up", "4242", "2/3", NA, NA, NA, NA, NA, NA, NA]
    assert "node1: unreachable: no daemon at /tmp/node1.sock" in text
    assert "members as node2 sees them" in text
    assert "suspect" in text and "role=web,zone=a" in text


def test_ring_view_accepts_a_ring_id_map_and_missing_fields() -> None:
    st = status()
    st["totem"] = {"state": "GATHER", "ring": {"seq": 4, "rep": "node2"}}
    view = ring_view(st)
    assert (view.state, view.ring, view.members, view.held_out) == ("gather", "4.node2", None, None)
    assert ring_view(None).ring == NA


# --- rates ---------------------------------------------------------------------------------


def test_counters_sum_paths_and_maps() -> None:
    c = counters(status(delivered=100, gossip_sent=50))
    assert c["deliveries"] == 100 and c["gossip_out"] == 50 and c["gossip_in"] == 5
    assert c["app_sent"] == 40 and c["datagrams_out"] == 900
    assert counters(status(totem=False))["deliveries"] is None


def test_rates_use_daemon_uptime_and_reset_on_restart_or_decrease() -> None:
    a = sample(status(uptime_s=10.0, delivered=100), at_s=100.0)
    b = sample(status(uptime_s=10.5, delivered=150), at_s=107.0)  # slow poll: uptime wins
    assert rates(a, b)["deliveries"] == pytest.approx(100.0)
    assert rates(None, b)["deliveries"] is None
    restarted = sample(status(uptime_s=1.0, delivered=5, pid=999), at_s=108.0)
    assert all(v is None for v in rates(b, restarted).values())
    backwards = sample(status(uptime_s=11.0, delivered=10), at_s=108.0)
    assert rates(b, backwards)["deliveries"] is None
    assert rates(b, backwards)["datagrams_in"] == pytest.approx(0.0)
    assert all(v is None for v in rates(b, sample(None, error="down")).values())


def test_rates_fall_back_to_local_clock_without_uptime() -> None:
    s0, s1 = status(delivered=10), status(delivered=30)
    del s0["uptime_s"], s1["uptime_s"]
    assert rates(sample(s0, at_s=5.0), sample(s1, at_s=7.0))["deliveries"] == pytest.approx(10.0)
    assert averages(s1)["deliveries"] is None


def test_rate_tracker_skips_unreachable_samples() -> None:
    tracker = RateTracker()
    assert tracker.update(sample(status(uptime_s=1.0, delivered=0)))["deliveries"] is None
    assert tracker.update(sample(None, error="down"))["deliveries"] is None
    later = tracker.update(sample(status(uptime_s=3.0, delivered=20)))
    assert later["deliveries"] == pytest.approx(10.0)


# --- cluster.json --------------------------------------------------------------------------


def test_load_cluster_errors_are_one_line(tmp_path: Path) -> None:
    with pytest.raises(WatchError, match="is not a directory"):
        load_cluster(tmp_path / "missing")
    with pytest.raises(WatchError, match="no cluster.json in"):
        load_cluster(tmp_path)
    (tmp_path / "cluster.json").write_text("{not json")
    with pytest.raises(WatchError, match="not valid JSON"):
        load_cluster(tmp_path)
    (tmp_path / "cluster.json").write_text(json.dumps({"cluster": "c", "nodes": [{"name": "n1"}]}))
    with pytest.raises(WatchError, match="socket"):
        load_cluster(tmp_path)
    doc = {"cluster": "c", "nodes": [{"name": "n1", "socket": "/tmp/n1.sock", "pid": 1}]}
    (tmp_path / "cluster.json").write_text(json.dumps(doc))
    assert load_cluster(tmp_path) == ("c", [Target("n1", Path("/tmp/n1.sock"))])


# --- the command against real daemons ------------------------------------------------------


def test_cli_errors_are_one_line(daemons: ProcessRegistry, short_tmp: Path) -> None:
    result = daemons.run_cli("watch", "--dir", str(short_tmp / "nope"), "--once")
    assert result.returncode == 1 and "is not a directory" in one_line_error(result.stderr)
    result = daemons.run_cli("watch", "--dir", str(short_tmp), "--once")
    assert result.returncode == 1 and "no cluster.json" in one_line_error(result.stderr)
    result = daemons.run_cli("watch", "--dir", str(short_tmp), "--socket", "x.sock")
    assert result.returncode == 2 and "either --dir or --socket" in one_line_error(result.stderr)


@pytest.mark.integration
def test_watch_real_daemons_once_and_live(daemons: ProcessRegistry) -> None:
    nodes = daemons.start_cluster(2, "--tag", "role=db")
    node1, node2 = nodes

    def converged() -> bool:
        return all(n.status()["members_alive"] == 2 for n in nodes)

    wait_until(converged, CONVERGE_S, "both daemons to see 2 alive")

    once = daemons.run_cli("watch", "--socket", str(node1.socket), "--once")
    assert once.returncode == 0, once.stderr
    assert row_of(once.stdout, "node1")[:2] == ["node1", "alive"]
    assert row_of(once.stdout, "node2")[:2] == ["node2", "alive"]
    assert "role=db" in once.stdout and "datagrams in" in once.stdout

    # A cluster directory as `ringd cluster --dir` writes it, with a third daemon that is down.
    directory = daemons.workdir / "c"
    directory.mkdir()
    doc = {"cluster": daemons.cluster_name, "multicast": None,
           "nodes": [{"name": n.name, "pid": n.pid, "socket": str(n.socket)} for n in nodes]
           + [{"name": "node3", "pid": 0, "socket": str(daemons.workdir / "node3.sock")}]}
    (directory / "cluster.json").write_text(json.dumps(doc))
    result = daemons.run_cli("watch", "--dir", str(directory), "--once")
    assert result.returncode == 0, result.stderr
    assert row_of(result.stdout, "node1")[:4] == ["node1", "up", str(node1.pid), "2/2"]
    assert row_of(result.stdout, "node2")[:4] == ["node2", "up", str(node2.pid), "2/2"]
    assert row_of(result.stdout, "node3")[:2] == ["node3", "unreachable"]
    if "totem" in node1.status():  # the daemon reports its Totem ring
        assert row_of(result.stdout, "node1")[4] in RING_STATES
    assert "members as node1 sees them" in result.stdout

    # The live loop (a frame per poll on a pipe) stops cleanly on SIGINT and on SIGTERM.
    for signum in (signal.SIGINT, signal.SIGTERM):
        _live_until_signal(daemons, directory, signum)


def _live_until_signal(daemons: ProcessRegistry, directory: Path, signum: signal.Signals) -> None:
    out_path = daemons.workdir / f"watch-{signum.name}.out"
    err_path = daemons.workdir / f"watch-{signum.name}.err"
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        proc = daemons.popen_cli("watch", "--dir", str(directory), "--interval", "0.2",
                                 stdout=out, stderr=err)

    def frames() -> int:
        assert proc.poll() is None, err_path.read_text()
        return out_path.read_text().count("members as node1 sees them")

    # Two frames: the second one has rates from successive replies.
    wait_until(lambda: frames() >= 2, 20.0, "two frames of the live view")
    proc.send_signal(signum)
    try:
        code = proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise
    assert code == 0, err_path.read_text()
    assert err_path.read_text().strip() == "", "no traceback, no error output"
    frame = out_path.read_text().rsplit("ringd watch --dir", 1)[1]
    assert row_of(frame, "node1")[:4] == ["node1", "up", str(daemons.daemons[0].pid), "2/2"]
    assert row_of(frame, "node2")[1] == "up"
    assert row_of(frame, "node1")[8] != NA, "datagrams in/s from two successive status replies"
