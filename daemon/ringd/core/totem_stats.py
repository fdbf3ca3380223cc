"""Counters of the Totem core: plain ints and dicts, read by the metrics collector at scrape time.

Names follow corosync's ``totemsrp_stats_t`` where one exists (``orf_token_rx`` → ``token_rx``).
The cores only count; they never export.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ringd.core.histogram import Histogram


class _TimingHistograms:
    """The Totem core's timing histograms, read by the metrics collector.

    Attributes of :class:`TotemStats` but deliberately not dataclass fields: status replies
    and ``asdict()`` turn the fields into plain ints and dicts (CBOR/JSON), which a
    :class:`Histogram` is not.
    """

    __slots__ = ("token_rotation_s", "token_hold_s")
    # Seconds between two consecutive tokens this node processed in Operational (corosync
    # mtt_rx_token); includes the time an idle token was held.
    token_rotation_s: Histogram
    # Seconds a held (idle-ring) token was kept before it was released.
    token_hold_s: Histogram


@dataclass(slots=True)
class TotemStats(_TimingHistograms):
    """Everything the Totem core counts. Dict keys are enum values (metric label values);
    the timing histograms are inherited attributes, outside the fields (see the base)."""

    token_rx: int = 0  # tokens processed (duplicates excluded)
    token_tx: int = 0  # tokens forwarded (first sends)
    token_retx: int = 0  # token retransmissions (timer)
    token_dup_rx: int = 0  # duplicate or stale tokens dropped
    token_held: int = 0  # times we held the token on an idle ring
    hold_cancels: int = 0  # held tokens released early for a new send
    token_jumps: int = 0  # of those, sent straight to the member that asked
    throttled_visits: int = 0  # token visits that claimed the window for slow local readers
    mcast_tx: int = 0  # new datagrams multicast (each carries one or more app messages)
    mcast_rx: int = 0  # datagrams of our ring stored (duplicates excluded)
    mcast_dup_rx: int = 0  # datagrams already held
    mcast_retx: int = 0  # datagrams rebroadcast to answer a retransmission request
    recovery_tx: int = 0  # old-ring datagrams rebroadcast in Recovery
    rtr_requested: int = 0  # seqs we put into the token's retransmission list
    rtr_dropped: int = 0  # requests we took off the token: every member already had those seqs
    app_sent: int = 0  # application messages accepted by Publish
    app_refused: int = 0  # Publish refused (too large, queue full)
    fragments_tx: int = 0  # fragments of large messages sent
    deliveries_agreed: int = 0
    deliveries_safe: int = 0
    join_tx: int = 0
    join_rx: int = 0
    commit_token_tx: int = 0
    commit_token_rx: int = 0
    merge_detect_tx: int = 0
    merge_detect_rx: int = 0
    consensus_timeouts: int = 0
    fail_to_recv: int = 0
    rings_formed: int = 0  # commit tokens created as representative
    foreign_rx: int = 0  # messages of another ring seen
    nonmember_rx: int = 0  # multicasts on our ring from a non-member (forged or a bug): dropped
    flap_held_hints: int = 0  # PeerAlive hints ignored because the node is flapping
    flap_holds_adopted: int = 0  # holds taken over from other members' Joins
    joins_failing_us_ignored: int = 0  # Operational: Joins of non-members that fail us
    state_entered: dict[str, int] = field(default_factory=dict)  # State name -> count
    gather_entered: dict[str, int] = field(default_factory=dict)  # Reason value -> count
    token_lost: dict[str, int] = field(default_factory=dict)  # State name when it was lost
    configurations: dict[str, int] = field(default_factory=dict)  # ConfigKind value -> count
    send_queue_len: int = 0  # gauge: app messages waiting to be sent
    ring_seq: int = 0  # gauge: seq of the ring we are on

    def __post_init__(self) -> None:
        self.token_rotation_s = Histogram()
        self.token_hold_s = Histogram()

    def bump(self, counter: dict[str, int], key: str) -> None:
        counter[key] = counter.get(key, 0) + 1
