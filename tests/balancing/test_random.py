"""random: a weighted draw among the eligible backends, reproducible for a seed."""

from __future__ import annotations

from collections import Counter

import pytest

from usher.balancing import get_algorithm
from usher.balancing.random import WeightedRandom
from usher.config import HostPort
from usher.pool import Backend, Selection


def backends(*weights: int) -> list[Backend]:
    return [Backend(HostPort(f"10.0.0.{i + 1}", 80), weight=w) for i, w in enumerate(weights)]


def ctx() -> Selection:
    return Selection("192.0.2.1", 0.0)


def draws(algorithm: WeightedRandom, picks: int) -> Counter[Backend | None]:
    return Counter(next(algorithm.candidates(ctx()), None) for _ in range(picks))


def test_registered() -> None:
    assert get_algorithm("random") is WeightedRandom


def test_the_split_follows_the_weights() -> None:
    pool = backends(5, 3, 2)
    counts = draws(WeightedRandom(pool, seed=11), 20_000)
    for backend, share in zip(pool, (0.5, 0.3, 0.2), strict=True):
        assert counts[backend] / 20_000 == pytest.approx(share, abs=0.015), counts


def test_effective_weight_is_the_one_used() -> None:
    pool = backends(4, 4)
    pool[0].effective_weight = 1  # slow start
    counts = draws(WeightedRandom(pool, seed=2), 10_000)
    assert counts[pool[0]] / 10_000 == pytest.approx(0.2, abs=0.02)


def test_the_same_seed_gives_the_same_draws() -> None:
    pool = backends(1, 1, 1, 1)

    def sequence(seed: int) -> list[Backend | None]:
        algorithm = WeightedRandom(pool, seed=seed)
        return [next(algorithm.candidates(ctx()), None) for _ in range(40)]

    assert sequence(5) == sequence(5)
    assert sequence(5) != sequence(6)


def test_only_eligible_backends_are_drawn() -> None:
    pool = backends(1, 10, 1)
    pool[1].state = "disabled"
    counts = draws(WeightedRandom(pool), 2000)
    assert set(counts) == {pool[0], pool[2]}


def test_retries_reach_every_eligible_backend_once() -> None:
    pool = backends(1, 2, 3, 4)
    pool[3].healthy = False
    algorithm = WeightedRandom(pool, seed=4)
    for _ in range(50):
        order = list(algorithm.candidates(ctx()))
        assert sorted(order, key=pool.index) == pool[:3]


def test_zero_weight_only_when_nothing_else_is_left() -> None:
    pool = backends(1, 1)
    pool[0].effective_weight = 0
    algorithm = WeightedRandom(pool)
    assert set(draws(algorithm, 200)) == {pool[1]}
    assert list(algorithm.candidates(ctx())) == [pool[1], pool[0]]


def test_nothing_to_offer() -> None:
    assert draws(WeightedRandom([]), 3) == {None: 3}
    pool = backends(1, 1)
    for backend in pool:
        backend.state = "disabled"
    assert draws(WeightedRandom(pool), 3) == {None: 3}
