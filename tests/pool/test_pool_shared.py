"""Two pools of the same config over one shared state, as two workers' copies are: limits,
weights, ejections and pins hold for both (the process tests in test_global_state.py check
the same through real workers)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest

from usher.clock import ManualClock
from usher.config import PoolConfig
from usher.pool import Pool, Selection
from usher.shared import SharedTable
from usher.state import install
from usher.state.shm import SharedState

WORKERS = 2


@pytest.fixture
def table() -> Iterator[SharedTable]:
    t = SharedTable.create(WORKERS, capacity=16)
    yield t
    t.close()


@pytest.fixture
def shm(table: SharedTable) -> Iterator[SharedState]:
    state = SharedState.create(table, rows=16)
    yield state
    state.close()


def worker_pools(shm: SharedState, clock: ManualClock, **options: Any) -> list[Pool]:
    """One copy of pool `web` per worker (each its own mapping of the state, as a worker
    process has), its backends attached to rows 0, 1, ..."""
    config = PoolConfig.model_validate(options)
    table = shm.counts
    pools = []
    for worker in range(WORKERS):
        state = SharedState(shm.fd, table, 16, worker=worker)
        install(state)
        try:
            pool = Pool("web", config, clock)
        finally:
            install(None)
        for row, backend in enumerate(pool.backends):
            backend.shared = table.slot(row, worker)
        pools.append(pool)
    return pools


def backends(*weights: int, **extra: Any) -> list[dict[str, Any]]:
    return [
        {"address": f"127.0.0.1:{9001 + i}", "weight": w, **extra} for i, w in enumerate(weights)
    ]


def test_weights_hold_over_both_copies(shm: SharedState) -> None:
    clock = ManualClock(1000.0)
    pools = worker_pools(shm, clock, algorithm="round_robin", backends=backends(5, 1, 1))
    got: Counter[str] = Counter()
    for i in range(700):  # unevenly: two requests to the first copy for one to the second
        pool = pools[0] if i % 3 else pools[1]
        backend = pool.select(Selection("10.0.0.1", clock.now()))
        assert backend is not None
        got[backend.label[-1]] += 1
    assert got == {"1": 500, "2": 100, "3": 100}


def test_max_connections_counts_the_other_copy(shm: SharedState) -> None:
    clock = ManualClock(1000.0)
    one, two = worker_pools(shm, clock, backends=backends(1, max_connections=1))
    selection = Selection("10.0.0.1", clock.now())
    backend = one.select(selection)
    assert backend is not None
    one.on_start(backend)
    other = Selection("10.0.0.2", clock.now())
    assert two.select(other) is None
    assert two.saturated(other)
    one.on_finish(backend, 0.01, True)
    assert two.select(Selection("10.0.0.2", clock.now())) is two.backends[0]


def test_an_ejection_in_one_copy_applies_in_the_other(shm: SharedState) -> None:
    clock = ManualClock(1000.0)
    one, two = worker_pools(
        shm,
        clock,
        backends=backends(1, 1),
        passive_health={"max_fails": 1, "fail_timeout": "30s", "max_ejection_percent": "50%"},
    )
    assert two.select(Selection("10.0.0.1", clock.now())) is not None  # looked once already
    one.record_failure(one.backends[0], "connect refused")
    clock.advance(0.011)  # the next look at the others' ejections
    picked = {two.select(Selection("10.0.0.1", clock.now())) for _ in range(10)}
    assert picked == {two.backends[1]}
    assert two.backends[0].status(clock.now()) == "unhealthy"


def test_a_source_ip_pin_made_by_one_copy_holds_in_the_other(shm: SharedState) -> None:
    clock = ManualClock(1000.0)
    one, two = worker_pools(
        shm, clock, backends=backends(1, 1, 1), sticky={"type": "source_ip", "ttl": "60s"}
    )
    for client in ("10.0.0.1", "10.0.0.2", "10.0.0.3"):
        chosen = one.choose(Selection(client, clock.now()), [])
        assert chosen is not None
        one.chosen(Selection(client, clock.now()), [], chosen)
        again = two.choose(Selection(client, clock.now()), [])
        assert again is not None and again.label == chosen.label
