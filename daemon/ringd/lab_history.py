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


@dataclass(slots=True)
class _Segment:
    pid: str
    key: tuple[Any, Any]  # ((via transitional, opening configuration), closing or None)
    start_view: tuple[str, ...] | None  # the group's members when the segment opened
    end_view: tuple[str, ...] | None
    items: list[Item]
    whole: bool  # the subscriber saw the opening configuration installed


def _segments(sub: SubscriberLog, settled: bool) -> list[_Segment]:
    cut, kept = sub.observed()
    pid = f"{sub.node}#{sub.incarnation}"
    ended = sub.crashed or any(r.get("ev") == "end" and r.get("why") != "stopped" for r in sub.records)
    view: tuple[str, ...] | None = None
    for r in cut:
        if r["ev"] == "group":
            view = tuple(r["members"])
    out: list[_Segment] = []
    opening: Any = None
    via: Any = None  # the transitional configuration before the opening regular one
    items: list[Item] = []
    start_view = view
    for r in kept:
        if r["ev"] == "config":
            if opening is not None:
                # A restarted subscriber's log starts at a configuration it saw installed;
                # a first incarnation's first configuration was joined part-way.
                whole = bool(out) or sub.incarnation > 0
                out.append(_Segment(pid, ((via, opening), _config_key(r)), start_view, view, items, whole))
            via = opening if r["kind"] == "regular" and opening is not None and opening[0] == "transitional" else None
            opening = _config_key(r)
            items = []
            start_view = view
        else:
            items.extend(_items(r))
            if r["ev"] == "group":
                view = tuple(r["members"])
    if opening is not None and settled and not ended:
        # Up to the last probe only: the lab stops subscribers one after another, and the
        # others see those departures.
        probes = [i for i, it in enumerate(items) if it[0] == "msg" and str(it[4]).endswith(".probe")]
        items = items[:probes[-1] + 1] if probes else []
        view = start_view
        for it in items:
            if it[0] == "group":
                view = it[2]
        out.append(_Segment(pid, ((via, opening), None), start_view, view, items,
                            bool(out) or sub.incarnation > 0))
    return out


def check_group_sync(subs: Iterable[SubscriberLog], settled: bool = True) -> list[Violation]:
    """Every subscriber of the group sees the same messages and group events between the
    same two configurations.

    Per subscriber, its log (after :meth:`SubscriberLog.observed`) is cut at every
    configuration into segments keyed by (how it entered the opening configuration, the
    closing configuration or None for the end of the run); entering a regular configuration
    is keyed with the transitional one it came through. Subscribers that start a segment
    with the same key and the same group view must see exactly the same messages and group
    events in it. After a merge the sides start with different views and each learns the
    other side's members (its own group events, as with Corosync CPG): subscribers in the
    same segment with different views or entries are held to the same messages, and to the
    same group view at the end of the run (a configuration may end before every member's
    sync is delivered; then the members sync again in the next one).

    A subscriber that joined inside a configuration (its first segment) must have seen a
    suffix of what a full observer saw. Open segments (the run ended in them) are compared
    only when ``settled`` (the lab waited until probe messages reached everybody), up to the
    last probe, and not for a subscriber whose daemon crashed or whose connection was lost.
    """
    segs = [seg for sub in subs for seg in _segments(sub, settled)]
    out: list[Violation] = []
    strict: dict[tuple[Any, Any], list[_Segment]] = {}
    across: dict[tuple[Any, Any], list[_Segment]] = {}
    for seg in segs:
        if seg.whole:
            if seg.start_view is not None:
                strict.setdefault((seg.key, seg.start_view), []).append(seg)
            across.setdefault((seg.key[0][1], seg.key[1]), []).append(seg)
    for (key, _), group in strict.items():
        ref = group[0]
        for seg in group[1:]:
            if seg.items != ref.items:
                out.append(Violation("group-sync", f"{ref.pid} and {seg.pid} between {_describe(key)}, "
                                     f"both with view {{{','.join(ref.start_view or ())}}}: "
                                     f"{_first_difference(ref.items, seg.items)}"))
    for key, group in across.items():
        ref = group[0]
        ref_msgs = [i for i in ref.items if i[0] == "msg"]
        for seg in group[1:]:
            msgs = [i for i in seg.items if i[0] == "msg"]
            if msgs != ref_msgs:
                out.append(Violation("group-sync", f"{ref.pid} and {seg.pid} in {_describe(key)} "
                                     f"delivered different messages: {_first_difference(ref_msgs, msgs)}"))
            # The sides' views agree once every member's group sync is delivered, which a
            # configuration cut short may not see (the members sync again in the next one;
            # the simulator checks that with the syncs in view): the views are held equal at
            # the end of the run, after the probes, where every sync is long delivered.
            if (key[1] is None and None not in (ref.end_view, seg.end_view)
                    and seg.end_view != ref.end_view):
                out.append(Violation("group-sync", f"{ref.pid} and {seg.pid} in {_describe(key)} "
                                     f"end with different group views: {ref.end_view} vs {seg.end_view}"))
    partial: dict[tuple[Any, Any], list[_Segment]] = {}
    for seg in segs:
        if not seg.whole:
            partial.setdefault(seg.key, []).append(seg)
    for key, group in partial.items():
        refs = [seg for seg in segs if seg.whole and seg.key == key]
        if refs:
            pairs = [(refs[0], seg) for seg in group]
        else:  # nobody saw it whole: the later joiner's events are a suffix of the earlier's
            ordered = sorted(group, key=lambda seg: -len(seg.items))
            pairs = [(ordered[0], seg) for seg in ordered[1:]]
        for a, b in pairs:
            if len(b.items) > len(a.items) or (b.items and a.items[len(a.items) - len(b.items):] != b.items):
                out.append(Violation("group-sync", f"{b.pid} joined inside {_describe(key)} but what it "
                                     f"saw there is not the end of what {a.pid} saw: "
                                     f"{_first_difference(a.items[len(a.items) - len(b.items):], b.items)}"))
    return out


def group_view_splits(subs: Iterable[SubscriberLog]) -> int:
    """Messages that subscribers delivered under different group views (known to both).

    Not part of :func:`check_group_sync`: after a merge ringd delivers messages while the
    daemons' GroupSync payloads are still arriving, so for a while the sides disagree on
    the group's members (Corosync's CPG holds messages back until its sync is done). This
    counts how often a message meets that window.
    """
    views: dict[Item, set[tuple[str, ...]]] = {}
    for sub in subs:
        view: tuple[str, ...] | None = None
        for r in sub.events():
            if r["ev"] == "group":
                view = tuple(r["members"])
            elif r["ev"] == "message" and view is not None:
                for it in _items(r):
                    views.setdefault(it, set()).add(view)
    return sum(1 for v in views.values() if len(v) > 1)


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
