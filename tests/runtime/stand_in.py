"""A stand-in daemon for the control server and the metrics collector: the attributes of
:class:`ringd.runtime.control.DaemonView` around a real :class:`~ringd.core.node.NodeCore`
(pure, so it needs no sockets), with no driver loop and no UDP."""

from __future__ import annotations

import collections
from pathlib import Path
from random import Random
from types import SimpleNamespace
from typing import Any

import trio

from ringd.config import Config
from ringd.core.node import NodeCore
from ringd.messages import Address
from ringd.runtime.api_types import ApiConnection
from ringd.runtime.control import ControlStats
from ringd.runtime.metrics import DROP_REASONS
from ringd.wire import Codec, decode_payload, encode_payload

ADDRESS = Address(host="127.0.0.1", port=2001)


def stand_in_node(cfg: Config, *, incarnation: int = 0, now: float = 0.0) -> NodeCore:
    """A real node core of ``cfg``'s name that has not started (nothing driven yet)."""
    codec = Codec(cfg.cluster_name)
    return NodeCore(cfg, address=ADDRESS, seeds=[], incarnation=incarnation, ring_seq=0,
                    rng=Random(1), size_of=codec.size_of, encode_payload=encode_payload,
                    decode_payload=decode_payload, now=now)


class StandInDaemon:
    """What the control server and the metrics read of a daemon (``DaemonView``)."""

    def __init__(self, cfg: Config | None = None, *, node: NodeCore | None = None) -> None:
        self.cfg = cfg or Config(name="node1", cluster_name="tc")
        self.node = node or stand_in_node(self.cfg)
        self.transport = SimpleNamespace(
            local_address=ADDRESS,
            stats=SimpleNamespace(datagrams_in=0, datagrams_out=0, bytes_in=0, bytes_out=0,
                                  dropped={r: 0 for r in DROP_REASONS}))
        self.control_stats = ControlStats()
        self.inbox_send, self.inbox_recv = trio.open_memory_channel[Any](16)
        self.api_connections: dict[int, ApiConnection] = {}
        self.own_address = ADDRESS
        self.metrics_url: str | None = None
        self.leaving = False
        self.leave_requests: list[str] = []
        self.uptime_s = 1.5
        self.started_wall = 1.0
        self.view_changed_wall = 1.0
        self.ring_changed_wall = 1.0
        self.recent_events: collections.deque[dict[str, object]] = collections.deque()
        self.keys = None  # no keyring

    def inbox_len(self) -> int:
        return self.inbox_recv.statistics().current_buffer_used

    def ring_info(self) -> dict[str, object]:
        return self.node.ring_info(0.0)

    def backlog_changed(self, conn: ApiConnection) -> None:
        pass

    async def request_leave(self, why: str) -> None:
        self.leaving = True
        self.leave_requests.append(why)


def socket_config(path: Path) -> Config:
    return Config(name="node1", socket=str(path), cluster_name="tc")
