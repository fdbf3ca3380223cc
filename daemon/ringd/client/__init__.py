"""Client of a ringd daemon's unix socket: ordered group messaging and control requests.

Ordered delivery (Trio)::

    async with open_client(path) as ring:          # or: async with await RingClient.connect(path)
        await ring.join("chat")
        await ring.send("chat", "hello")           # one frame; a list sends a batch
        async for ev in ring.events():             # MessageEvent | ConfigEvent | GroupEvent
            ...

Ordered delivery (blocking, no threads, no Trio)::

    with BlockingRingClient(path) as ring:
        ring.join("chat")
        ring.send("chat", b"hello")
        for m in many: ring.submit("chat", m)      # pipelined: coalesced into few requests
        ring.flush()                               # every submitted send answered
        for ev in ring.events(timeout=1.0):
            ...

Control requests (Trio)::

    async with await ControlClient.connect(path) as client:
        status = await client.request("status")

Control requests, blocking (one connection per call)::

    from ringd import client
    client.members(path)   # [{"name", "state", "incarnation", "address", "tags"}, ...]

Layout: :mod:`~ringd.client.connection` is the connection without I/O (request ids,
framing, reply matching, coalescing, the event buffer); :mod:`~ringd.client.trio_client`
and :mod:`~ringd.client.blocking` only move its bytes. Every error is a
:class:`ClientError` whose ``str()`` is one line.
"""

from ringd.client.blocking import (
    BLOCKING_EVENT_FRAMES_MAX,
    BlockingRingClient,
    events,
    leave,
    members,
    quorum,
    request,
    send_event,
    set_expected_votes,
    set_tags,
    status,
)
from ringd.client.connection import (
    READ_BYTES_MAX,
    REQUEST_TIMEOUT_S,
    SEND_BYTES_MAX,
    ClientConnection,
    ConnectionStats,
    Ticket,
)
from ringd.client.errors import (
    ClientError,
    ConnectionLost,
    DaemonNotRunning,
    DaemonTimeout,
    ProtocolError,
    RequestFailed,
    TryAgain,
)
from ringd.client.events import (
    Batch,
    ConfigEvent,
    Event,
    GroupEvent,
    MessageBatch,
    MessageEvent,
    QuorumEvent,
    decode_event,
    event_json,
    expand,
)
from ringd.client.socket_path import resolve_socket
from ringd.client.trio_client import (
    EVENT_FRAMES_BUFFERED,
    ControlClient,
    RingClient,
    leave_async,
    open_client,
)

__all__ = [
    "BLOCKING_EVENT_FRAMES_MAX", "EVENT_FRAMES_BUFFERED", "READ_BYTES_MAX", "REQUEST_TIMEOUT_S",
    "SEND_BYTES_MAX", "Batch", "BlockingRingClient", "ClientConnection", "ClientError",
    "ConfigEvent", "ConnectionLost", "ConnectionStats", "ControlClient", "DaemonNotRunning",
    "DaemonTimeout", "Event", "GroupEvent", "MessageBatch", "MessageEvent", "ProtocolError", "QuorumEvent",
    "RequestFailed", "RingClient", "Ticket", "TryAgain", "decode_event", "event_json", "events",
    "expand", "leave", "leave_async", "members", "open_client", "request", "resolve_socket",
    "quorum", "send_event", "set_expected_votes", "set_tags", "status",
]
