"""Writes the ringd Grafana dashboards (grafana/dashboards/*.json) from the panel lists below.

The JSON files are committed; edit this file and run ``python grafana/build_dashboards.py``
to regenerate them, so titles, layout and selectors stay consistent. Every expression is
plain PromQL plus Grafana's ``$job``/``$instance`` variables and ``$__rate_interval`` /
``$__range``; tests/runtime/test_prometheus.py evaluates each of them against a real
Prometheus scraping a real cluster.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

OUT = Path(__file__).parent / "dashboards"
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
SEL = 'job=~"$job", instance=~"$instance"'  # every panel's selector
JOB = 'job=~"$job"'  # cluster-wide panels: all instances of the job
GRID_COLUMNS = 24


@dataclass(frozen=True, slots=True)
class Panel:
    title: str
    description: str
    exprs: tuple[tuple[str, str], ...]  # (expr, legend)
    kind: str = "timeseries"  # or "stat"
    unit: str = "short"
    width: int = 8
    height: int = 8
    decimals: int | None = None


@dataclass(frozen=True, slots=True)
class Dashboard:
    uid: str
    title: str
    description: str
    panels: tuple[Panel, ...]
    instance_multi: bool = True  # the instance variable: several daemons (and All) or exactly one


def ts(title: str, description: str, *exprs: tuple[str, str], unit: str = "short",
       width: int = 8) -> Panel:
    return Panel(title, description, tuple(exprs), "timeseries", unit, width)


def stat(title: str, description: str, expr: str, legend: str = "", unit: str = "short",
         width: int = 4, decimals: int | None = None) -> Panel:
    return Panel(title, description, ((expr, legend),), "stat", unit, width, 4, decimals)


RI = "$__rate_interval"

OVERVIEW = Dashboard(
    uid="ringd-overview",
    title="ringd / Cluster overview",
    description="Is the cluster whole, do all nodes agree, and how fast did it converge after a change.",
    panels=(
        stat("Daemons up", "Scrape targets of the job that answer.", f"sum(up{{{JOB}}})"),
        stat("Daemons down", "Scrape targets that do not answer (crashed or stopped daemons).",
             f"count(up{{{JOB}}} == 0) or vector(0)"),
        stat("Members alive (worst view)", "Fewest alive members any daemon sees.",
             f'min(ringd_gossip_members{{{JOB}, state="alive"}})'),
        stat("Distinct membership views", "1 = every daemon has the same view of the members.",
             f'count(count_values("fingerprint", ringd_gossip_view_fingerprint{{{JOB}}}))'),
        stat("Distinct rings", "1 = every daemon is on the same Totem ring with the same members.",
             f'count(count_values("fingerprint", ringd_totem_ring_fingerprint{{{JOB}}}))'),
        stat("Daemons operational", "Daemons whose Totem ring is in Operational (ordering messages).",
             f'sum(ringd_totem_state{{{JOB}, state="operational"}})'),
        stat("Primary components", "Distinct rings among quorate daemons: must be 0 or 1 (more is a "
             "split brain; 0 = no quorum anywhere).",
             f'count(count_values("fingerprint", ringd_totem_ring_fingerprint{{{JOB}}} and on (job, instance) '
             f'(ringd_quorum_quorate{{{JOB}}} == 1))) or vector(0)'),
        stat("Daemons quorate", "Daemons in the primary component / all daemons reporting.",
             f"sum(ringd_quorum_quorate{{{JOB}}})"),
        ts("Members by state (per daemon's view)", "Each daemon's gossip view, by member state.",
           (f"ringd_gossip_members{{{JOB}}}", "{{instance}} {{state}}"), width=12),
        ts("Totem state (daemons per state)", "How many daemons are in each Totem state.",
           (f"sum by (state) (ringd_totem_state{{{JOB}}})", "{{state}}"), width=12),
        ts("Agreement: distinct views and rings", "1 = converged; more = daemons disagree.",
           (f'count(count_values("fingerprint", ringd_gossip_view_fingerprint{{{JOB}}}))', "views"),
           (f'count(count_values("fingerprint", ringd_totem_ring_fingerprint{{{JOB}}}))', "rings"),
           width=12),
        ts("Failovers", "Members declared dead (most any daemon saw) and new rings installed.",
           (f'max(increase(ringd_gossip_departures_total{{{JOB}, state="dead"}}[{RI}]))', "members declared dead"),
           (f'max(increase(ringd_totem_configurations_total{{{JOB}, kind="regular"}}[{RI}]))', "rings installed"),
           (f"sum(increase(ringd_totem_token_lost_total{{{JOB}}}[{RI}]))", "token losses"),
           width=12),
        ts("Convergence time", "Spread between the first and the last daemon to see the latest "
           "change: how long the cluster took to agree on it.",
           (f"max(ringd_gossip_view_last_change_timestamp_seconds{{{JOB}}}) - "
            f"min(ringd_gossip_view_last_change_timestamp_seconds{{{JOB}}})", "membership view"),
           (f"max(ringd_totem_ring_last_change_timestamp_seconds{{{JOB}}}) - "
            f"min(ringd_totem_ring_last_change_timestamp_seconds{{{JOB}}})", "ring"),
           unit="s", width=12),
        ts("Time since last change", "Seconds since any daemon's view or ring last changed.",
           (f"time() - max(ringd_gossip_view_last_change_timestamp_seconds{{{JOB}}})", "membership view"),
           (f"time() - max(ringd_totem_ring_last_change_timestamp_seconds{{{JOB}}})", "ring"),
           unit="s", width=12),
        ts("Quorum", "Primary components (distinct rings among quorate daemons, must stay <= 1), "
           "quorate daemons, and quorum flips by reason.",
           (f'count(count_values("fingerprint", ringd_totem_ring_fingerprint{{{JOB}}} and on (job, instance) '
            f'(ringd_quorum_quorate{{{JOB}}} == 1))) or vector(0)', "primary components"),
           (f"sum(ringd_quorum_quorate{{{JOB}}})", "quorate daemons"),
           (f"sum by (reason) (increase(ringd_quorum_transitions_total{{{JOB}}}[{RI}]))", "flips: {{reason}}"),
           width=12),
        ts("Scrape targets up", "1 per answering daemon; a killed daemon drops to 0.",
           (f"up{{{JOB}}}", "{{instance}}"), width=12),
        ts("Ring size and seq", "Members of each daemon's ring and its sequence number.",
           (f"ringd_totem_ring_members{{{JOB}}}", "{{instance}} size"),
           (f"ringd_totem_ring_seq{{{JOB}}}", "{{instance}} seq"), width=12),
    ),
)

TOTEM = Dashboard(
    uid="ringd-totem",
    title="ringd / Totem ring",
    description="The ordered-delivery ring: states, token, throughput, retransmissions, latency.",
    panels=(
        ts("State (1 = current)", "One-hot Totem state of each daemon.",
           (f"ringd_totem_state{{{SEL}}}", "{{instance}} {{state}}")),
        ts("State entries", "States entered per second, by state and reason.",
           (f"sum by (state, reason) (rate(ringd_totem_state_entries_total{{{SEL}}}[{RI}]))",
            "{{state}} ({{reason}})")),
        ts("Token losses and consensus timeouts", "Token-loss timeouts by state; gather rounds without consensus.",
           (f"sum by (state) (increase(ringd_totem_token_lost_total{{{SEL}}}[{RI}]))", "token lost in {{state}}"),
           (f"sum(increase(ringd_totem_consensus_timeouts_total{{{SEL}}}[{RI}]))", "consensus timeouts")),
        ts("Ring seq", "Sequence number of the installed ring.", (f"ringd_totem_ring_seq{{{SEL}}}", "{{instance}}")),
        ts("Ring size", "Members of the installed ring.", (f"ringd_totem_ring_members{{{SEL}}}", "{{instance}}")),
        ts("Configurations", "Configurations delivered, by kind.",
           (f"sum by (kind) (increase(ringd_totem_configurations_total{{{SEL}}}[{RI}]))", "{{kind}}")),
        ts("Token rotation time", "Time between two tokens at a daemon (includes idle holds).",
           (f"histogram_quantile(0.5, sum by (le) (rate(ringd_totem_token_rotation_seconds_bucket{{{SEL}}}[{RI}])))", "p50"),
           (f"histogram_quantile(0.99, sum by (le) (rate(ringd_totem_token_rotation_seconds_bucket{{{SEL}}}[{RI}])))", "p99"),
           unit="s"),
        ts("Token hold time", "How long the representative held the token on an idle ring.",
           (f"histogram_quantile(0.5, sum by (le) (rate(ringd_totem_token_hold_seconds_bucket{{{SEL}}}[{RI}])))", "p50"),
           (f"histogram_quantile(0.99, sum by (le) (rate(ringd_totem_token_hold_seconds_bucket{{{SEL}}}[{RI}])))", "p99"),
           unit="s"),
        ts("Delivery latency", "Own messages, publish to local delivery, by order.",
           (f"histogram_quantile(0.5, sum by (le, order) (rate(ringd_totem_delivery_latency_seconds_bucket{{{SEL}}}[{RI}])))", "p50 {{order}}"),
           (f"histogram_quantile(0.99, sum by (le, order) (rate(ringd_totem_delivery_latency_seconds_bucket{{{SEL}}}[{RI}])))", "p99 {{order}}"),
           unit="s"),
        ts("Messages sent and delivered", "Application messages per second.",
           (f"sum(rate(ringd_totem_messages_sent_total{{{SEL}}}[{RI}]))", "sent"),
           (f"sum by (order) (rate(ringd_totem_messages_delivered_total{{{SEL}}}[{RI}]))", "delivered {{order}}"),
           unit="ops"),
        ts("Retransmissions", "Ring datagrams sent again (by phase), missing seqs requested, and requests "
           "taken off the token because every member already had those seqs.",
           (f"sum by (phase) (rate(ringd_totem_datagrams_retransmitted_total{{{SEL}}}[{RI}]))", "retransmitted ({{phase}})"),
           (f"sum(rate(ringd_totem_retransmit_requests_total{{{SEL}}}[{RI}]))", "requested"),
           (f"sum(rate(ringd_totem_retransmit_requests_dropped_total{{{SEL}}}[{RI}]))", "stale requests dropped"),
           unit="ops"),
        ts("Backlog", "Application messages waiting in each daemon's send queue.",
           (f"ringd_totem_backlog_messages{{{SEL}}}", "{{instance}}")),
        ts("Tokens", "Tokens per second, by what happened to them; visits that throttled the ring "
           "or held the token back for slow subscribers.",
           (f"sum by (event) (rate(ringd_totem_tokens_total{{{SEL}}}[{RI}]))", "{{event}}"),
           (f"sum(rate(ringd_totem_throttled_visits_total{{{SEL}}}[{RI}]))", "throttled for slow readers"),
           (f"sum(rate(ringd_totem_backpressure_holds_total{{{SEL}}}[{RI}]))", "held back for slow readers"),
           unit="ops"),
        ts("Ring datagrams", "Datagrams of our ring per second, by direction.",
           (f"sum by (direction) (rate(ringd_totem_datagrams_total{{{SEL}}}[{RI}]))", "{{direction}}"), unit="pps"),
        ts("Flapping members held out", "Members kept out of the ring because they flap.",
           (f"ringd_totem_flapping_members{{{SEL}}}", "{{instance}}")),
        ts("Process groups", "Groups with members and group memberships, per daemon.",
           (f"ringd_groups{{{SEL}}}", "{{instance}} groups"),
           (f"ringd_groups_members{{{SEL}}}", "{{instance}} memberships")),
        ts("Group messages delivered", "Group application messages delivered per second.",
           (f"sum by (instance) (rate(ringd_groups_messages_delivered_total{{{SEL}}}[{RI}]))", "{{instance}}"),
           unit="ops"),
        ts("Client API", "Open connections, group subscribers, slow subscribers dropped.",
           (f"sum(ringd_control_connections_open{{{SEL}}})", "connections open"),
           (f"sum(ringd_control_subscribers{{{SEL}}})", "subscribers"),
           (f"sum(increase(ringd_control_slow_subscribers_dropped_total{{{SEL}}}[{RI}]))", "slow dropped")),
    ),
)

GOSSIP = Dashboard(
    uid="ringd-gossip",
    title="ringd / Gossip",
    description="SWIM/Lifeguard membership: views, probes, suspicions, messages, transport.",
    panels=(
        ts("Members by state", "Each daemon's view.", (f"ringd_gossip_members{{{SEL}}}", "{{instance}} {{state}}")),
        ts("Local health score", "Lifeguard health (0 = healthy; higher = slower probing).",
           (f"ringd_gossip_health_score{{{SEL}}}", "{{instance}}")),
        ts("Distinct views", "1 = the selected daemons agree on the membership.",
           (f'count(count_values("fingerprint", ringd_gossip_view_fingerprint{{{SEL}}}))', "views")),
        ts("Probes", "Completed probes per second, by result.",
           (f"sum by (result) (rate(ringd_gossip_probes_total{{{SEL}}}[{RI}]))", "{{result}}"), unit="ops"),
        ts("Suspicions", "Suspicions raised (by origin), refuted and confirmed.",
           (f"sum by (origin) (increase(ringd_gossip_suspicions_total{{{SEL}}}[{RI}]))", "raised ({{origin}})"),
           (f"sum(increase(ringd_gossip_refutations_total{{{SEL}}}[{RI}]))", "refuted"),
           (f"sum(increase(ringd_gossip_suspicions_confirmed_total{{{SEL}}}[{RI}]))", "confirmed")),
        ts("Departures", "Members that became dead or left.",
           (f"sum by (state) (increase(ringd_gossip_departures_total{{{SEL}}}[{RI}]))", "{{state}}")),
        ts("Gossip messages sent", "Per second, by message type.",
           (f"sum by (type) (rate(ringd_gossip_messages_sent_total{{{SEL}}}[{RI}]))", "{{type}}"), unit="ops"),
        ts("Gossip messages received", "Per second, by message type.",
           (f"sum by (type) (rate(ringd_gossip_messages_received_total{{{SEL}}}[{RI}]))", "{{type}}"), unit="ops"),
        ts("Broadcast queue", "Messages waiting to be piggybacked.",
           (f"ringd_gossip_broadcast_queue_messages{{{SEL}}}", "{{instance}}")),
        ts("Push-pull syncs", "Full state exchanges per second, by direction.",
           (f"sum by (direction) (rate(ringd_gossip_push_pulls_total{{{SEL}}}[{RI}]))", "{{direction}}"), unit="ops"),
        ts("UDP datagrams", "Per second, by direction.",
           (f"sum by (direction) (rate(ringd_transport_datagrams_total{{{SEL}}}[{RI}]))", "{{direction}}"), unit="pps"),
        ts("UDP bytes", "Per second, by direction.",
           (f"sum by (direction) (rate(ringd_transport_bytes_total{{{SEL}}}[{RI}]))", "{{direction}}"), unit="Bps"),
        ts("Datagrams dropped", "Per second, by reason (malformed, wrong cluster, auth failure, inbox full, ...).",
           (f"sum by (reason) (rate(ringd_transport_datagrams_dropped_total{{{SEL}}}[{RI}]))", "{{reason}}"), unit="pps"),
    ),
)

NODE = Dashboard(
    uid="ringd-node",
    title="ringd / Node detail",
    description="One daemon: process, gossip, Totem, transport and API.",
    instance_multi=False,
    panels=(
        stat("Up", "1 = the daemon answers scrapes.", f"up{{{SEL}}}"),
        stat("Uptime", "Since the daemon started.", f"ringd_uptime_seconds{{{SEL}}}", unit="s"),
        stat("Version", "ringd version.", f"ringd_build_info{{{SEL}}}", legend="{{version}}"),
        stat("Members alive", "In this daemon's view.", f'ringd_gossip_members{{{SEL}, state="alive"}}'),
        stat("Ring size", "Members of its Totem ring.", f"ringd_totem_ring_members{{{SEL}}}"),
        stat("Health score", "Lifeguard (0 = healthy).", f"ringd_gossip_health_score{{{SEL}}}"),
        ts("Totem state", "1 = current state.", (f"ringd_totem_state{{{SEL}}}", "{{state}}")),
        ts("Members by state", "This daemon's view.", (f"ringd_gossip_members{{{SEL}}}", "{{state}}")),
        ts("Inbox and backlog", "Events waiting in the daemon's inbox; messages in the Totem send queue.",
           (f"ringd_inbox_messages{{{SEL}}}", "inbox"), (f"ringd_totem_backlog_messages{{{SEL}}}", "send queue")),
        ts("UDP traffic", "Datagrams per second, by direction.",
           (f"rate(ringd_transport_datagrams_total{{{SEL}}}[{RI}])", "{{direction}}"), unit="pps"),
        ts("Drops", "Datagrams dropped per second, by reason.",
           (f"rate(ringd_transport_datagrams_dropped_total{{{SEL}}}[{RI}])", "{{reason}}"), unit="pps"),
        ts("Delivery latency p99", "Own messages, publish to local delivery.",
           (f"histogram_quantile(0.99, sum by (le, order) (rate(ringd_totem_delivery_latency_seconds_bucket{{{SEL}}}[{RI}])))", "{{order}}"),
           unit="s"),
        ts("Control requests", "Per second, by op.",
           (f"rate(ringd_control_requests_total{{{SEL}}}[{RI}])", "{{op}}"), unit="ops"),
        ts("Client API", "Open connections, subscribers, slow subscribers dropped.",
           (f"ringd_control_connections_open{{{SEL}}}", "connections open"),
           (f"ringd_control_subscribers{{{SEL}}}", "subscribers"),
           (f"increase(ringd_control_slow_subscribers_dropped_total{{{SEL}}}[{RI}])", "slow dropped")),
        ts("Scrape", "Scrape duration and /metrics requests by outcome.",
           (f"scrape_duration_seconds{{{SEL}}}", "scrape duration (s)"),
           (f"rate(ringd_metrics_requests_total{{{SEL}}}[{RI}])", "{{outcome}} /s")),
    ),
)

DASHBOARDS = (OVERVIEW, TOTEM, GOSSIP, NODE)


def _variables(dashboard: Dashboard) -> list[dict[str, object]]:
    instance_query = 'label_values(ringd_build_info{job=~"$job"}, instance)'
    return [
        {"name": "datasource", "label": "Data source", "type": "datasource", "query": "prometheus",
         "hide": 0, "refresh": 1, "regex": "", "current": {}},
        {"name": "job", "label": "Job", "type": "query", "datasource": DATASOURCE,
         "query": {"query": "label_values(ringd_build_info, job)", "refId": "job"},
         "definition": "label_values(ringd_build_info, job)", "refresh": 2, "sort": 1,
         "multi": False, "includeAll": False, "hide": 0, "current": {}},
        {"name": "instance", "label": "Daemon", "type": "query", "datasource": DATASOURCE,
         "query": {"query": instance_query, "refId": "instance"}, "definition": instance_query,
         "refresh": 2, "sort": 1, "multi": dashboard.instance_multi,
         "includeAll": dashboard.instance_multi, "allValue": ".+" if dashboard.instance_multi else None,
         "hide": 0, "current": {}},
    ]


def _panel(panel: Panel, panel_id: int, x: int, y: int) -> dict[str, object]:
    defaults: dict[str, object] = {"unit": panel.unit}
    if panel.decimals is not None:
        defaults["decimals"] = panel.decimals
    if panel.kind == "timeseries":
        defaults["custom"] = {"drawStyle": "line", "lineWidth": 1, "fillOpacity": 10, "showPoints": "never"}
        options: dict[str, object] = {"legend": {"displayMode": "list", "placement": "bottom"},
                                      "tooltip": {"mode": "multi", "sort": "desc"}}
    else:
        options = {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                   "colorMode": "value", "graphMode": "area", "textMode": "auto"}
    return {
        "id": panel_id,
        "type": panel.kind,
        "title": panel.title,
        "description": panel.description,
        "datasource": DATASOURCE,
        "gridPos": {"x": x, "y": y, "w": panel.width, "h": panel.height},
        "fieldConfig": {"defaults": defaults, "overrides": []},
        "options": options,
        "targets": [
            {"refId": chr(ord("A") + i), "datasource": DATASOURCE, "expr": expr,
             "legendFormat": legend or "__auto", "range": True, "instant": False}
            for i, (expr, legend) in enumerate(panel.exprs)
        ],
    }


def render(dashboard: Dashboard) -> dict[str, object]:
    """One dashboard as Grafana JSON (schema of Grafana 9/10)."""
    panels = []
    x = y = row_height = 0
    for i, panel in enumerate(dashboard.panels, start=1):
        if x + panel.width > GRID_COLUMNS:
            x, y, row_height = 0, y + row_height, 0
        panels.append(_panel(panel, i, x, y))
        x += panel.width
        row_height = max(row_height, panel.height)
    return {
        "uid": dashboard.uid,
        "title": dashboard.title,
        "description": dashboard.description,
        "tags": ["ringd"],
        "editable": True,
        "graphTooltip": 1,
        "schemaVersion": 38,
        "version": 1,
        "refresh": "5s",
        "time": {"from": "now-15m", "to": "now"},
        "timezone": "browser",
        "links": [{"title": "ringd dashboards", "type": "dashboards", "tags": ["ringd"], "asDropdown": True,
                   "includeVars": True, "keepTime": True}],
        "templating": {"list": _variables(dashboard)},
        "annotations": {"list": []},
        "panels": panels,
    }


def main() -> None:
    OUT.mkdir(exist_ok=True)
    for dashboard in DASHBOARDS:
        path = OUT / f"{dashboard.uid}.json"
        path.write_text(json.dumps(render(dashboard), indent=2) + "\n")
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
