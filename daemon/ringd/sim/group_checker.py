"""Process-group checker: virtual synchrony as client applications see it.

Input: every frame each client connection received (``{"ev": "message" | "group" |
"config", ...}``, the frames the node core sends to its clients), and what each
application sent to which group. Properties, each under its own code:

- ``group-order``: the messages a connection receives have strictly increasing
  ``(ring seq, seq)``: no duplicate, and one order for everybody (a message's ``(ring,
  seq)`` is the same at every node, which the EVS checker's ``same-configuration`` holds).
- ``group-creation``: every message item a connection receives was sent to that group by
  the member named as its sender.
- ``group-views``: two connections that both receive messages ``m`` and then ``m'`` of a
  group, ordered on one ring, next to each other, and had the same view of the group when
  ``m`` came, and stayed members in between, received
  the same group events (joins, leaves, node-downs, with the same member lists) between
  them, if they are in the same configuration when ``m'`` comes: membership changes are
  interleaved with the messages identically for members that agree on the view. (Right after a merge, members that come from different sides hold
  different views until every node's group sync is delivered; they are compared again
  once their views agree.)
- ``group-gap``: a connection that received ``m`` and then ``m'`` of one ring in that
  ring's regular configuration, with no group event of that group and no configuration
  change in between, was a member throughout, and its node delivered every message of that
  ring between them (delivery has no gaps in a regular configuration; a transitional one
  may skip what its members never got), so it received every message of
  the group that another connection received between them (except its own member's
  messages, which ``self_discard`` may hold back).
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ringd.core.groups import GroupsCore
from ringd.core.totem_events import ConfigChange, ConfigKind
from ringd.group_messages import GroupSend, GroupSync
from ringd.messages import Message
from ringd.sim.checkers import ProcessLog, Report, Violation
from ringd.wire import encode_payload

MessageKey = tuple[int, str, int]  # (ring seq, ring representative, seq)


@dataclass(slots=True)
class ClientHistory:
    """The frames one client connection received, and its application's member id."""

    pid: str  # for reports
    member: str  # "node:pid"
    frames: list[dict[str, Any]] = field(default_factory=list)


def _key(frame: Mapping[str, Any]) -> MessageKey:
    seq, _, rep = frame["ring"].partition(".")
    return (int(seq), rep, frame["seq"])


def _event(frame: Mapping[str, Any]) -> tuple[Any, ...]:
    return (tuple(frame["members"]), tuple(frame["joined"]), tuple(frame["left"]), frame["reason"])


def check_groups(histories: Iterable[ClientHistory],
                 sent: Mapping[tuple[str, str], set[bytes]]) -> list[Violation]:
    """Check the group properties; ``sent[(group, member)]`` holds what that member sent."""
    report = Report()
    # Per group: (m, m', view at m) -> (events between, pid) of the first connection seen;
    # and every message key of the group with its items' sender member.
    between: dict[str, dict[tuple[Any, ...], tuple[tuple[Any, ...], str]]] = {}
    keys: dict[str, dict[MessageKey, str]] = {}
    quiet_pairs: list[tuple[str, ClientHistory, MessageKey, MessageKey]] = []
    for hist in histories:
        last_key: MessageKey | None = None
        last_by_group: dict[str, MessageKey] = {}
        events_by_group: dict[str, list[tuple[Any, ...]]] = {}
        reconfigured: set[str] = set()  # groups whose last message came before a config frame
        view: dict[str, tuple[str, ...]] = {}  # group -> members as of the last group event
        view_at_last: dict[str, tuple[str, ...] | None] = {}  # ... when the last message came
        config: tuple[Any, ...] | None = None  # the configuration frame received last
        for frame in hist.frames:
            ev = frame.get("ev")
            if ev == "config":
                reconfigured.update(last_by_group)
                config = (frame["kind"], frame["ring"], tuple(frame["members"]))
                continue
            if ev == "group":
                events_by_group.setdefault(frame["group"], []).append(_event(frame))
                view[frame["group"]] = tuple(frame["members"])
                continue
            if ev != "message":
                continue
            group = frame["group"]
            key = _key(frame)
            if last_key is not None and key <= last_key:
                report.add("group-order", f"{hist.pid} received {group} message {key} after {last_key}")
            last_key = key
            items = sent.get((group, frame["member"]), set())
            for item in frame["data"]:
                if item not in items:
                    report.add("group-creation", f"{hist.pid} received in {group} from "
                               f"{frame['member']} an item it never sent ({item[:16]!r})")
                    break
            keys.setdefault(group, {})[key] = frame["member"]
            prev = last_by_group.get(group)
            events = tuple(events_by_group.pop(group, ()))
            if prev is not None and prev[:2] == key[:2]:
                pairs = between.setdefault(group, {})
                pair = (prev, key, view_at_last.get(group), config)
                seen = pairs.get(pair)
                # A member that left (and came back) in between did not see what happened
                # while it was out: only members throughout are compared.
                involved = any(hist.member in e[1] or hist.member in e[2] for e in events)
                if involved:
                    pass
                elif seen is None:
                    pairs[pair] = (events, hist.pid)
                elif seen[0] != events:
                    report.add("group-views", f"{group}: between messages {prev} and {key} "
                               f"{seen[1]} saw {list(seen[0])} but {hist.pid} saw {list(events)}")
                if (not events and group not in reconfigured and prev[:2] == key[:2]
                        and config is not None and config[0] == "regular"):
                    quiet_pairs.append((group, hist, prev, key))
            last_by_group[group] = key
            view_at_last[group] = view.get(group)
            reconfigured.discard(group)
    ordered = {group: sorted(by_key) for group, by_key in keys.items()}
    for group, hist, prev, key in quiet_pairs:
        order = ordered[group]
        senders = keys[group]
        lo, hi = bisect.bisect_right(order, prev), bisect.bisect_left(order, key)
        missed = [k for k in order[lo:hi] if senders[k] != hist.member]
        if missed:
            report.add("group-gap", f"{hist.pid} received {group} messages {prev} then {key} "
                       f"with no membership change between, but missed {sorted(missed)[:5]} "
                       "that others received")
    return report.violations


def check_group_views(processes: Iterable[ProcessLog], decode: Callable[[bytes], Message],
                      syncs_published: Mapping[Any, set[str]]) -> list[Violation]:
    """``group-view-agreement``: processes that deliver a group message in the same regular
    configuration, each after the group syncs of every member of that configuration (if any
    member synced in it: ``syncs_published`` maps ring ids to the nodes that published one
    there), hold the same view of every group when they deliver it.

    Views are rebuilt by replaying each process's ordered deliveries and configurations into
    a fresh :class:`GroupsCore` (the delivered view depends on nothing else), so this checks
    the daemons' logs, not their own account of the view. Right after a merge the views of
    members from different sides differ until the syncs are ordered; once they are, they
    must agree (and if a configuration orders no sync at all, they must agree from its
    start: its members were already in sync).
    """
    report = Report()
    seen: dict[tuple[Any, ...], dict[str, tuple[frozenset[str], str]]] = {}
    syncs_in: dict[Any, set[str]] = {}
    members_of: dict[Any, set[str]] = {}
    for proc in processes:
        groups = GroupsCore(proc.node, encode_payload, decode)
        regular: Any = None
        synced: set[str] = set()
        for entry in proc.entries:
            if type(entry) is ConfigChange:
                groups.on_config(entry)
                regular = entry.ring_id if entry.kind is ConfigKind.REGULAR else None
                if regular is not None:
                    members_of[regular] = set(entry.members)
                synced = set()
                continue
            groups.on_deliver(entry)
            if regular is None or entry.ring_id != regular:
                continue  # transitional deliveries: the members' views may differ there
            try:
                msg = decode(entry.payload)
            except Exception:  # a payload that is no group message is not ours to judge
                continue
            if type(msg) is GroupSync:
                synced.add(msg.node)
                syncs_in.setdefault(regular, set()).add(msg.node)
            elif type(msg) is GroupSend:
                key = (regular, entry.seq, entry.origin, entry.msg_id)
                seen.setdefault(key, {})[proc.pid] = (frozenset(synced),
                                                      repr(sorted(groups.members().items())))
    for (ring, seq, origin, msg_id), by_pid in seen.items():
        # Once one member syncs, every member does (each answers the first sync it sees):
        # views agree after all of them. A view of a member's processes is only corrected
        # by that member's own sync, so one that never syncs (it crashed) leaves none due.
        synced_any = syncs_in.get(ring) or syncs_published.get(ring)
        need = members_of.get(ring, set()) if synced_any else set()
        views = {pid: view for pid, (synced_then, view) in by_pid.items() if synced_then >= need}
        if len(set(views.values())) > 1:
            detail = "; ".join(f"{pid}: {view}" for pid, view in sorted(views.items()))
            report.add("group-view-agreement", f"message {origin}/{msg_id} (seq {seq}) of "
                       f"regular configuration {ring}, after its syncs, met different views: {detail}")
    return report.violations
