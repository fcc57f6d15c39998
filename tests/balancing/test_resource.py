"""resource: shares follow the headroom the backends report, `weight * (1 - load)`."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import pytest

from usher.balancing import get_algorithm
from usher.balancing.resource import Resource, headroom
from usher.clock import ManualClock
from usher.config import HostPort, PoolConfig
from usher.pool import Backend, Pool, Selection


def backends(*weights: int) -> list[Backend]:
    return [Backend(HostPort(f"10.0.0.{i + 1}", 80), weight=w) for i, w in enumerate(weights)]


def ctx() -> Selection:
    return Selection("192.0.2.1", 0.0)


def shares(algorithm: Resource, pool: Sequence[Backend], picks: int) -> list[float]:
    counts = Counter(next(algorithm.candidates(ctx()), None) for _ in range(picks))
    return [counts[backend] / picks for backend in pool]


def test_registered() -> None:
    assert get_algorithm("resource") is Resource


def test_shares_follow_the_reported_headroom() -> None:
    pool = backends(1, 1, 1)
    for backend, load in zip(pool, (0.1, 0.5, 0.9), strict=True):
        backend.load = load
    expected = [0.9 / 1.5, 0.5 / 1.5, 0.1 / 1.5]
    assert shares(Resource(pool), pool, 3000) == pytest.approx(expected, abs=0.005)


def test_the_split_is_smooth() -> None:
    # Over any short window the split is already right: no long runs on one backend.
    pool = backends(1, 1)
    pool[0].load, pool[1].load = 0.0, 0.5
    algorithm = Resource(pool)
    for _ in range(100):
        window = [next(algorithm.candidates(ctx())) for _ in range(3)]
        assert window.count(pool[0]) == 2


def test_weights_and_headroom_combine() -> None:
    pool = backends(2, 1)
    pool[0].load, pool[1].load = 0.5, 0.0  # 2 * 0.5 = 1 * 1.0
    assert shares(Resource(pool), pool, 1000) == pytest.approx([0.5, 0.5], abs=0.005)
    pool[0].effective_weight = 1  # slow start: 0.5 against 1.0
    assert shares(Resource(pool), pool, 1500) == pytest.approx([1 / 3, 2 / 3], abs=0.005)


def test_no_report_counts_as_half_loaded() -> None:
    pool = backends(1, 1, 1)
    pool[1].load = 0.5
    pool[2].load = 0.75
    assert headroom(pool[0]) == headroom(pool[1]) == 0.5
    assert shares(Resource(pool), pool, 1000) == pytest.approx([0.4, 0.4, 0.2], abs=0.005)


def test_loads_are_clamped() -> None:
    a, b, c = backends(1, 1, 1)
    a.load, b.load, c.load = -0.5, 1.7, 0.25
    assert (headroom(a), headroom(b), headroom(c)) == (1.0, 0.0, 0.75)


def test_a_full_backend_gets_nothing_while_another_is_eligible() -> None:
    pool = backends(1, 1, 1)
    pool[0].load, pool[1].load, pool[2].load = 1.0, 0.95, 1.0
    algorithm = Resource(pool)
    assert set(next(algorithm.candidates(ctx())) for _ in range(500)) == {pool[1]}
    # Offered last all the same, for retries.
    first, *rest = algorithm.candidates(ctx())
    assert first is pool[1]
    assert set(rest) == {pool[0], pool[2]}


def test_full_backends_share_by_weight_when_nothing_else_is_eligible() -> None:
    pool = backends(3, 1, 1)
    pool[0].load = pool[1].load = 1.0
    pool[2].state = "disabled"
    assert shares(Resource(pool), pool, 400) == pytest.approx([0.75, 0.25, 0.0])


def test_the_split_follows_new_reports() -> None:
    pool = backends(1, 1)
    algorithm = Resource(pool)
    pool[0].load, pool[1].load = 0.2, 0.6
    assert shares(algorithm, pool, 600) == pytest.approx([2 / 3, 1 / 3], abs=0.01)
    pool[0].load, pool[1].load = 0.9, 0.4
    assert shares(algorithm, pool, 700) == pytest.approx([1 / 7, 6 / 7], abs=0.01)


def test_through_a_pool() -> None:
    config = PoolConfig.model_validate(
        {
            "algorithm": "resource",
            "agent": {"path": "/load"},
            "backends": [{"address": "10.0.0.1:80"}, {"address": "10.0.0.2:80"}],
        }
    )
    pool = Pool("app", config, ManualClock())
    a, b = pool.backends
    a.load, b.load = 0.25, 0.75
    counts = Counter(pool.select(ctx()) for _ in range(400))
    assert counts == {a: 300, b: 100}


def test_nothing_to_offer() -> None:
    assert list(Resource([]).candidates(ctx())) == []
    pool = backends(1, 1)
    for backend in pool:
        backend.healthy = False
    assert list(Resource(pool).candidates(ctx())) == []
