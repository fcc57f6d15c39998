"""The workers' counts read into the control process's backends; a dead worker's totals kept."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
import yaml

from usher.clock import ManualClock
from usher.config import parse_config
from usher.pool import Backend, Pool
from usher.process.counts import Counts
from usher.shared import RowIndex, SharedTable


@pytest.fixture
def table() -> Iterator[SharedTable]:
    shared = SharedTable.create(2, capacity=8)
    yield shared
    shared.close()


def control_pools() -> dict[str, Pool]:
    config = parse_config(
        yaml.safe_dump(
            {
                "listeners": [{"name": "web", "bind": "127.0.0.1:0", "pool": "web"}],
                "pools": {"web": {"backends": [{"address": "127.0.0.1:9001"}]}},
            }
        )
    )
    return {"web": Pool("web", config.pools["web"], ManualClock())}


def worker_copy(active: int, requests: int, failures: int) -> Backend:
    """What one worker's Backend counted, as it publishes it in its slot."""
    (backend,) = control_pools()["web"].backends
    backend.active, backend.requests_total, backend.failures_total = active, requests, failures
    return backend


async def test_counts_are_summed_and_a_dead_workers_totals_are_kept(table) -> None:
    pools = control_pools()
    (backend,) = pools["web"].backends
    rows = RowIndex(table.capacity)
    row = rows.assign("web", backend.label)
    assert row is not None
    counts = Counts(table, rows)
    table.slot(row, 0).publish(worker_copy(active=2, requests=10, failures=1))
    table.slot(row, 1).publish(worker_copy(active=1, requests=5, failures=0))
    backend.drained = asyncio.Event()
    counts.read_into(pools)
    assert (backend.active, backend.requests_total, backend.failures_total) == (3, 15, 1)
    assert not backend.drained.is_set()
    counts.retire_worker(pools, 0)  # killed: its requests in flight are gone, its totals stay
    counts.read_into(pools)
    assert (backend.active, backend.requests_total, backend.failures_total) == (1, 15, 1)
    table.slot(row, 1).publish(worker_copy(active=0, requests=6, failures=0))
    counts.read_into(pools)
    assert (backend.active, backend.requests_total) == (0, 16)
    assert backend.drained.is_set()  # a drain ends when the sum reaches 0


def test_rows_of_backends_gone_everywhere_are_freed(table) -> None:
    pools = control_pools()
    (backend,) = pools["web"].backends
    rows = RowIndex(table.capacity)
    row = rows.assign("web", backend.label)
    assert row is not None
    counts = Counts(table, rows)
    table.slot(row, 1).publish(worker_copy(active=1, requests=4, failures=0))
    counts.retire_worker(pools, 1)
    assert counts.keep_only(pools) == []  # still in the pool: kept
    pools["web"].remove_backend(backend)
    assert counts.keep_only(pools) == [row]
    assert counts.retired == {}
    assert table.totals(row)[:3] == (0, 0, 0)
