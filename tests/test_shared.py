"""The shared counts table and the state the control process sends its workers, in one process:
two pools stand for two workers mapping the same table."""

from __future__ import annotations

import mmap
import os
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from usher.clock import ManualClock
from usher.config import PoolConfig
from usher.pool import Pool, Selection
from usher.process.sync import apply_state, pools_state
from usher.shared import RowIndex, SharedTable


@pytest.fixture
def table() -> Iterator[SharedTable]:
    t = SharedTable.create(workers=2, capacity=8)
    yield t
    t.close()


def make_pool(*addresses: str, **options: Any) -> Pool:
    config = PoolConfig.model_validate({"backends": [{"address": a} for a in addresses], **options})
    return Pool("web", config, ManualClock())


def test_each_worker_writes_its_slot_and_readers_sum(table: SharedTable) -> None:
    # A second mapping of the same memory, as a worker process has after exec.
    other = SharedTable(os.dup(table.fd), table.workers, table.capacity)
    pool0, pool1 = make_pool("127.0.0.1:9001"), make_pool("127.0.0.1:9001")
    b0, b1 = pool0.backends[0], pool1.backends[0]
    b0.shared, b1.shared = table.slot(3, 0), other.slot(3, 1)
    for _ in range(2):
        pool0.on_start(b0)
    pool1.on_start(b1)
    assert b0.active == 2 and b1.active == 1  # each process keeps its own count
    assert b0.in_flight() == b1.in_flight() == 3  # and reads the sum
    assert table.totals(3)[:3] == (3, 3, 0)
    pool1.on_finish(b1, 0.010, ok=False)
    assert table.totals(3)[:3] == (2, 3, 1)
    assert table.active_total(2) == 0  # other rows untouched
    other.close()


def test_latency_is_weighted_by_requests(table: SharedTable) -> None:
    pool = make_pool("127.0.0.1:9001")
    backend = pool.backends[0]
    backend.shared = table.slot(0, 0)
    for _ in range(3):
        pool.on_start(backend)
        pool.on_finish(backend, 0.1, ok=True)
    table.requests[1] = 1  # worker 1: one request at 0.5 s
    table.latency[1] = 0.5
    assert table.totals(0)[3] == pytest.approx((3 * 0.1 + 0.5) / 4)


def test_clearing_a_worker_zeroes_its_slots_only(table: SharedTable) -> None:
    for row in range(table.capacity):
        table.active[row * 2] = 5
        table.active[row * 2 + 1] = 7
    table.clear_worker(0)
    assert [table.active_total(row) for row in range(table.capacity)] == [7] * table.capacity
    table.clear_row(4)
    assert table.active_total(4) == 0


def test_least_connections_balances_on_the_sum(table: SharedTable) -> None:
    pool = make_pool("127.0.0.1:9001", "127.0.0.1:9002", algorithm="least_connections")
    a, b = pool.backends
    a.shared, b.shared = table.slot(0, 0), table.slot(1, 0)
    table.active[0 * 2 + 1] = 4  # the other worker has 4 requests on a
    picked = []
    for _ in range(4):
        backend = pool.select(Selection("192.0.2.1", 0.0))
        assert backend is not None
        pool.on_start(backend)
        picked.append(backend.label)
    assert picked == ["127.0.0.1:9002"] * 4  # alone, this worker would have alternated


def test_a_slot_out_of_the_table_is_refused(table: SharedTable) -> None:
    with pytest.raises(IndexError, match="row 8"):
        table.slot(8, 0)
    with pytest.raises(IndexError, match="worker 2"):
        table.slot(0, 2)


def test_the_table_is_shared_memory() -> None:
    t = SharedTable.create(workers=1, capacity=1)
    try:
        view = mmap.mmap(os.dup(t.fd), 32)
        t.active[0] = 42
        assert int.from_bytes(view[0:8], sys.byteorder) == 42
        view.close()
    finally:
        t.close()


def test_rows_are_reused_last_and_freed_when_backends_go() -> None:
    rows = RowIndex(capacity=3)
    assert [rows.assign("p", a) for a in "abc"] == [0, 1, 2]
    assert rows.assign("p", "a") == 0  # stable
    assert rows.assign("p", "d") is None  # full
    assert rows.keep_only({("p", "b"), ("p", "c")}) == [0]
    assert rows.assign("q", "a") == 0
    assert rows.get("p", "a") is None


def test_a_worker_follows_the_control_state(table: SharedTable) -> None:
    control = make_pool("127.0.0.1:9001", "127.0.0.1:9002")
    worker = make_pool("127.0.0.1:9001", "127.0.0.1:9002")
    rows = RowIndex(table.capacity)
    a, b = control.backends
    control.set_healthy(a, False, "check failed")
    control.set_weight(b, 5)
    control.add_backend(
        PoolConfig.model_validate(
            {"backends": [{"address": "127.0.0.1:9003", "backup": True}]}
        ).backends[0]
    )
    apply_state({"web": worker}, pools_state({"web": control}, rows), table, 1)
    wa, wb, wc = worker.backends
    assert (wa.healthy, wa.reason) == (False, "check failed")
    assert wb.check_rtt is None
    b.check_rtt = 0.042  # a health check's round trip: what dns latency records answer on
    apply_state({"web": worker}, pools_state({"web": control}, rows), table, 1)
    assert wb.check_rtt == 0.042
    assert wb.weight == 5
    assert wc.label == "127.0.0.1:9003" and wc.backup
    assert wc.shared is not None
    # Drain, then removal, as the control process decides them.
    control.set_state(b, "draining", "draining")
    worker.on_start(wb)
    apply_state({"web": worker}, pools_state({"web": control}, rows), table, 1)
    assert wb.state == "draining"
    row = rows.get("web", b.label)
    assert row is not None and table.active_total(row) == 1
    control.remove_backend(b)
    apply_state({"web": worker}, pools_state({"web": control}, rows), table, 1)
    assert [x.label for x in worker.backends] == ["127.0.0.1:9001", "127.0.0.1:9003"]
    assert wb.shared is None and table.active_total(row) == 0  # its slot cleared on the way out
    worker.on_finish(wb, 0.01, ok=True)  # the request in flight ends without a slot
    assert table.active_total(row) == 0
