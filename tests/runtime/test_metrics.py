"""The ``/metrics`` endpoint of real daemon processes: scraped over HTTP on loopback and
parsed with prometheus_client's own parser."""

from __future__ import annotations

import json
import math
import signal
import socket
import subprocess
import urllib.error
import urllib.request
from random import Random

import pytest
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample
from stand_in import StandInDaemon

from helpers import DaemonProcess, ProcessRegistry, all_see, wait_until
from ringd.config import TotemConfig
from ringd.core.events import Tick
from ringd.core.histogram import Histogram
from ringd.core.totem import TotemCore
from ringd.runtime.metrics import (
    DROP_REASONS,
    GATHER_REASONS,
    DaemonCollector,
    MetricsStats,
    ring_fingerprint,
    view_fingerprint,
)

pytestmark = pytest.mark.integration

CONVERGE_S = 25.0
HTTP_TIMEOUT_S = 5.0


def free_tcp_port() -> int:
    """A loopback TCP port that is free right now (the kernel picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_with_metrics(daemons: ProcessRegistry, n: int) -> list[DaemonProcess]:
    nodes = [daemons.daemon(f"node{i}", "--metrics-port", str(free_tcp_port())).start()
             for i in range(1, n + 1)]
    for node in nodes:
        node.wait_ready()
    return nodes


def scrape(url: str) -> dict[str, list[Sample]]:
    """Family name → its samples, checked to be a valid text exposition."""
    with urllib.request.urlopen(url, timeout=HTTP_TIMEOUT_S) as reply:
        assert reply.status == 200
        assert reply.headers["Content-Type"] == CONTENT_TYPE_LATEST
        text = reply.read().decode()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    return families  # type: ignore[return-value]


def value(families: dict, name: str, **labels: str) -> float:  # type: ignore[type-arg]
    """The one sample named ``name`` (sample name, e.g. with ``_total``) with ``labels``."""
    found = [s.value for f in families.values() for s in f.samples
             if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())]
    assert len(found) == 1, f"{name}{labels}: {found}"
    return found[0]


def metrics_url(node: DaemonProcess) -> str:
    url = node.status()["metrics"]
    assert url is not None and url.startswith("http://127.0.0.1:") and url.endswith("/metrics")
    return url


def test_metrics_report_membership_and_converged_views(daemons: ProcessRegistry) -> None:
    nodes = start_with_metrics(daemons, 2)
    wait_until(lambda: all_see(nodes, {"node1": "alive", "node2": "alive"}), CONVERGE_S, "convergence")
    urls = [metrics_url(n) for n in nodes]

    def both_alive_and_agreeing() -> bool:
        scraped = [scrape(u) for u in urls]
        alive = [value(f, "ringd_gossip_members", state="alive") for f in scraped]
        prints = {value(f, "ringd_gossip_view_fingerprint") for f in scraped}
        return alive == [2, 2] and len(prints) == 1

    wait_until(both_alive_and_agreeing, CONVERGE_S, "alive=2 and equal fingerprints on both nodes")
    families = scrape(urls[0])
    assert value(families, "ringd_gossip_view_fingerprint") == view_fingerprint(
        [("node1", "ALIVE"), ("node2", "ALIVE")])
    for state in ("suspect", "dead", "left"):
        assert value(families, "ringd_gossip_members", state=state) == 0
    assert value(families, "ringd_build_info") == 1
    assert value(families, "ringd_uptime_seconds") > 0
    assert value(families, "ringd_gossip_view_last_change_timestamp_seconds") >= value(
        families, "ringd_start_time_seconds")
    assert value(families, "ringd_transport_datagrams_total", direction="in") > 0
    assert value(families, "ringd_transport_bytes_total", direction="out") > 0
    wait_until(lambda: value(scrape(urls[0]), "ringd_gossip_probes_total", result="ack") > 0,
               CONVERGE_S, "a probe of node2 to be acked")
    assert value(families, "ringd_control_requests_total", op="status") > 0
    for reason in DROP_REASONS:  # every reason is present from the start
        value(families, "ringd_transport_datagrams_dropped_total", reason=reason)


# Families added for Totem, groups and the client API (issue 5); the naming test checks
# that the real daemon exports every one of them.
TOTEM_FAMILIES = {
    "ringd_totem_state": "gauge", "ringd_totem_state_entries": "counter",
    "ringd_totem_token_lost": "counter", "ringd_totem_consensus_timeouts": "counter",
    "ringd_totem_fail_to_receive": "counter",
    "ringd_totem_token_rotation_seconds": "histogram", "ringd_totem_token_hold_seconds": "histogram",
    "ringd_totem_ring_seq": "gauge", "ringd_totem_ring_members": "gauge",
    "ringd_totem_ring_fingerprint": "gauge", "ringd_totem_ring_last_change_timestamp_seconds": "gauge",
    "ringd_totem_flapping_members": "gauge", "ringd_totem_backlog_messages": "gauge",
    "ringd_totem_messages_sent": "counter", "ringd_totem_messages_refused": "counter",
    "ringd_totem_messages_delivered": "counter", "ringd_totem_datagrams": "counter",
    "ringd_totem_datagrams_duplicate": "counter", "ringd_totem_datagrams_retransmitted": "counter",
    "ringd_totem_retransmit_requests": "counter", "ringd_totem_retransmit_requests_dropped": "counter",
    "ringd_totem_fragments_sent": "counter",
    "ringd_totem_tokens": "counter", "ringd_totem_token_holds": "counter",
    "ringd_totem_token_hold_cancels": "counter", "ringd_totem_token_jumps": "counter",
    "ringd_totem_throttled_visits": "counter", "ringd_totem_backpressure_holds": "counter",
    "ringd_totem_observer_datagrams_dropped": "counter", "ringd_totem_unicasts_unaddressed": "counter",
    "ringd_totem_own_name_datagrams_dropped": "counter",
    "ringd_totem_membership_messages_sent": "counter",
    "ringd_totem_membership_messages_received": "counter", "ringd_totem_rings_formed": "counter",
    "ringd_totem_foreign_messages": "counter", "ringd_totem_flap_hints_ignored": "counter",
    "ringd_totem_flap_holds_adopted": "counter",
    "ringd_totem_joins_failing_us_ignored": "counter",
    "ringd_totem_configurations": "counter", "ringd_totem_delivery_latency_seconds": "histogram",
}
GROUPS_FAMILIES = {
    "ringd_groups": "gauge", "ringd_groups_members": "gauge", "ringd_groups_joins": "counter",
    "ringd_groups_leaves": "counter", "ringd_groups_messages_delivered": "counter",
    "ringd_groups_bad_payloads": "counter", "ringd_groups_events": "counter", "ringd_groups_syncs": "counter",
}
API_FAMILIES = {
    "ringd_control_connections_open": "gauge", "ringd_control_subscribers": "gauge",
    "ringd_control_slow_subscribers_dropped": "counter", "ringd_keys_relays_dropped": "counter",
    "ringd_build_info": "gauge",  # an info metric; the text format has no info type
}
# Bounded label values of the new labelled families, all present from the first scrape.
EXPECTED_LABELS = {
    "ringd_totem_state": {"state": {"operational", "gather", "commit", "recovery", "observer"}},
    "ringd_totem_token_lost": {"state": {"operational", "commit", "recovery"}},
    "ringd_totem_messages_delivered": {"order": {"agreed", "safe"}},
    "ringd_totem_datagrams": {"direction": {"in", "out"}},
    "ringd_totem_datagrams_retransmitted": {"phase": {"operational", "recovery"}},
    "ringd_totem_tokens": {"event": {"received", "forwarded", "retransmitted", "duplicate"}},
    "ringd_totem_membership_messages_sent": {"type": {"join", "commit_token", "merge_detect"}},
    "ringd_totem_configurations": {"kind": {"transitional", "regular"}},
    "ringd_totem_delivery_latency_seconds": {"order": {"agreed", "safe"}},
    "ringd_groups_syncs": {"direction": {"in", "out"}},
}


def check_naming_rules(families: dict) -> None:  # type: ignore[type-arg]
    """Prometheus naming rules (REFERENCE.md §4) for every family of one scrape."""
    for name, family in families.items():
        assert name.startswith("ringd_"), name
        assert family.documentation, name
        if family.type == "counter":
            for sample in family.samples:
                assert sample.name.endswith("_total"), sample.name
        else:
            assert not name.endswith("_total"), name
            assert all(not s.name.endswith("_total") for s in family.samples), name
        if family.type == "histogram":
            assert name.endswith("_seconds"), f"{name}: histograms are in seconds"
            suffixes = {s.name.removeprefix(name) for s in family.samples}
            assert suffixes == {"_bucket", "_sum", "_count"}, (name, suffixes)
            series: dict[tuple, list] = {}  # type: ignore[type-arg]
            for sample in family.samples:
                if sample.name.endswith("_bucket"):
                    key = tuple(sorted((k, v) for k, v in sample.labels.items() if k != "le"))
                    series.setdefault(key, []).append((float(sample.labels["le"]), sample.value))
            for buckets in series.values():
                assert buckets[-1][0] == math.inf and buckets == sorted(buckets), (name, buckets)
        if "timestamp" in name:
            assert name.endswith("_timestamp_seconds"), name
        base = name.removesuffix("_info")
        for unit in ("seconds", "bytes"):
            if unit in base:
                assert base.endswith(f"_{unit}"), name
        for word in ("milliseconds", "_ms", "percent", "kilobytes"):
            assert word not in name, f"{name}: base units only"
        # Labels don't repeat the name: no "x_by_label" names, and no label value is also a
        # word of the name (ringd_x_in_total{direction="in"}). A one-hot family named after
        # what its label enumerates (ringd_totem_state{state}) is fine: summed over the
        # label it still means what its name says.
        assert "_by_" not in name, name
        words = f"_{name}_"
        for sample in family.samples:
            assert sample.value >= 0 or family.type == "gauge", sample
            for label, label_value in sample.labels.items():
                if label != "le":
                    assert f"_{label_value.lower()}_" not in words, (name, label, label_value)


def test_every_metric_follows_the_naming_rules(daemons: ProcessRegistry) -> None:
    (node,) = start_with_metrics(daemons, 1)
    families = scrape(metrics_url(node))
    assert len(families) >= 20
    check_naming_rules(families)
    for expected in (TOTEM_FAMILIES, GROUPS_FAMILIES, API_FAMILIES):
        for name, kind in expected.items():
            assert name in families, f"{name} missing"
            assert families[name].type == kind, (name, families[name].type)
    for name, labels in EXPECTED_LABELS.items():
        for label, values in labels.items():
            found = {s.labels[label] for s in families[name].samples if label in s.labels}
            assert found == values, (name, label, found)
    entries = {(s.labels["state"], s.labels["reason"]) for s in families["ringd_totem_state_entries"].samples
               if s.name.endswith("_total")}
    assert entries == {*(("gather", r) for r in GATHER_REASONS), ("commit", "commit_token"),
                       ("recovery", "commit_done"), ("operational", "recovery_done")}
    assert sum(s.value for s in families["ringd_totem_state"].samples) == 1  # one-hot


def test_two_daemons_report_one_ring_with_equal_fingerprints(daemons: ProcessRegistry) -> None:
    nodes = start_with_metrics(daemons, 2)
    urls = [metrics_url(n) for n in nodes]

    def on_one_ring() -> list[dict] | None:  # type: ignore[type-arg]
        scraped = [scrape(u) for u in urls]
        ok = all(value(f, "ringd_totem_ring_members") == 2
                 and value(f, "ringd_totem_state", state="operational") == 1 for f in scraped)
        prints = {value(f, "ringd_totem_ring_fingerprint") for f in scraped}
        return scraped if ok and len(prints) == 1 else None

    scraped = wait_until(on_one_ring, CONVERGE_S, "both daemons operational on one ring of 2")
    ring = nodes[0].status()["totem"]["ring"]  # "seq.rep"
    seq, rep = ring.split(".", 1)
    assert value(scraped[0], "ringd_totem_ring_seq") == int(seq)
    assert value(scraped[0], "ringd_totem_ring_fingerprint") == ring_fingerprint(int(seq), rep, ["node1", "node2"])
    for families in scraped:
        assert value(families, "ringd_totem_configurations_total", kind="regular") >= 1
        assert value(families, "ringd_totem_ring_last_change_timestamp_seconds") >= value(
            families, "ringd_start_time_seconds")
        assert value(families, "ringd_totem_tokens_total", event="received") > 0
    # A rotation is timed from a member's second visit: just after the ring formed, a
    # member may not have had it yet, so poll (the ring goes round before it idles).
    wait_until(lambda: all(value(scrape(u), "ringd_totem_token_rotation_seconds_count") > 0
                           for u in urls), CONVERGE_S, "a timed token rotation at both daemons")


def render(collector: DaemonCollector) -> dict:  # type: ignore[type-arg]
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    return {f.name: f for f in text_string_to_metric_families(generate_latest(registry).decode())}


async def test_collector_of_a_node_before_its_first_ring_exports_every_family() -> None:
    families = render(DaemonCollector(StandInDaemon(), MetricsStats()))  # type: ignore[arg-type]
    check_naming_rules(families)
    states = {s.labels["state"]: s.value for s in families["ringd_totem_state"].samples}
    assert sum(states.values()) == 1 and states["observer"] == 0 and states["operational"] == 0
    assert value(families, "ringd_totem_ring_seq") == -1
    assert value(families, "ringd_groups") == 0
    assert value(families, "ringd_control_connections_open") == 0
    assert value(families, "ringd_control_slow_subscribers_dropped_total") == 0
    assert value(families, "ringd_totem_backpressure_holds_total") == 0


async def test_collector_maps_a_real_totem_core_and_latency_histograms() -> None:
    totem = TotemCore(name="a", config=TotemConfig(), rng=Random(1))
    now = 0.0
    while totem.stats.token_hold_s.count < 3:  # a ring of one: it forms, then holds the idle token
        now = max(now + 0.01, min(totem.next_deadline(), now + 1.0))
        totem.handle(Tick(), now)
        assert now < 60, "the single-node ring never held its token"
    agreed, safe = Histogram(), Histogram()
    for latency_s in (0.0002, 0.003, 0.003, 7.0):
        agreed.observe(latency_s)
    daemon = StandInDaemon()
    daemon.node.totem, daemon.node.latency_agreed, daemon.node.latency_safe = totem, agreed, safe
    daemon.ring_changed_wall = 123.0
    families = render(DaemonCollector(daemon, MetricsStats()))  # type: ignore[arg-type]
    check_naming_rules(families)
    assert value(families, "ringd_totem_state", state="operational") == 1
    assert value(families, "ringd_totem_ring_members") == 1
    assert value(families, "ringd_totem_ring_seq") == totem.ring_id.seq
    assert value(families, "ringd_totem_ring_fingerprint") == ring_fingerprint(totem.ring_id.seq, "a", ["a"])
    assert value(families, "ringd_totem_ring_last_change_timestamp_seconds") == 123.0
    assert value(families, "ringd_totem_state_entries_total", state="operational", reason="recovery_done") == 1
    assert value(families, "ringd_totem_state_entries_total", state="gather", reason="start") == 1
    assert value(families, "ringd_totem_configurations_total", kind="regular") == 1
    holds = totem.stats.token_hold_s
    assert value(families, "ringd_totem_token_hold_seconds_count") == holds.count >= 3
    assert value(families, "ringd_totem_token_hold_seconds_sum") == pytest.approx(holds.sum)
    assert value(families, "ringd_totem_token_rotation_seconds_count") == totem.stats.token_rotation_s.count > 0
    assert value(families, "ringd_totem_delivery_latency_seconds_bucket", order="agreed", le="0.0025") == 1
    assert value(families, "ringd_totem_delivery_latency_seconds_bucket", order="agreed", le="0.005") == 3
    assert value(families, "ringd_totem_delivery_latency_seconds_bucket", order="agreed", le="+Inf") == 4
    assert value(families, "ringd_totem_delivery_latency_seconds_count", order="safe") == 0
    assert value(families, "ringd_totem_flapping_members") == 0


def test_ring_fingerprint_depends_on_ring_id_and_members_not_order() -> None:
    assert ring_fingerprint(4, "a", ["b", "a"]) == ring_fingerprint(4, "a", ["a", "b"])
    assert ring_fingerprint(4, "a", ["a", "b"]) != ring_fingerprint(5, "a", ["a", "b"])
    assert ring_fingerprint(4, "a", ["a", "b"]) != ring_fingerprint(4, "a", ["a"])
    assert 0 <= ring_fingerprint(4, "a", ["a"]) < 2**52


def test_garbage_datagram_counts_as_malformed(daemons: ProcessRegistry) -> None:
    (node,) = start_with_metrics(daemons, 1)
    url = metrics_url(node)
    unicast_port = int(node.status()["bind"].rpartition(":")[2])
    before = value(scrape(url), "ringd_transport_datagrams_dropped_total", reason="malformed")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.sendto(b"\x00not a ringd datagram", ("127.0.0.1", unicast_port))

    wait_until(lambda: value(scrape(url), "ringd_transport_datagrams_dropped_total", reason="malformed")
               >= before + 1, 15.0, "the garbage datagram to be counted as malformed")
    assert node.running()


def raw_http(port: int, request: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=HTTP_TIMEOUT_S) as conn:
        conn.sendall(request)
        chunks = []
        while chunk := conn.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def test_bad_http_requests_get_4xx_and_the_daemon_keeps_running(daemons: ProcessRegistry) -> None:
    (node,) = start_with_metrics(daemons, 1)
    url = metrics_url(node)
    port = int(url.rpartition(":")[2].split("/")[0])

    with pytest.raises(urllib.error.HTTPError) as not_found:
        urllib.request.urlopen(url.replace("/metrics", "/nope"), timeout=HTTP_TIMEOUT_S)
    assert not_found.value.code == 404
    with pytest.raises(urllib.error.HTTPError) as post:
        urllib.request.urlopen(url, data=b"x=1", timeout=HTTP_TIMEOUT_S)
    assert post.value.code == 405
    assert raw_http(port, b"garbage\r\n\r\n").startswith(b"HTTP/1.0 400 ")
    assert raw_http(port, b"GET /metrics HTTP/1.0\r\nX: " + b"a" * 20000 + b"\r\n\r\n").startswith(
        b"HTTP/1.0 431 ")
    assert raw_http(port, b"HEAD /metrics HTTP/1.0\r\n\r\n").startswith(b"HTTP/1.0 200 ")

    families = scrape(url)
    assert node.running()
    assert value(families, "ringd_metrics_requests_total", outcome="not_found") == 1
    assert value(families, "ringd_metrics_requests_total", outcome="method_not_allowed") == 1
    assert value(families, "ringd_metrics_requests_total", outcome="bad_request") == 1
    assert value(families, "ringd_metrics_requests_total", outcome="too_large") == 1
    assert value(families, "ringd_metrics_requests_total", outcome="ok") >= 1


def test_status_json_reports_the_metrics_url_and_none_when_disabled(daemons: ProcessRegistry) -> None:
    port = free_tcp_port()
    with_metrics = daemons.daemon("node1", "--metrics-port", str(port)).start()
    without = daemons.daemon("node2").start()
    with_metrics.wait_ready()
    without.wait_ready()
    for node, expected in ((with_metrics, f"http://127.0.0.1:{port}/metrics"), (without, None)):
        result = daemons.run_cli("status", "--json", "--socket", str(node.socket))
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout)["metrics"] == expected


def free_tcp_port_pair() -> int:
    """A port P such that P and P+1 are both free on loopback right now."""
    for _ in range(50):
        port = free_tcp_port()
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            try:
                probe.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
        return port
    raise RuntimeError("no two adjacent free TCP ports found")


def test_cluster_command_gives_every_node_a_metrics_url(daemons: ProcessRegistry) -> None:
    base = free_tcp_port_pair()
    directory = daemons.workdir / "c"
    cluster_json = directory / "cluster.json"
    proc = daemons.popen_cli("cluster", "--nodes", "2", "--dir", str(directory),
                             "--cluster-name", daemons.cluster_name,
                             "--multicast-port", str(daemons.multicast_port),
                             "--metrics-base-port", str(base),
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def written() -> dict | None:  # type: ignore[type-arg]
        assert proc.poll() is None, f"ringd cluster exited early with {proc.returncode}"
        return json.loads(cluster_json.read_text()) if cluster_json.exists() else None

    doc = wait_until(written, 40.0, "cluster.json")
    urls = [node["metrics"] for node in doc["nodes"]]
    assert urls == [f"http://127.0.0.1:{base}/metrics", f"http://127.0.0.1:{base + 1}/metrics"]
    wait_until(lambda: all(value(scrape(u), "ringd_gossip_members", state="alive") == 2 for u in urls),
               CONVERGE_S, "both nodes to report 2 alive members")
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=40) == 0
