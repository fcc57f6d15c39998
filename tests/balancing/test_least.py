"""least_connections: the fewest requests in flight per unit of weight, fair among ties."""

from __future__ import annotations

import random
from collections import Counter
from typing import Any

from usher.balancing import get_algorithm
from usher.balancing.least import FairTies, LeastConnections
from usher.clock import ManualClock
from usher.config import HostPort, PoolConfig
from usher.pool import Backend, Pool, Selection


def backends(*weights: int) -> list[Backend]:
    return [Backend(HostPort(f"10.0.0.{i + 1}", 80), weight=w) for i, w in enumerate(weights)]


def ctx(**kwargs: Any) -> Selection:
    return Selection("192.0.2.1", 0.0, **kwargs)


def first(algorithm: LeastConnections, selection: Selection | None = None) -> Backend | None:
    return next(algorithm.candidates(selection or ctx()), None)


def make_pool(weights: list[int]) -> Pool:
    config = PoolConfig.model_validate(
        {
            "algorithm": "least_connections",
            "backends": [
                {"address": f"10.0.0.{i + 1}:80", "weight": w} for i, w in enumerate(weights)
            ],
        }
    )
    return Pool("web", config, ManualClock())


def test_the_defining_example() -> None:
    # A 10/5 = 2.0, B 5/2 = 2.5, C 8/4 = 2.0: A and C tie, A is listed first.
    a, b, c = backends(5, 2, 4)
    a.active, b.active, c.active = 10, 5, 8
    algorithm = LeastConnections([a, b, c])
    assert first(algorithm) is a
    # Asking again without starting anything gives the same answer.
    assert first(algorithm) is a
    c.active = 7
    assert first(algorithm) is c


def test_weight_divides_the_count() -> None:
    a, b = backends(1, 2)
    a.active, b.active = 3, 5  # 3.0 against 2.5: more requests, but more weight too
    assert first(LeastConnections([a, b])) is b


def test_effective_weight_is_the_one_used() -> None:
    a, b = backends(4, 4)
    a.active, b.active = 2, 3
    a.effective_weight = 1  # slow start: 2/1 against 3/4
    assert first(LeastConnections([a, b])) is b


def test_alias() -> None:
    assert get_algorithm("weighted_least_connections") is LeastConnections
    assert get_algorithm("least_connections") is LeastConnections
    assert LeastConnections.name == "least_connections"


def test_candidates_in_order_each_once_and_only_eligible() -> None:
    a, b, c, d = backends(1, 1, 1, 1)
    a.active, b.active, c.active, d.active = 3, 0, 2, 1
    c.state = "disabled"
    order = list(LeastConnections([a, b, c, d]).candidates(ctx()))
    assert order == [b, d, a]


def test_tried_backends_are_skipped() -> None:
    a, b = backends(1, 1)
    selection = ctx()
    selection.tried.append(a)
    assert list(LeastConnections([a, b]).candidates(selection)) == [b]


def test_nothing_to_offer() -> None:
    assert first(LeastConnections([])) is None
    a, b = backends(1, 1)
    a.healthy = b.healthy = False
    assert first(LeastConnections([a, b])) is None


def test_weighted_spreading_under_load() -> None:
    pool = make_pool([5, 2, 1])
    for client in range(800):
        backend = pool.select(Selection(f"10.1.{client >> 8}.{client & 255}", 0.0))
        assert backend is not None
        pool.on_start(backend)
    assert [b.active for b in pool.backends] == [500, 200, 100]


def test_idle_ties_rotate_by_weight() -> None:
    # Requests that finish before the next one arrives leave every backend at zero: the ties
    # must not all go to the first listed, but rotate by weight (as nginx and HAProxy do).
    pool = make_pool([3, 1])
    counts: Counter[str] = Counter()
    for _ in range(400):
        backend = pool.select(ctx())
        assert backend is not None
        counts[backend.label] += 1
        pool.on_start(backend)
        pool.on_finish(backend, 0.01, ok=True)
    assert counts == {"10.0.0.1:80": 300, "10.0.0.2:80": 100}


def test_a_backend_back_from_a_pause_does_not_win_every_tie() -> None:
    pool = make_pool([1, 1])
    a, b = pool.backends

    def pick() -> Backend:
        backend = pool.select(ctx())
        assert backend is not None
        pool.on_start(backend)
        pool.on_finish(backend, 0.01, ok=True)
        return backend

    b.state = "disabled"
    for _ in range(100):
        assert pick() is a
    b.state = "enabled"
    picks = Counter(pick() for _ in range(20))
    assert picks[b] <= 11, picks


def test_zero_weight_is_a_last_resort() -> None:
    a, b = backends(1, 1)
    a.effective_weight = 0
    b.active = 50
    algorithm = LeastConnections([a, b])
    assert list(algorithm.candidates(ctx())) == [b, a]
    b.state = "draining"
    assert first(algorithm) is a


def test_starts_off_the_last_pick_keep_the_ties_as_a_reference_does() -> None:
    # on_start of the backend just picked skips the look-up of its index; a start elsewhere (a
    # sticky pin, a hook's choice) looks it up: either way the tags move as FairTies' own do.
    rng = random.Random(7)
    group = backends(3, 1, 2)
    algorithm = LeastConnections(group)
    reference = FairTies(group)
    for _ in range(300):
        picked = first(algorithm)
        assert picked is not None
        started = picked if rng.random() < 0.7 else rng.choice(group)
        algorithm.on_start(started)
        reference.started(started)
        assert algorithm._ties.tags == reference.tags
        assert algorithm._ties.vtime == reference.vtime


def test_a_start_on_a_backend_it_does_not_know_changes_nothing() -> None:
    # A request that outlived a rebuild of the algorithm finishes on the new one.
    a, b = backends(1, 1)
    (stranger,) = backends(1)
    algorithm = LeastConnections([a, b])
    assert first(algorithm) is a
    algorithm.on_start(stranger)
    assert algorithm._ties.tags == [0.0, 0.0]
    algorithm.on_start(a)
    assert first(algorithm) is b
