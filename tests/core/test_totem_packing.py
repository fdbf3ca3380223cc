"""Totem packing: send queue, datagram packing, fragmentation and reassembly (pure units)."""

from __future__ import annotations

from ringd.core.totem_packing import CHUNK_OVERHEAD_BYTES, Reassembler, SendQueue
from ringd.totem_messages import Chunk


def test_packs_whole_messages_up_to_the_datagram_size() -> None:
    q = SendQueue(mtu_bytes=1400, message_bytes_max=1 << 20, len_max=100)
    for i in range(30):
        assert q.offer(i, bytes(100), safe=False) is None
    chunks, safe, fragments = q.next_packet()
    assert not safe and fragments == 0
    assert len(chunks) == q.packet_bytes // (100 + CHUNK_OVERHEAD_BYTES)
    assert [c.msg_id for c in chunks] == list(range(len(chunks)))
    assert q.backlog() >= 1 and len(q) == 30 - len(chunks)


def test_safe_and_agreed_messages_do_not_share_a_datagram() -> None:
    q = SendQueue(mtu_bytes=60000, message_bytes_max=1 << 20, len_max=100)
    q.offer(1, b"a", safe=False)
    q.offer(2, b"b", safe=False)
    q.offer(3, b"c", safe=True)
    q.offer(4, b"d", safe=False)
    assert [([c.msg_id for c in p[0]], p[1]) for p in (q.next_packet(), q.next_packet(),
                                                        q.next_packet())] == [
        ([1, 2], False), ([3], True), ([4], False)]
    assert q.backlog() == 0 and len(q) == 0


def test_fragments_reassemble_and_a_restart_resends_the_whole_message() -> None:
    q = SendQueue(mtu_bytes=600, message_bytes_max=1 << 20, len_max=100)
    payload = bytes(range(256)) * 10
    q.offer(7, payload, safe=False)
    first, _, n = q.next_packet()
    assert n == 1 and first[0].index == 0 and first[0].count > 4
    q.restart_partial()  # the ring broke after one fragment
    r = Reassembler()
    out = []
    while len(q):
        chunks, _, _ = q.next_packet()
        for c in chunks:
            whole = r.feed("a", c)
            if whole is not None:
                out.append(whole)
    assert out == [payload]


def test_reassembly_drops_a_message_with_a_missing_fragment() -> None:
    r = Reassembler()

    def chunk(msg_id: int, index: int, count: int) -> Chunk:
        return Chunk(msg_id=msg_id, safe=False, index=index, count=count, data=bytes([index]))

    assert r.feed("a", chunk(1, 0, 3)) is None
    assert r.feed("a", chunk(1, 2, 3)) is None  # fragment 1 was skipped (a gap)
    assert r.feed("a", chunk(2, 0, 2)) is None
    assert r.feed("b", chunk(9, 0, 1)) == b"\x00"  # origins are independent
    assert r.feed("a", chunk(2, 1, 2)) == b"\x00\x01"
