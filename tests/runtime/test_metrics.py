"""The ``/metrics`` endpoint of real daemon processes: scraped over HTTP on loopback and
parsed with prometheus_client's own parser."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import urllib.error
import urllib.request

import pytest
from prometheus_client import CONTENT_TYPE_LATEST
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from helpers import DaemonProcess, ProcessRegistry, all_see, wait_until
from ringd.runtime.metrics import DROP_REASONS, view_fingerprint

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


def test_every_metric_follows_the_naming_rules(daemons: ProcessRegistry) -> None:
    (node,) = start_with_metrics(daemons, 1)
    families = scrape(metrics_url(node))
    assert len(families) >= 20
    for name, family in families.items():
        assert name.startswith("ringd_"), name
        assert family.documentation, name
        if family.type == "counter":
            for sample in family.samples:
                assert sample.name.endswith("_total"), sample.name
        else:
            assert not name.endswith("_total"), name
            assert all(not s.name.endswith("_total") for s in family.samples), name
        base = name.removesuffix("_info")
        for unit in ("seconds", "bytes"):
            if unit in base:
                assert base.endswith(f"_{unit}"), name
        for sample in family.samples:
            assert sample.value >= 0 or family.type == "gauge", sample
            assert not any(label in name for label in sample.labels), sample  # labels don't repeat the name


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
