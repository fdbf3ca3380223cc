"""A stand-in daemon and driver for the client API: the real control server talks to a small
Trio task that plays the driver (answers ApiRequests, pushes event frames) without Totem."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from ringd.core.requests import (
    ClientGone,
    JoinGroup,
    LeaveGroup,
    QueryMembers,
    QueryRing,
    SendMessages,
)
from ringd.runtime.api_types import ApiConnection, ApiRequest
from ringd.runtime.control import ControlServer, ControlStats

LOG = logging.getLogger("test.api")
NODE = "node1"
RING = "4.node1"


class ApiDaemon:
    """The attributes of a Daemon (``DaemonView``) that the control server uses for API
    connections."""

    def __init__(self, control_stats: ControlStats) -> None:
        self.inbox_send, self.inbox_recv = trio.open_memory_channel[Any](16)
        self.api_connections: dict[int, ApiConnection] = {}
        self.control_stats = control_stats
        self.backlog_reports = 0

    def backlog_changed(self, conn: ApiConnection) -> None:
        self.backlog_reports += 1


@dataclass
class FakeDriver:
    """Answers API requests like the real driver would, with one node and no network.

    A send to group "full" with wait=false is refused with "again"; while ``hold_sends`` is
    set, send requests are kept in ``held`` unanswered (the test answers them).
    """

    daemon: ApiDaemon
    requests: list[ApiRequest] = field(default_factory=list)
    disconnects: list[int] = field(default_factory=list)
    members: dict[str, dict[int, str]] = field(default_factory=dict)  # group -> conn -> member
    self_discard: set[tuple[str, int]] = field(default_factory=set)
    held: list[ApiRequest] = field(default_factory=list)
    hold_sends: bool = False
    seq: int = 0
    changed: trio.Event = field(default_factory=trio.Event)

    async def run(self) -> None:
        async for item in self.daemon.inbox_recv:
            if isinstance(item, ClientGone):
                self.disconnects.append(item.conn)
                for group in list(self.members):
                    if item.conn in self.members[group]:
                        self._leave(group, item.conn, "disconnect")
            else:
                self.requests.append(item)
                self._handle(item)
            self.changed.set()
            self.changed = trio.Event()

    async def wait_for(self, predicate: Any, timeout_s: float = 10.0) -> None:
        """Until ``predicate()`` is true (checked whenever the driver handled an item)."""
        with trio.fail_after(timeout_s):
            while not predicate():
                await self.changed.wait()

    def _handle(self, req: ApiRequest) -> None:
        r = req.request
        if isinstance(r, JoinGroup):
            member = f"{NODE}:{r.pid}"
            req.reply({"ok": True, "member": member})
            self.members.setdefault(r.group, {})[r.conn] = member
            if r.self_discard:
                self.self_discard.add((r.group, r.conn))
            self._group_event(r.group, [member], [], "join")
        elif isinstance(r, LeaveGroup):
            req.reply({"ok": True})
            self._leave(r.group, r.conn, "leave")
        elif isinstance(r, SendMessages):
            if r.group == "full" and not r.wait:
                req.reply({"ok": False, "error": "ordered queue full, try again", "again": True})
            elif self.hold_sends:
                self.held.append(req)
            else:
                self.deliver(req)
        elif isinstance(r, QueryMembers):
            groups = {g: sorted(m.values()) for g, m in self.members.items() if m}
            if r.group is not None:
                groups = {r.group: groups.get(r.group, [])}
            req.reply({"ok": True, "groups": groups})
        elif isinstance(r, QueryRing):
            req.reply({"ok": True, "state": "operational", "ring": RING, "members": [NODE], "held_out": []})

    def deliver(self, req: ApiRequest) -> None:
        """Accept a send and deliver it to the group's members (the sender's reply first)."""
        r = req.request
        assert isinstance(r, SendMessages)
        req.reply({"ok": True, "count": len(r.data)})
        frame = {"ev": "message", "group": r.group, "sender": NODE, "member": f"{NODE}:{r.pid}",
                 "ring": RING, "seq": self.seq, "safe": r.safe, "data": list(r.data)}
        self.seq += len(r.data)
        self.push_group(r.group, frame, skip=r.conn if (r.group, r.conn) in self.self_discard else None)

    def push_group(self, group: str, frame: dict[str, Any], skip: int | None = None) -> None:
        for conn_id in list(self.members.get(group, {})):
            conn = self.daemon.api_connections.get(conn_id)
            if conn is not None and conn_id != skip:
                conn.push(frame)

    def _leave(self, group: str, conn: int, reason: str) -> None:
        member = self.members.get(group, {}).pop(conn, None)
        if member is not None:
            self._group_event(group, [], [member], reason)

    def _group_event(self, group: str, joined: list[str], left: list[str], reason: str) -> None:
        frame = {"ev": "group", "group": group, "members": sorted(self.members.get(group, {}).values()),
                 "joined": joined, "left": left, "reason": reason}
        self.push_group(group, frame)


@dataclass
class Served:
    server: ControlServer
    daemon: ApiDaemon
    driver: FakeDriver
    path: Path
    scope: trio.CancelScope

    def stop(self) -> None:
        """Stop the server as if the daemon exited: every connection is closed."""
        self.scope.cancel()


@asynccontextmanager
async def serving(path: Path) -> AsyncIterator[Served]:
    """The real ControlServer on ``path`` with a FakeDriver, until the block ends."""
    server = ControlServer(path, LOG)
    await server.bind()
    daemon = ApiDaemon(server.stats)
    driver = FakeDriver(daemon)
    try:
        async with trio.open_nursery() as nursery:
            scope = trio.CancelScope()

            async def serve(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
                with scope:
                    await server.serve(daemon, task_status=task_status)

            nursery.start_soon(driver.run)
            await nursery.start(serve)
            yield Served(server, daemon, driver, path, scope)
            nursery.cancel_scope.cancel()
    finally:
        server.close()
