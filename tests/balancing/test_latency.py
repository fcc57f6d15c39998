"""least_response_time and p2c: slow backends get less traffic, and get it back once fast again."""

from __future__ import annotations

import heapq
import math
from collections import Counter
from collections.abc import Callable
from itertools import count
from typing import Any

import pytest

from usher.balancing.latency import LeastResponseTime, PowerOfTwoChoices
from usher.clock import ManualClock
from usher.config import HostPort, PoolConfig
from usher.pool import Backend, Pool, Selection


def backends(*weights: int) -> list[Backend]:
    return [Backend(HostPort(f"10.0.0.{i + 1}", 80), weight=w) for i, w in enumerate(weights)]


def ctx() -> Selection:
    return Selection("192.0.2.1", 0.0)


def make_pool(algorithm: str, weights: list[int], clock: ManualClock, **options: Any) -> Pool:
    config = PoolConfig.model_validate(
        {
            "algorithm": algorithm,
            "backends": [
                {"address": f"10.0.0.{i + 1}:80", "weight": w} for i, w in enumerate(weights)
            ],
            "passive_health": {"max_fails": 0},
            **options,
        }
    )
    return Pool("api", config, clock)


def drive(
    pool: Pool,
    clock: ManualClock,
    latency_of: Callable[[Backend], float],
    requests: int,
    interval: float = 0.002,
) -> Counter[Backend]:
    """Send a request every `interval` on virtual time; each finishes after its backend's latency."""
    picks: Counter[Backend] = Counter()
    pending: list[tuple[float, int, Backend]] = []
    order = count()
    for _ in range(requests):
        clock.advance(interval)
        while pending and pending[0][0] <= clock.now():
            _, _, done = heapq.heappop(pending)
            pool.on_finish(done, latency_of(done), ok=True)
        backend = pool.select(Selection("192.0.2.1", clock.now()))
        assert backend is not None
        picks[backend] += 1
        pool.on_start(backend)
        heapq.heappush(pending, (clock.now() + latency_of(backend), next(order), backend))
    while pending:
        _, _, backend = heapq.heappop(pending)
        pool.on_finish(backend, latency_of(backend), ok=True)
    return picks


@pytest.mark.parametrize("algorithm", ["least_response_time", "p2c"])
def test_a_slow_backend_gets_clearly_fewer_picks(algorithm: str) -> None:
    clock = ManualClock()
    pool = make_pool(algorithm, [1, 1, 1], clock)
    fast, other, slow = pool.backends
    latencies = {fast: 0.010, other: 0.010, slow: 0.100}
    picks = drive(pool, clock, latencies.__getitem__, 3000)
    assert picks[slow] < 0.10 * 3000, picks
    assert picks[fast] > 0.40 * 3000 and picks[other] > 0.40 * 3000, picks


@pytest.mark.parametrize("algorithm", ["least_response_time", "p2c"])
def test_equal_latencies_share_evenly(algorithm: str) -> None:
    # The control for the test above: the slow backend's share is not an accident of order.
    clock = ManualClock()
    pool = make_pool(algorithm, [1, 1, 1], clock)
    picks = drive(pool, clock, lambda _: 0.010, 3000)
    assert all(abs(picks[b] / 3000 - 1 / 3) < 0.05 for b in pool.backends), picks


# least_response_time


def test_least_response_time_formula() -> None:
    a, b = backends(2, 1)
    a.latency_ewma, a.active = 0.020, 1  # (1 + 1) * 0.020 / 2 = 0.020
    b.latency_ewma, b.active = 0.015, 0  # (0 + 1) * 0.015 / 1 = 0.015
    algorithm = LeastResponseTime([a, b], clock=ManualClock())
    assert list(algorithm.candidates(ctx())) == [b, a]
    b.active = 1  # 0.030
    assert list(algorithm.candidates(ctx())) == [a, b]


def test_a_backend_without_a_sample_counts_as_the_mean() -> None:
    a, b, c = backends(1, 1, 1)
    a.latency_ewma, b.latency_ewma = 0.010, 0.100  # c has none: it counts as 0.055
    algorithm = LeastResponseTime([a, b, c], clock=ManualClock())
    a.active = 4  # 5 * 0.010 = 0.050 < 0.055
    assert next(algorithm.candidates(ctx())) is a
    a.active = 6  # 0.070 > 0.055
    assert next(algorithm.candidates(ctx())) is c


def test_without_samples_it_is_least_connections() -> None:
    a, b, c = backends(1, 1, 1)
    a.active, b.active, c.active = 2, 1, 3
    algorithm = LeastResponseTime([a, b, c], clock=ManualClock())
    assert list(algorithm.candidates(ctx())) == [b, a, c]


def test_ties_go_to_the_first_listed_then_rotate() -> None:
    clock = ManualClock()
    pool = make_pool("least_response_time", [1, 1], clock)
    a, b = pool.backends
    assert pool.select(ctx()) is a
    assert pool.select(ctx()) is a  # a pick alone changes nothing
    pool.on_start(a)
    pool.on_finish(a, 0.0, ok=True)
    assert pool.select(ctx()) is b


def test_an_old_latency_is_forgotten_so_a_recovered_backend_is_tried_again() -> None:
    clock = ManualClock()
    pool = make_pool("least_response_time", [1, 1, 1], clock)
    fast, other, slow = pool.backends
    latencies = {fast: 0.010, other: 0.010, slow: 0.100}
    drive(pool, clock, latencies.__getitem__, 1000)
    assert slow.latency_ewma > 0.05
    for backend in (fast, other):
        backend.active = 4  # 5 * 0.010 = 0.050: still better than the slow one's 0.1 ...
    assert pool.select(Selection("192.0.2.1", clock.now())) is not slow
    clock.advance(60.0)  # ... but not than the fastest (0.01) it is forgotten towards
    assert pool.select(Selection("192.0.2.1", clock.now())) is slow


def test_least_response_time_skips_the_ineligible() -> None:
    a, b, c = backends(1, 1, 1)
    a.latency_ewma, b.latency_ewma, c.latency_ewma = 0.01, 0.02, 0.03
    a.state = "draining"
    algorithm = LeastResponseTime([a, b, c], clock=ManualClock())
    assert list(algorithm.candidates(ctx())) == [b, c]
    assert list(LeastResponseTime([], clock=ManualClock()).candidates(ctx())) == []


# p2c


def test_peak_ewma_rises_at_once_and_decays_with_time() -> None:
    clock = ManualClock()
    (a,) = backends(1)
    algorithm = PowerOfTwoChoices([a], clock=clock)
    assert algorithm.cost(a) is None
    algorithm.on_finish(a, 0.100, ok=True)
    assert algorithm.cost(a) == pytest.approx(0.100)
    algorithm.on_finish(a, 0.500, ok=True)  # a peak is taken as it is
    assert algorithm.cost(a) == pytest.approx(0.500)
    clock.advance(10.0)  # the default decay: one e-folding
    w = math.exp(-1.0)
    assert algorithm.cost(a) == pytest.approx(0.500 * w)
    algorithm.on_finish(a, 0.010, ok=True)
    assert algorithm.cost(a) == pytest.approx(0.500 * w + 0.010 * (1 - w))


def test_the_decay_comes_from_the_options() -> None:
    clock = ManualClock()
    pool = make_pool("p2c", [1], clock, ewma_decay="2s")
    (a,) = pool.backends
    algorithm = pool.algorithm_for(a)
    assert isinstance(algorithm, PowerOfTwoChoices)
    pool.on_start(a)
    pool.on_finish(a, 0.200, ok=True)
    clock.advance(2.0)
    assert algorithm.cost(a) == pytest.approx(0.200 * math.exp(-1.0))


def test_a_fast_failure_does_not_make_a_backend_look_fast() -> None:
    clock = ManualClock()
    (a,) = backends(1)
    algorithm = PowerOfTwoChoices([a], clock=clock)
    algorithm.on_finish(a, 0.300, ok=True)
    algorithm.on_finish(a, 0.001, ok=False)
    assert algorithm.cost(a) == pytest.approx(0.300)


def test_an_unprobed_backend_is_tried_but_not_flooded() -> None:
    clock = ManualClock()
    probed, fresh = backends(1, 1)
    algorithm = PowerOfTwoChoices([probed, fresh], clock=clock)
    algorithm.on_finish(probed, 0.050, ok=True)
    assert next(algorithm.candidates(ctx())) is fresh
    fresh.active = 1  # its first request has not answered yet
    assert next(algorithm.candidates(ctx())) is probed


def test_p2c_recovers_after_the_slow_backend_does() -> None:
    clock = ManualClock()
    pool = make_pool("p2c", [1, 1, 1], clock)
    fast, other, slow = pool.backends
    latencies = {fast: 0.010, other: 0.010, slow: 0.100}
    picks = drive(pool, clock, latencies.__getitem__, 3000)
    assert picks[slow] < 0.10 * 3000, picks
    latencies[slow] = 0.010  # recovered; time passes and its peak decays
    clock.advance(30.0)
    picks = drive(pool, clock, latencies.__getitem__, 3000)
    assert picks[slow] > 0.25 * 3000, picks


def test_p2c_offers_the_rest_by_score_for_retries() -> None:
    clock = ManualClock()
    a, b, c, d = backends(1, 1, 1, 1)
    algorithm = PowerOfTwoChoices([a, b, c, d], clock=clock)
    for backend, latency in ((a, 0.4), (b, 0.1), (c, 0.3), (d, 0.2)):
        algorithm.on_finish(backend, latency, ok=True)
    c.state = "disabled"
    for _ in range(20):
        order = list(algorithm.candidates(ctx()))
        assert sorted(order, key=lambda x: x.label) == [a, b, d]
        assert order[1:] == sorted(order[1:], key=algorithm.cost)  # type: ignore[arg-type]


def test_p2c_is_deterministic_for_a_seed() -> None:
    def run(seed: int) -> list[str]:
        pool = backends(1, 2, 3, 4)
        algorithm = PowerOfTwoChoices(pool, seed=seed, clock=ManualClock())
        out = []
        for _ in range(50):
            chosen = next(algorithm.candidates(ctx()))
            out.append(chosen.label)
        return out

    assert run(3) == run(3)
    assert run(3) != run(4)


def test_p2c_draws_by_weight() -> None:
    # Nothing learned yet: every score is zero, so the draw alone decides, by weight.
    pool = backends(3, 1)
    algorithm = PowerOfTwoChoices(pool, clock=ManualClock())
    counts = Counter(next(algorithm.candidates(ctx())) for _ in range(4000))
    assert counts[pool[0]] / 4000 == pytest.approx(0.75, abs=0.03)
