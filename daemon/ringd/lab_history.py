"""Real daemons' histories in the simulator checker's data model, and the process-group check.

``scripts/netlab.py`` runs real daemons in network namespaces. A subscriber on every node
logs what its daemon delivered (JSON lines, one per event frame) and a sender on every node
logs what it asked to send. This module turns those logs into a
:class:`ringd.sim.checkers.History` so the same extended virtual synchrony checker that
judges simulator runs judges the lab's runs, and adds the check the checker cannot make
from Totem deliveries alone: process-group virtual synchrony (every subscriber sees the same
messages *and group events* between the same two configurations).

What a real subscriber sees differs from a simulated node's log in one way the adapter must
handle: it connects some time after its daemon started. It receives the daemon's current
regular configuration when its join is delivered, then only what is delivered from then
on. So the first configuration in its log is *partially observed*:

* a subscriber of the daemon's first incarnation connects before any application message
  is sent (the lab waits for every subscriber before starting the senders), so nothing is
  missing from its log for the EVS properties; only the group events before its own join
  are, which :func:`check_group_sync` allows (a suffix of what a full observer saw);
* a subscriber of a restarted daemon may join a ring that already delivered messages. Its
  log is cut to start at the first regular configuration that follows a transitional one
  (one it saw installed, from the start). Messages that process accepted but delivered only
  in the cut part are not held to self-delivery (``Published.incarnation = -1``): the lab
  did not watch that part of its life.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ringd.core.totem_events import ConfigChange, ConfigKind, Deliver
from ringd.sim.checkers import FinalNode, History, ProcessLog, Published, Violation
from ringd.totem_messages import RingId

UNOBSERVED_INCARNATION = -1  # Published.incarnation for messages exempt from self-delivery


def parse_ring(text: str) -> RingId:
    """``"12.n1"`` (``str(RingId)``) back to a RingId. Node names hold no dot before the rep."""
    seq, _, rep = text.partition(".")
    return RingId(seq=int(seq), rep=rep)


def make_payload(node: str, msg_id: int, sent_ns: int, probe: bool = False) -> str:
    """The lab's message text: who, which id, when (for latency), and whether it is a probe."""
    return f"{node}.{msg_id}.{sent_ns}" + (".probe" if probe else "")


def parse_payload(data: str) -> tuple[str, int, int, bool] | None:
    """(node, msg_id, sent_ns, probe) of a lab message, or None for anything else."""
    parts = data.split(".")
    if len(parts) not in (3, 4):
        return None
    try:
        return parts[0], int(parts[1]), int(parts[2]), len(parts) == 4 and parts[3] == "probe"
    except ValueError:
        return None


@dataclass(slots=True)
class SubscriberLog:
    """One subscriber's JSON-lines log: the events of one incarnation of one daemon."""

    node: str
    incarnation: int
    records: list[dict[str, Any]]
    crashed: bool = False  # the daemon of this incarnation was killed (kill -9)

    @classmethod
    def read(cls, path: Path, node: str, incarnation: int, crashed: bool) -> SubscriberLog:
        records = []
        for line in path.read_text().splitlines():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                break  # a line cut short by a kill is the end of the log
        return cls(node, incarnation, records, crashed)

    def events(self) -> list[dict[str, Any]]:
        """Config, group and message records, without the lab's own bookkeeping lines."""
        return [r for r in self.records if r.get("ev") in ("config", "group", "message")]

    def observed(self) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """(cut, kept): the events before the first fully observed configuration, and from it.

        The first incarnation keeps everything (see the module docstring); a restarted one
        starts at the first regular configuration that follows a transitional one.
        """
        events = self.events()
        if self.incarnation == 0:
            return [], events
        seen_transitional = False
        for i, r in enumerate(events):
            if r["ev"] != "config":
                continue
            if r["kind"] == "transitional":
                seen_transitional = True
            elif seen_transitional:
                return events[:i], events[i:]
        return events, []


@dataclass(slots=True)
class SentMessage:
    """One message a sender asked its daemon to send (``acked``: the daemon accepted it)."""

    origin: str
    msg_id: int
    payload: bytes
    safe: bool
    incarnation: int
    acked: bool
    probe: bool = False
    sent_ns: int = 0


@dataclass(slots=True)
class LabHistory:
    """The checker's History plus what the lab needs to report on it."""

    history: History
    cut_messages: int = 0  # deliveries left out of restarted subscribers' logs
    unacked_delivered: int = 0  # sends with no reply that were delivered (accepted after all)
    notes: list[str] = field(default_factory=list)


def build_history(subs: Iterable[SubscriberLog], sent: Iterable[SentMessage],
                  finals: dict[str, FinalNode]) -> LabHistory:
    """The checker's :class:`History` from subscriber logs, send logs and final states.

    A message counts as published if its send was acknowledged, or if anybody delivered it
    (the daemon accepted it and the reply was lost to a kill or a timeout). An unacknowledged
    message nobody delivered was never accepted, as far as anyone can tell.
    """
    subs = list(subs)
    processes: list[ProcessLog] = []
    delivered_any: set[tuple[str, int]] = set()
    cut_delivered: dict[tuple[str, int], set[tuple[str, int]]] = {}
    kept_delivered: dict[tuple[str, int], set[tuple[str, int]]] = {}
    cut_messages = 0
    for sub in subs:
        cut, kept = sub.observed()
        proc = ProcessLog(node=sub.node, incarnation=sub.incarnation, crashed=sub.crashed)
        me = (sub.node, sub.incarnation)
        for r in cut:
            for mk in _message_keys(r):
                delivered_any.add(mk)
                cut_delivered.setdefault(me, set()).add(mk)
                cut_messages += 1
        for r in kept:
            if r["ev"] == "config":
                proc.entries.append(ConfigChange(kind=ConfigKind(r["kind"]), ring_id=parse_ring(r["ring"]),
                                                 members=tuple(r["members"])))
            elif r["ev"] == "message":
                ring = parse_ring(r["ring"])
                for i, item in enumerate(r["data"]):
                    parsed = parse_payload(item)
                    msg_id = parsed[1] if parsed else -1 - i  # foreign text: no-creation reports it
                    proc.entries.append(Deliver(ring_id=ring, seq=r["seq"] + i, origin=r["sender"],
                                                msg_id=msg_id, payload=item.encode(), safe=r["safe"]))
                    delivered_any.add((r["sender"], msg_id))
                    kept_delivered.setdefault(me, set()).add((r["sender"], msg_id))
        processes.append(proc)

    published: dict[tuple[str, int], Published] = {}
    unacked_delivered = 0
    for s in sent:
        mk = (s.origin, s.msg_id)
        if not s.acked:
            if mk not in delivered_any:
                continue
            unacked_delivered += 1
        incarnation = s.incarnation
        me = (s.origin, s.incarnation)
        if mk in cut_delivered.get(me, ()) and mk not in kept_delivered.get(me, ()):
            incarnation = UNOBSERVED_INCARNATION
        published[mk] = Published(origin=s.origin, msg_id=s.msg_id, payload=s.payload, safe=s.safe,
                                  incarnation=incarnation, probe=s.probe)
    history = History(processes=processes, published=published, final=dict(finals))
    return LabHistory(history, cut_messages=cut_messages, unacked_delivered=unacked_delivered)


def _message_keys(r: dict[str, Any]) -> list[tuple[str, int]]:
    if r["ev"] != "message":
        return []
    out = []
    for item in r["data"]:
        parsed = parse_payload(item)
        if parsed:
            out.append((r["sender"], parsed[1]))
    return out


# --- process-group virtual synchrony -------------------------------------------------------

Item = tuple[Any, ...]


def _items(r: dict[str, Any]) -> list[Item]:
    if r["ev"] == "group":
        return [("group", r["group"], tuple(r["members"]), tuple(r["joined"]), tuple(r["left"]),
                 r["reason"])]
    return [("msg", r["member"], r["ring"], r["seq"] + i, item) for i, item in enumerate(r["data"])]


def _config_key(r: dict[str, Any]) -> tuple[str, str, tuple[str, ...]]:
    return (r["kind"], r["ring"], tuple(sorted(r["members"])))


def check_group_sync(subs: Iterable[SubscriberLog], settled: bool = True) -> list[Violation]:
    """Every subscriber of the group sees the same messages and group events between the
    same two configurations.

    Per subscriber, its log (after :meth:`SubscriberLog.observed`) is cut at every
    configuration into segments keyed by (how it entered the opening configuration, the
    closing configuration or None for the end of the run). Entering a regular configuration
    is keyed with the transitional one it came through: subscribers that move together see
    the same events, but after a merge each side learns the other side's members (its own
    group events, as with Corosync CPG), so subscribers from different sides are held only
    to the same messages and the same group view at the end of the segment.

    Segments with the same key must be equal when both subscribers saw the opening
    configuration installed; a subscriber that joined inside it (its first segment) must
    have seen a suffix of what a full observer saw. Open segments (the run ended in them)
    are compared only when ``settled`` (the lab waited until probe messages reached
    everybody), and not for a subscriber whose daemon crashed or whose connection was lost,
    whose log may stop anywhere; they end at the last probe message.
    """
    full: dict[tuple[Any, Any], list[tuple[str, list[Item]]]] = {}
    partial: dict[tuple[Any, Any], list[tuple[str, list[Item]]]] = {}
    for sub in subs:
        _, kept = sub.observed()
        pid = f"{sub.node}#{sub.incarnation}"
        ended = sub.crashed or any(r.get("ev") == "end" and r.get("why") != "stopped"
                                   for r in sub.records)
        opening: Any = None
        via: Any = None  # the transitional configuration before the opening regular one
        items: list[Item] = []
        first = True
        for r in kept:
            if r["ev"] == "config":
                if opening is not None:
                    # A restarted subscriber's log starts at a configuration it saw installed;
                    # a first incarnation's first configuration was joined part-way.
                    whole = not first or sub.incarnation > 0
                    (full if whole else partial).setdefault(((via, opening), _config_key(r)), []).append(
                        (pid, items))
                    first = False
                if r["kind"] == "regular":
                    via = opening if opening is not None and opening[0] == "transitional" else None
                else:
                    via = None
                opening = _config_key(r)
                items = []
            else:
                items.extend(_items(r))
        if opening is not None and settled and not ended:
            # Up to the last probe only: the lab stops subscribers one after another, and
            # the others see those departures.
            probes = [i for i, it in enumerate(items) if it[0] == "msg" and str(it[4]).endswith(".probe")]
            items = items[:probes[-1] + 1] if probes else []
            whole = not first or sub.incarnation > 0
            (full if whole else partial).setdefault(((via, opening), None), []).append((pid, items))

    out: list[Violation] = []
    for key, logs in full.items():
        ref_pid, ref = logs[0]
        for pid, got in logs[1:]:
            if got != ref:
                out.append(Violation("group-sync", f"{ref_pid} and {pid} between {_describe(key)}: "
                                     f"{_first_difference(ref, got)}"))
    # Different ways into the same configuration: same messages, same view at the end.
    across: dict[tuple[Any, Any], list[tuple[str, list[Item]]]] = {}
    for (entry, closing), logs in full.items():
        across.setdefault((entry[1], closing), []).append(logs[0])
    for (opening, closing), logs in across.items():
        ref_pid, ref = logs[0]
        for pid, got in logs[1:]:
            if [i for i in got if i[0] == "msg"] != [i for i in ref if i[0] == "msg"]:
                out.append(Violation("group-sync", f"{ref_pid} and {pid} in {_describe((opening, closing))} "
                                     "delivered different messages: " + _first_difference(
                                         [i for i in ref if i[0] == "msg"], [i for i in got if i[0] == "msg"])))
            if _last_view(got) != _last_view(ref):
                out.append(Violation("group-sync", f"{ref_pid} and {pid} in {_describe((opening, closing))} "
                                     f"end with different group views: {_last_view(ref)} vs {_last_view(got)}"))
    for key, logs in partial.items():
        refs = full.get(key)
        if refs:
            ref_pid, ref = refs[0]
            pairs = [(ref_pid, ref, pid, got) for pid, got in logs]
        else:  # nobody saw it whole: the later joiner's events are a suffix of the earlier's
            ordered = sorted(logs, key=lambda pl: -len(pl[1]))
            ref_pid, ref = ordered[0]
            pairs = [(ref_pid, ref, pid, got) for pid, got in ordered[1:]]
        for a_pid, a, b_pid, b in pairs:
            if len(b) > len(a) or (b and a[len(a) - len(b):] != b):
                out.append(Violation("group-sync", f"{b_pid} joined inside {_describe(key)} but what it "
                                     f"saw there is not the end of what {a_pid} saw: "
                                     f"{_first_difference(a[len(a) - len(b):], b)}"))
    return out


def _last_view(items: list[Item]) -> tuple[str, ...] | None:
    """The group's members after the segment's last group event (None: no event in it)."""
    views = [i[2] for i in items if i[0] == "group"]
    return views[-1] if views else None


def _describe(key: tuple[Any, Any]) -> str:
    def one(c: Any) -> str:
        if c is None:
            return "the end of the run"
        if isinstance(c[0], tuple) or c[0] is None:  # (via transitional, regular)
            return one(c[1]) + (f" (via {one(c[0])})" if c[0] is not None else "")
        return f"{c[0]} {c[1]} {{{','.join(c[2])}}}"
    return f"{one(key[0])} and {one(key[1])}"


def _first_difference(a: list[Item], b: list[Item]) -> str:
    for i, (x, y) in enumerate(zip(a, b, strict=False)):
        if x != y:
            return f"item {i}: {x!r} vs {y!r}"
    return f"lengths {len(a)} vs {len(b)}"
