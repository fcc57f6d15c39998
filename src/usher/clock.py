"""Time as an injected dependency: balancing, health, limits and the connections' deadlines
run on virtual time in tests."""

from __future__ import annotations

import heapq
import time
from collections.abc import Callable
from typing import Protocol


class Clock(Protocol):
    def now(self) -> float:
        """Seconds on a monotonic scale; only differences are meaningful."""
        ...


class MonotonicClock:
    """The real clock."""

    __slots__ = ()

    def now(self) -> float:
        return time.monotonic()


class ManualWakeup:
    """A callback a `ManualClock` runs when it is advanced to `at`, unless cancelled first."""

    __slots__ = ("at", "callback", "cancelled")

    def __init__(self, at: float, callback: Callable[[], None]) -> None:
        self.at = at
        self.callback = callback
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class ManualClock:
    """A clock that moves only when told to (tests, `usher simulate`).

    It also wakes what waits on it (`call_later`, as a loop would): a deadline measured on it
    fires when the clock is advanced past it, never by the passing of real time.
    """

    __slots__ = ("_now", "_order", "_wakeups")

    def __init__(self, start: float = 0.0) -> None:
        self._now = start
        # Pending wake-ups by time, then in the order they were asked for (as a loop's timers).
        self._wakeups: list[tuple[float, int, ManualWakeup]] = []
        self._order = 0

    def now(self) -> float:
        return self._now

    def advance(self, seconds: float) -> None:
        """Move on by `seconds`, running every wake-up that falls due on the way, in order (each
        sees the clock at its own time, then the clock ends at the new time)."""
        if seconds < 0:
            raise ValueError("a clock does not go backwards")
        until = self._now + seconds
        wakeups = self._wakeups
        while wakeups and wakeups[0][0] <= until:
            at, _, wakeup = heapq.heappop(wakeups)
            if not wakeup.cancelled:
                self._now = max(self._now, at)
                wakeup.callback()
        self._now = until

    def call_later(self, delay: float, callback: Callable[[], None]) -> ManualWakeup:
        """Run `callback` once the clock has been advanced by `delay` seconds."""
        wakeup = ManualWakeup(self._now + max(delay, 0.0), callback)
        self._order += 1
        heapq.heappush(self._wakeups, (wakeup.at, self._order, wakeup))
        return wakeup

    @property
    def scheduled(self) -> int:
        """Wake-ups asked for so far (tests count the timers a change makes)."""
        return self._order

    def pending(self) -> int:
        """Wake-ups still to come (not cancelled)."""
        return sum(1 for _, _, wakeup in self._wakeups if not wakeup.cancelled)
