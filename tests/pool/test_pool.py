"""Tests of pools on virtual time: eligibility, backups, passive health, retries' exclusions."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from typing import Any

import pytest

from usher.clock import ManualClock
from usher.config import PoolConfig
from usher.pool import Backend, Pool, Selection


def make_pool(
    *backends: dict[str, Any] | str,
    clock: ManualClock | None = None,
    name: str = "web",
    **options: Any,
) -> Pool:
    """A pool from backend specs (an address, or a BackendConfig mapping) and pool options."""
    specs = [{"address": b} if isinstance(b, str) else b for b in backends]
    config = PoolConfig.model_validate({"backends": specs, **options})
    return Pool(name, config, clock or ManualClock())


def three(clock: ManualClock | None = None, **options: Any) -> Pool:
    return make_pool("127.0.0.1:9001", "127.0.0.1:9002", "127.0.0.1:9003", clock=clock, **options)


def pick(pool: Pool, tried: Iterable[Backend] = ()) -> Backend | None:
    selection = Selection("192.0.2.1", pool.clock.now())
    selection.tried.extend(tried)
    return pool.select(selection)


def picks(pool: Pool, n: int) -> list[Backend]:
    out = []
    for _ in range(n):
        backend = pick(pool)
        assert backend is not None
        out.append(backend)
    return out


def fail(pool: Pool, backend: Backend, times: int = 1) -> None:
    for _ in range(times):
        pool.on_start(backend)
        pool.on_finish(backend, 0.01, ok=False)


def succeed(pool: Pool, backend: Backend, latency: float = 0.01) -> None:
    pool.on_start(backend)
    pool.on_finish(backend, latency, ok=True)


# --- Building ------------------------------------------------------------------------------------


def test_backends_follow_the_config() -> None:
    pool = make_pool(
        {"address": "127.0.0.1:9001", "weight": 3},
        {"address": "[::1]:9002", "backup": True},
    )
    a, b = pool.backends
    assert (a.label, a.host, a.port, a.weight, a.backup) == (
        "127.0.0.1:9001",
        "127.0.0.1",
        9001,
        3,
        False,
    )
    assert (b.label, b.host, b.port, b.weight, b.backup) == ("[::1]:9002", "::1", 9002, 1, True)
    assert list(pool) == [a, b]
    assert all(backend.ready(0.0) for backend in pool)


# --- Eligibility ---------------------------------------------------------------------------------


def test_selection_spreads_over_ready_backends() -> None:
    pool = three()
    assert Counter(b.label for b in picks(pool, 30)) == {
        "127.0.0.1:9001": 10,
        "127.0.0.1:9002": 10,
        "127.0.0.1:9003": 10,
    }


@pytest.mark.parametrize("how", ["draining", "disabled", "unhealthy"])
def test_selection_skips_a_backend_that_is_out(how: str) -> None:
    pool = three()
    a, b, c = pool.backends
    if how == "unhealthy":
        pool.set_healthy(b, False, "health check failed")
    else:
        pool.set_state(b, how)  # type: ignore[arg-type]
    chosen = picks(pool, 40)
    assert b not in chosen
    assert Counter(chosen) == {a: 20, c: 20}


def test_selection_skips_draining_disabled_and_unhealthy_together() -> None:
    pool = make_pool(*(f"127.0.0.1:{9001 + i}" for i in range(4)))
    a, b, c, d = pool.backends
    pool.set_state(a, "draining")
    pool.set_state(b, "disabled")
    pool.set_healthy(c, False, "health check failed")
    assert set(picks(pool, 20)) == {d}


def test_a_backend_back_in_service_is_selected_again() -> None:
    pool = three()
    _, b, c = pool.backends
    pool.set_state(b, "disabled")
    assert b not in picks(pool, 10)
    pool.set_state(b, "enabled")
    assert b in picks(pool, 10)
    pool.set_healthy(c, False, "down")
    assert c not in picks(pool, 10)
    pool.set_healthy(c, True, "up")
    assert c in picks(pool, 10)


def test_all_out_gives_none() -> None:
    pool = three()
    a, b, c = pool.backends
    pool.set_state(a, "disabled")
    pool.set_state(b, "draining")
    pool.set_healthy(c, False, "down")
    assert pick(pool) is None
    assert pool.ready_count() == 0


def test_tried_backends_are_excluded() -> None:
    pool = three()
    a, b, c = pool.backends
    for _ in range(10):
        assert pick(pool, tried=[a]) in (b, c)
        assert pick(pool, tried=[a, c]) is b
    assert pick(pool, tried=[a, b, c]) is None


def test_retries_walk_through_every_backend_once() -> None:
    pool = three()
    selection = Selection("192.0.2.1", pool.clock.now())
    seen = []
    while (backend := pool.select(selection)) is not None:
        assert backend not in seen
        seen.append(backend)
        selection.tried.append(backend)
    assert set(seen) == set(pool.backends)


def test_backend_at_its_connection_limit_is_skipped() -> None:
    pool = make_pool(
        {"address": "127.0.0.1:9001", "max_connections": 1},
        {"address": "127.0.0.1:9002"},
    )
    a, b = pool.backends
    pool.on_start(a)
    assert set(picks(pool, 6)) == {b}
    pool.on_finish(a, 0.01, ok=True)
    assert a in picks(pool, 6)


# --- Backups -------------------------------------------------------------------------------------


def with_backup(clock: ManualClock | None = None, **options: Any) -> Pool:
    return make_pool(
        "127.0.0.1:9001",
        "127.0.0.1:9002",
        {"address": "127.0.0.1:9003", "backup": True},
        {"address": "127.0.0.1:9004", "backup": True},
        clock=clock,
        **options,
    )


def test_backups_unused_while_a_primary_is_eligible() -> None:
    pool = with_backup()
    a, b, _, _ = pool.backends
    assert set(picks(pool, 20)) == {a, b}
    pool.set_state(a, "disabled")
    assert set(picks(pool, 20)) == {b}


def test_backups_used_when_no_primary_is_eligible_and_abandoned_when_one_is_back() -> None:
    pool = with_backup()
    a, b, c, d = pool.backends
    pool.set_healthy(a, False, "down")
    pool.set_state(b, "draining")
    assert set(picks(pool, 20)) == {c, d}
    pool.set_healthy(a, True, "up")
    assert set(picks(pool, 20)) == {a}


def test_backups_used_when_every_primary_was_tried() -> None:
    pool = with_backup()
    a, b, c, d = pool.backends
    assert pick(pool, tried=[a, b]) in (c, d)
    assert pick(pool, tried=[a, b, c]) is d
    assert pick(pool, tried=[a, b, c, d]) is None


def test_backups_used_when_primaries_are_ejected_and_abandoned_after_fail_timeout() -> None:
    clock = ManualClock()
    pool = with_backup(
        clock,
        passive_health={"max_fails": 1, "fail_timeout": "10s", "max_ejection_percent": "100%"},
    )
    a, b, c, d = pool.backends
    fail(pool, a)
    fail(pool, b)
    assert set(picks(pool, 10)) == {c, d}
    clock.advance(10)
    assert set(picks(pool, 10)) == {a, b}


def test_all_backups_out_too_gives_none() -> None:
    pool = with_backup()
    for backend in pool.backends:
        pool.set_state(backend, "disabled")
    assert pick(pool) is None


# --- Passive health ------------------------------------------------------------------------------


def passive(max_fails: int = 3, fail_timeout: str = "30s", **more: Any) -> dict[str, Any]:
    return {
        "max_fails": max_fails,
        "fail_timeout": fail_timeout,
        "max_ejection_percent": "100%",
        **more,
    }


def test_max_fails_in_a_row_take_a_backend_out_for_fail_timeout() -> None:
    clock = ManualClock(1000.0)
    pool = three(clock, passive_health=passive(3, "30s"))
    a, _, _ = pool.backends
    fail(pool, a, 2)
    assert a.ready(clock.now())
    assert a in picks(pool, 3)
    fail(pool, a)
    assert not a.ready(clock.now())
    assert a not in picks(pool, 30)
    clock.advance(29.5)
    assert a not in picks(pool, 30)
    clock.advance(0.5)
    assert a.ready(clock.now())
    assert a in picks(pool, 3)


def test_record_failure_counts_like_a_failed_request() -> None:
    clock = ManualClock()
    pool = three(clock, passive_health=passive(2, "5s"))
    a, _, _ = pool.backends
    pool.record_failure(a)
    assert a.ready(clock.now())
    pool.record_failure(a)
    assert not a.ready(clock.now())
    assert a.failures_total == 2
    clock.advance(5)
    assert a.ready(clock.now())


def test_a_success_resets_the_count() -> None:
    clock = ManualClock()
    pool = three(clock, passive_health=passive(3, "30s"))
    a, _, _ = pool.backends
    for _ in range(5):
        fail(pool, a, 2)
        succeed(pool, a)
    assert a.ready(clock.now())
    assert a.failures_total == 10
    fail(pool, a, 3)
    assert not a.ready(clock.now())


def test_failures_of_other_backends_do_not_count() -> None:
    clock = ManualClock()
    pool = three(clock, passive_health=passive(2, "30s"))
    a, b, c = pool.backends
    fail(pool, a)
    fail(pool, b)
    fail(pool, c)
    assert all(backend.ready(clock.now()) for backend in pool)


def test_max_fails_zero_never_takes_a_backend_out() -> None:
    clock = ManualClock()
    pool = three(clock, passive_health=passive(0, "30s"))
    a, _, _ = pool.backends
    fail(pool, a, 50)
    pool.record_failure(a)
    assert a.ready(clock.now())
    assert a in picks(pool, 3)
    assert a.failures_total == 51


def test_default_passive_health_takes_a_backend_out_after_one_failure() -> None:
    clock = ManualClock()
    pool = three(clock)
    a, _, _ = pool.backends
    fail(pool, a)
    assert not a.ready(clock.now())
    clock.advance(10)  # DEFAULT_FAIL_TIMEOUT
    assert a.ready(clock.now())


def test_all_backends_ejected_gives_none_then_they_come_back() -> None:
    clock = ManualClock()
    pool = three(clock, passive_health=passive(1, "10s"))
    for backend in pool.backends:
        fail(pool, backend)
    assert pick(pool) is None
    clock.advance(10)
    assert set(picks(pool, 9)) == set(pool.backends)


def test_ejections_never_exceed_max_ejection_percent() -> None:
    clock = ManualClock()
    pool = make_pool(
        *(f"127.0.0.1:{9001 + i}" for i in range(4)),
        clock=clock,
        passive_health={"max_fails": 1, "fail_timeout": "10s", "max_ejection_percent": "50%"},
    )
    for backend in pool.backends:
        fail(pool, backend)
    assert pool.ready_count() == 2
    assert pick(pool) is not None


def test_a_failure_while_out_does_not_extend_the_ejection() -> None:
    clock = ManualClock()
    pool = three(clock, passive_health=passive(1, "10s"))
    a, _, _ = pool.backends
    fail(pool, a)
    clock.advance(5)
    fail(pool, a)  # a request that started before the ejection and failed late
    clock.advance(5)
    assert a.ready(clock.now())


def test_request_counters_and_latency_average() -> None:
    pool = three()
    a, _, _ = pool.backends
    pool.on_start(a)
    pool.on_start(a)
    assert (a.active, a.requests_total) == (2, 2)
    pool.on_finish(a, 0.100, ok=True)
    assert a.active == 1
    assert a.latency_ewma == pytest.approx(0.100)
    pool.on_finish(a, 0.200, ok=True)
    assert a.active == 0
    assert a.latency_ewma == pytest.approx(0.100 + 0.3 * (0.200 - 0.100))
    assert a.failures_total == 0


def test_a_failed_request_does_not_move_the_latency_average() -> None:
    pool = three(passive_health=passive(0))
    a, _, _ = pool.backends
    succeed(pool, a, 0.05)
    fail(pool, a)
    assert a.latency_ewma == pytest.approx(0.05)
    assert (a.active, a.requests_total, a.failures_total) == (0, 2, 1)


# --- repr ----------------------------------------------------------------------------------------


def test_repr() -> None:
    pool = three()
    a, b, c = pool.backends
    assert repr(pool) == "<Pool web [3 backends: 3 healthy | 0 active]>"
    pool.set_state(c, "draining")
    assert repr(pool) == "<Pool web [3 backends: 2 healthy, 1 draining | 0 active]>"
    pool.on_start(a)
    pool.on_start(b)
    pool.on_start(a)
    assert repr(pool) == "<Pool web [3 backends: 2 healthy, 1 draining | 3 active]>"


def test_repr_counts_every_state() -> None:
    clock = ManualClock()
    pool = make_pool(*(f"127.0.0.1:{9001 + i}" for i in range(5)), clock=clock, name="api")
    a, b, c, d, _ = pool.backends
    pool.set_state(a, "disabled")
    pool.set_state(b, "draining")
    pool.set_healthy(c, False, "down")
    assert repr(pool) == (
        "<Pool api [5 backends: 2 healthy, 1 unhealthy, 1 draining, 1 disabled | 0 active]>"
    )
    pool.set_healthy(c, True, "up")
    fail(pool, d)  # ejected: unhealthy too
    assert repr(pool) == (
        "<Pool api [5 backends: 2 healthy, 1 unhealthy, 1 draining, 1 disabled | 0 active]>"
    )


def test_repr_of_a_single_backend() -> None:
    pool = make_pool("127.0.0.1:9001", name="solo")
    assert repr(pool) == "<Pool solo [1 backend: 1 healthy | 0 active]>"


def test_backend_repr() -> None:
    pool = make_pool({"address": "127.0.0.1:9001", "weight": 2})
    (a,) = pool.backends
    assert repr(a) == "<Backend 127.0.0.1:9001 w=2 enabled active=0>"


def test_ejections_in_a_row_last_longer_up_to_max_ejection_time() -> None:
    clock = ManualClock()
    pool = three(clock, passive_health=passive(1, "10s", max_ejection_time="25s"))
    a, _, _ = pool.backends
    for expected in (10, 20, 25, 25):
        fail(pool, a)
        clock.advance(expected - 0.5)
        assert not a.ready(clock.now()), expected
        clock.advance(0.5)
        assert a.ready(clock.now()), expected
