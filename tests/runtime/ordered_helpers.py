"""Helpers for the ordered-delivery tests: `ringd subscribe` processes whose JSON lines are
read back, and the conversion of their logs into the simulator checker's history."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterable, Sequence
from typing import Any

from helpers import RINGD, DaemonProcess, ProcessRegistry, wait_until
from ringd.core.totem_events import ConfigChange, ConfigKind, Deliver
from ringd.sim.checkers import History, ProcessLog, Published, check_safety
from ringd.totem_messages import RingId

RING_TIMEOUT_S = 30.0


class Subscriber:
    """A `ringd subscribe GROUP` process writing its JSON lines to a file."""

    def __init__(self, registry: ProcessRegistry, daemon: DaemonProcess, group: str, tag: str = "") -> None:
        self.daemon = daemon
        self.group = group
        self.path = registry.workdir / f"sub-{daemon.name}{tag}-{daemon.starts}.jsonl"
        self.err_path = self.path.with_suffix(".err")
        with open(self.path, "wb") as out, open(self.err_path, "wb") as err:
            self.proc = registry.popen_cli("subscribe", group, "--socket", str(daemon.socket),
                                           stdout=out, stderr=err)

    def events(self) -> list[dict[str, Any]]:
        out = []
        for line in self.path.read_text().splitlines():
            if line.strip():
                try:
                    out.append(json.loads(line))
                except json.JSONDecodeError:
                    break  # a line still being written
        return out

    def messages(self) -> list[dict[str, Any]]:
        return [e for e in self.events() if e["type"] == "message"]

    def data(self) -> list[str]:
        return [m["data"] for m in self.messages()]

    def configs(self) -> list[dict[str, Any]]:
        return [e for e in self.events() if e["type"] == "config"]

    def group_size(self) -> int:
        groups = [e for e in self.events() if e["type"] == "group"]
        return len(groups[-1]["members"]) if groups else 0

    def stderr(self) -> str:
        return self.err_path.read_text(errors="replace")


def ring_members(daemon: DaemonProcess) -> list[str]:
    totem = daemon.status().get("totem") or {}
    if totem.get("state") != "operational":
        return []
    return sorted(totem.get("members", []))


def wait_ring(nodes: Sequence[DaemonProcess], expected: Iterable[str] | None = None,
              timeout_s: float = RING_TIMEOUT_S) -> None:
    """Poll until every daemon of ``nodes`` is Operational on a ring of exactly ``expected``."""
    want = sorted(expected if expected is not None else (d.name for d in nodes))
    wait_until(lambda: all(ring_members(d) == want for d in nodes), timeout_s,
               f"one ring of {want} on {[d.name for d in nodes]}")


def wait_subscribers(subs: Sequence[Subscriber], size: int, timeout_s: float = RING_TIMEOUT_S) -> None:
    def ready() -> bool:
        for s in subs:
            if s.proc.poll() is not None:
                raise AssertionError(f"subscriber on {s.daemon.name} exited: {s.stderr()}")
        return all(s.group_size() == size for s in subs)

    wait_until(ready, timeout_s, f"{len(subs)} subscribers to see a group of {size}")


def send_lines(registry: ProcessRegistry, daemon: DaemonProcess, group: str, lines: Sequence[str],
               *extra: str) -> subprocess.Popen[bytes]:
    """Start `ringd send GROUP` with ``lines`` on stdin (returns at once)."""
    proc = subprocess.Popen([*RINGD, "send", group, "--socket", str(daemon.socket), *extra],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    registry.others.append(proc)
    assert proc.stdin is not None
    proc.stdin.write(("\n".join(lines) + "\n").encode())
    proc.stdin.close()
    proc.stdin = None  # closed: communicate() must not flush it
    return proc


def parse_ring(text: str) -> RingId:
    seq, _, rep = text.partition(".")
    return RingId(seq=int(seq), rep=rep)


def msg_key(data: str) -> tuple[str, int]:
    """Test payloads are ``<node>-<n>``: the sending node and a number unique per node."""
    node, _, n = data.rpartition("-")
    return node, int(n)


def process_log(sub: Subscriber, incarnation: int, crashed: bool) -> ProcessLog:
    log = ProcessLog(node=sub.daemon.name, incarnation=incarnation, crashed=crashed)
    for e in sub.events():
        if e["type"] == "config":
            log.entries.append(ConfigChange(kind=ConfigKind(e["kind"]), ring_id=parse_ring(e["ring"]),
                                            members=tuple(sorted(e["members"]))))
        elif e["type"] == "message":
            _node, n = msg_key(e["data"])
            log.entries.append(Deliver(ring_id=parse_ring(e["ring"]), seq=e["seq"], origin=e["sender"],
                                       msg_id=n, payload=e["data"].encode(), safe=False))
    return log


def check_evs(logs: Sequence[ProcessLog], sent: dict[str, tuple[int, Sequence[str]]]) -> list[str]:
    """Run the simulator's EVS safety checker on real subscriber logs.

    ``sent``: node -> (incarnation of the sending daemon, payloads it was asked to send).
    """
    published = {}
    for incarnation, lines in sent.values():
        for line in lines:
            key = msg_key(line)
            published[key] = Published(origin=key[0], msg_id=key[1], payload=line.encode(), safe=False,
                                       incarnation=incarnation)
    return [str(v) for v in check_safety(History(processes=list(logs), published=published),
                                         eventual=False)]


def payloads(node: str, start: int, count: int) -> list[str]:
    return [f"{node}-{i}" for i in range(start, start + count)]
