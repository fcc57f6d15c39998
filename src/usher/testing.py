"""The contract every balancing algorithm keeps, as a pytest class you run on your own.

usher runs it over every registered algorithm; run it on a custom one (`algorithm:
"myalgos:Pinned"` in the config) by subclassing it in a test file (pytest is needed):

    from usher.testing import AlgorithmContract

    class TestPinned(AlgorithmContract):
        ALGORITHM = "myalgos:Pinned"      # as the config names it, or the class itself

An algorithm keeps the contract when it only ever gets picked among eligible backends (the pool
enforces it, but a pool must always find one when there is one), leaves backups alone while a
primary is eligible, spreads by weight, copes with no backends, and takes `on_start` /
`on_finish` in any order without raising.
"""

from __future__ import annotations

import random
from collections import Counter, deque
from itertools import islice
from typing import Any, ClassVar

import pytest

from usher.balancing import Algorithm, get_algorithm
from usher.clock import ManualClock
from usher.config import PoolConfig
from usher.pool import Backend, Pool, Selection, State

# Mostly enabled, as in life.
STATES: list[State] = [
    "enabled",
    "enabled",
    "enabled",
    "enabled",
    "enabled",
    "enabled",
    "draining",
    "disabled",
]


def pool_config(name: str, backends: list[dict[str, Any]]) -> PoolConfig:
    return PoolConfig.model_validate(
        {
            "algorithm": name,
            "backends": backends,
            # Options some algorithms need (`resource` reads agent reports); harmless to others.
            "agent": {},
            "passive_health": {"max_fails": 0},
        }
    )


def make_pool(
    name: str,
    weights: list[int],
    *,
    backups: int = 0,
    seed: int = 0,
    clock: ManualClock | None = None,
) -> Pool:
    specs: list[dict[str, Any]] = [
        {"address": f"127.0.0.1:{9001 + i}", "weight": w} for i, w in enumerate(weights)
    ]
    specs += [{"address": f"127.0.0.1:{9501 + i}", "backup": True} for i in range(backups)]
    return Pool("web", pool_config(name, specs), clock or ManualClock(), seed=seed)


def selection(pool: Pool, client: int = 1) -> Selection:
    ip = f"10.{(client >> 16) & 255}.{(client >> 8) & 255}.{client & 255}"
    return Selection(ip, pool.clock.now(), ip.encode())


def algorithm_name(algorithm: str | type[Algorithm]) -> str:
    """How a config names `algorithm`: a registered name as it is, a class by import path."""
    if isinstance(algorithm, str):
        return algorithm
    return f"{algorithm.__module__}:{algorithm.__qualname__}"


class AlgorithmContract:
    """The contract tests; subclass with `ALGORITHM` set (or override the `algorithm` fixture)."""

    ALGORITHM: ClassVar[str | type[Algorithm] | None] = None

    @pytest.fixture
    def algorithm(self) -> str:
        if self.ALGORITHM is None:
            raise TypeError(f"{type(self).__name__}: set ALGORITHM to the algorithm under test")
        return algorithm_name(self.ALGORITHM)

    @pytest.mark.parametrize("seed", [0, 1, 7])
    def test_never_an_ineligible_backend_and_always_one_when_there_is_one(
        self, algorithm: str, seed: int
    ) -> None:
        rng = random.Random(f"{algorithm}-{seed}")
        clock = ManualClock()
        pool = make_pool(algorithm, [1, 2, 3, 1, 2, 5], backups=2, seed=seed, clock=clock)
        primaries = [b for b in pool.backends if not b.backup]
        in_flight: list[Backend] = []
        for round_ in range(600):
            clock.advance(0.01)
            now = clock.now()
            for backend in pool.backends:
                backend.state = rng.choice(STATES)
                backend.healthy = rng.random() > 0.2
                backend.failed_until = now + 1.0 if rng.random() < 0.1 else 0.0
            ctx = selection(pool, round_)
            ctx.tried.extend(b for b in pool.backends if rng.random() < 0.15)
            chosen = pool.select(ctx)
            eligible = [b for b in pool.backends if ctx.eligible(b)]
            if chosen is None:
                assert eligible == [], round_
                continue
            assert ctx.eligible(chosen), (round_, chosen)
            if chosen.backup:
                assert not any(ctx.eligible(b) for b in primaries), round_
            pool.on_start(chosen)
            in_flight.append(chosen)
            if len(in_flight) > 4:
                done = in_flight.pop(rng.randrange(len(in_flight)))
                pool.on_finish(done, rng.uniform(0.001, 0.5), ok=rng.random() > 0.1)

    def test_retries_reach_every_eligible_backend_once(self, algorithm: str) -> None:
        pool = make_pool(algorithm, [1, 2, 3, 4], backups=1)
        pool.backends[1].state = "disabled"
        ctx = selection(pool)
        seen: list[Backend] = []
        while (backend := pool.select(ctx)) is not None:
            assert backend not in seen
            seen.append(backend)
            ctx.tried.append(backend)
            assert len(seen) <= len(pool.backends)
        assert set(seen) == set(pool.backends) - {pool.backends[1]}
        assert seen[-1].backup

    def test_backups_only_when_no_primary_is_eligible(self, algorithm: str) -> None:
        pool = make_pool(algorithm, [1, 1], backups=2)
        a, b, c, d = pool.backends
        for client in range(50):
            assert pool.select(selection(pool, client)) in (a, b)
        pool.set_state(a, "disabled")
        pool.set_healthy(b, False, "down")
        for client in range(50):
            assert pool.select(selection(pool, client)) in (c, d)
        pool.set_state(a, "enabled")
        for client in range(50):
            assert pool.select(selection(pool, client)) is a

    def test_spreads_by_weight(self, algorithm: str) -> None:
        clock = ManualClock()
        pool = make_pool(algorithm, [3, 1], clock=clock)
        heavy, light = pool.backends
        counts: Counter[Backend] = Counter()
        in_flight: deque[Backend] = deque()
        picks = 4000
        for client in range(picks):
            clock.advance(0.001)
            backend = pool.select(selection(pool, client))
            assert backend is not None
            counts[backend] += 1
            pool.on_start(backend)
            in_flight.append(backend)
            if len(in_flight) >= 8:  # a steady load with a few requests in flight
                pool.on_finish(in_flight.popleft(), 0.01, ok=True)
        share = counts[heavy] / picks
        assert 0.70 <= share <= 0.80, counts
        assert counts[heavy] + counts[light] == picks

    def test_single_backend_always_chosen(self, algorithm: str) -> None:
        pool = make_pool(algorithm, [4])
        (only,) = pool.backends
        for client in range(20):
            assert pool.select(selection(pool, client)) is only

    def test_all_down_gives_none(self, algorithm: str) -> None:
        pool = make_pool(algorithm, [1, 2, 3], backups=1)
        for backend in pool.backends:
            pool.set_state(backend, "disabled")
        for client in range(5):
            assert pool.select(selection(pool, client)) is None

    def test_everything_tried_gives_none(self, algorithm: str) -> None:
        pool = make_pool(algorithm, [1, 2, 3])
        ctx = selection(pool)
        ctx.tried.extend(pool.backends)
        assert pool.select(ctx) is None

    def test_no_backends(self, algorithm: str) -> None:
        config = pool_config(algorithm, [{"address": "127.0.0.1:9001"}])
        instance = get_algorithm(algorithm)([], seed=3, clock=ManualClock(), options=config)
        pool = make_pool(algorithm, [1])
        assert list(islice(instance.candidates(selection(pool)), 10)) == []

    def test_on_start_and_on_finish_do_not_raise(self, algorithm: str) -> None:
        pool = make_pool(algorithm, [1, 2], backups=1)
        a, b, c = pool.backends
        for backend in (a, b, c, a, a):
            pool.on_start(backend)
        pool.on_finish(a, 0.0, ok=True)
        pool.on_finish(a, 120.0, ok=False)
        pool.on_finish(c, 0.003, ok=True)
        pool.on_finish(b, 0.5, ok=False)
        pool.on_finish(a, 1e-9, ok=True)
        assert (a.active, b.active, c.active) == (0, 0, 0)
        # A request that outlived a change of the backend list reports on a backend the
        # algorithm was not built with.
        stranger = make_pool(algorithm, [1]).backends[0]
        config = pool_config(algorithm, [{"address": "127.0.0.1:9001"}])
        instance = get_algorithm(algorithm)([a, b], seed=0, clock=ManualClock(), options=config)
        instance.on_start(stranger)
        instance.on_finish(stranger, 0.01, ok=True)
        assert pool.select(selection(pool)) in (a, b)

    def test_candidates_without_start_or_finish(self, algorithm: str) -> None:
        # Selection alone (e.g. a pick that was then abandoned) must keep working.
        pool = make_pool(algorithm, [1, 1, 1])
        chosen = {pool.select(selection(pool, client)) for client in range(300)}
        assert None not in chosen
        assert chosen <= set(pool.backends)
