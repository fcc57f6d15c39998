"""Bounded exploration of slow backends, for the latency-aware algorithms.

Scoring by `latency * (in flight + 1)` assumes that a backend serves its requests one after the
other, so that the fast ones look worse with every request they hold. Most backends serve many
at once, and then the score keeps sending a backend ten times slower than its peers a request
whenever they hold a few: 1-2% of the requests at 10,000 req/s, enough to put the p99 at the
slow backend's latency. So a backend that is known slow is only probed: it keeps its place by
score while it has no request in flight, in any worker, and was sent none for `PROBE_GAP`;
otherwise it goes behind every other backend (still offered, for retries or when the others
are full). That is at most one request at a time and ten a second per worker (0.2% of
10,000 req/s with two workers), and its samples keep coming, so a recovery shows at once: it
is then no longer slow, and takes its share again. At low load, where the score never picks
it, any backend not sent anything for `interval` seconds (the pool's `ewma_decay`) gets the
next request, so a recovery is noticed there too, a little later.

Known slow is judged on each backend's floor: the low end of its recent latencies, which
follows a lower sample at once and a higher one only by `FLOOR_RISE` of the gap. On a busy
host every answer also waits for a core, a few ms that the averages of fast and slow backends
share, so the ratio of averages shrinks (2.5 ms and 20 ms measured as 7 ms and 21 ms), while
the floors keep what each backend itself takes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from usher.clock import Clock

if TYPE_CHECKING:
    from usher.balancing import BackendView

# A floor more than this many times the lowest makes a backend known slow. Four leaves a backend
# two or three times slower (another machine type, another zone) to the score.
SLOW_FACTOR = 4.0
# How far a higher sample lifts the floor: a backend that turns slow for good is known slow
# within some 200 samples (a fraction of a second for a busy one), while answers that wait for
# a core now and then leave the floor near the low end.
FLOOR_RISE = 0.01
# Probes of a known-slow backend are this far apart at least (in each worker): ten a second
# show a recovery at once, and are 0.1% of 10,000 req/s.
PROBE_GAP = 0.1
# Ranks: lower goes first.
PROBE_DUE = -1  # idle and not sent anything for `interval`: its probe comes now
SCORED = 0  # compared by score
HELD_BACK = 1  # known slow and probed just now: behind every other backend


class SlowProbes:
    """Each backend's latency floor and last start, and from them the rank it takes."""

    __slots__ = ("_clock", "_floor", "_index", "_interval", "_started")

    def __init__(self, backends: Sequence[BackendView], clock: Clock, interval: float) -> None:
        self._clock = clock
        self._interval = interval
        self._index = {backend: i for i, backend in enumerate(backends)}
        self._floor = [-1.0] * len(backends)  # -1: no sample yet
        # When each backend was last sent a request; the algorithm's start counts as one.
        self._started = [clock.now()] * len(backends)

    def lowest(self, eligible: int) -> float:
        """The lowest floor among the backends in `eligible` (a bit set), 0 when none has one."""
        lowest = 0.0
        for i, floor in enumerate(self._floor):
            if eligible >> i & 1 and floor > 0.0 and (lowest == 0.0 or floor < lowest):
                lowest = floor
        return lowest

    def rank(self, index: int, backend: BackendView, lowest: float) -> int:
        """`lowest`: the lowest floor of the eligible backends (`lowest()`)."""
        idle = backend.in_flight() == 0  # over every worker
        since = self._clock.now() - self._started[index]
        if idle and since > self._interval:
            return PROBE_DUE
        floor = self._floor[index]
        if lowest <= 0.0 or floor <= SLOW_FACTOR * lowest:
            return SCORED
        return SCORED if idle and since >= PROBE_GAP else HELD_BACK

    def started(self, backend: BackendView) -> None:
        index = self._index.get(backend)
        if index is not None:  # else a request that outlived a rebuild of the algorithm
            self._started[index] = self._clock.now()

    def answered(self, backend: BackendView, latency: float) -> None:
        """A request to `backend` succeeded after `latency` seconds."""
        index = self._index.get(backend)
        if index is None or latency <= 0.0:
            return
        floor = self._floor[index]
        if floor < 0.0 or latency < floor:
            self._floor[index] = latency
        else:
            self._floor[index] = floor + FLOOR_RISE * (latency - floor)
