"""Tests of Deadline, the lazily re-armed timer, on a ManualClock and a loop that only records."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, cast

from usher.clock import ManualClock
from usher.timers import Deadline


class Handle:
    def __init__(self, at: float, callback: Callable[[], None]) -> None:
        self.at = at
        self.callback = callback
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class RecordingLoop:
    """Schedules nothing by itself: the test fires what is due as it advances the clock."""

    def __init__(self, clock: ManualClock) -> None:
        self.clock = clock
        self.handles: list[Handle] = []

    def call_later(self, delay: float, callback: Callable[[], None]) -> Handle:
        handle = Handle(self.clock.now() + delay, callback)
        self.handles.append(handle)
        return handle

    def pending(self) -> list[Handle]:
        return [h for h in self.handles if not h.cancelled]

    def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)
        for handle in list(self.handles):
            if not handle.cancelled and handle.at <= self.clock.now():
                self.handles.remove(handle)
                handle.callback()


def deadline(on_expiry: Callable[[], None]) -> tuple[Deadline, RecordingLoop]:
    clock = ManualClock()
    loop = RecordingLoop(clock)
    return Deadline(cast(asyncio.AbstractEventLoop, cast(Any, loop)), on_expiry, clock), loop


def test_it_expires_once_at_its_deadline() -> None:
    fired: list[float] = []
    timer, loop = deadline(lambda: fired.append(loop.clock.now()))
    timer.arm(5.0)
    assert timer.armed
    loop.advance(4.9)
    assert fired == []
    loop.advance(0.1)
    assert fired == [5.0] and not timer.armed
    loop.advance(10.0)
    assert fired == [5.0]


def test_moving_the_deadline_later_makes_no_new_timer() -> None:
    fired: list[float] = []
    timer, loop = deadline(lambda: fired.append(loop.clock.now()))
    timer.arm(5.0)
    for _ in range(10):
        loop.advance(1.0)
        timer.arm(5.0)  # activity: the deadline moves, the handle stays
    assert len(loop.handles) == 1
    loop.advance(5.0)
    assert fired == [15.0]


def test_an_earlier_deadline_replaces_the_pending_timer() -> None:
    fired: list[float] = []
    timer, loop = deadline(lambda: fired.append(loop.clock.now()))
    timer.arm(60.0)
    timer.arm(1.0)
    assert len(loop.pending()) == 1
    loop.advance(1.0)
    assert fired == [1.0]


def test_disarmed_it_does_nothing_and_cancelled_it_leaves_no_timer() -> None:
    fired: list[float] = []
    timer, loop = deadline(lambda: fired.append(loop.clock.now()))
    timer.arm(1.0)
    timer.disarm()
    loop.advance(2.0)
    assert fired == [] and not timer.armed
    timer.arm(1.0)
    timer.cancel()
    assert loop.pending() == []
    loop.advance(2.0)
    assert fired == []


async def test_on_a_real_loop_it_expires_by_the_loop_clock() -> None:
    fired = asyncio.Event()
    timer = Deadline(asyncio.get_running_loop(), fired.set)
    timer.arm(0.01)
    await asyncio.wait_for(fired.wait(), 1.0)
