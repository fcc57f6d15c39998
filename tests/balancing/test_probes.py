"""Bounded exploration: a backend known to be much slower than the fastest is only probed, one
request at a time and 100 ms apart, and takes its share again once it has recovered."""

from __future__ import annotations

import heapq
import random
from collections import Counter
from collections.abc import Callable
from itertools import count

import pytest

from usher.balancing.probes import (
    FLOOR_RISE,
    HELD_BACK,
    PROBE_DUE,
    PROBE_GAP,
    SCORED,
    SLOW_FACTOR,
    SlowProbes,
)
from usher.clock import ManualClock
from usher.config import HostPort, PoolConfig
from usher.pool import Backend, Pool, Selection

LATENCY_AWARE = ["least_response_time", "p2c"]
FAST, SLOW = 0.0025, 0.0205  # the demo backends of `make bench-algorithms`, as measured


def make_pool(algorithm: str, clock: ManualClock, ewma_decay: str = "10s") -> Pool:
    config = PoolConfig.model_validate(
        {
            "algorithm": algorithm,
            "backends": [{"address": f"10.0.0.{i + 1}:80"} for i in range(3)],
            "passive_health": {"max_fails": 0},
            "ewma_decay": ewma_decay,
        }
    )
    return Pool("api", config, clock)


class ClosedLoop:
    """`clients` clients on virtual time, each sending again as soon as answered (as wrk does);
    a request takes its backend's latency of the moment it is sent."""

    def __init__(self, pool: Pool, clock: ManualClock, clients: int) -> None:
        self.pool, self.clock = pool, clock
        self._order = count()
        self._pending: list[tuple[float, int, Backend, float]] = []
        self._clients = clients

    def run(self, seconds: float, latency_of: Callable[[Backend], float]) -> Counter[Backend]:
        """Runs for `seconds` of virtual time; the requests sent meanwhile, per backend."""
        picks: Counter[Backend] = Counter()
        pool, clock = self.pool, self.clock
        end = clock.now() + seconds
        while len(self._pending) < self._clients:
            self._send(latency_of, picks)
        while self._pending[0][0] <= end:
            done_at, _, backend, latency = heapq.heappop(self._pending)
            clock.advance(done_at - clock.now())
            pool.on_finish(backend, latency, ok=True)
            self._send(latency_of, picks)
        clock.advance(end - clock.now())
        return picks

    def _send(self, latency_of: Callable[[Backend], float], picks: Counter[Backend]) -> None:
        now = self.clock.now()
        backend = self.pool.select(Selection("192.0.2.1", now))
        assert backend is not None
        picks[backend] += 1
        self.pool.on_start(backend)
        latency = latency_of(backend)
        heapq.heappush(self._pending, (now + latency, next(self._order), backend, latency))


def bench_pool(
    algorithm: str, clients: int, slow: float = SLOW, ewma_decay: str = "10s"
) -> tuple[ClosedLoop, dict[Backend, float], list[Backend]]:
    """The pool of `make bench-algorithms` (the last backend `slow`) under `clients` clients:
    the loop, each backend's latency (to change at will), the backends."""
    clock = ManualClock()
    pool = make_pool(algorithm, clock, ewma_decay)
    fast, other, last = pool.backends
    return ClosedLoop(pool, clock, clients), {fast: FAST, other: FAST, last: slow}, pool.backends


@pytest.mark.parametrize("algorithm", LATENCY_AWARE)
def test_under_load_a_slow_backend_gets_under_one_percent_and_regains_its_share(
    algorithm: str,
) -> None:
    # p2c's peak-EWMA forgets a peak over `ewma_decay` however many samples come, so its
    # recovery takes about that long: a short decay keeps the test short.
    loop, latencies, (_, _, slow) = bench_pool(algorithm, clients=32, ewma_decay="1s")
    loop.run(0.5, latencies.__getitem__)  # it becomes known slow
    picks = loop.run(2.0, latencies.__getitem__)
    total = sum(picks.values())
    assert total > 20_000  # 32 clients at about 2.5 ms
    # One request at a time, 100 ms apart at least: 2 s / 100 ms = 20 at most.
    assert 10 < picks[slow] <= 21, picks
    latencies[slow] = FAST  # it recovers: its probes show it
    loop.run(2.5, latencies.__getitem__)
    picks = loop.run(1.0, latencies.__getitem__)
    assert picks[slow] > 0.25 * sum(picks.values()), picks


@pytest.mark.parametrize("algorithm", LATENCY_AWARE)
def test_at_low_load_a_slow_backend_is_still_probed_and_recovers(algorithm: str) -> None:
    loop, latencies, (_, _, slow) = bench_pool(algorithm, clients=4)  # too few for the score
    rng = random.Random(1)

    def latency_of(backend: Backend) -> float:
        # +-20%: with latencies fixed to the bit, a recovered backend ties with the fast
        # ones at best, and ties are not what this is about.
        return latencies[backend] * rng.uniform(0.8, 1.2)

    loop.run(1.0, latency_of)
    picks = loop.run(60.0, latency_of)
    # Probed now and then (every `ewma_decay`, 10 s), not more.
    assert 3 <= picks[slow] <= 12, picks
    latencies[slow] = FAST
    loop.run(60.0, latency_of)
    picks = loop.run(10.0, latency_of)
    assert picks[slow] > 0.25 * sum(picks.values()), picks


@pytest.mark.parametrize("algorithm", LATENCY_AWARE)
def test_a_backend_a_little_slower_keeps_its_share_by_score(algorithm: str) -> None:
    # The control: under SLOW_FACTOR the score alone decides, and gives it a real share.
    latency = FAST * (SLOW_FACTOR - 1.0)
    loop, latencies, (_, _, slower) = bench_pool(algorithm, clients=32, slow=latency)
    loop.run(1.0, latencies.__getitem__)
    picks = loop.run(5.0, latencies.__getitem__)
    # Three requests in flight on average, where a probed backend has one at most.
    assert picks[slower] > 3 * 5.0 / latency, picks


def test_ranks() -> None:
    clock = ManualClock()
    fast, backend = Backend(HostPort("10.0.0.1", 80)), Backend(HostPort("10.0.0.2", 80))
    probes = SlowProbes([fast, backend], clock, interval=10.0)
    both = 0b11
    assert probes.lowest(both) == 0.0
    probes.answered(backend, 0.050)
    assert probes.rank(1, backend, probes.lowest(both)) == SCORED  # nothing to compare with
    probes.answered(fast, 0.010)
    assert probes.lowest(both) == 0.010
    assert probes.lowest(0b10) == 0.050  # the fast one is not eligible: it is the fastest
    assert probes.rank(1, backend, 0.010) == HELD_BACK  # slow, and just sent one (its start)
    clock.advance(PROBE_GAP)
    assert probes.rank(1, backend, 0.010) == SCORED  # idle a while: a probe may go
    backend.active = 1
    assert probes.rank(1, backend, 0.010) == HELD_BACK  # its probe is out
    backend.active = 0
    clock.advance(10.5)  # nothing sent for longer than the interval: the probe is due
    assert probes.rank(1, backend, 0.010) == PROBE_DUE
    assert probes.rank(0, fast, 0.010) == PROBE_DUE  # fast or slow
    probes.started(backend)
    assert probes.rank(1, backend, 0.010) == HELD_BACK
    probes.answered(backend, SLOW_FACTOR * 0.010)  # a lower sample: its floor follows at once
    assert probes.rank(1, backend, 0.010) == SCORED
    probes.started(Backend(HostPort("10.0.0.9", 80)))  # not one of its backends: ignored


def test_the_floor_keeps_the_low_end_and_rises_slowly() -> None:
    clock = ManualClock()
    backend = Backend(HostPort("10.0.0.1", 80))
    probes = SlowProbes([backend], clock, interval=10.0)
    probes.answered(backend, 0.002)
    probes.answered(backend, 0.030)  # one slow answer lifts it by FLOOR_RISE of the gap only
    assert probes.lowest(1) == pytest.approx(0.002 + FLOOR_RISE * 0.028)
    for _ in range(500):  # a backend slow for good: its floor gets there
        probes.answered(backend, 0.030)
    assert probes.lowest(1) > 0.029


@pytest.mark.parametrize("algorithm", LATENCY_AWARE)
def test_on_a_busy_host_the_slow_backend_is_still_known_slow(algorithm: str) -> None:
    # Every answer also waits 0-10 ms for a core: 2.5 ms and 20.5 ms backends average about 7.5
    # and 25.5 ms, under 4x apart, but their floors stay about 8x apart.
    loop, latencies, (_, _, slow) = bench_pool(algorithm, clients=32)
    rng = random.Random(1)

    def latency_of(backend: Backend) -> float:
        return latencies[backend] + rng.uniform(0.0, 0.010)

    loop.run(0.5, latency_of)
    picks = loop.run(2.0, latency_of)
    assert picks[slow] <= 21, picks


@pytest.mark.parametrize("algorithm", LATENCY_AWARE)
def test_a_held_back_backend_is_still_offered_last_for_retries(algorithm: str) -> None:
    clock = ManualClock()
    pool = make_pool(algorithm, clock)
    fast, other, slow = pool.backends
    for backend, latency in ((fast, FAST), (other, FAST), (slow, SLOW)):
        pool.on_start(backend)
        pool.on_finish(backend, latency, ok=True)
    pool.on_start(slow)  # its probe is in flight
    algorithm_ = pool.algorithm_for(slow)
    for _ in range(20):
        order = list(algorithm_.candidates(Selection("192.0.2.1", clock.now())))
        assert sorted(order, key=lambda b: b.label) == [fast, other, slow]
        assert order[-1] is slow
