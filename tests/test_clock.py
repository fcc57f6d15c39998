"""Tests of the injected clocks."""

from __future__ import annotations

import pytest

from usher.clock import Clock, ManualClock, MonotonicClock


def test_manual_clock_starts_at_zero_by_default() -> None:
    assert ManualClock().now() == 0.0


def test_manual_clock_starts_where_told() -> None:
    assert ManualClock(1234.5).now() == 1234.5


def test_manual_clock_stands_still_until_advanced() -> None:
    clock = ManualClock(10.0)
    assert [clock.now() for _ in range(3)] == [10.0, 10.0, 10.0]


def test_manual_clock_advances() -> None:
    clock = ManualClock()
    clock.advance(1.5)
    assert clock.now() == 1.5
    clock.advance(0.25)
    assert clock.now() == 1.75
    clock.advance(0)
    assert clock.now() == 1.75


def test_manual_clock_does_not_go_backwards() -> None:
    clock = ManualClock(5.0)
    with pytest.raises(ValueError, match="backwards"):
        clock.advance(-0.001)
    assert clock.now() == 5.0


def test_monotonic_clock_never_goes_backwards() -> None:
    clock = MonotonicClock()
    readings = [clock.now() for _ in range(100)]
    assert readings == sorted(readings)
    assert all(isinstance(r, float) for r in readings)


def test_both_clocks_fit_the_protocol() -> None:
    clocks: list[Clock] = [ManualClock(), MonotonicClock()]
    assert all(isinstance(c.now(), float) for c in clocks)


def test_manual_clock_runs_wakeups_in_time_order_as_it_advances() -> None:
    clock = ManualClock()
    seen: list[tuple[str, float]] = []
    clock.call_later(2.0, lambda: seen.append(("b", clock.now())))
    clock.call_later(1.0, lambda: seen.append(("a", clock.now())))
    later = clock.call_later(1.0, lambda: seen.append(("a2", clock.now())))
    clock.call_later(5.0, lambda: seen.append(("c", clock.now())))
    later.cancel()
    clock.advance(0.5)
    assert seen == []
    clock.advance(2.0)
    assert seen == [("a", 1.0), ("b", 2.0)] and clock.now() == 2.5
    assert clock.pending() == 1 and clock.scheduled == 4
    clock.advance(10.0)
    assert seen[-1] == ("c", 5.0)
    assert clock.pending() == 0


def test_manual_clock_runs_a_wakeup_made_by_a_wakeup_when_it_falls_due() -> None:
    clock = ManualClock()
    seen: list[float] = []
    clock.call_later(1.0, lambda: clock.call_later(1.0, lambda: seen.append(clock.now())))
    clock.advance(3.0)
    assert seen == [2.0]
