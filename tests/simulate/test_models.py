"""Modelled backends: latency distributions, the concurrency limit, events, the shared CPU."""

from __future__ import annotations

import random
import statistics
from collections.abc import Callable

import pytest

from usher.clock import ManualClock
from usher.simulate.engine import EventLoop
from usher.simulate.models import REFUSED, TIMED_OUT, ModelledBackend, SharedCpu, draw
from usher.simulate.scenario import BackendModel, Latency


def latency(spec: object) -> Latency:
    return BackendModel.model_validate({"latency": spec}).latency


@pytest.mark.parametrize(
    ("spec", "mean", "median"),
    [
        ("2ms", 0.002, 0.002),
        ({"fixed": "5ms"}, 0.005, 0.005),
        ({"normal": {"mean": "10ms", "stddev": "1ms"}}, 0.010, 0.010),
        ({"lognormal": {"median": "2ms", "sigma": 0.5}}, 0.002 * 1.1331, 0.002),  # e^(s^2/2)
        ({"exponential": {"mean": "4ms"}}, 0.004, 0.004 * 0.6931),  # ln 2
    ],
)
def test_each_distribution_draws_its_mean_and_median(
    spec: object, mean: float, median: float
) -> None:
    rng = random.Random(1)
    draws = [draw(latency(spec), rng) for _ in range(20_000)]
    assert statistics.fmean(draws) == pytest.approx(mean, rel=0.03)
    assert statistics.median(draws) == pytest.approx(median, rel=0.03)
    assert min(draws) >= 0.0


def test_a_wide_normal_is_truncated_at_zero() -> None:
    rng = random.Random(2)
    spec = latency({"normal": {"mean": "1ms", "stddev": "2ms"}})
    assert min(draw(spec, rng) for _ in range(5_000)) >= 0.0


def make_backend(**model: object) -> tuple[ManualClock, EventLoop, ModelledBackend]:
    clock = ManualClock()
    loop = EventLoop(clock)
    backend = ModelledBackend(BackendModel.model_validate(model), random.Random(0), loop.after)
    return clock, loop, backend


def collect(
    clock: ManualClock, into: list[tuple[float, float, int]]
) -> Callable[[float, int], None]:
    return lambda took, outcome: into.append((clock.now(), took, outcome))


def test_past_its_concurrency_requests_wait_their_turn() -> None:
    clock, loop, backend = make_backend(latency="10ms", concurrency=2)
    answers: list[tuple[float, float, int]] = []
    for _ in range(3):
        backend.serve(0.0, collect(clock, answers), 60.0)
    loop.run(1.0)
    assert [(round(at, 6), round(took, 6), outcome) for at, took, outcome in answers] == [
        (0.01, 0.01, 200),
        (0.01, 0.01, 200),
        (0.02, 0.02, 200),  # waited 10 ms for a free slot
    ]


def test_events_take_it_down_and_slow_it_then_it_recovers() -> None:
    events = [
        {"at": "1s", "until": "2s", "down": True},
        {"at": "3s", "until": "4s", "latency": "50ms", "fail_rate": 1.0},
    ]
    clock, loop, backend = make_backend(latency="10ms", events=events, fail_status=503)
    answers: list[tuple[float, float, int]] = []
    for at in (0.5, 1.5, 3.5, 4.5):
        loop.at(at, lambda: backend.serve(clock.now(), collect(clock, answers), 60.0))
    loop.run(10.0)
    outcomes = [(round(took, 6), outcome) for _, took, outcome in answers]
    assert outcomes == [(0.01, 200), (0.0001, REFUSED), (0.05, 503), (0.01, 200)]
    assert backend.check(1.5, 1.0) == (False, "connection refused")
    assert backend.check(3.5, 0.02) == (False, "no answer within 20ms")
    assert backend.check(5.0, 1.0) == (True, "ok")


def test_an_answer_slower_than_the_timeout_times_out_at_the_timeout() -> None:
    clock, loop, backend = make_backend(latency="3s")
    answers: list[tuple[float, float, int]] = []
    backend.serve(0.0, collect(clock, answers), 1.0)
    loop.run(10.0)
    assert answers == [(1.0, 1.0, TIMED_OUT)]
    assert backend.serving == 0  # the slot was held until the backend was done (3 s)


def test_the_shared_cpu_serves_first_come_first_served_on_its_cores() -> None:
    clock = ManualClock()
    loop = EventLoop(clock)
    cpu = SharedCpu(2, 0.001, loop.after)
    done: list[tuple[int, float]] = []
    for n in range(5):
        cpu.run(lambda n=n: done.append((n, round(clock.now(), 6))))
    loop.run(1.0)
    assert done == [(0, 0.001), (1, 0.001), (2, 0.002), (3, 0.002), (4, 0.003)]
