"""The driver's alarm: its eventfd becomes readable at the parked deadline, not before,
whichever way the deadline moved since the timer task was armed (trio's autojump clock)."""

from __future__ import annotations

import math

import pytest
import trio
import trio.testing

from ringd.runtime.alarm import Alarm


async def _park_and_wait(alarm: Alarm, deadline: float) -> float:
    alarm.park(deadline)
    await trio.lowlevel.wait_readable(alarm.fd)
    alarm.unpark()
    return trio.current_time()


@pytest.fixture
def clock() -> trio.testing.MockClock:
    return trio.testing.MockClock(autojump_threshold=0)


async def _with_timer(body) -> float:  # type: ignore[no-untyped-def]
    alarm = Alarm()
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(alarm.run_timer)
            await trio.testing.wait_all_tasks_blocked()
            with trio.fail_after(1000.0):  # virtual time: a broken alarm fails, not hangs
                woke = await body(alarm)
            nursery.cancel_scope.cancel()
        return woke
    finally:
        alarm.close()


async def test_wakes_at_the_deadline(clock: trio.testing.MockClock) -> None:
    start = trio.current_time()
    woke = await _with_timer(lambda alarm: _park_and_wait(alarm, start + 2.0))
    assert woke == pytest.approx(start + 2.0)


async def test_a_deadline_moved_earlier_is_kept(clock: trio.testing.MockClock) -> None:
    start = trio.current_time()

    async def body(alarm: Alarm) -> float:
        alarm.park(start + 5.0)  # the timer task arms for 5 s ...
        await trio.testing.wait_all_tasks_blocked()
        alarm.unpark()
        return await _park_and_wait(alarm, start + 1.0)  # ... and must not sleep past 1 s

    assert await _with_timer(body) == pytest.approx(start + 1.0)


async def test_a_deadline_moved_later_does_not_wake_early(clock: trio.testing.MockClock) -> None:
    start = trio.current_time()

    async def body(alarm: Alarm) -> float:
        alarm.park(start + 1.0)
        await trio.testing.wait_all_tasks_blocked()
        alarm.unpark()
        return await _park_and_wait(alarm, start + 3.0)

    assert await _with_timer(body) == pytest.approx(start + 3.0)


async def test_again_after_a_deadline_passed_unparked(clock: trio.testing.MockClock) -> None:
    start = trio.current_time()

    async def body(alarm: Alarm) -> float:
        assert await _park_and_wait(alarm, start + 1.0) == pytest.approx(start + 1.0)
        # Busy (not parked) past the next deadline: the timer's ring is a no-op then, and
        # the next park must arm it again.
        alarm.deadline = start + 1.5
        clock.jump(1.0)
        await trio.testing.wait_all_tasks_blocked()  # the timer has seen the time pass
        return await _park_and_wait(alarm, start + 4.0)

    assert await _with_timer(body) == pytest.approx(start + 4.0)


async def test_ring_wakes_at_once_and_no_deadline_never_does(clock: trio.testing.MockClock) -> None:
    start = trio.current_time()

    async def body(alarm: Alarm) -> float:
        alarm.park(math.inf)
        with trio.move_on_after(100.0) as scope:
            await trio.lowlevel.wait_readable(alarm.fd)
        assert scope.cancelled_caught  # nothing rang in 100 s
        alarm.ring()
        await trio.lowlevel.wait_readable(alarm.fd)
        alarm.unpark()
        return trio.current_time()

    assert await _with_timer(body) == pytest.approx(start + 100.0)
