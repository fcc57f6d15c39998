"""Deadline: one lazily re-armed timer per wait (a client's read and send waits, a backend's
idle, read and send limits, a tunnel's idle limit).

Arming moves a deadline; a timer handle is made only when the new deadline comes before the
pending one. A timer that fires early finds the deadline moved and waits again, so a deadline
re-armed for every request and every body chunk costs one handle per timeout, not one per
arming.

Time comes from the injected clock (usher.clock), the balancer's, the one its decisions use;
the loop only schedules the wake-ups. A clock that moves only when told to (a `ManualClock`)
wakes its deadlines itself as it is advanced: tests drive timeouts without sleeping.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from usher.clock import ManualClock

if TYPE_CHECKING:
    from usher.clock import Clock


class Cancellable(Protocol):
    def cancel(self) -> None: ...


class Wakeups(Protocol):
    """What schedules a deadline's wake-ups: the event loop, or a `ManualClock`."""

    def call_later(self, delay: float, callback: Callable[[], None]) -> Cancellable: ...


def wakeups_for(clock: Clock, loop: asyncio.AbstractEventLoop) -> Wakeups:
    """Who wakes deadlines measured on `clock`: the clock itself when it is a manual one (real
    time passing says nothing about it), else the loop."""
    return clock if isinstance(clock, ManualClock) else loop


class Deadline:
    """A time by which something must have happened, else `on_expiry` runs (once per arming)."""

    __slots__ = ("_at", "_handle", "_handle_at", "clock", "on_expiry", "wakeups")

    def __init__(self, clock: Clock, wakeups: Wakeups, on_expiry: Callable[[], None]) -> None:
        self.clock = clock
        self.wakeups = wakeups
        self.on_expiry = on_expiry
        self._at = 0.0  # the deadline; 0: none
        self._handle: Cancellable | None = None
        self._handle_at = 0.0  # when _handle fires

    @property
    def armed(self) -> bool:
        return self._at != 0.0

    def arm(self, delay: float) -> None:
        """Expire `delay` seconds from now (instead of when it would have)."""
        now = self.clock.now()
        at = self._at = now + delay
        handle = self._handle
        if handle is None or self._handle_at > at:
            if handle is not None:
                handle.cancel()
            self._handle = self.wakeups.call_later(delay, self._fire)
            self._handle_at = at

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

    def _fire(self) -> None:
        self._handle = None
        at = self._at
        if not at:
            return
        now = self.clock.now()
        if now < at:  # the deadline moved since the timer was made
            self._handle = self.wakeups.call_later(at - now, self._fire)
            self._handle_at = at
            return
        self._at = 0.0
        self.on_expiry()
