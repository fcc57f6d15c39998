"""Bounded exploration of slow backends, for the latency-aware algorithms.

Scoring by `latency * (in flight + 1)` assumes that a backend serves its requests one after the
other, so that the fast ones look worse with every request they hold. Most backends serve many
at once, and then the score keeps sending a backend ten times slower than its peers a request
whenever they hold a few: 1-2% of the requests at 10,000 req/s, enough to put the p99 at the
slow backend's latency. So a backend that is known slow (its latency more than `SLOW_FACTOR`
times the fastest eligible one's) is only probed: it keeps its place by score while it has no
request in flight, in any worker, and was sent none for `PROBE_GAP`; otherwise it goes behind
every other backend (still offered, for retries or when the others are full). That is at most
one request at a time and ten a second per worker (0.2% of 10,000 req/s with two workers), and
its samples keep coming, so a recovery shows within a few of them: it is then no longer slow,
and takes its share again. At low load, where the score never picks it,
any backend not sent anything for `interval` seconds (the pool's `ewma_decay`) gets the next
request, so a recovery is noticed there too, a little later.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from usher.clock import Clock

if TYPE_CHECKING:
    from usher.pool import Backend

# A latency more than this many times the fastest makes a backend known slow. Four leaves a
# backend that is two or three times slower (another machine type, another zone) to the score.
SLOW_FACTOR = 4.0
# Probes of a known-slow backend are this far apart at least (in each worker): 10 a second show
# a recovery within half a second, and are 0.1% of 10,000 req/s.
PROBE_GAP = 0.1
# Ranks: lower goes first.
PROBE_DUE = -1  # idle and not sent anything for `interval`: its probe comes now
SCORED = 0  # compared by score
HELD_BACK = 1  # known slow with its probe in flight: behind every other backend


class SlowProbes:
    """Which rank a backend takes, given its latency and the fastest eligible backend's."""

    __slots__ = ("_clock", "_index", "_interval", "_started")

    def __init__(self, backends: Sequence[Backend], clock: Clock, interval: float) -> None:
        self._clock = clock
        self._interval = interval
        self._index = {backend: i for i, backend in enumerate(backends)}
        # When each backend was last sent a request; the algorithm's start counts as one.
        self._started = [clock.now()] * len(backends)

    def rank(self, index: int, backend: Backend, latency: float, fastest: float) -> int:
        """`latency`: the backend's, `fastest`: the lowest of the eligible backends' (0 when
        none has a sample yet), in seconds."""
        idle = backend.in_flight() == 0  # over every worker
        since = self._clock.now() - self._started[index]
        if idle and since > self._interval:
            return PROBE_DUE
        if fastest <= 0.0 or latency <= SLOW_FACTOR * fastest:
            return SCORED
        return SCORED if idle and since >= PROBE_GAP else HELD_BACK

    def started(self, backend: Backend) -> None:
        index = self._index.get(backend)
        if index is not None:  # else a request that outlived a rebuild of the algorithm
            self._started[index] = self._clock.now()
