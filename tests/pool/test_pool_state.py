"""Pool state machines on a manual clock: outlier ejection, panic mode, slow start, health
transitions, draining state, the retry budget."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest

from usher.clock import ManualClock
from usher.config import PoolConfig
from usher.pool import Pool, RetryBudget, Selection
from usher.process.sync import apply_state, pools_state
from usher.shared import RowIndex


def make_pool(n: int = 4, **options: Any) -> tuple[Pool, ManualClock]:
    config = PoolConfig.model_validate(
        {"backends": [{"address": f"127.0.0.1:{9001 + i}"} for i in range(n)], **options}
    )
    clock = ManualClock(1000.0)
    return Pool("web", config, clock), clock


def picks(pool: Pool, clock: ManualClock, count: int) -> list[str]:
    out = []
    for _ in range(count):
        backend = pool.select(Selection("10.0.0.1", clock.now()))
        out.append(backend.label if backend else "-")
    return out


def test_consecutive_failures_eject_for_a_growing_time():
    pool, clock = make_pool(passive_health={"max_fails": 3, "fail_timeout": "10s"})
    backend = pool.backends[0]
    for _ in range(2):
        pool.record_failure(backend, "connect refused")
    assert backend.ready(clock.now())
    pool.record_failure(backend, "connect refused")
    assert not backend.ready(clock.now())
    assert backend.reason == "ejected for 10s after 3 failures in a row: connect refused"
    clock.advance(10)
    assert backend.label in picks(pool, clock, 4)  # back after the base time
    for _ in range(3):
        pool.record_failure(backend)
    clock.advance(10)
    assert not backend.ready(clock.now())  # the second ejection in a row lasts 20s
    clock.advance(10)
    assert backend.ready(clock.now())


def test_ejection_time_is_capped_and_resets_after_good_behaviour():
    pool, clock = make_pool(
        passive_health={"max_fails": 1, "fail_timeout": "10s", "max_ejection_time": "25s"}
    )
    backend = pool.backends[0]
    durations = []
    for _ in range(4):
        pool.record_failure(backend)
        start = clock.now()
        while not backend.ready(clock.now()):
            clock.advance(1)
        durations.append(clock.now() - start)
    assert durations == [10, 20, 25, 25]
    clock.advance(3600)  # a long quiet time: the next ejection is short again
    pool.record_failure(backend)
    assert backend.failed_until - clock.now() == 10


def test_consecutive_5xx_eject_when_configured():
    pool, clock = make_pool(passive_health={"consecutive_5xx": 3})
    backend = pool.backends[1]
    for status in (500, 502, 200, 503, 503):
        pool.record_status(backend, status)
    assert backend.ready(clock.now())  # the 200 broke the run
    pool.record_status(backend, 504)
    assert not backend.ready(clock.now())
    assert "3 answers 5xx in a row (last 504)" in backend.reason


def test_never_eject_more_than_max_ejection_percent(caplog: pytest.LogCaptureFixture):
    pool, clock = make_pool(4, passive_health={"max_ejection_percent": "50%"})
    for backend in pool.backends:
        pool.record_failure(backend)
    ejected = [b for b in pool.backends if not b.ready(clock.now())]
    assert len(ejected) == 2
    assert "max_ejection_percent reached" in caplog.text


def test_a_single_backend_is_never_ejected_with_the_default_cap():
    pool, clock = make_pool(1)
    pool.record_failure(pool.backends[0])
    assert pool.backends[0].ready(clock.now())


def test_panic_mode_spreads_over_all_backends(caplog: pytest.LogCaptureFixture):
    pool, clock = make_pool(4, panic_threshold="50%")
    for backend in pool.backends[:3]:
        pool.set_healthy(backend, False, "unhealthy after 3 failed checks: connect refused")
    with caplog.at_level(logging.WARNING, "usher.health"):
        seen = picks(pool, clock, 8)
    assert len(set(seen)) == 4  # the one survivor is not melted: everyone takes a share
    assert "panic mode" in caplog.text
    pool.set_healthy(pool.backends[0], True, "healthy after 2 passed checks")
    assert len(set(picks(pool, clock, 8))) == 2  # 2 of 4 healthy is not below 50%: no panic


def test_without_panic_unhealthy_backends_get_nothing():
    pool, clock = make_pool(4)
    for backend in pool.backends[:3]:
        pool.set_healthy(backend, False, "down")
    assert set(picks(pool, clock, 8)) == {pool.backends[3].label}


def test_health_transitions_are_logged_once_with_their_reason(caplog: pytest.LogCaptureFixture):
    pool, _ = make_pool(2)
    backend = pool.backends[1]
    changes: list[tuple[str, str, str]] = []
    pool.on_state_change.append(lambda b, old, new, why: changes.append((old, new, why)))
    with caplog.at_level(logging.WARNING, "usher.health"):
        pool.set_healthy(backend, False, "unhealthy after 3 failed checks: connect refused")
        pool.set_healthy(backend, False, "unhealthy after 4 failed checks: connect refused")
        pool.set_healthy(backend, True, "healthy after 2 passed checks")
    assert changes == [
        ("healthy", "unhealthy", "unhealthy after 3 failed checks: connect refused"),
        ("unhealthy", "healthy", "healthy after 2 passed checks"),
    ]
    assert (
        "backend 127.0.0.1:9002 in pool web: unhealthy: unhealthy after 3 failed checks: "
        "connect refused" in caplog.text
    )
    assert caplog.text.count("unhealthy after") == 1


def test_slow_start_ramps_the_weight_of_a_returning_backend():
    pool, clock = make_pool(2, slow_start="10s")
    a, b = pool.backends
    pool.set_healthy(b, False, "down")
    pool.set_healthy(b, True, "up")
    pool.select(Selection("x", clock.now()))
    assert b.effective_weight == pytest.approx(0.1)
    clock.advance(5)
    pool.select(Selection("x", clock.now()))
    assert b.effective_weight == pytest.approx(0.5)
    shares = picks(pool, clock, 30).count(b.label)
    assert 5 <= shares <= 15  # about a third at half weight
    clock.advance(5)
    pool.select(Selection("x", clock.now()))
    assert b.effective_weight == 1
    assert a.effective_weight == 1


def test_slow_start_after_ejection_ends():
    pool, clock = make_pool(2, slow_start="10s", passive_health={"fail_timeout": "5s"})
    b = pool.backends[1]
    pool.record_failure(b)
    clock.advance(5)
    pool.select(Selection("x", clock.now()))
    assert b.ready(clock.now())
    assert b.effective_weight == pytest.approx(0.1)


def test_draining_and_disabled_backends_take_nothing_and_report_their_state():
    pool, clock = make_pool(3)
    pool.set_state(pool.backends[0], "draining")
    pool.set_state(pool.backends[1], "disabled")
    assert set(picks(pool, clock, 6)) == {pool.backends[2].label}
    assert [b.status(clock.now()) for b in pool.backends] == ["draining", "disabled", "healthy"]
    assert repr(pool) == "<Pool web [3 backends: 1 healthy, 1 draining, 1 disabled | 0 active]>"


def test_max_connections_limits_each_backend():
    pool, clock = make_pool(2)
    for backend in pool.backends:
        backend.max_connections = 1
    first = pool.select(Selection("x", clock.now()))
    assert first is not None
    pool.on_start(first)
    second = pool.select(Selection("x", clock.now()))
    assert second is not None and second is not first
    pool.on_start(second)
    selection = Selection("x", clock.now())
    assert pool.select(selection) is None
    assert pool.saturated(selection)


def test_waiters_are_woken_in_order_when_a_slot_frees():
    pool, _ = make_pool(1, queue={"size": 2, "timeout": "1s"})
    backend = pool.backends[0]
    backend.max_connections = 1
    pool.on_start(backend)
    woken: list[int] = []
    assert pool.wait(lambda: woken.append(1))
    assert pool.wait(lambda: woken.append(2))
    assert not pool.wait(lambda: woken.append(3))  # the queue holds 2
    pool.on_finish(backend, 0.01, True)
    assert woken == [1]


def test_retry_budget_allows_a_share_of_the_requests():
    budget = RetryBudget(0.2)
    spent = sum(budget.withdraw() for _ in range(100))
    assert spent == 10  # the reserve
    for _ in range(100):
        budget.deposit()
    assert sum(budget.withdraw() for _ in range(100)) == 20


async def test_drain_with_nothing_in_flight_is_clean_even_with_no_time_to_wait():
    pool, _ = make_pool(2)
    target = pool.backends[0]
    assert await pool.drain(target, timeout=0) is True
    assert target.state == "disabled"


async def test_a_state_set_during_a_drain_ends_it_and_wins():
    pool, clock = make_pool(2)
    target = pool.backends[0]
    pool.on_start(target)
    drain = asyncio.create_task(pool.drain(target, timeout=30, remove=True))
    await asyncio.sleep(0)
    assert target.state == "draining"
    pool.set_state(target, "enabled")
    assert await asyncio.wait_for(drain, 1) is False  # a request is still in flight
    assert target.state == "enabled"
    assert target in pool.backends  # the removal was called off too
    assert target.drained is None
    pool.on_finish(target, 0.01, ok=True)
    assert pool.backends[0].label in picks(pool, clock, 4)


def test_a_reload_keeps_discovered_backends_and_a_worker_learns_their_source():
    control, _ = make_pool(2)
    found = control.add_backend(
        PoolConfig.model_validate({"backends": [{"address": "127.0.0.1:9100"}]}).backends[0]
    )
    found.source = "dns:api.internal"
    admin = control.add_backend(
        PoolConfig.model_validate({"backends": [{"address": "127.0.0.1:9200"}]}).backends[0]
    )
    admin.source = "admin"
    worker, _ = make_pool(2)
    apply_state({"web": worker}, pools_state({"web": control}, RowIndex(8)), None, 0)
    assert {b.label: b.source for b in worker.backends}["127.0.0.1:9100"] == "dns:api.internal"
    # The same file again: the admin's backend goes (the file is the truth), the found one stays.
    for pool in (control, worker):
        dropped = pool.reconfigure(pool.config)
        assert [b.label for b in dropped] == ["127.0.0.1:9200"]
        assert pool.find("127.0.0.1:9100") is not None
