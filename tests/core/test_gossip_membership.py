"""Membership behaviour of GossipCore over the in-memory network (fake clock, seeded)."""

from __future__ import annotations

import pytest
from gossip_harness import GossipNet, make_cluster

from ringd.config import GossipConfig
from ringd.core.events import (
    Fatal,
    LeaveCluster,
    LeaveDone,
    Log,
    MemberChanged,
    Received,
    Send,
    Start,
    Tick,
)
from ringd.messages import (
    Address,
    Announce,
    Dead,
    Gossip,
    MemberState,
    NameConflict,
    Ping,
    Suspect,
)

ALIVE, SUSPECT, DEAD, LEFT = MemberState.ALIVE, MemberState.SUSPECT, MemberState.DEAD, MemberState.LEFT
SEEDS = range(3)


@pytest.mark.parametrize("seed", SEEDS)
def test_join_by_multicast_announce(seed: int) -> None:
    net = GossipNet(seed)
    for i in range(6):
        net.add(f"n{i}")
    # one round trip per announce: everyone knows everyone well within a probe interval
    assert net.run_until_true(net.converged, 0.4)
    net.run_for(2.0)
    assert net.converged()
    for node in net.nodes.values():
        first = [e for _, e in node.effects if isinstance(e, MemberChanged) and e.old_state is None]
        assert sorted(e.node for e in first) == sorted(net.nodes)  # each member seen new once


@pytest.mark.parametrize("seed", SEEDS)
def test_join_by_seeds_without_multicast(seed: int) -> None:
    net = GossipNet(seed)
    first = net.add("s0", multicast=False)
    for i in range(1, 6):
        net.add(f"s{i}", multicast=False, seeds=[first.address])
    assert net.run_until_true(net.converged, 1.0)


def test_seed_that_is_down_at_start_is_retried() -> None:
    cfg = GossipConfig()
    net = GossipNet(1, cfg)
    seed = net.add("a", multicast=False)
    net.kill("a")
    net.add("b", multicast=False, seeds=[seed.address])
    net.run_for(1.0)
    net.restart("a")
    # b retries its seed every announce interval while it is alone
    assert net.run_until_true(net.converged, cfg.announce_interval_s + 0.5)


@pytest.mark.parametrize("seed", SEEDS)
def test_failure_is_suspected_then_dead_everywhere(seed: int) -> None:
    net = make_cluster(8, seed)
    net.run_for(2.0)
    killed_at = net.now
    net.kill("n03")
    assert net.run_until_true(lambda: net.all_see("n03", [DEAD]), 10.0)
    for key in net.nodes:
        if key != "n03":
            suspect_t = net.first_time(key, "n03", SUSPECT)
            dead_t = net.first_time(key, "n03", DEAD)
            assert suspect_t is not None and dead_t is not None and killed_at < suspect_t < dead_t
    # nobody else was ever suspected
    for key in net.nodes:
        assert all(e.node == "n03" for _, e in net.changes(key) if e.new_state in ("SUSPECT", "DEAD"))
    assert any(isinstance(e, Log) and e.text == "member dead" for _, e in net.nodes["n00"].effects)


def test_false_suspicion_is_refuted() -> None:
    net = make_cluster(5, 2)
    net.run_for(1.0)
    victim = net.nodes["n01"].core
    before = victim.incarnation
    # n00 wrongly suspects n01 (as if its probe had been lost)
    wrong = Suspect(node="n01", incarnation=before, source="n00")
    net.inject("n00", Received(msg=Gossip(piggyback=(wrong,)), sender="n04",
                               source=net.nodes["n04"].address))
    assert net.state("n00", "n01") is SUSPECT
    assert net.run_until_true(lambda: net.all_see("n01", [ALIVE]) and victim.incarnation > before, 2.0)
    net.run_for(10.0)
    assert net.all_see("n01", [ALIVE])
    assert all(net.view(k, "n01").incarnation == victim.incarnation for k in net.nodes)
    assert victim.stats.suspicions_refuted >= 1
    assert any(e.new_state == "ALIVE" for _, e in net.changes("n00", "n01") if e.old_state == "SUSPECT")


def test_buddy_system_puts_the_suspicion_first_in_the_ping() -> None:
    net = make_cluster(3, 0)
    core = net.nodes["n00"].core
    rumour = Gossip(piggyback=(Suspect(node="n01", incarnation=0, source="n02"),))
    net.inject("n00", Received(msg=rumour, sender="n02", source=net.nodes["n02"].address))
    assert net.state("n00", "n01") is SUSPECT
    # drive n00 alone until it pings n01: the first piggybacked update is the suspicion
    for _ in range(20):
        effects = core.handle(Tick(), core.next_deadline())
        pings = [e.msg for e in effects if isinstance(e, Send) and isinstance(e.msg, Ping) and e.msg.target == "n01"]
        if pings:
            assert pings[0].piggyback[0] == Suspect(node="n01", incarnation=0, source="n00")
            return
    pytest.fail("n00 never pinged its suspect")


@pytest.mark.parametrize("seed", SEEDS)
def test_indirect_probe_keeps_member_behind_broken_link_alive(seed: int) -> None:
    net = make_cluster(6, seed)
    net.block("n00", "n01")  # everything between n00 and n01 is lost, both ways
    net.run_for(30.0)
    assert net.all_see("n01", [ALIVE]) and net.all_see("n00", [ALIVE])
    for key in net.nodes:
        assert not [e for _, e in net.changes(key) if e.new_state == "DEAD"], key
    assert net.nodes["n00"].core.stats.probes_indirect_ack > 0


@pytest.mark.parametrize("seed", SEEDS)
def test_graceful_leave_is_left_everywhere_and_never_suspected(seed: int) -> None:
    net = make_cluster(8, seed)
    net.run_for(1.0)
    net.inject("n05", LeaveCluster())
    cfg = net.config
    assert net.run_until_true(lambda: any(isinstance(e, LeaveDone) for _, e in net.nodes["n05"].effects),
                              3 * cfg.probe_interval_s + 0.01)
    net.kill("n05")  # the runtime exits on LeaveDone
    assert net.run_until_true(lambda: net.all_see("n05", [LEFT]), 1.0)
    net.run_for(20.0)
    assert net.all_see("n05", [LEFT])
    for key in net.nodes:
        assert [e.new_state for _, e in net.changes(key, "n05") if e.old_state is not None] in (["LEFT"], [])


def test_leave_alone_is_done_at_once() -> None:
    net = GossipNet(0)
    net.add("solo")
    net.inject("solo", LeaveCluster())
    assert any(isinstance(e, LeaveDone) for _, e in net.nodes["solo"].effects)


@pytest.mark.parametrize("seed", SEEDS)
def test_restart_with_incarnation_zero_is_alive_again_higher(seed: int) -> None:
    net = make_cluster(5, seed)
    net.run_for(1.0)
    net.kill("n02")
    assert net.run_until_true(lambda: net.all_see("n02", [DEAD]), 10.0)
    old = net.view("n00", "n02").incarnation
    net.restart("n02", incarnation=0)
    assert net.run_until_true(lambda: net.all_see("n02", [ALIVE]), 2.0)
    assert net.nodes["n02"].core.incarnation > old
    assert all(net.view(k, "n02").incarnation == net.nodes["n02"].core.incarnation for k in net.nodes)


def test_quick_restart_before_detection_stays_alive() -> None:
    net = make_cluster(5, 4)
    net.kill("n02")
    net.run_for(0.6)  # some members may already suspect it
    net.restart("n02", incarnation=0)
    net.run_for(10.0)
    assert net.all_see("n02", [ALIVE])


@pytest.mark.parametrize("seed", SEEDS)
def test_name_conflict_is_fatal_for_the_newcomer_only(seed: int) -> None:
    net = make_cluster(4, seed)
    holder = net.nodes["n01"]
    newcomer = net.add("n01")  # same name, different address
    assert newcomer.key != "n01"
    net.run_for(5.0)
    fatal = [e for _, e in newcomer.effects if isinstance(e, Fatal)]
    assert fatal and fatal[0].reason == f"name 'n01' is already used by a live daemon at {holder.address}"
    assert not newcomer.up
    assert holder.up and not any(isinstance(e, Fatal) for n in net.up_nodes() for _, e in n.effects)
    assert all(net.view(k, "n01").address == holder.address for k in ("n00", "n02", "n03"))
    assert net.converged()


def test_name_conflict_via_seed_only() -> None:
    net = GossipNet(3)
    a = net.add("a", multicast=False)
    net.add("b", multicast=False, seeds=[a.address])
    assert net.run_until_true(net.converged, 1.0)
    dup = net.add("b", multicast=False, seeds=[a.address])
    net.run_for(2.0)
    assert any(isinstance(e, Fatal) for _, e in dup.effects)
    assert net.view("a", "b").address == net.nodes["b"].address


def test_two_daemons_of_one_name_that_tell_each_other_at_once_keep_the_older() -> None:
    # The race the daemon test once lost: an impostor starts 0.5 s after the holder, each
    # hears the other's claim in the same instant and tells it "name conflict". Without a
    # tie-break both exited.
    net = GossipNet(0)
    holder = net.add("a")
    net.run_for(0.5)
    impostor_core = net.add("a").core
    holder_core = holder.core
    now = net.now

    def conflict_sent(core: object, claim: Announce, source: Address) -> NameConflict:
        effects = core.handle(Received(msg=claim, sender="a", source=source), now)  # type: ignore[attr-defined]
        [sent] = [e.msg for e in effects if isinstance(e, Send) and isinstance(e.msg, NameConflict)]
        return sent

    holder_addr, impostor_addr = holder_core.address, impostor_core.address
    to_impostor = conflict_sent(holder_core, Announce(address=impostor_addr, incarnation=0),
                                impostor_addr)
    to_holder = conflict_sent(impostor_core, Announce(address=holder_addr, incarnation=0),
                              holder_addr)
    assert to_impostor.holder_uptime_s >= 0.5 > to_holder.holder_uptime_s >= 0.0
    # Each now gets the other's NameConflict: only the younger one exits.
    effects = holder_core.handle(Received(msg=to_holder, sender="a", source=impostor_addr), now)
    assert not any(isinstance(e, Fatal) for e in effects)
    assert holder_core.stats.name_conflicts_ignored == 1
    effects = impostor_core.handle(Received(msg=to_impostor, sender="a", source=holder_addr), now)
    assert any(isinstance(e, Fatal) for e in effects)
    # A third party's word carries no age and stays final.
    third = NameConflict(node="a", holder_address=impostor_addr)
    effects = holder_core.handle(Received(msg=third, sender="b", source=impostor_addr), now)
    assert any(isinstance(e, Fatal) for e in effects)


def test_own_multicast_loopback_is_ignored() -> None:
    net = GossipNet(0)
    node = net.add("a")
    core = node.core
    effects = core.handle(Received(msg=Announce(address=node.address, incarnation=0), sender="a",
                                   source=node.address), 0.01)
    assert effects == [] or all(not isinstance(e, Fatal) for e in effects)
    assert core.stats.name_conflicts_sent == 0
    # the same name from elsewhere is a conflict
    other = Address(host="127.0.0.1", port=1)
    effects = core.handle(Received(msg=Announce(address=other, incarnation=0), sender="a", source=other), 0.02)
    assert core.stats.name_conflicts_sent == 1


def test_reaping_forgets_dead_members() -> None:
    cfg = GossipConfig(reap_dead_s=5.0)
    net = make_cluster(4, 1, cfg)
    net.kill("n03")
    assert net.run_until_true(lambda: net.all_see("n03", [DEAD]), 10.0)
    assert net.run_until_true(lambda: all(net.view(k, "n03") is None for k in ("n00", "n01", "n02")), 6.0)
    assert net.nodes["n00"].core.stats.members_reaped == 1


def test_start_reports_self() -> None:
    net = GossipNet(0)
    node = net.add("me", tags={"role": "x"})
    first = [e for _, e in node.effects if isinstance(e, MemberChanged)][0]
    assert (first.node, first.old_state, first.new_state, first.tags) == ("me", None, "ALIVE", {"role": "x"})
    assert node.core.handle(Start(), 1.0) == []  # a second Start is a no-op


def test_an_alone_announcer_that_we_know_alive_gets_our_state() -> None:
    """A member restarted and the others already learned its new incarnation by gossip, but
    it knows nobody: its announces say it is alone, and an alone announcer is answered."""
    net = make_cluster(3, 1)
    assert net.run_until_true(net.converged, 1.0)
    core = net.nodes["n00"].core
    n01 = net.nodes["n01"]
    for alone, answered in ((False, False), (True, True)):
        msg = Announce(address=n01.address, incarnation=n01.core.incarnation, alone=alone)
        effects = core.handle(Received(msg=msg, sender="n01", source=n01.address), net.now)
        push_pulls = [e for e in effects if isinstance(e, Send) and type(e.msg).__name__ == "PushPull"
                      and e.dest == n01.address]
        assert bool(push_pulls) is answered


def test_a_member_we_hold_dead_learns_it_from_our_ack() -> None:
    """Whoever declared a member dead stops probing it, so it may never hear the news by
    gossip; its own ping is the chance to tell it, and it refutes at once."""
    net = make_cluster(3, 1)
    assert net.run_until_true(net.converged, 1.0)
    core = net.nodes["n00"].core
    n01 = net.nodes["n01"]
    dead = Dead(node="n01", incarnation=n01.core.incarnation, source="n02")
    core.handle(Received(msg=Gossip(piggyback=(dead,)), sender="n02", source=net.nodes["n02"].address),
                net.now)
    assert net.view("n00", "n01").state is DEAD  # type: ignore[union-attr]
    ping = Ping(seq=7, target="n00", piggyback=())
    effects = core.handle(Received(msg=ping, sender="n01", source=n01.address), net.now)
    (ack,) = [e.msg for e in effects if isinstance(e, Send) and type(e.msg).__name__ == "Ack"]
    assert dead in ack.piggyback
    before = n01.core.incarnation
    n01.core.handle(Received(msg=ack, sender="n00", source=net.nodes["n00"].address), net.now)
    assert n01.core.incarnation == before + 1  # refuted


def test_a_stale_claim_about_us_makes_us_say_we_are_alive_again() -> None:
    net = make_cluster(2, 1)
    assert net.run_until_true(net.converged, 1.0)
    core = net.nodes["n00"].core
    other = net.nodes["n01"]
    core.handle(Received(msg=Gossip(piggyback=(Suspect(node="n00", incarnation=core.incarnation,
                                                            source="n01"),)),
                         sender="n01", source=other.address), net.now)
    current = core.incarnation  # refuted: one higher
    assert core.broadcast_queue_len >= 1
    net.run_for(5.0)  # the refutation is sent (and its retransmissions spent)
    assert core.broadcast_queue_len == 0
    stale = Dead(node="n00", incarnation=current - 1, source="n01")
    core.handle(Received(msg=Gossip(piggyback=(stale,)), sender="n01", source=other.address), net.now)
    assert core.incarnation == current and core.broadcast_queue_len == 1  # Alive queued again
