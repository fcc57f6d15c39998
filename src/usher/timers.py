"""Deadline: one lazily re-armed timer per connection (a client's read and send waits, a
backend's idle, read and send limits, a tunnel's idle limit).

Arming moves a deadline; a timer handle is made only when the new deadline comes before the
pending one. A timer that fires early finds the deadline moved and waits again, so a deadline
re-armed for every request and every body chunk costs one handle per timeout, not one per
arming. Time comes from the injected clock; the loop only schedules.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from usher.clock import Clock


class LoopClock:
    """The loop's own time as a `Clock`: what a connection's timers measure against."""

    __slots__ = ("loop",)

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop

    def now(self) -> float:
        return self.loop.time()


class Deadline:
    """A time by which something must have happened, else `on_expiry` runs (once per arming)."""

    __slots__ = ("_at", "_handle", "_handle_at", "clock", "loop", "on_expiry")

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        on_expiry: Callable[[], None],
        clock: Clock | None = None,
    ) -> None:
        self.loop = loop
        self.clock: Clock = clock if clock is not None else LoopClock(loop)
        self.on_expiry = on_expiry
        self._at = 0.0  # the deadline; 0: none
        self._handle: asyncio.TimerHandle | None = None
        self._handle_at = 0.0  # when _handle fires

    @property
    def armed(self) -> bool:
        return self._at != 0.0

    def arm(self, delay: float) -> None:
        """Expire `delay` seconds from now (instead of when it would have)."""
        at = self._at = self.clock.now() + delay
        handle = self._handle
        if handle is None or self._handle_at > at:
            if handle is not None:
                handle.cancel()
            self._schedule(at)

    def disarm(self) -> None:
        """No deadline for now: a pending timer stays and finds nothing to do, or is re-armed."""
        self._at = 0.0

    def cancel(self) -> None:
        """No deadline, and no timer left pending (the connection is gone)."""
        self._at = 0.0
        handle = self._handle
        if handle is not None:
            handle.cancel()
            self._handle = None

    def _schedule(self, at: float) -> None:
        self._handle = self.loop.call_later(at - self.clock.now(), self._fire)
        self._handle_at = at

    def _fire(self) -> None:
        self._handle = None
        at = self._at
        if not at:
            return
        if self.clock.now() < at:  # the deadline moved since the timer was made
            self._schedule(at)
            return
        self._at = 0.0
        self.on_expiry()
