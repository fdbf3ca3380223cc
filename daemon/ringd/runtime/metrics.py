"""Prometheus ``/metrics`` for one daemon: a scrape-time Collector and a tiny Trio HTTP server.

Metrics observe; cores only count (STYLE rule 10). :class:`DaemonCollector` reads the plain
stats of the node core (gossip, Totem, process groups), the UDP transport and the control
server through :class:`~ringd.runtime.control.DaemonView` only when Prometheus scrapes, so
nothing is added to the packet path. It lives on a private
:class:`~prometheus_client.CollectorRegistry` (never the global one), so several daemons in
one process (tests) do not collide.

prometheus_client's own HTTP server runs in a thread; the daemon has no bare threads, so
:class:`MetricsServer` answers ``GET /metrics`` itself from a Trio task (HTTP/1.0, one request
per connection, bounded request size, short timeouts, bounded concurrency). Everything else
gets a 4xx and is counted. Label sets are bounded: fixed tuples below, or names of
registered wire message types.
"""

from __future__ import annotations

import collections
import hashlib
import logging
import platform
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import trio
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

import ringd
from ringd.core.histogram import Histogram
from ringd.core.quorum import (
    REASON_CONFIGURATION,
    REASON_LAST_MAN_STANDING,
    REASON_OBSERVER,
    REASON_OPERATOR,
)
from ringd.core.totem_events import ConfigKind
from ringd.core.totem_state import Reason, State
from ringd.messages import MESSAGE_TYPES, MemberState
from ringd.runtime.control import KNOWN_OPS
from ringd.wire import DropReason

if TYPE_CHECKING:
    from ringd.runtime.control import DaemonView

# Every drop reason of the transport, so each series exists from the first scrape on
# (a rate() over a series that appears late misses its first increments).
DROP_REASONS = (*(r.value for r in DropReason), "inbox_full", "send_error")
CONTROL_ERROR_KINDS = ("malformed", "bad_request", "unknown_op", "busy")
# Why the quorate state flipped (label "reason" of ringd_quorum_transitions_total).
QUORUM_REASONS = (REASON_CONFIGURATION, REASON_OPERATOR, REASON_LAST_MAN_STANDING, REASON_OBSERVER)
# Outcomes of requests to the metrics server itself.
HTTP_OUTCOMES = ("ok", "bad_request", "not_found", "method_not_allowed", "too_large",
                 "timeout", "rejected", "error")
# Gossip message type names (label "type"); a name outside this set is never exported.
GOSSIP_MESSAGE_TYPES = frozenset(cls.__name__ for cls in MESSAGE_TYPES.values())

# Totem state entries as (state, reason) label pairs. Gather is entered for many reasons;
# each other state for exactly one (see TotemCore._enter_*), so the set is fixed and every
# series exists from the first scrape.
_ONE_WAY_IN = {State.COMMIT: Reason.COMMIT_TOKEN, State.RECOVERY: Reason.COMMIT_DONE,
               State.OPERATIONAL: Reason.RECOVERY_DONE}
GATHER_REASONS = tuple(r.value for r in Reason if r not in _ONE_WAY_IN.values())
# States in which the token-loss timer runs (Gather has no token).
TOKEN_STATES = (State.OPERATIONAL, State.COMMIT, State.RECOVERY)
DELIVERY_ORDERS = ("agreed", "safe")
# Membership messages of Totem: (label, TotemStats prefix).
TOTEM_MEMBERSHIP_TYPES = (("join", "join"), ("commit_token", "commit_token"),
                          ("merge_detect", "merge_detect"))

# A scrape request is one short line plus a few headers.
HTTP_REQUEST_BYTES_MAX = 8192
# Whole exchange (read request + write reply); a scraper that is slower is dropped.
HTTP_TIMEOUT_S = 5.0
# Longest wait for a client to close after our reply.
HTTP_DRAIN_S = 1.0
# Concurrent metrics connections; one Prometheus needs one.
HTTP_CONNECTIONS_MAX = 8
METRICS_PATH = "/metrics"
# The fingerprint fits a float64 mantissa, so the gauge value is exact.
FINGERPRINT_BITS = 52

_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
            408: "Request Timeout", 431: "Request Header Fields Too Large",
            500: "Internal Server Error", 503: "Service Unavailable"}


def _fingerprint(lines: Iterable[str]) -> int:
    digest = hashlib.blake2b(digest_size=8)
    for line in lines:
        digest.update(f"{line}\n".encode())
    return int.from_bytes(digest.digest(), "big") >> (64 - FINGERPRINT_BITS)


def view_fingerprint(members: Iterable[tuple[str, str]]) -> int:
    """A 52-bit hash of the sorted ``(name, state)`` pairs of a membership view.

    Equal on every node whose view agrees, so ``count(count_values(...))`` checks convergence.
    """
    return _fingerprint(f"{name}\0{state}" for name, state in sorted(members))


def ring_fingerprint(ring_seq: int, ring_rep: str, members: Iterable[str]) -> int:
    """A 52-bit hash of a Totem ring id and its sorted members: equal on the nodes of one ring."""
    return _fingerprint([f"ring\0{ring_seq}\0{ring_rep}", *sorted(members)])


def _counter(name: str, doc: str, value: float) -> CounterMetricFamily:
    """An unlabelled counter; ``name`` is bare, prometheus_client adds ``_total``."""
    return CounterMetricFamily(name, doc, value=value)


def _labelled_counter(name: str, doc: str, label: str,
                      values: Iterable[tuple[str, float]]) -> CounterMetricFamily:
    family = CounterMetricFamily(name, doc, labels=[label])
    for label_value, value in values:
        family.add_metric([label_value], value)
    return family


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, value=value)


def _buckets(histogram: Histogram) -> list[tuple[str, float]]:
    return [(floatToGoString(bound), count) for bound, count in histogram.cumulative()]


def _histogram(name: str, doc: str, histogram: Histogram) -> HistogramMetricFamily:
    """A core :class:`Histogram` as a Prometheus histogram (``name`` ends in ``_seconds``)."""
    return HistogramMetricFamily(name, doc, buckets=_buckets(histogram), sum_value=histogram.sum)


def _now() -> float:
    """The daemon's clock (the cores' ``now``): Trio's, as the driver passes it."""
    return trio.current_time()


class DaemonCollector(Collector):
    """Maps one daemon's plain stats to ``ringd_*`` metric families at scrape time.

    ``collect`` runs in the daemon's Trio thread (from the metrics task) and does not
    await, so it reads a consistent snapshot of the core between two ``handle`` calls.
    """

    def __init__(self, daemon: DaemonView, http_stats: MetricsStats) -> None:
        self._daemon = daemon
        self._http_stats = http_stats

    def collect(self) -> Iterator[Metric]:
        yield InfoMetricFamily("ringd_build", "ringd build information.",
                               value={"version": ringd.__version__,
                                      "python": platform.python_version()})
        yield from self._daemon_metrics()
        yield from self._gossip_metrics()
        yield from self._totem_metrics()
        yield from self._groups_metrics()
        yield from self._quorum_metrics()
        yield from self._transport_metrics()
        yield from self._control_metrics()

    def _daemon_metrics(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        daemon = self._daemon
        yield _gauge("ringd_uptime_seconds", "Seconds since this daemon started.", daemon.uptime_s)
        yield _gauge("ringd_start_time_seconds", "Unix time this daemon started.", daemon.started_wall)
        yield _gauge("ringd_inbox_messages", "Events waiting in the daemon's inbox.",
                     daemon.inbox_len())
        yield _labelled_counter("ringd_metrics_requests", "Requests to this /metrics server, by outcome.",
                                "outcome", ((o, self._http_stats.requests[o]) for o in HTTP_OUTCOMES))

    def _gossip_metrics(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        daemon = self._daemon
        core = daemon.node.gossip
        stats = core.stats
        views = core.members()
        by_state = collections.Counter(v.state for v in views)
        members = GaugeMetricFamily("ringd_gossip_members", "Members in this node's view, by state.",
                                    labels=["state"])
        for state in MemberState:
            members.add_metric([state.name.lower()], by_state[state])
        yield members
        yield _gauge("ringd_gossip_view_fingerprint",
                     "52-bit hash of the sorted (name, state) view; equal on nodes that agree.",
                     view_fingerprint((v.name, v.state.name) for v in views))
        yield _gauge("ringd_gossip_view_last_change_timestamp_seconds",
                     "Unix time a member state in this node's view last changed.",
                     daemon.view_changed_wall)
        yield _gauge("ringd_gossip_health_score", "Lifeguard local health score (0 = healthy).",
                     core.health_score)
        yield _gauge("ringd_gossip_incarnation", "This node's own incarnation number.", core.incarnation)
        yield _gauge("ringd_gossip_broadcast_queue_messages", "Messages waiting to be piggybacked.",
                     core.broadcast_queue_len)
        yield _labelled_counter("ringd_gossip_probes", "Completed probes, by result.", "result", (
            ("ack", stats.probes_ack), ("indirect_ack", stats.probes_indirect_ack),
            ("failed", stats.probes_failed)))
        yield _counter("ringd_gossip_indirect_probe_requests", "Ping-req messages sent to helpers.",
                       stats.ping_reqs_sent)
        yield _labelled_counter("ringd_gossip_suspicions", "Members marked suspect, by who suspected.",
                                "origin", (("local", stats.suspicions_raised),
                                           ("remote", stats.suspicions_learned)))
        yield _counter("ringd_gossip_refutations", "Suspicions about this node that it refuted.",
                       stats.suspicions_refuted)
        yield _counter("ringd_gossip_suspicions_confirmed", "Suspicions that timed out here (member declared dead).",
                       stats.members_confirmed_dead)
        yield _labelled_counter("ringd_gossip_departures", "Members that became dead or left.",
                                "state", (("dead", stats.members_dead), ("left", stats.members_left)))
        yield _counter("ringd_gossip_members_reaped", "Dead/left members removed from the table.",
                       stats.members_reaped)
        yield _counter("ringd_gossip_members_dropped", "Members not added because the table was full.",
                       stats.members_dropped)
        yield _labelled_counter("ringd_gossip_nacks", "Lifeguard nacks, by direction.", "direction",
                                (("out", stats.nacks_sent), ("in", stats.nacks_received)))
        yield _counter("ringd_gossip_relays_dropped", "Indirect probe relays dropped.", stats.relays_dropped)
        yield _labelled_counter("ringd_gossip_push_pulls", "Full state exchanges, by direction.", "direction",
                                (("out", stats.push_pulls_sent), ("in", stats.push_pulls_received)))
        yield _counter("ringd_gossip_rounds", "Gossip rounds run.", stats.gossip_rounds)
        yield _counter("ringd_gossip_announces", "Announce messages sent.", stats.announces_sent)
        yield _counter("ringd_gossip_name_conflicts", "Name conflict messages sent.", stats.name_conflicts_sent)
        yield _counter("ringd_gossip_name_conflicts_ignored", "Name conflicts from a younger daemon "
                       "under our own name, which yields to us.", stats.name_conflicts_ignored)
        yield _counter("ringd_gossip_user_events", "User events delivered.", stats.user_events_delivered)
        yield _counter("ringd_gossip_broadcasts_dropped", "Broadcasts dropped from a full queue.",
                       stats.broadcasts_dropped)
        for direction, counts in (("sent", stats.msgs_sent), ("received", stats.msgs_received)):
            yield _labelled_counter(
                f"ringd_gossip_messages_{direction}", f"Gossip messages {direction}, by message type.",
                "type", sorted((t, n) for t, n in counts.items() if t in GOSSIP_MESSAGE_TYPES))

    def _totem_metrics(self) -> Iterator[Metric]:
        daemon = self._daemon
        node = daemon.node
        totem = node.totem
        stats = totem.stats
        state = GaugeMetricFamily("ringd_totem_state", "1 for the Totem state this node is in, else 0.",
                                  labels=["state"])
        # A gossip-only observer (beyond totem.ring_size_max) is in none of the Totem states.
        observer = not node.active
        for s in State:
            state.add_metric([s.name.lower()], 1.0 if totem.state is s and not observer else 0.0)
        state.add_metric(["observer"], 1.0 if observer else 0.0)
        yield state
        entries = CounterMetricFamily("ringd_totem_state_entries", "Totem state entries, by state and reason.",
                                      labels=["state", "reason"])
        for reason in GATHER_REASONS:
            entries.add_metric(["gather", reason], stats.gather_entered.get(reason, 0))
        for s, reason_in in _ONE_WAY_IN.items():
            entries.add_metric([s.name.lower(), reason_in.value], stats.state_entered.get(s.name, 0))
        yield entries
        yield _labelled_counter("ringd_totem_token_lost", "Token-loss timeouts, by the state they hit.",
                                "state", ((s.name.lower(), stats.token_lost.get(s.name, 0)) for s in TOKEN_STATES))
        yield _counter("ringd_totem_consensus_timeouts", "Gather rounds that timed out without consensus.",
                       stats.consensus_timeouts)
        yield _counter("ringd_totem_fail_to_receive", "Times this node gave up on a ring it could not hear.",
                       stats.fail_to_recv)
        yield _histogram("ringd_totem_token_rotation_seconds",
                         "Time between two consecutive tokens this node processed in Operational.",
                         stats.token_rotation_s)
        yield _histogram("ringd_totem_token_hold_seconds",
                         "Time an idle-ring token was held before release.",
                         stats.token_hold_s)
        ring_id = totem.ring_id
        members = tuple(totem.members)
        yield _gauge("ringd_totem_ring_seq", "Sequence number of the installed ring (-1 before the first).",
                     ring_id.seq)
        yield _gauge("ringd_totem_ring_members", "Members of the installed ring (its size).", len(members))
        yield _gauge("ringd_totem_ring_fingerprint",
                     "52-bit hash of the ring id and its sorted members; equal on nodes of one ring.",
                     ring_fingerprint(ring_id.seq, ring_id.rep, members))
        yield _gauge("ringd_totem_ring_last_change_timestamp_seconds",
                     "Unix time this node last installed a regular configuration.", daemon.ring_changed_wall)
        yield _gauge("ringd_totem_flapping_members", "Members held out of the ring because they flap.",
                     len(totem.flaps.held(_now())))
        yield _gauge("ringd_totem_backlog_messages", "Application messages waiting in the send queue.",
                     len(totem.queue))
        yield _counter("ringd_totem_messages_sent", "Application messages accepted for ordered sending.",
                       stats.app_sent)
        yield _counter("ringd_totem_messages_refused", "Application messages refused (too large, queue full).",
                       stats.app_refused)
        yield _labelled_counter("ringd_totem_messages_delivered", "Application messages delivered, by order.",
                                "order", (("agreed", stats.deliveries_agreed), ("safe", stats.deliveries_safe)))
        yield _labelled_counter("ringd_totem_datagrams", "Ring datagrams of our ring, by direction "
                                "(out: new multicasts, in: stored, duplicates excluded).", "direction",
                                (("out", stats.mcast_tx), ("in", stats.mcast_rx)))
        yield _counter("ringd_totem_datagrams_duplicate", "Ring datagrams received that were already held.",
                       stats.mcast_dup_rx)
        yield _labelled_counter("ringd_totem_datagrams_retransmitted", "Ring datagrams sent again, by phase.",
                                "phase", (("operational", stats.mcast_retx), ("recovery", stats.recovery_tx)))
        yield _counter("ringd_totem_retransmit_requests", "Missing seqs this node asked for on the token.",
                       stats.rtr_requested)
        yield _counter("ringd_totem_retransmit_requests_dropped",
                       "Retransmission requests this node took off the token because every member "
                       "already had those seqs.", stats.rtr_dropped)
        yield _counter("ringd_totem_fragments_sent", "Fragments of large messages sent.", stats.fragments_tx)
        yield _labelled_counter("ringd_totem_tokens", "Tokens, by what happened to them.", "event", (
            ("received", stats.token_rx), ("forwarded", stats.token_tx), ("retransmitted", stats.token_retx),
            ("duplicate", stats.token_dup_rx)))
        yield _counter("ringd_totem_token_holds", "Times this node held the token on an idle ring.",
                       stats.token_held)
        yield _counter("ringd_totem_token_hold_cancels", "Held tokens released early for a new send.",
                       stats.hold_cancels)
        yield _counter("ringd_totem_token_jumps",
                       "Held tokens sent straight to the member whose send released them.",
                       stats.token_jumps)
        yield _counter("ringd_totem_throttled_visits",
                       "Token visits that claimed the whole send window because local subscribers "
                       "fell behind (and kept reading).", stats.throttled_visits)
        driver = node.stats
        yield _counter("ringd_totem_backpressure_holds",
                       "Token visits this node held back (a bounded wait) because a local "
                       "subscriber had more than 4 MiB waiting.", driver.backpressure_holds)
        yield _counter("ringd_totem_observer_datagrams_dropped",
                       "Totem datagrams ignored: from a gossip-only observer (beyond "
                       "totem.ring_size_max), or received while this node is one.",
                       driver.observer_dropped)
        yield _counter("ringd_totem_own_name_datagrams_dropped",
                       "Totem datagrams dropped because they name this daemon as their sender "
                       "(forged, or a daemon misusing its name).", driver.own_name_dropped)
        yield _counter("ringd_totem_unicasts_unaddressed",
                       "Totem unicasts (tokens, commit tokens) dropped because the "
                       "destination's address was not known yet.", driver.unknown_destination)
        for direction, suffix in (("sent", "tx"), ("received", "rx")):
            yield _labelled_counter(
                f"ringd_totem_membership_messages_{direction}", f"Totem membership messages {direction}, by type.",
                "type", ((label, getattr(stats, f"{field_}_{suffix}")) for label, field_ in TOTEM_MEMBERSHIP_TYPES))
        yield _counter("ringd_totem_rings_formed", "Rings this node formed as representative.", stats.rings_formed)
        yield _counter("ringd_totem_foreign_messages", "Messages of another ring seen.", stats.foreign_rx)
        yield _counter("ringd_totem_nonmember_datagrams_dropped", "Multicasts on this daemon's "
                       "ring from a daemon that is not a member of it (forged, or a bug): dropped.",
                       stats.nonmember_rx)
        yield _counter("ringd_totem_flap_hints_ignored", "Gossip alive hints ignored because the node flaps.",
                       stats.flap_held_hints)
        yield _counter("ringd_totem_flap_holds_adopted", "Flapping members held out because another "
                       "member's Joins held them out.", stats.flap_holds_adopted)
        yield _counter("ringd_totem_joins_failing_us_ignored", "Joins of non-members that list this "
                       "node as failed, ignored while operational (a gather would re-form the same "
                       "ring).", stats.joins_failing_us_ignored)
        yield _labelled_counter("ringd_totem_configurations", "Configurations delivered, by kind.", "kind",
                                ((k.value, stats.configurations.get(k.value, 0)) for k in ConfigKind))
        latency = HistogramMetricFamily("ringd_totem_delivery_latency_seconds",
                                        "Own messages: publish to local delivery, by order.", labels=["order"])
        for order in DELIVERY_ORDERS:
            histogram = node.latency_agreed if order == "agreed" else node.latency_safe
            latency.add_metric([order], _buckets(histogram), histogram.sum)
        yield latency

    def _quorum_metrics(self) -> Iterator[Metric]:
        quorum = self._daemon.node.quorum
        status, stats = quorum.status, quorum.stats
        yield _gauge("ringd_quorum_quorate",
                     "1 when this daemon's configuration is the primary component (quorate).",
                     1.0 if status.primary else 0.0)
        yield _gauge("ringd_quorum_votes", "Votes present in this daemon's configuration.", status.votes)
        yield _gauge("ringd_quorum_expected_votes",
                     "Expected votes of this daemon's configuration (the highest any member brings).",
                     status.expected_votes)
        yield _gauge("ringd_quorum_quorum_votes", "Votes a configuration needs to be primary.",
                     status.quorum)
        yield _labelled_counter("ringd_quorum_transitions",
                                "Changes between quorate and not quorate, by reason.", "reason",
                                ((r, stats.transitions.get(r, 0)) for r in QUORUM_REASONS))
        yield _counter("ringd_quorum_sends_refused",
                       "Client sends refused (or safe sends answered) as not quorate.", stats.sends_refused)
        yield _counter("ringd_quorum_expected_votes_changes",
                       "Ordered expected-votes changes applied (operator or last man standing).",
                       stats.overrides)

    def _groups_metrics(self) -> Iterator[Metric]:
        groups = self._daemon.node.groups
        stats = groups.stats
        view = groups.members()
        yield _gauge("ringd_groups", "Process groups with at least one member.", len(view))
        yield _gauge("ringd_groups_members", "Group memberships (a member of two groups counts twice).",
                     sum(len(m) for m in view.values()))
        yield _counter("ringd_groups_joins", "Group joins delivered.", stats.joins)
        yield _counter("ringd_groups_leaves", "Group leaves delivered.", stats.leaves)
        yield _counter("ringd_groups_messages_delivered", "Group application messages delivered.",
                       stats.messages_delivered)
        yield _counter("ringd_groups_bad_payloads", "Ordered payloads that were not group messages.",
                       stats.bad_payloads)
        yield _counter("ringd_groups_events", "Group membership events sent to local clients.",
                       stats.group_events)
        yield _labelled_counter("ringd_groups_syncs", "Group syncs after a merge, by direction.", "direction",
                                (("out", stats.syncs_sent),
                                 ("in", stats.syncs_received)))

    def _transport_metrics(self) -> Iterator[CounterMetricFamily]:
        stats = self._daemon.transport.stats
        yield _labelled_counter("ringd_transport_datagrams", "UDP datagrams, by direction.", "direction",
                                (("in", stats.datagrams_in), ("out", stats.datagrams_out)))
        yield _labelled_counter("ringd_transport_bytes", "UDP payload bytes, by direction.", "direction",
                                (("in", stats.bytes_in), ("out", stats.bytes_out)))
        yield _labelled_counter("ringd_transport_datagrams_dropped", "UDP datagrams dropped, by reason.",
                                "reason", ((r, stats.dropped[r]) for r in DROP_REASONS))

    def _control_metrics(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        stats = self._daemon.control_stats
        yield _counter("ringd_control_connections", "Control socket connections accepted.",
                       stats.connections_total)
        yield _gauge("ringd_control_connections_open", "Control/API connections open now.",
                     stats.connections_open)
        yield _gauge("ringd_control_subscribers", "Connections that are members of at least one group.",
                     self._daemon.node.groups.subscribers())
        yield _counter("ringd_control_slow_subscribers_dropped",
                       "Connections closed because they did not read their events fast enough.",
                       stats.slow_dropped)
        yield _counter("ringd_control_connections_rejected", "Control connections over the limit.",
                       stats.connections_rejected)
        yield _counter("ringd_control_connections_refused_user",
                       "Control connections refused: a client of another user not in "
                       "control_allow_users.", stats.connections_refused_user)
        # Keys are set by the control server's code only (never by clients), so the union is bounded.
        ops = sorted(set(KNOWN_OPS) | set(stats.requests))
        yield _labelled_counter("ringd_control_requests", "Control requests answered, by op.", "op",
                                ((op, stats.requests[op]) for op in ops))
        yield _counter("ringd_keys_relays_dropped",
                       "Keyring ops or answers sent straight between daemons (the way to "
                       "gossip-only observers) dropped: from or for a daemon gossip does not "
                       "know.", self._daemon.node.stats.key_relays_dropped)
        kinds = sorted(set(CONTROL_ERROR_KINDS) | set(stats.errors))
        yield _labelled_counter("ringd_control_errors", "Control requests refused, by kind.", "kind",
                                ((k, stats.errors[k]) for k in kinds))


@dataclass(slots=True)
class MetricsStats:
    """Plain counters of the metrics HTTP server; keys are :data:`HTTP_OUTCOMES`."""

    requests: collections.Counter[str] = field(default_factory=collections.Counter)


class MetricsServer:
    """The daemon's ``/metrics`` endpoint. :meth:`bind` first (startup errors surface
    before the daemon runs), then :meth:`serve` in the daemon's nursery."""

    def __init__(self, host: str, port: int, log: logging.Logger) -> None:
        self.host = host
        self.port = port
        self.log = log
        self.stats = MetricsStats()
        self.registry = CollectorRegistry(auto_describe=False)
        self._listeners: list[trio.SocketListener] = []
        self._limiter = trio.CapacityLimiter(HTTP_CONNECTIONS_MAX)

    @property
    def url(self) -> str:
        """``http://host:port/metrics`` with the bound port (after :meth:`bind`)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}{METRICS_PATH}"

    async def bind(self) -> None:
        """Listen on ``(host, port)``; raises OSError (e.g. EADDRINUSE)."""
        self._listeners = await trio.open_tcp_listeners(self.port, host=self.host)
        self.port = self._listeners[0].socket.getsockname()[1]

    def register(self, daemon: DaemonView) -> None:
        self.registry.register(DaemonCollector(daemon, self.stats))

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        assert self._listeners, "bind() first"
        async with trio.open_nursery() as nursery:
            await nursery.start(trio.serve_listeners, self._handle_connection, self._listeners)
            task_status.started()

    def close(self) -> None:
        for listener in self._listeners:
            listener.socket.close()
        self._listeners = []

    async def _handle_connection(self, stream: trio.SocketStream) -> None:
        async with stream:
            try:
                self._limiter.acquire_nowait()
            except trio.WouldBlock:
                self.stats.requests["rejected"] += 1
                return
            reply: HttpReply | None = None
            try:
                with trio.move_on_after(HTTP_TIMEOUT_S) as scope:
                    reply = self.answer(await _read_request(stream))
                    # Counted before sending, so a client that has the reply sees it counted.
                    self.stats.requests[reply.outcome] += 1
                    await stream.send_all(reply.encode())
                if scope.cancelled_caught:
                    if reply is None:
                        self.stats.requests["timeout"] += 1
                else:
                    await _drain(stream)
            except (trio.BrokenResourceError, trio.ClosedResourceError, ConnectionError):
                if reply is None:
                    self.stats.requests["bad_request"] += 1  # the client went away mid-request
            finally:
                self._limiter.release()

    def answer(self, request: bytes | None) -> HttpReply:
        """The reply to one raw request (None: it exceeded the size bound)."""
        if request is None:
            return HttpReply("too_large", 431, b"request too large\n")
        parts = request.split(b"\n", 1)[0].strip().split()
        if len(parts) != 3 or not parts[2].startswith(b"HTTP/"):
            return HttpReply("bad_request", 400, b"bad request\n")
        method, target = parts[0], parts[1]
        if method not in (b"GET", b"HEAD"):
            return HttpReply("method_not_allowed", 405, b"only GET\n", extra=b"Allow: GET, HEAD\r\n")
        if target.split(b"?", 1)[0] != METRICS_PATH.encode():
            return HttpReply("not_found", 404, b"not found; try /metrics\n")
        try:
            body = generate_latest(self.registry)
        except Exception:
            # A bug in a collector must not take the daemon down with it.
            self.log.exception("cannot render metrics")
            return HttpReply("error", 500, b"cannot render metrics\n")
        return HttpReply("ok", 200, body, content_type=CONTENT_TYPE_LATEST, head=method == b"HEAD")


@dataclass(frozen=True, slots=True)
class HttpReply:
    """One HTTP/1.0 reply and the outcome label it is counted under."""

    outcome: str
    code: int
    body: bytes
    content_type: str = "text/plain; charset=utf-8"
    extra: bytes = b""  # more header lines, each ending in CRLF
    head: bool = False  # a HEAD request: headers only

    def encode(self) -> bytes:
        header = (f"HTTP/1.0 {self.code} {_REASONS[self.code]}\r\nContent-Type: {self.content_type}\r\n"
                  f"Content-Length: {len(self.body)}\r\nConnection: close\r\n").encode()
        header += self.extra + b"\r\n"
        return header if self.head else header + self.body


async def _read_request(stream: trio.SocketStream) -> bytes | None:
    """The request line and headers (up to the blank line or EOF); None if too large."""
    request = bytearray()
    while b"\r\n\r\n" not in request and b"\n\n" not in request:
        if len(request) > HTTP_REQUEST_BYTES_MAX:
            return None
        chunk = await stream.receive_some(HTTP_REQUEST_BYTES_MAX)
        if not chunk:
            break  # truncated: judge the request line we have
        request += chunk
    return bytes(request)


async def _drain(stream: trio.SocketStream) -> None:
    """Half-close, then read a little until the client closes: closing with unread bytes
    (e.g. a POST body) makes the kernel send a reset that can destroy the reply in flight."""
    try:
        await stream.send_eof()
        with trio.move_on_after(HTTP_DRAIN_S):
            drained = 0
            while drained < HTTP_REQUEST_BYTES_MAX * 8:
                chunk = await stream.receive_some(HTTP_REQUEST_BYTES_MAX)
                if not chunk:
                    break
                drained += len(chunk)
    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
        pass
