"""Tests of Deadline, the lazily re-armed timer: on a ManualClock, which wakes it as it is
advanced (no real time passes), and on a real loop."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from usher.clock import ManualClock, MonotonicClock
from usher.timers import Deadline, wakeups_for


def deadline(on_expiry: Callable[[], None]) -> tuple[Deadline, ManualClock]:
    clock = ManualClock()
    return Deadline(clock, clock, on_expiry), clock


def test_it_expires_once_at_its_deadline() -> None:
    fired: list[float] = []
    timer, clock = deadline(lambda: fired.append(clock.now()))
    timer.arm(5.0)
    assert timer.armed
    clock.advance(4.9)
    assert fired == []
    clock.advance(0.1)
    assert fired == [5.0] and not timer.armed
    clock.advance(10.0)
    assert fired == [5.0]


def test_it_fires_at_its_own_time_within_a_long_advance() -> None:
    fired: list[float] = []
    timer, clock = deadline(lambda: fired.append(clock.now()))
    timer.arm(5.0)
    clock.advance(60.0)
    assert fired == [5.0] and clock.now() == 60.0


def test_moving_the_deadline_later_makes_no_new_timer() -> None:
    fired: list[float] = []
    timer, clock = deadline(lambda: fired.append(clock.now()))
    timer.arm(5.0)
    for _ in range(10):
        clock.advance(1.0)
        timer.arm(5.0)  # activity: the deadline moves, the handle stays
        assert clock.pending() == 1
    clock.advance(5.0)
    assert fired == [15.0]


def test_an_earlier_deadline_replaces_the_pending_timer() -> None:
    fired: list[float] = []
    timer, clock = deadline(lambda: fired.append(clock.now()))
    timer.arm(60.0)
    timer.arm(1.0)
    assert clock.pending() == 1
    clock.advance(1.0)
    assert fired == [1.0]
    clock.advance(100.0)
    assert fired == [1.0]


def test_disarmed_it_does_nothing_and_cancelled_it_leaves_no_timer() -> None:
    fired: list[float] = []
    timer, clock = deadline(lambda: fired.append(clock.now()))
    timer.arm(1.0)
    timer.disarm()
    clock.advance(2.0)
    assert fired == [] and not timer.armed
    timer.arm(1.0)
    timer.cancel()
    assert clock.pending() == 0
    clock.advance(2.0)
    assert fired == []


def test_a_manual_clock_wakes_its_own_deadlines_and_a_real_one_leaves_it_to_the_loop() -> None:
    loop = asyncio.new_event_loop()
    try:
        manual = ManualClock()
        assert wakeups_for(manual, loop) is manual
        assert wakeups_for(MonotonicClock(), loop) is loop
    finally:
        loop.close()


async def test_on_a_real_loop_it_expires_by_the_injected_clock() -> None:
    fired = asyncio.Event()
    clock = MonotonicClock()
    timer = Deadline(clock, wakeups_for(clock, asyncio.get_running_loop()), fired.set)
    start = clock.now()
    timer.arm(0.02)
    await asyncio.wait_for(fired.wait(), 1.0)
    assert clock.now() - start >= 0.02  # never early on the clock it measures against
