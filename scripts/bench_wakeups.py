#!/usr/bin/env python3
"""The machine's floor for ordered-delivery latency: a datagram relayed through a chain
of processes that do nothing else.

An agreed message on a ring crosses at least three process wake-ups in a row: the
sending daemon (woken by its client's request), every other daemon (woken by the
multicast) and each subscriber (woken by its daemon). This script times a 100-byte UDP
datagram on loopback through the same number of wake-ups, at a paced rate (cold: each
wake-up finds its vCPU idle, as at 100 msgs/s) and flat out (hot), with relays written
three ways: the plainest (blocking sockets); the leanest Trio can do, which is how ringd's
driver waits (``wait_readable``, then non-blocking reads and sends with no scheduler round
in between: "trio-lean"); and with Trio's socket API (a checkpoint around every call:
"trio"). Compare its p50 with `bench_ring.py`'s agreed latency from the same machine and
hour: absolute times drift between runs, ratios hold.

    .venv/bin/python scripts/bench_wakeups.py            # table + bench-results/bench_wakeups.json

Loopback only; every relay is a child process killed by PID at the end.
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import trio

HOST = "127.0.0.1"
PAYLOAD = 100
MODES = ("blocking", "trio-lean", "trio")


def relay_main(a: argparse.Namespace) -> None:
    """Forward every datagram from our port to the next one, until killed."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((HOST, a.port))
    dest = (HOST, a.next)
    if a.mode == "blocking":
        while True:
            sock.sendto(sock.recv(2048), dest)

    async def serve_lean() -> None:
        sock.setblocking(False)
        while True:
            await trio.lowlevel.wait_readable(sock)
            while True:
                try:
                    data = sock.recv(2048)
                except BlockingIOError:
                    break
                sock.sendto(data, dest)

    async def serve() -> None:
        tsock = trio.socket.from_stdlib_socket(sock)
        while True:
            data = await tsock.recv(2048)
            await tsock.sendto(data, dest)

    trio.run(serve_lean if a.mode == "trio-lean" else serve)


def free_ports(n: int) -> list[int]:
    socks = []
    for _ in range(n):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind((HOST, 0))
        socks.append(s)
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def measure(mode: str, wakeups: int, rate: float, count: int) -> dict[str, Any]:
    """Latency of ``count`` datagrams through ``wakeups - 1`` relays and back to us (the
    last wake-up is ours: we sleep in receive like a subscriber)."""
    ports = free_ports(wakeups)  # ports[0] is our sink; relays listen on ports[1:]
    relays = []
    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sink.bind((HOST, ports[0]))
        for i in range(1, wakeups):
            nxt = ports[i + 1] if i + 1 < wakeups else ports[0]
            relays.append(subprocess.Popen([sys.executable, __file__, "relay", "--mode", mode, "--port",
                                            str(ports[i]), "--next", str(nxt)]))
        first = (HOST, ports[1]) if wakeups > 1 else (HOST, ports[0])
        if mode in ("trio", "trio-lean"):
            lat = trio.run(_trio_loop, sink, first, rate, count, mode == "trio-lean")
        else:
            lat = _blocking_loop(sink, first, rate, count)
    finally:
        sink.close()
        for p in relays:
            p.kill()
            p.wait()
    lat.sort()
    return {"mode": mode, "wakeups": wakeups, "rate": rate, "count": len(lat),
            "p50_us": lat[len(lat) // 2], "p99_us": lat[int(len(lat) * 0.99)], "mean_us": statistics.fmean(lat)}


def _blocking_loop(sink: socket.socket, first: tuple[str, int], rate: float, count: int) -> list[float]:
    sink.settimeout(2.0)
    _warm_up_blocking(sink, first)
    lat = []
    for _ in range(count):
        t0 = time.monotonic_ns()
        sink.sendto(b"x" * PAYLOAD, first)
        sink.recv(2048)
        lat.append((time.monotonic_ns() - t0) / 1000)
        _pace(t0, rate)
    return lat


def _warm_up_blocking(sink: socket.socket, first: tuple[str, int]) -> None:
    # The relays start in the background: retry until the chain answers.
    for _ in range(100):
        sink.sendto(b"w", first)
        try:
            sink.recv(2048)
            return
        except TimeoutError:
            continue
    raise RuntimeError("the relay chain never answered")


def _pace(t0_ns: int, rate: float) -> None:
    if rate > 0:
        time.sleep(max(0.0, 1 / rate - (time.monotonic_ns() - t0_ns) / 1e9))  # pacing, not waiting for a condition


async def _trio_loop(sink: socket.socket, first: tuple[str, int], rate: float, count: int,
                     lean: bool) -> list[float]:
    """Our end of the chain in Trio: through Trio's socket API, or ``lean`` like ringd's
    driver (plain non-blocking calls, waiting only when there is nothing to read)."""
    tsock = trio.socket.from_stdlib_socket(sink)

    async def send(data: bytes) -> None:
        if lean:
            sink.sendto(data, first)
        else:
            await tsock.sendto(data, first)

    async def receive() -> bytes:
        if not lean:
            return await tsock.recv(2048)
        while True:
            try:
                return sink.recv(2048)
            except BlockingIOError:
                await trio.lowlevel.wait_readable(sink)

    for _ in range(100):
        await send(b"w")
        with trio.move_on_after(2.0) as scope:
            await receive()
        if not scope.cancelled_caught:
            break
    else:
        raise RuntimeError("the relay chain never answered")
    lat = []
    for _ in range(count):
        t0 = time.monotonic_ns()
        await send(b"x" * PAYLOAD)
        await receive()
        lat.append((time.monotonic_ns() - t0) / 1000)
        if rate > 0:
            await trio.sleep(max(0.0, 1 / rate - (time.monotonic_ns() - t0) / 1e9))  # pacing
    return lat


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd")
    r = sub.add_parser("relay")
    r.add_argument("--mode", choices=MODES, required=True)
    r.add_argument("--port", type=int, required=True)
    r.add_argument("--next", type=int, required=True)
    p.add_argument("--wakeups", type=int, nargs="+", default=[2, 3])
    p.add_argument("--rate", type=float, default=100.0, help="paced datagrams per second (0: flat out)")
    p.add_argument("--count", type=int, default=1000, help="datagrams per paced run")
    p.add_argument("--hot-count", type=int, default=5000, help="datagrams per flat-out run")
    p.add_argument("--json", default="bench-results/bench_wakeups.json")
    a = p.parse_args()
    if a.cmd == "relay":
        relay_main(a)
        return
    rows = []
    for wakeups in a.wakeups:
        for mode in MODES:
            for rate, count in ((a.rate, a.count), (0.0, a.hot_count)):
                row = measure(mode, wakeups, rate, count)
                rows.append(row)
                print(f"  {wakeups} wake-ups, {mode}, {f'{rate:g}/s' if rate else 'flat out'}: "
                      f"p50 {row['p50_us']:.0f} us, p99 {row['p99_us']:.0f} us", flush=True)
    print()
    print("Datagram relayed through N process wake-ups on loopback (no other work), µs")
    print("| wake-ups | relays | rate | p50 | p99 | p50 per wake-up |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        rate = f"{row['rate']:g}/s" if row["rate"] else "flat out"
        print(f"| {row['wakeups']} | {row['mode']} | {rate} | {row['p50_us']:.0f} | {row['p99_us']:.0f} "
              f"| {row['p50_us'] / row['wakeups']:.0f} |")
    path = Path(a.json)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"when": time.strftime("%Y-%m-%dT%H:%M:%S"), "args": vars(a), "rows": rows}, indent=1))
    print(f"\nJSON written to {path}")


if __name__ == "__main__":
    main()
