"""Packing of small application messages into datagrams, fragmentation and reassembly.

The send queue holds accepted application messages until the token lets us send. One
datagram (:class:`~ringd.totem_messages.Mcast`) packs as many whole messages or fragments
as fit in ``mtu_bytes``. A message larger than one datagram is cut into fixed-size
fragments; the receiver reassembles per origin, in delivery order, and delivers the
message at the position of its last fragment.

A message whose fragments were only partly ordered on a ring that then broke is sent
again in full on the next ring (:meth:`SendQueue.restart_partial`): the receivers drop the
incomplete copy, so the message is delivered once, in one configuration.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from ringd.totem_messages import Chunk

DATAGRAM_OVERHEAD_BYTES = 512  # envelope, auth tag, Recovered+Mcast headers with 63-char names (490 B)
CHUNK_OVERHEAD_BYTES = 32  # CBOR framing of one Chunk beside its data (64-bit msg_id)


@dataclass(slots=True)
class _Outgoing:
    msg_id: int
    safe: bool
    payload: bytes
    count: int  # fragments
    next_index: int = 0  # first fragment not yet handed out


class SendQueue:
    """Application messages waiting for the token, and the packer that empties it."""

    def __init__(self, *, mtu_bytes: int, message_bytes_max: int, len_max: int) -> None:
        self.packet_bytes = max(64, mtu_bytes - DATAGRAM_OVERHEAD_BYTES)
        self.fragment_bytes = self.packet_bytes - CHUNK_OVERHEAD_BYTES
        self.message_bytes_max = message_bytes_max
        self.len_max = len_max
        self._queue: deque[_Outgoing] = deque()
        self._pending_bytes = 0

    def __len__(self) -> int:
        return len(self._queue)

    def offer(self, msg_id: int, payload: bytes, safe: bool) -> str | None:
        """Queue a message; returns why it was refused, or None when accepted."""
        size = len(payload)
        if size > self.message_bytes_max:
            return f"message of {size} bytes exceeds message_bytes_max {self.message_bytes_max}"
        if len(self._queue) >= self.len_max:
            return f"send queue full ({self.len_max} messages)"
        count = max(1, -(-size // self.fragment_bytes))
        self._queue.append(_Outgoing(msg_id, safe, payload, count))
        self._pending_bytes += size + CHUNK_OVERHEAD_BYTES * count
        return None

    def backlog(self) -> int:
        """Datagrams needed to empty the queue (flow control shares the window by this)."""
        if not self._queue:
            return 0
        return -(-self._pending_bytes // self.packet_bytes)

    def next_packet(self) -> tuple[tuple[Chunk, ...], bool, int]:
        """Take the next datagram's chunks: (chunks, any safe, fragments among them)."""
        queue = self._queue
        room = self.packet_bytes
        chunks: list[Chunk] = []
        safe = False
        fragments = 0
        fragment_bytes = self.fragment_bytes
        while queue:
            out = queue[0]
            if chunks and out.safe != safe:
                break  # a safe chunk would hold back the agreed ones packed with it
            if out.count == 1:
                cost = len(out.payload) + CHUNK_OVERHEAD_BYTES
                if cost > room and chunks:
                    break
                chunks.append(Chunk(msg_id=out.msg_id, safe=out.safe, index=0, count=1,
                                    data=out.payload))
                queue.popleft()
            else:
                start = out.next_index * fragment_bytes
                data = out.payload[start:start + fragment_bytes]
                cost = len(data) + CHUNK_OVERHEAD_BYTES
                if cost > room and chunks:
                    break
                chunks.append(Chunk(msg_id=out.msg_id, safe=out.safe, index=out.next_index,
                                    count=out.count, data=data))
                fragments += 1
                out.next_index += 1
                if out.next_index == out.count:
                    queue.popleft()
            self._pending_bytes -= cost
            safe = safe or out.safe
            room -= cost
        if not queue:
            self._pending_bytes = 0
        return tuple(chunks), safe, fragments

    def restart_partial(self) -> None:
        """The ring broke: a message only partly sent goes again, whole, on the next ring."""
        if self._queue and self._queue[0].next_index:
            out = self._queue[0]
            fragment_bytes = self.fragment_bytes
            resent = out.next_index
            out.next_index = 0
            self._pending_bytes += sum(
                len(out.payload[i * fragment_bytes:(i + 1) * fragment_bytes]) + CHUNK_OVERHEAD_BYTES
                for i in range(resent))


class Reassembler:
    """Per-origin reassembly of fragmented messages, fed in delivery order."""

    def __init__(self) -> None:
        self._partial: dict[str, tuple[int, list[bytes]]] = {}

    def feed(self, origin: str, chunk: Chunk) -> bytes | None:
        """Returns the whole payload once its last fragment arrives, else None.

        A fragment that does not continue the origin's partial message (a gap skipped in a
        transitional configuration) discards the partial one: that message is incomplete
        here and is never delivered.
        """
        if chunk.count == 1:
            self._partial.pop(origin, None)
            return chunk.data
        partial = self._partial.get(origin)
        if chunk.index == 0:
            self._partial[origin] = (chunk.msg_id, [chunk.data])
            return None
        if partial is None or partial[0] != chunk.msg_id or len(partial[1]) != chunk.index:
            self._partial.pop(origin, None)
            return None
        parts = partial[1]
        parts.append(chunk.data)
        if chunk.index + 1 == chunk.count:
            del self._partial[origin]
            return b"".join(parts)
        return None

    def reset(self) -> None:
        """A new regular configuration: no message spans two configurations."""
        self._partial.clear()
