"""Extended virtual synchrony checker over the per-node logs of a run.

Input is a :class:`History`: for every *process* (one incarnation of a node: a restart is
a new process) the ordered list of :class:`ConfigChange` and :class:`Deliver` effects it
produced, whether it ended by a crash, every application message accepted by a node
(``Publish`` not refused), and the final state of the live nodes.

Safety properties (REFERENCE.md §6 "EVS checker to build", DESIGN.md §4), each reported
under its own code:

- ``no-creation``: only accepted messages are delivered, with their payload and safe flag.
- ``no-duplication``: a process delivers a message at most once.
- ``same-configuration``: every process delivers a message in the same configuration,
  i.e. ordered on the same ring at the same seq, and delivered either in that ring's
  regular configuration or in the transitional configuration that follows it. (Which of
  the two may differ between processes that do *not* move on together: one that delivered
  m in C and then crashed or was cut off, and others that only got m, past a gap, during
  recovery and deliver it in their transitional configuration.)
- ``transitional-split``: the strict form for processes that *do* move on together:
  processes that install the same transitional configuration T right after regular C
  deliver each message of C they both deliver in the same one of C and T (Totem's recovery
  gives every member of T all old-ring datagrams up to the highest seq any of them
  delivered in C, so all of them can and must deliver those in C).
- ``delivery-ring``: a Deliver's ``ring_id`` is the ring of the regular configuration the
  process installed last (the old ring while in a transitional configuration).
- ``outside-configuration``: a delivery before the first configuration.
- ``total-order``: one system-wide order of messages and configuration changes is
  consistent with every process's log (checked globally; on failure the first pair of
  processes that disagree is named), and seqs of one ring never go down in a log.
- ``failure-atomicity``: processes that install C and then the same C' delivered the same
  set of messages in C.
- ``self-delivery``: a message accepted by a process that did not crash is delivered by it.
- ``safe-delivery``: a safe message delivered in configuration C is delivered (in any
  configuration) by every member of C, unless that member crashed (the process of it that
  installed C, or any process of it if none did).
- ``transitional-subset``: a transitional configuration is a subset of the previous and of
  the next regular configuration's members.
- ``transitional-agreement``: processes that go from regular C to the same regular C'
  install the same transitional configuration between them.
- ``config-sequence``: a transitional configuration comes between two regular ones.
- ``self-inclusion``: a process is a member of every configuration it installs.
- ``config-identity``: one ring id names one member set.
- ``ring-seq-monotonic``: the ring seqs a node installs grow, across restarts too.

Liveness (:func:`check_liveness`): at the end of the liveness phase all live nodes are
Operational on one ring whose members are exactly the live nodes, each has delivered that
regular configuration last, and every probe message (published after the heal) has been
delivered by every live node. ``final-agreement``: they have delivered the same messages in
that final configuration (no member skipped one).
"""

from __future__ import annotations

import graphlib
from collections.abc import Hashable, Iterable
from dataclasses import dataclass, field

from ringd.core.totem_events import ConfigChange, ConfigKind, Deliver
from ringd.totem_messages import RingId

MsgKey = tuple[str, int]  # (origin node, msg_id)
ConfigKey = tuple[str, RingId, frozenset[str]]  # (kind value, ring id, members)

VIOLATIONS_PER_PROPERTY_MAX = 5  # enough to see a pattern; a broken run can produce thousands


@dataclass(slots=True)
class ProcessLog:
    """One incarnation of one node: the configurations it installed and messages it delivered."""

    node: str
    incarnation: int
    entries: list[ConfigChange | Deliver] = field(default_factory=list)
    crashed: bool = False  # True if this process ended by a crash
    times: list[float] = field(default_factory=list)  # virtual time of each entry, if known

    @property
    def pid(self) -> str:
        return f"{self.node}#{self.incarnation}"


@dataclass(frozen=True, slots=True, kw_only=True)
class Published:
    """An application message a node accepted (Publish without SendRefused)."""

    origin: str
    msg_id: int
    payload: bytes
    safe: bool
    incarnation: int  # which process of ``origin`` accepted it
    probe: bool = False  # published after the heal: every live node must deliver it


@dataclass(frozen=True, slots=True, kw_only=True)
class FinalNode:
    """What a live node reports at the end of the run."""

    node: str
    incarnation: int
    state: str  # TotemCore.state.name
    ring_id: RingId | None
    members: tuple[str, ...]


@dataclass(slots=True)
class History:
    """Everything the checker looks at."""

    processes: list[ProcessLog]
    published: dict[MsgKey, Published]
    final: dict[str, FinalNode] = field(default_factory=dict)  # live nodes only


@dataclass(frozen=True, slots=True)
class Violation:
    """One broken property: ``prop`` is the code listed in the module docstring."""

    prop: str
    detail: str

    def __str__(self) -> str:
        return f"[{self.prop}] {self.detail}"


class Report:
    """Violations of several properties, at most VIOLATIONS_PER_PROPERTY_MAX kept per property
    (a checker shared by the group and quorum checks)."""

    def __init__(self) -> None:
        self.violations: list[Violation] = []
        self._counts: dict[str, int] = {}

    def add(self, prop: str, detail: str) -> None:
        n = self._counts.get(prop, 0) + 1
        self._counts[prop] = n
        if n <= VIOLATIONS_PER_PROPERTY_MAX:
            self.violations.append(Violation(prop, detail))
        elif n == VIOLATIONS_PER_PROPERTY_MAX + 1:
            self.violations.append(Violation(prop, "... more violations of this property omitted"))


def config_key(change: ConfigChange) -> ConfigKey:
    return (change.kind.value, change.ring_id, frozenset(change.members))


def describe_config(key: ConfigKey) -> str:
    kind, ring_id, members = key
    return f"{kind} {ring_id} {{{','.join(sorted(members))}}}"


def _describe_item(item: Hashable) -> str:
    if isinstance(item, tuple) and len(item) == 3 and isinstance(item[2], frozenset):
        return "config " + describe_config(item)  # type: ignore[arg-type]
    origin, msg_id = item  # type: ignore[misc]
    return f"msg {origin}/{msg_id}"


class _Report:
    """Collects violations, at most a few per property."""

    def __init__(self) -> None:
        self.violations: list[Violation] = []
        self._counts: dict[str, int] = {}

    def add(self, prop: str, detail: str, always: bool = False) -> None:
        count = self._counts.get(prop, 0) + 1
        self._counts[prop] = count
        if count <= VIOLATIONS_PER_PROPERTY_MAX or always:
            self.violations.append(Violation(prop, detail))
        elif count == VIOLATIONS_PER_PROPERTY_MAX + 1:
            self.violations.append(Violation(prop, "... more violations of this property omitted"))


def check_safety(history: History, eventual: bool = True) -> list[Violation]:
    """Every safety property above; an empty list means the history is EVS-consistent.

    ``eventual=False`` skips the parts that only hold once the run has settled
    (self-delivery, and safe messages not yet delivered by other members): use it for a
    history cut off in the middle of a run.
    """
    report = _Report()
    published = history.published
    procs = history.processes
    by_pid = {p.pid: p for p in procs}

    delivered: dict[str, set[MsgKey]] = {}
    installed: dict[ConfigKey, dict[str, str]] = {}  # config -> node -> pid that installed it
    orders: dict[str, list[Hashable]] = {}
    msg_where: dict[MsgKey, tuple[tuple[ConfigKey, int], str]] = {}
    transitions: dict[tuple[ConfigKey, ConfigKey], tuple[frozenset[MsgKey], str]] = {}
    regular_members: dict[RingId, tuple[frozenset[str], str]] = {}
    ring_seq_of_node: dict[str, tuple[int, str]] = {}
    safe_deliveries: list[tuple[str, ConfigKey, MsgKey]] = []
    moves: dict[tuple[ConfigKey, ConfigKey], tuple[ConfigKey, str]] = {}
    # (C, T, msg) -> {delivered in T?: first pid@time} for processes that went C -> T
    split_where: dict[tuple[ConfigKey, ConfigKey, MsgKey], dict[bool, str]] = {}

    for proc in procs:
        pid = proc.pid
        seen: set[MsgKey] = set()
        order: list[Hashable] = []
        current: ConfigKey | None = None
        last_regular: ConfigChange | None = None
        last_regular_key: ConfigKey | None = None
        pending_transitional: ConfigChange | None = None
        previous_kind: ConfigKind | None = None
        since: list[MsgKey] = []
        last_seq: tuple[RingId, int] | None = None
        times = proc.times
        for index, entry in enumerate(proc.entries):
            if type(entry) is ConfigChange:
                key = config_key(entry)
                what = describe_config(key)
                if proc.node not in entry.members:
                    report.add("self-inclusion", f"{_at(pid, times, index)} installed {what} without being a member")
                repeated = key in installed and proc.node in installed[key]
                if repeated:
                    report.add("no-duplication",
                               f"{_at(pid, times, index)} installed {what} twice (also as {installed[key][proc.node]})")
                installed.setdefault(key, {})[proc.node] = pid
                if current is not None:
                    edge = (current, key)
                    got = frozenset(since)
                    first = transitions.setdefault(edge, (got, _at(pid, times, index)))
                    if first[0] != got:
                        _atomicity(report, edge, first, got, _at(pid, times, index))
                    if entry.kind is ConfigKind.TRANSITIONAL and current == last_regular_key:
                        for mk in since:  # delivered in regular C, then T installed
                            split_where.setdefault((current, key, mk), {}).setdefault(
                                False, _at(pid, times, index))
                since = []
                if not repeated:  # a repeat is reported above; keep the order graph acyclic
                    order.append(key)
                members = frozenset(entry.members)
                if entry.kind is ConfigKind.REGULAR:
                    if previous_kind is ConfigKind.REGULAR:
                        report.add("config-sequence",
                                   f"{_at(pid, times, index)} installed regular {what} right after regular "
                                   f"{describe_config(current)} with no transitional "  # type: ignore[arg-type]
                                   "configuration between")
                    known = regular_members.setdefault(entry.ring_id, (members, pid))
                    if known[0] != members:
                        report.add("config-identity",
                                   f"ring {entry.ring_id}: {_at(pid, times, index)} installed members "
                                   f"{{{','.join(sorted(members))}}} but {known[1]} installed "
                                   f"{{{','.join(sorted(known[0]))}}}")
                    prior = ring_seq_of_node.get(proc.node)
                    if prior is not None and entry.ring_id.seq <= prior[0]:
                        report.add("ring-seq-monotonic",
                                   f"{_at(pid, times, index)} installed ring {entry.ring_id} after ring seq "
                                   f"{prior[0]} (installed by {prior[1]})")
                    ring_seq_of_node[proc.node] = (entry.ring_id.seq, _at(pid, times, index))
                    if pending_transitional is not None and not (
                            frozenset(pending_transitional.members) <= members):
                        report.add("transitional-subset",
                                   f"{_at(pid, times, index)}: transitional {describe_config(config_key(pending_transitional))} "
                                   f"is not a subset of the next regular {what}")
                    if pending_transitional is not None and last_regular_key is not None:
                        # Processes that move together from C to C' agree on who moved with
                        # them: they install the same transitional configuration.
                        move = (last_regular_key, key)
                        via = config_key(pending_transitional)
                        first_via = moves.setdefault(move, (via, _at(pid, times, index)))
                        if first_via[0] != via:
                            report.add("transitional-agreement",
                                       f"{first_via[1]} and {_at(pid, times, index)} both went "
                                       f"{describe_config(move[0])} -> {describe_config(key)} "
                                       f"but via {describe_config(first_via[0])} and "
                                       f"{describe_config(via)}")
                    pending_transitional = None
                    last_regular = entry
                    last_regular_key = key
                else:
                    if previous_kind is ConfigKind.TRANSITIONAL:
                        report.add("config-sequence",
                                   f"{_at(pid, times, index)} installed transitional {what} right after "
                                   f"transitional {describe_config(current)}")  # type: ignore[arg-type]
                    if last_regular is not None and not members <= frozenset(last_regular.members):
                        report.add("transitional-subset",
                                   f"{_at(pid, times, index)}: transitional {what} is not a subset of the previous "
                                   f"regular {describe_config(last_regular_key)}")  # type: ignore[arg-type]
                    pending_transitional = entry
                previous_kind = entry.kind
                current = key
                continue

            # A delivery.
            assert type(entry) is Deliver, entry
            mk = (entry.origin, entry.msg_id)
            label = f"msg {entry.origin}/{entry.msg_id}"
            if current is None or last_regular_key is None:
                report.add("outside-configuration",
                           f"{_at(pid, times, index)} delivered {label} before installing a regular configuration")
            pub = published.get(mk)
            if pub is None:
                report.add("no-creation", f"{_at(pid, times, index)} delivered {label}, which no node accepted")
            elif pub.payload != entry.payload or pub.safe != entry.safe:
                report.add("no-creation",
                           f"{_at(pid, times, index)} delivered {label} altered: payload {len(entry.payload)} B "
                           f"(sent {len(pub.payload)} B, equal={pub.payload == entry.payload}), "
                           f"safe={entry.safe} (sent safe={pub.safe})")
            duplicate = mk in seen
            if duplicate:
                report.add("no-duplication", f"{_at(pid, times, index)} delivered {label} twice")
            seen.add(mk)
            if last_regular is not None and entry.ring_id != last_regular.ring_id:
                report.add("delivery-ring",
                           f"{_at(pid, times, index)} delivered {label} tagged ring {entry.ring_id} while its "
                           f"last regular configuration is ring {last_regular.ring_id}")
            if last_regular_key is not None:
                where = (last_regular_key, entry.seq)
                first = msg_where.setdefault(mk, (where, _at(pid, times, index)))
                if first[0] != where:
                    report.add("same-configuration",
                               f"{label}: {_at(pid, times, index)} delivered it at seq {entry.seq} after "
                               f"{describe_config(last_regular_key)} but {first[1]} at seq "
                               f"{first[0][1]} after {describe_config(first[0][0])}")
            if last_seq is not None and last_seq[0] == entry.ring_id and entry.seq < last_seq[1]:
                report.add("total-order",
                           f"{_at(pid, times, index)} delivered {label} with seq {entry.seq} after seq "
                           f"{last_seq[1]} of the same ring {entry.ring_id}")
            last_seq = (entry.ring_id, entry.seq)
            if entry.safe and current is not None:
                safe_deliveries.append((pid, current, mk))
            since.append(mk)
            if current is not None and last_regular_key is not None and current != last_regular_key:
                split_where.setdefault((last_regular_key, current, mk), {}).setdefault(
                    True, _at(pid, times, index))
            if not duplicate:
                order.append(mk)
        delivered[pid] = seen
        orders[pid] = order

    for (c_key, t_key, mk), how in split_where.items():
        if len(how) == 2:
            report.add("transitional-split",
                       f"msg {mk[0]}/{mk[1]}: processes that both went {describe_config(c_key)} -> "
                       f"{describe_config(t_key)} delivered it in different configurations: "
                       f"{how[False]} (installing T) in the regular one, {how[True]} in the "
                       "transitional one")

    _check_total_order(report, orders)

    if not eventual:
        return report.violations

    # Self-delivery: the accepting process delivers its own message unless it crashed.
    for mk, pub in published.items():
        pid = f"{pub.origin}#{pub.incarnation}"
        proc = by_pid.get(pid)
        if proc is not None and not proc.crashed and mk not in delivered.get(pid, ()):
            report.add("self-delivery",
                       f"{pid} accepted msg {mk[0]}/{mk[1]} ({'safe' if pub.safe else 'agreed'}) "
                       "and never delivered it, without crashing")

    # Safe delivery: every member of the configuration received it, so delivers it (in
    # whatever configuration it ends up in) unless it crashes. A member may never install
    # C itself (its token was lost during recovery) and still owe the delivery.
    procs_of: dict[str, list[ProcessLog]] = {}
    for p in procs:
        procs_of.setdefault(p.node, []).append(p)
    for pid, key, mk in safe_deliveries:
        installers = installed.get(key, {})
        for member in sorted(key[2]):
            mine = procs_of.get(member, [])
            if any(mk in delivered[p.pid] for p in mine):
                continue
            installer = installers.get(member)
            if installer is not None:
                if not by_pid[installer].crashed:
                    report.add("safe-delivery",
                               f"{pid} delivered safe msg {mk[0]}/{mk[1]} in "
                               f"{describe_config(key)} but member {installer} installed it, "
                               "never delivered the message and did not crash")
            elif not any(p.crashed for p in mine):
                report.add("safe-delivery",
                           f"{pid} delivered safe msg {mk[0]}/{mk[1]} in {describe_config(key)} "
                           f"but member {member} never delivered it and never crashed")
    return report.violations


def _at(pid: str, times: list[float], index: int) -> str:
    """``pid@time`` when the log carries times (simulator runs), else ``pid``."""
    return f"{pid}@{times[index]:.6f}s" if times else pid


def _atomicity(report: _Report, edge: tuple[ConfigKey, ConfigKey],
               first: tuple[frozenset[MsgKey], str], got: frozenset[MsgKey], pid: str) -> None:
    only_first = sorted(first[0] - got)[:3]
    only_here = sorted(got - first[0])[:3]
    report.add("failure-atomicity",
               f"{first[1]} and {pid} both went {describe_config(edge[0])} -> "
               f"{describe_config(edge[1])} but delivered different messages in the first: "
               f"only {first[1]}: {_msgs(only_first)}; only {pid}: {_msgs(only_here)}")


def _msgs(keys: Iterable[MsgKey]) -> str:
    return ", ".join(f"{o}/{i}" for o, i in keys) or "-"


def _check_total_order(report: _Report, orders: dict[str, list[Hashable]]) -> None:
    """One global order must embed every log. Cheap global check; pairwise only on failure."""
    sorter: graphlib.TopologicalSorter[Hashable] = graphlib.TopologicalSorter()
    for order in orders.values():
        for before, after in zip(order, order[1:], strict=False):
            sorter.add(after, before)
    try:
        sorter.prepare()
    except graphlib.CycleError as exc:
        cycle = exc.args[1] if len(exc.args) > 1 else []
        pair = _first_disagreeing_pair(orders)
        where = f"; {pair}" if pair else ""
        report.add("total-order",
                   "no single order is consistent with every log: cycle "
                   + " -> ".join(_describe_item(i) for i in cycle[:6]) + where, always=True)


def _first_disagreeing_pair(orders: dict[str, list[Hashable]]) -> str | None:
    pids = list(orders)
    sets = {pid: set(orders[pid]) for pid in pids}
    for i, p in enumerate(pids):
        for q in pids[i + 1:]:
            common = sets[p] & sets[q]
            if not common:
                continue
            lp = [x for x in orders[p] if x in common]
            lq = [x for x in orders[q] if x in common]
            for a, b in zip(lp, lq, strict=False):
                if a != b:
                    return (f"{p} has {_describe_item(a)} where {q} has {_describe_item(b)} "
                            "(first difference among their common deliveries)")
    return None


def check_liveness(history: History, live_nodes: Iterable[str]) -> list[Violation]:
    """After the heal: one regular ring of exactly the live nodes, and all probes delivered."""
    report = _Report()
    live = sorted(live_nodes)
    live_set = frozenset(live)
    final = history.final
    rings = {}
    for node in live:
        fin = final.get(node)
        if fin is None:
            report.add("liveness", f"{node} is live but reported no final state")
            continue
        if fin.state != "OPERATIONAL":
            report.add("liveness", f"{node} is in {fin.state}, not OPERATIONAL, at the end")
        if frozenset(fin.members) != live_set:
            report.add("liveness",
                       f"{node} is on ring {fin.ring_id} with members {{{','.join(fin.members)}}}, "
                       f"not all live nodes {{{','.join(live)}}}")
        rings.setdefault(fin.ring_id, []).append(node)
    if len(rings) > 1:
        report.add("liveness", "live nodes are on different rings: " + "; ".join(
            f"{ring}: {','.join(nodes)}" for ring, nodes in rings.items()))
    procs = {(p.node, p.incarnation): p for p in history.processes}
    finals: dict[ConfigKey, list[tuple[str, frozenset[MsgKey]]]] = {}
    for node in live:
        fin = final.get(node)
        if fin is None:
            continue
        proc = procs.get((node, fin.incarnation))
        configs = [e for e in proc.entries if type(e) is ConfigChange] if proc else []
        last = configs[-1] if configs else None
        if last is None or last.kind is not ConfigKind.REGULAR or last.ring_id != fin.ring_id:
            got = describe_config(config_key(last)) if last else "nothing"
            report.add("liveness",
                       f"{node}#{fin.incarnation} last installed {got}, not the regular "
                       f"configuration of its ring {fin.ring_id}")
        delivered = ({(e.origin, e.msg_id) for e in proc.entries if type(e) is Deliver}
                     if proc else set())
        missing = [mk for mk, pub in history.published.items()
                   if pub.probe and mk not in delivered]
        if missing:
            report.add("liveness",
                       f"{node}#{fin.incarnation} did not deliver {len(missing)} probe "
                       f"message(s) published after the heal, e.g. {_msgs(sorted(missing)[:3])}")
        if proc is not None and last is not None and last.kind is ConfigKind.REGULAR:
            # Everything delivered in the final configuration, by each member.
            start = max(i for i, e in enumerate(proc.entries) if e is last)
            tail = frozenset((e.origin, e.msg_id) for e in proc.entries[start + 1:]
                             if type(e) is Deliver)
            finals.setdefault(config_key(last), []).append((proc.pid, tail))
    # Once settled, the members of the final configuration have delivered the same messages
    # in it (failure atomicity with the end of the run as the next configuration): catches
    # a member that silently skipped a message in the middle of the configuration.
    for key, tails in finals.items():
        first_pid, first = tails[0]
        for pid, tail in tails[1:]:
            if tail != first:
                report.add("final-agreement",
                           f"{first_pid} and {pid} both end in {describe_config(key)} but "
                           f"delivered different messages in it: only {first_pid}: "
                           f"{_msgs(sorted(first - tail)[:3])}; only {pid}: "
                           f"{_msgs(sorted(tail - first)[:3])}")
    return report.violations
