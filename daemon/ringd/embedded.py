"""A ringd node inside an application's own Trio loop: no separate daemon process.

memberlist is used this way, as a library; Corosync cannot be. The node is the daemon's own
runtime (the same :class:`~ringd.core.node.NodeCore`, UDP sockets, control socket and
metrics), started in the application's nursery, so it interoperates with daemons on the
same ring and answers ``ringd status --socket PATH`` like one. The application talks to it
with the same groups API as a daemon's clients: :meth:`EmbeddedNode.connect` returns a
:class:`~ringd.client.RingClient` over an in-process socket pair, which spares the hop to
another process on the latency path of every message.

.. code-block:: python

    import trio
    from ringd.embedded import open_node

    async def main() -> None:
        settings = {"name": "app1", "socket": "/tmp/app1.sock", "state_dir": "/tmp/app1"}
        async with open_node(settings) as node, await node.connect() as ring:
            await ring.join("chat")
            await ring.send("chat", b"hello")
            async for event in ring.events():
                print(event)

    trio.run(main)

Leaving the ``open_node`` block leaves the cluster gracefully (as SIGTERM makes a daemon
do); an exception in the block stops the node at once instead.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import trio

from ringd.client.errors import ClientError
from ringd.client.trio_client import RingClient
from ringd.config import Config, load_config
from ringd.runtime.control import status_reply
from ringd.runtime.node import Daemon, StartupError, run_daemon

__all__ = ["EmbeddedNode", "EmbeddedNodeError", "open_node"]

RING_POLL_S = 0.02


class EmbeddedNodeError(ClientError):
    """The embedded node could not start, or is no longer running; ``str()`` is one line."""


class EmbeddedNode:
    """A running embedded node (get one from :func:`open_node`)."""

    def __init__(self, daemon: Daemon, done: trio.Event) -> None:
        self._daemon = daemon
        self._done = done

    @property
    def name(self) -> str:
        """The node's name in the cluster."""
        return self._daemon.node.name

    @property
    def config(self) -> Config:
        """The node's validated configuration."""
        return self._daemon.cfg

    @property
    def running(self) -> bool:
        """False once the node has left the cluster or stopped."""
        return not self._done.is_set()

    async def connect(self) -> RingClient:
        """A new client connection to this node, with the API of a daemon's clients. Enter
        it with ``async with``; open as many as the application likes."""
        if not self.running:
            raise EmbeddedNodeError(f"embedded node {self.name} is not running")
        return RingClient(self._daemon.open_local_connection(), self._daemon.cfg.socket_path)

    async def wait_ring(self, members: int, timeout_s: float = 60.0) -> list[str]:
        """Wait until this node is in an operational ring of at least ``members`` members
        (itself included) and return them; raises :class:`trio.TooSlowError` after
        ``timeout_s``. A node that has just started forms a ring of its own at once and
        merges with the others it discovers a moment later."""
        with trio.fail_after(timeout_s):
            while True:
                totem = self._daemon.ring_info()
                ring = list(totem.get("members") or ())  # type: ignore[call-overload]
                if totem.get("state") == "operational" and len(ring) >= members:
                    return ring
                await trio.sleep(RING_POLL_S)  # the core has no ring-changed callback

    def status(self) -> dict[str, Any]:
        """What ``ringd status`` shows: gossip view, ring, quorum, counters."""
        return status_reply(self._daemon)

    async def leave(self) -> None:
        """Leave the cluster gracefully and wait until the node has stopped."""
        await self._daemon.request_leave("the application asked to leave")
        await self._done.wait()


@asynccontextmanager
async def open_node(settings: Mapping[str, Any] | None = None, *, config_file: Path | None = None,
                    config: Config | None = None) -> AsyncIterator[EmbeddedNode]:
    """Start a node in the current Trio loop; it runs until the block ends.

    ``settings`` are config keys as in ``ringd run --set`` (``"totem.token_timeout_s"``),
    applied over ``config_file`` (TOML, as for a daemon) and the preset; environment
    variables are not read. Or pass a ready ``config``. Raises :class:`EmbeddedNodeError`
    (one line) when the node cannot start: a bad setting, a port or socket in use.
    """
    if config is None:
        try:
            config = load_config(config_file, env={}, overrides=settings)
        except ValueError as exc:  # ConfigError
            raise EmbeddedNodeError(str(exc)) from None
    done = trio.Event()

    async def run(*, task_status: trio.TaskStatus[Daemon] = trio.TASK_STATUS_IGNORED) -> None:
        try:
            await run_daemon(config, embedded=True, task_status=task_status)
        finally:
            done.set()

    failed: StartupError | None = None
    try:
        async with trio.open_nursery() as nursery:
            try:
                daemon: Daemon = await nursery.start(run)
            except StartupError as exc:
                failed = exc
            else:
                try:
                    yield EmbeddedNode(daemon, done)
                except BaseException:
                    daemon.stop(1)
                    raise
                if not done.is_set():
                    await daemon.request_leave("the application closed the embedded node")
    except BaseExceptionGroup as group:
        # The nursery wraps what the application's block raised: give it back as it was.
        if len(group.exceptions) == 1:
            raise group.exceptions[0] from None
        raise
    if failed is not None:
        raise EmbeddedNodeError(f"embedded node {config.node_name}: {failed}") from None
