"""Slow start: a backend that becomes ready takes a growing share of its weight.

A backend that joins, comes back from an ejection, passes its checks again or is enabled again
starts at `SLOW_START_FLOOR` of its weight and reaches the whole of it after the pool's
`slow_start`. The rule "the effective weight is the weight, unless ramping" lives here only.
"""

from __future__ import annotations

from usher.pool.backend import Backend

# A backend in slow start begins at this share of its weight.
SLOW_START_FLOOR = 0.1


class SlowStart:
    """The backends of one pool whose weight is ramping up, and the ramp's length."""

    def __init__(self, duration: float | None) -> None:
        self.duration = duration  # None: no slow start (a reload may change it)
        self.ramping: list[Backend] = []

    def start(self, backend: Backend, now: float) -> None:
        """`backend` became ready: its weight ramps up from now (when the pool has a ramp)."""
        if self.duration is None:
            return
        backend.ramp_start = now
        backend.effective_weight = backend.weight * SLOW_START_FLOOR
        if backend not in self.ramping:
            self.ramping.append(backend)

    def advance(self, now: float) -> None:
        """Move the ramping weights along; a ramp that is over gives the whole weight."""
        duration = self.duration
        for backend in list(self.ramping):
            start = backend.ramp_start
            if duration is None or start is None or now - start >= duration:
                backend.effective_weight = float(backend.weight)
                backend.ramp_start = None
                self.ramping.remove(backend)
            else:
                share = max(SLOW_START_FLOOR, (now - start) / duration)
                backend.effective_weight = backend.weight * share

    def set_weight(self, backend: Backend, weight: int) -> None:
        """A new weight, in full at once unless the backend is ramping (the ramp takes it)."""
        backend.weight = weight
        if backend.ramp_start is None:
            backend.effective_weight = float(weight)

    def forget(self, backend: Backend) -> None:
        """`backend` left the pool."""
        if backend in self.ramping:
            self.ramping.remove(backend)
