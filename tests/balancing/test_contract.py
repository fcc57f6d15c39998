"""The contract every registered balancing algorithm keeps, run over each of them by name.

A new algorithm is tested here as soon as it registers: it only ever gets picked among eligible
backends (the pool enforces it, but a pool must always find one when there is one), leaves backups
alone while a primary is eligible, spreads by weight, copes with no backends, and takes
`on_start` / `on_finish` in any order without raising.
"""

from __future__ import annotations

import random
from collections import Counter, deque
from itertools import islice
from typing import Any

import pytest

from usher.balancing import ALGORITHMS, Algorithm, Stepwise, get_algorithm, registered_names
from usher.balancing.round_robin import RoundRobin
from usher.clock import ManualClock
from usher.config import PoolConfig
from usher.pool import Backend, Pool, Selection

NAMES = registered_names()


def pool_config(name: str, backends: list[dict[str, Any]]) -> PoolConfig:
    return PoolConfig.model_validate(
        {
            "algorithm": name,
            "backends": backends,
            # Options some algorithms need (e.g. `resource` reads agent reports); harmless to others.
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


def test_registry_lists_every_name_sorted() -> None:
    assert "round_robin" in NAMES
    assert "weighted_round_robin" in NAMES
    assert sorted(NAMES) == NAMES
    assert set(NAMES) == set(ALGORITHMS)


def test_unknown_algorithm() -> None:
    with pytest.raises(KeyError, match="unknown algorithm 'nope'"):
        get_algorithm("nope")


@pytest.mark.parametrize("name", NAMES)
def test_registered_class_answers_to_its_name(name: str) -> None:
    cls = get_algorithm(name)
    assert issubclass(cls, Algorithm)
    assert cls.name in NAMES
    assert get_algorithm(cls.name) is cls


@pytest.mark.parametrize("seed", [0, 1, 7])
@pytest.mark.parametrize("name", NAMES)
def test_never_an_ineligible_backend_and_always_one_when_there_is_one(name: str, seed: int) -> None:
    rng = random.Random(f"{name}-{seed}")
    clock = ManualClock()
    pool = make_pool(name, [1, 2, 3, 1, 2, 5], backups=2, seed=seed, clock=clock)
    primaries = [b for b in pool.backends if not b.backup]
    in_flight: list[Backend] = []
    for round_ in range(600):
        clock.advance(0.01)
        now = clock.now()
        for backend in pool.backends:
            backend.state = rng.choice(["enabled"] * 6 + ["draining", "disabled"])
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


@pytest.mark.parametrize("name", NAMES)
def test_retries_reach_every_eligible_backend_once(name: str) -> None:
    pool = make_pool(name, [1, 2, 3, 4], backups=1)
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


@pytest.mark.parametrize("name", NAMES)
def test_backups_only_when_no_primary_is_eligible(name: str) -> None:
    pool = make_pool(name, [1, 1], backups=2)
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


@pytest.mark.parametrize("name", NAMES)
def test_spreads_by_weight(name: str) -> None:
    clock = ManualClock()
    pool = make_pool(name, [3, 1], clock=clock)
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


@pytest.mark.parametrize("name", NAMES)
def test_single_backend_always_chosen(name: str) -> None:
    pool = make_pool(name, [4])
    (only,) = pool.backends
    for client in range(20):
        assert pool.select(selection(pool, client)) is only


@pytest.mark.parametrize("name", NAMES)
def test_all_down_gives_none(name: str) -> None:
    pool = make_pool(name, [1, 2, 3], backups=1)
    for backend in pool.backends:
        pool.set_state(backend, "disabled")
    for client in range(5):
        assert pool.select(selection(pool, client)) is None


@pytest.mark.parametrize("name", NAMES)
def test_everything_tried_gives_none(name: str) -> None:
    pool = make_pool(name, [1, 2, 3])
    ctx = selection(pool)
    ctx.tried.extend(pool.backends)
    assert pool.select(ctx) is None


@pytest.mark.parametrize("name", NAMES)
def test_no_backends(name: str) -> None:
    config = pool_config(name, [{"address": "127.0.0.1:9001"}])
    algorithm = get_algorithm(name)([], seed=3, clock=ManualClock(), options=config)
    pool = make_pool(name, [1])
    assert list(islice(algorithm.candidates(selection(pool)), 10)) == []


@pytest.mark.parametrize("name", NAMES)
def test_on_start_and_on_finish_do_not_raise(name: str) -> None:
    pool = make_pool(name, [1, 2], backups=1)
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
    stranger = make_pool(name, [1]).backends[0]
    config = pool_config(name, [{"address": "127.0.0.1:9001"}])
    algorithm = get_algorithm(name)([a, b], seed=0, clock=ManualClock(), options=config)
    algorithm.on_start(stranger)
    algorithm.on_finish(stranger, 0.01, ok=True)
    assert pool.select(selection(pool)) in (a, b)


@pytest.mark.parametrize("name", NAMES)
def test_candidates_without_start_or_finish(name: str) -> None:
    # Selection alone (e.g. a pick that was then abandoned) must keep working.
    pool = make_pool(name, [1, 1, 1])
    chosen = {pool.select(selection(pool, client)) for client in range(300)}
    assert None not in chosen
    assert chosen <= set(pool.backends)


class FirstEligible(Stepwise):
    """An algorithm written in Python, as a user would: it subclasses the (compiled) base."""

    def prepare(self) -> None:
        self.prepared = True

    def pick(self, ctx: Any, excluded: int) -> int:
        for i, backend in enumerate(self.backends):
            if not excluded >> i & 1 and ctx.eligible(backend):
                return i
        return -1


def test_an_algorithm_written_in_python_subclasses_the_base() -> None:
    pool = make_pool("round_robin", [1, 1, 1])
    backends = list(pool.backends)
    algorithm = FirstEligible(backends, seed=1, clock=ManualClock())
    assert algorithm.prepared and algorithm.seed == 1
    selection = Selection("10.0.0.1", 0.0)
    selection.tried.append(backends[0])
    assert list(algorithm.candidates(selection)) == backends[1:]


class QuietRoundRobin(RoundRobin):
    """A built-in algorithm extended in Python (compiled, it has to allow that)."""

    def on_start(self, backend: Backend) -> None:
        self.started = backend


def test_a_built_in_algorithm_can_be_extended_in_python() -> None:
    backends = list(make_pool("round_robin", [1, 1]).backends)
    algorithm = QuietRoundRobin(backends, seed=0, clock=ManualClock())
    first = next(algorithm.candidates(Selection("10.0.0.1", 0.0)))
    algorithm.on_start(first)
    assert algorithm.started is first
