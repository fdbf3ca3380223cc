#!/usr/bin/env python3
"""Online key rotation under load, as an operator runs it (issue 18's target).

Starts ``--nodes`` local daemons (``ringd cluster``) with a key, a subscriber on every
daemon and one sender sending ``--rate`` messages per second, one message per call. While
it sends, ``ringd keys install``, ``keys use`` and ``keys remove`` rotate to a new key
through another daemon. Then it checks that every subscriber delivered exactly what was
sent, in order; that no subscriber saw a configuration change; and that no daemon dropped a
datagram for its key. Prints a table and writes ``--json``.

    python scripts/bench_rotation.py --nodes 5 --rate 1000 --json rotation.json

Everything runs on loopback and stops by itself.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import trio

from ringd.client import ConfigEvent, MessageEvent, RingClient
from ringd.keyring import generate_key_file

GROUP = "rotation"
KEY_DROPS = ("unknown_key", "bad_tag", "replayed", "auth_failed")


async def connect(stack: contextlib.AsyncExitStack, sock: Path, deadline_s: float = 60.0) -> RingClient:
    """The daemon's client (closed with ``stack``), once its socket answers."""
    with trio.fail_after(deadline_s):
        while True:
            try:
                client = await RingClient.connect(sock)
            except Exception:  # not up yet: DaemonNotRunning, refused, ...
                await trio.sleep(0.1)
                continue
            return await stack.enter_async_context(client)


async def wait_ring(clients: list[RingClient], size: int, deadline_s: float = 60.0) -> str:
    with trio.fail_after(deadline_s):
        while True:
            rings = [await c.ring() for c in clients]
            ids = {r["ring"] for r in rings}
            if len(ids) == 1 and all(len(r["members"]) == size for r in rings):
                return ids.pop()
            await trio.sleep(0.2)


class Subscriber:
    def __init__(self, client: RingClient) -> None:
        self.client = client
        self.data: list[bytes] = []
        self.rings: list[str] = []  # the ring of every configuration event

    async def run(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        await self.client.join(GROUP)
        task_status.started()
        async for ev in self.client.events():
            if type(ev) is MessageEvent:
                self.data.append(ev.data)
            elif type(ev) is ConfigEvent:
                self.rings.append(ev.ring)


async def key_drops(clients: list[RingClient]) -> list[dict[str, int]]:
    out = []
    for c in clients:
        dropped = (await c.status())["transport"]["dropped"]
        out.append({r: int(dropped.get(r, 0)) for r in KEY_DROPS})
    return out


async def cli(*args: str) -> tuple[float, str]:
    """Run ``ringd ARGS``; its wall time and its output (fails loudly on a non-zero exit)."""
    t0 = time.monotonic()
    res = await trio.run_process([sys.executable, "-m", "ringd", *args], capture_stdout=True,
                                 capture_stderr=True, check=False)
    took = time.monotonic() - t0
    if res.returncode != 0:
        raise SystemExit(f"ringd {' '.join(args)} failed: {res.stderr.decode().strip()}")
    return took, res.stdout.decode().strip()


async def run(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    old_key, new_key = work / "old.key", work / "new.key"
    old_id, new_id = generate_key_file(old_key), generate_key_file(new_key)
    cluster = await trio.lowlevel.open_process(
        [sys.executable, "-m", "ringd", "cluster", "--nodes", str(args.nodes), "--dir", str(work / "c"),
         "--set", f"key_file={old_key}", "--for", str(args.limit_s),
         *(x for kv in args.set for x in ("--set", kv))],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        async with contextlib.AsyncExitStack() as stack:
            return await measure(args, work, stack, old_key, new_key, old_id, new_id)
    finally:
        if cluster.returncode is None:
            cluster.send_signal(signal.SIGINT)
            with trio.move_on_after(30):
                await cluster.wait()
            if cluster.returncode is None:
                cluster.kill()


async def measure(args: argparse.Namespace, work: Path, stack: contextlib.AsyncExitStack,
                  old_key: Path, new_key: Path, old_id: str, new_id: str) -> dict[str, Any]:
    socks = [work / "c" / f"node{i}.sock" for i in range(1, args.nodes + 1)]
    # Daemons beyond totem.ring_size_max are gossip-only observers: no subscribers there.
    ring_size = min(args.nodes, args.ring_size)
    control = [await connect(stack, s) for s in socks]
    ring_before = await wait_ring(control[:ring_size], ring_size)
    with trio.fail_after(60):
        for client in control[ring_size:]:
            while (await client.ring())["state"] != "observer":
                await trio.sleep(0.2)
    subs = [Subscriber(await connect(stack, s)) for s in socks[:ring_size]]
    sender = await connect(stack, socks[1 % args.nodes])
    via = ("--socket", str(socks[2 % args.nodes]))
    sent: list[bytes] = []
    steps: list[dict[str, Any]] = []
    async with trio.open_nursery() as nursery:
        for sub in subs:
            await nursery.start(sub.run)
        with trio.fail_after(30):
            while True:  # every subscriber is a member before the stream starts
                members = (await control[0].members(GROUP)).get(GROUP, [])
                if len(members) >= ring_size:
                    break
                await trio.sleep(0.1)
        drops_before = await key_drops(control)
        stop = trio.Event()

        async def send() -> None:
            t0 = trio.current_time()
            while not stop.is_set():
                await trio.sleep_until(t0 + len(sent) / args.rate)
                msg = b"m-%d" % len(sent)
                await sender.send(GROUP, msg)
                sent.append(msg)

        nursery.start_soon(send)
        await trio.sleep(args.settle_s)  # a steady stream before the rotation
        for what, cmd in (("install", ("keys", "install", str(new_key), *via)),
                          ("use", ("keys", "use", new_id, *via)),
                          ("remove", ("keys", "remove", old_id, *via))):
            at = len(sent)
            took, out = await cli(*cmd)
            steps.append({"step": what, "took_s": round(took, 3), "sent_before": at,
                          "output": out})
        await trio.sleep(args.settle_s)  # and under the new key alone
        stop.set()
        with trio.move_on_after(60):
            while min(len(s.data) for s in subs) < len(sent):
                await trio.sleep(0.1)
        _, listing = await cli("keys", "list", "--json", *via)
        drops_after = await key_drops(control)
        ring_after = (await control[0].ring())["ring"]
        nursery.cancel_scope.cancel()
    members = json.loads(listing)["members"]
    return {
        "nodes": args.nodes, "observers": args.nodes - ring_size, "rate": args.rate, "old_key": old_id, "new_key": new_id,
        "sent": len(sent),
        "delivered": [len(s.data) for s in subs],
        "identical_everywhere": all(s.data == sent for s in subs),
        # configurations of any other ring than the one the stream started on
        "reconfigurations": [sum(r != ring_before for r in s.rings) for s in subs],
        "ring_unchanged": ring_after == ring_before,
        "key_drops": [{r: a[r] - b[r] for r in KEY_DROPS}
                      for a, b in zip(drops_after, drops_before, strict=True)],
        "keyrings_after": {n: m["keys"] for n, m in members.items()},
        "primary_after": sorted({m["primary"] for m in members.values()}),
        "steps": steps,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--nodes", type=int, default=5)
    ap.add_argument("--rate", type=float, default=1000.0, help="messages per second, one per call")
    ap.add_argument("--settle-s", type=float, default=3.0, help="load before and after the rotation")
    ap.add_argument("--limit-s", type=float, default=300.0, help="the cluster stops by itself after this")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="config key for every daemon (repeatable), e.g. totem.ring_size_max=4 "
                    "to have a gossip-only observer")
    ap.add_argument("--json", type=Path, help="write the result here")
    args = ap.parse_args()
    sizes = [int(kv.split("=", 1)[1]) for kv in args.set if kv.startswith("totem.ring_size_max=")]
    args.ring_size = sizes[-1] if sizes else args.nodes
    with tempfile.TemporaryDirectory(prefix="ringd-rotation-") as tmp:
        result = trio.run(run, args, Path(tmp))
    ok = (result["identical_everywhere"] and result["ring_unchanged"]
          and not any(result["reconfigurations"]) and not any(any(d.values()) for d in result["key_drops"])
          and result["primary_after"] == [result["new_key"]]
          and all(keys == [result["new_key"]] for keys in result["keyrings_after"].values()))
    result["ok"] = ok
    print(f"{'step':8} {'took':>7} {'sent before':>12}")
    for step in result["steps"]:
        print(f"{step['step']:8} {step['took_s']:6.2f}s {step['sent_before']:12d}")
    print(f"{result['nodes']} daemons ({result['observers']} gossip-only), {result['rate']:g} msgs/s one per call: sent {result['sent']}, "
          f"delivered {min(result['delivered'])}..{max(result['delivered'])}, identical everywhere: "
          f"{result['identical_everywhere']}, reconfigurations {result['reconfigurations']}, "
          f"ring unchanged: {result['ring_unchanged']}, key drops "
          f"{sum(sum(d.values()) for d in result['key_drops'])}, keyrings after: "
          f"{sorted({','.join(k) for k in result['keyrings_after'].values()})} -> "
          f"{'OK' if ok else 'FAILED'}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
