"""The Grafana dashboards against a real Prometheus scraping a real local cluster.

``ringd cluster --nodes 3 --prometheus`` starts three daemons and the ``prometheus`` binary
(Debian package ``prometheus``); every PromQL expression of every panel of every dashboard
in grafana/dashboards/ is evaluated through Prometheus's HTTP API, then one daemon is
killed with SIGKILL and the failover/convergence panels must show it.

Without the binary the Prometheus tests skip, unless RINGD_REQUIRE_PROMETHEUS=1 (CI).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from helpers import FAST_SETTINGS, RINGD, ProcessRegistry, one_line_error, pid_alive, wait_until

pytestmark = pytest.mark.integration

DASHBOARDS = Path(__file__).resolve().parents[2] / "grafana" / "dashboards"
NODES = 3
START_S = 40.0  # daemons and Prometheus up, cluster.json written (slow, loaded machine)
DATA_S = 20.0  # every expression has data (needs a few 1 s scrapes for rate windows)
SETTLE_S = 45.0  # the cluster settled before the kill (longer than the failover window below)
FAILOVER_S = 30.0  # the survivors see the death, reform the ring and Prometheus sees it
HTTP_TIMEOUT_S = 5.0
# What Grafana would put in for its built-in variables with a 1 s scrape interval. The
# rate window is wider than Grafana's minimum (4 scrapes) so that a failover stays visible
# in increase() for a while on a slow machine.
GRAFANA_VARIABLES = {"$__rate_interval": "20s", "$__range": "5m", "$__interval": "1s"}


def prometheus_binary() -> str:
    path = shutil.which("prometheus")
    if path is None:
        why = ("the `prometheus` binary is not on PATH: install the Debian package `prometheus` "
               "(sudo apt-get install prometheus)")
        if os.environ.get("RINGD_REQUIRE_PROMETHEUS") == "1":
            pytest.fail(f"{why}; RINGD_REQUIRE_PROMETHEUS=1 makes this a failure")
        pytest.skip(f"{why}; set RINGD_REQUIRE_PROMETHEUS=1 to fail instead of skipping")
    return path


@dataclass(frozen=True, slots=True)
class Expr:
    dashboard: str
    panel: str
    legend: str
    promql: str  # with Grafana's variables still in it

    def render(self, instance: str) -> str:
        text = self.promql.replace("$job", "ringd").replace("$instance", instance)
        for name, value in GRAFANA_VARIABLES.items():
            text = text.replace(name, value)
        assert "$" not in text, f"unknown variable left in {text}"
        return text

    def __str__(self) -> str:
        return f"{self.dashboard} / {self.panel} [{self.legend}]: {self.promql}"


def load_dashboards() -> list[dict[str, Any]]:
    docs = [json.loads(p.read_text()) for p in sorted(DASHBOARDS.glob("*.json"))]
    assert len(docs) >= 4, f"dashboards missing in {DASHBOARDS}"
    return docs


def single_instance(doc: dict[str, Any]) -> bool:
    var = next(v for v in doc["templating"]["list"] if v["name"] == "instance")
    return not var["multi"]


def dashboard_exprs() -> list[Expr]:
    out = []
    for doc in load_dashboards():
        for panel in doc["panels"]:
            for target in panel["targets"]:
                out.append(Expr(doc["uid"], panel["title"], target.get("legendFormat", ""), target["expr"]))
    return out


def find_expr(dashboard: str, panel: str, legend: str | None = None) -> Expr:
    found = [e for e in dashboard_exprs() if e.dashboard == dashboard and e.panel == panel
             and (legend is None or e.legend == legend)]
    assert len(found) == 1, f"{dashboard} / {panel} [{legend}]: {found}"
    return found[0]


class PromQLError(AssertionError):
    """Prometheus refused or failed an expression."""


@dataclass(frozen=True, slots=True)
class Prometheus:
    url: str

    def get(self, path: str, **params: str) -> Any:
        query = urllib.parse.urlencode(params)
        try:
            with urllib.request.urlopen(f"{self.url}{path}?{query}", timeout=HTTP_TIMEOUT_S) as reply:
                doc = json.load(reply)
        except urllib.error.HTTPError as exc:  # 400/422: a bad expression; the body says why
            doc = json.load(exc)
        if doc.get("status") != "success":
            raise PromQLError(f"{params}: {doc.get('errorType')}: {doc.get('error')}")
        return doc["data"]

    def query(self, promql: str) -> list[dict[str, Any]]:
        """The instant vector (or a scalar as one series) of ``promql`` now."""
        data = self.get("/api/v1/query", query=promql)
        if data["resultType"] == "scalar":
            return [{"metric": {}, "value": data["result"]}]
        return data["result"]

    def values(self, promql: str) -> list[float]:
        return [float(s["value"][1]) for s in self.query(promql)]

    def one(self, promql: str) -> float | None:
        found = self.values(promql)
        return found[0] if len(found) == 1 else None

    def targets_up(self) -> list[str]:
        return sorted(t["labels"]["instance"] for t in self.get("/api/v1/targets")["activeTargets"]
                      if t["health"] == "up")


@dataclass(slots=True)
class LocalStack:
    prometheus: Prometheus
    nodes: list[dict[str, Any]]  # cluster.json's node entries (name, pid, metrics, ...)
    instances: dict[str, str]  # node name -> Prometheus instance label


@pytest.fixture
def stack(daemons: ProcessRegistry) -> Iterator[LocalStack]:
    """``ringd cluster --nodes 3 --prometheus`` with fast gossip; stops it (and its
    Prometheus, by PID) even if the test fails."""
    prometheus_binary()
    directory = daemons.workdir / "c"
    cluster_json = directory / "cluster.json"
    settings = [arg for item in FAST_SETTINGS for arg in ("--set", item)]
    with open(daemons.workdir / "cluster.out", "wb") as out:
        launcher = daemons.popen_cli("cluster", "--nodes", str(NODES), "--dir", str(directory), "--prometheus",
                                     "--cluster-name", daemons.cluster_name,
                                     "--multicast-port", str(daemons.multicast_port), *settings,
                                     stdout=out, stderr=subprocess.STDOUT)
    prometheus_pid: int | None = None
    try:
        def written() -> dict[str, Any] | None:
            assert launcher.poll() is None, (f"ringd cluster exited with {launcher.returncode}:\n"
                                             f"{(daemons.workdir / 'cluster.out').read_text()}")
            return json.loads(cluster_json.read_text()) if cluster_json.exists() else None

        doc = wait_until(written, START_S, "cluster.json with the Prometheus URL")
        prometheus_pid = doc["prometheus"]["pid"]
        instances = {n["name"]: n["metrics"].removeprefix("http://").removesuffix("/metrics")
                     for n in doc["nodes"]}
        prometheus = Prometheus(doc["prometheus"]["url"])
        assert prometheus.url.startswith("http://127.0.0.1:")
        assert f"prometheus: {prometheus.url}" in (daemons.workdir / "cluster.out").read_text()
        wait_until(lambda: prometheus.targets_up() == sorted(instances.values()), START_S,
                   "Prometheus to scrape all three daemons")
        yield LocalStack(prometheus, doc["nodes"], instances)
    finally:
        if launcher.poll() is None:
            launcher.send_signal(signal.SIGTERM)  # the launcher stops Prometheus and the daemons
            try:
                launcher.wait(timeout=30)
            except subprocess.TimeoutExpired:
                launcher.kill()
        if prometheus_pid is not None and pid_alive(prometheus_pid) and str(directory).encode() in Path(
                f"/proc/{prometheus_pid}/cmdline").read_bytes():
            os.kill(prometheus_pid, signal.SIGKILL)  # the launcher died before stopping it


def test_every_dashboard_expression_has_data_and_failover_shows(stack: LocalStack) -> None:
    prom = stack.prometheus
    exprs = dashboard_exprs()
    assert len(exprs) > 50
    docs = {d["uid"]: d for d in load_dashboards()}
    first_instance = stack.instances["node1"]

    def rendered(e: Expr) -> str:
        return e.render(first_instance if single_instance(docs[e.dashboard]) else ".+")

    # Grafana's variable queries: label_values(selector, label) must find the job and the daemons.
    for doc in docs.values():
        for var in doc["templating"]["list"]:
            if var["type"] != "query":
                continue
            match = re.fullmatch(r"label_values\((.+), (\w+)\)", var["query"]["query"])
            assert match, var
            selector = match.group(1).replace("$job", "ringd")
            found = {s[match.group(2)] for s in prom.get("/api/v1/series", **{"match[]": selector})}
            expected = {"ringd"} if var["name"] == "job" else set(stack.instances.values())
            assert found == expected, (doc["uid"], var["name"], found)

    # Every expression must evaluate (an error fails at once) and, within DATA_S, return data.
    empty = {e: rendered(e) for e in exprs}
    deadline = time.monotonic() + DATA_S
    while empty and time.monotonic() < deadline:
        empty = {e: q for e, q in empty.items() if not prom.query(q)}
        if empty:
            time.sleep(0.5)  # poll
    assert not empty, "dashboard expressions that return no series:\n" + "\n".join(
        f"  {e}\n    as evaluated: {q}" for e, q in empty.items())

    overview = "ringd-overview"
    up = rendered(find_expr(overview, "Daemons up"))
    down = rendered(find_expr(overview, "Daemons down"))
    alive = rendered(find_expr(overview, "Members alive (worst view)"))
    views = rendered(find_expr(overview, "Distinct membership views"))
    rings = rendered(find_expr(overview, "Distinct rings"))
    operational = rendered(find_expr(overview, "Daemons operational"))
    ring_size = rendered(find_expr(overview, "Ring size and seq", "{{instance}} size"))
    dead = rendered(find_expr(overview, "Failovers", "members declared dead"))
    spread = rendered(find_expr(overview, "Convergence time", "membership view"))
    since = rendered(find_expr(overview, "Time since last change", "membership view"))
    targets = rendered(find_expr(overview, "Scrape targets up"))
    primaries = rendered(find_expr(overview, "Primary components"))
    quorate = rendered(find_expr(overview, "Daemons quorate"))

    def settled(n: int) -> bool:
        # 3 daemons, then 2 of them: one primary component of all live daemons throughout.
        return (prom.one(up) == n and prom.one(alive) == n and prom.one(views) == 1
                and prom.one(rings) == 1 and prom.one(operational) == n
                and prom.values(ring_size) == [n] * n
                and prom.one(primaries) == 1 and prom.one(quorate) == n)

    # A false suspicion on a loaded machine at startup may have declared a member dead: wait
    # until that has left the failover panel's window, so the kill is what it shows.
    wait_until(lambda: settled(NODES) and prom.one(down) == 0 and prom.one(dead) == 0, SETTLE_S,
               "3 up, 3 alive, one view, one ring of 3 and no recent failover (before the kill)")

    victim = next(n for n in stack.nodes if n["name"] == "node3")
    os.kill(victim["pid"], signal.SIGKILL)
    killed_at = time.time()

    wait_until(lambda: settled(NODES - 1), FAILOVER_S,
               "2 up, 2 alive, one view and one ring of 2 again (after kill -9 of node3)")
    assert prom.one(down) == 1
    by_instance = {s["metric"]["instance"]: float(s["value"][1]) for s in prom.query(targets)}
    assert by_instance == {**{i: 1.0 for i in stack.instances.values()}, stack.instances["node3"]: 0.0}
    wait_until(lambda: (prom.one(dead) or 0) >= 1, FAILOVER_S, "the failover panel to count a dead member")
    # Both survivors changed their view after the kill: the convergence time is the spread
    # between them, and the last change happened after the kill.
    elapsed = time.time() - killed_at
    convergence = prom.one(spread)
    assert convergence is not None and 0 <= convergence <= elapsed + 1.0, (convergence, elapsed)
    last_change = prom.one(since)
    assert last_change is not None and last_change <= elapsed + 1.0, (last_change, elapsed)


def test_cluster_prometheus_without_the_binary_is_a_one_line_error(daemons: ProcessRegistry) -> None:
    directory = daemons.workdir / "c"
    env = {**os.environ, "PATH": str(daemons.workdir / "empty-bin")}
    result = subprocess.run([*RINGD, "cluster", "--nodes", "1", "--dir", str(directory), "--prometheus"],
                            capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL, env=env)
    assert result.returncode != 0
    line = one_line_error(result.stderr)
    assert "prometheus" in line and "apt-get install prometheus" in line, line
    assert not (directory / "cluster.json").exists()


def test_generated_scrape_config_lists_every_daemon() -> None:
    from ringd.runtime.launcher import PROMETHEUS_SCRAPE_INTERVAL_S, prometheus_config

    doc = json.loads(prometheus_config("dev-x", [("node1", 9101), ("node2", 9102)]).split("\n", 1)[1])
    assert doc["global"]["scrape_interval"] == f"{PROMETHEUS_SCRAPE_INTERVAL_S}s"
    (job,) = doc["scrape_configs"]
    assert job["job_name"] == "ringd"
    assert [(c["targets"], c["labels"]["node"]) for c in job["static_configs"]] == [
        (["127.0.0.1:9101"], "node1"), (["127.0.0.1:9102"], "node2")]


def test_dashboard_files_match_their_generator() -> None:
    """grafana/dashboards/*.json are generated by grafana/build_dashboards.py: they must not drift."""
    import importlib.util
    import sys

    spec = importlib.util.spec_from_file_location("build_dashboards", DASHBOARDS.parent / "build_dashboards.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while it executes
    try:
        spec.loader.exec_module(module)
    finally:
        del sys.modules[spec.name]
    for dashboard in module.DASHBOARDS:
        on_disk = json.loads((DASHBOARDS / f"{dashboard.uid}.json").read_text())
        assert on_disk == module.render(dashboard), f"run python grafana/build_dashboards.py ({dashboard.uid})"
        for var in on_disk["templating"]["list"]:
            assert var["name"] in ("datasource", "job", "instance")
        for panel in on_disk["panels"]:
            assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
