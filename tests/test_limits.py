"""Token buckets, connection counts and the body-rate floor, on a manual clock."""

from __future__ import annotations

import pytest

from usher.clock import ManualClock
from usher.limits import (
    EVICT_BATCH,
    BodyRateMeter,
    ConnectionLimiter,
    LocalRateStore,
    retry_after,
    share,
)


def test_bucket_allows_the_burst_then_refuses_with_the_wait() -> None:
    clock = ManualClock()
    store = LocalRateStore(rate=10.0, burst=3, max_keys=10)
    assert [store.take("a", clock.now()) for _ in range(3)] == [0.0, 0.0, 0.0]
    wait = store.take("a", clock.now())
    assert wait == pytest.approx(0.1)  # one token comes every 1/rate seconds
    clock.advance(0.05)
    assert store.take("a", clock.now()) == pytest.approx(0.05)  # half a token so far
    clock.advance(0.05)
    assert store.take("a", clock.now()) == 0.0


def test_bucket_refills_at_the_rate_and_never_past_the_burst() -> None:
    clock = ManualClock()
    store = LocalRateStore(rate=2.0, burst=4, max_keys=10)
    for _ in range(4):
        store.take("a", clock.now())
    clock.advance(100)  # far more than needed to fill it
    allowed = 0
    while store.take("a", clock.now()) == 0.0:
        allowed += 1
    assert allowed == 4


def test_sustained_rate_is_the_configured_rate() -> None:
    clock = ManualClock()
    store = LocalRateStore(rate=100.0, burst=10, max_keys=10)
    allowed = 0
    for _ in range(10_000):  # 10 s of requests every millisecond
        clock.advance(0.001)
        allowed += store.take("a", clock.now()) == 0.0
    assert 1000 <= allowed <= 1010  # rate x time, plus the burst at most


def test_keys_have_their_own_buckets() -> None:
    store = LocalRateStore(rate=1.0, burst=1, max_keys=10)
    assert store.take("a", 0.0) == 0.0
    assert store.take("a", 0.0) > 0
    assert store.take("b", 0.0) == 0.0


def test_table_is_bounded_and_drops_the_least_recently_used() -> None:
    store = LocalRateStore(rate=1.0, burst=1, max_keys=100)
    for i in range(10_000):
        store.take(f"k{i}", 0.0)
        assert len(store) <= 100
    # The newest keys are still there: their buckets are empty.
    assert store.take("k9999", 0.0) > 0


def test_refilled_buckets_go_first_and_in_bounded_batches() -> None:
    store = LocalRateStore(rate=1.0, burst=1, max_keys=200)
    for i in range(200):
        store.take(f"old{i}", 0.0)
    store.take("hot", 5.0)  # the others have all refilled by then
    assert len(store) == 200 - EVICT_BATCH + 1
    assert store.take("hot", 5.0) > 0  # the new key's bucket was kept


def test_retry_after_is_whole_seconds_rounded_up() -> None:
    assert retry_after(0.01) == 1
    assert retry_after(1.0) == 1
    assert retry_after(1.2) == 2


def test_worker_share_rounds_up() -> None:
    assert share(50, 4) == 13
    assert share(1, 4) == 1
    assert share(100, 1) == 100


def test_connection_limiter_counts_per_address_and_in_total() -> None:
    limiter = ConnectionLimiter(max_total=3, per_address=2)
    assert limiter.admit("a") is None
    assert limiter.admit("a") is None
    assert limiter.admit("a") == "connections_per_ip"
    assert limiter.admit("b") is None
    assert limiter.admit("c") == "max_connections"
    limiter.release("a")
    assert limiter.admit("c") is None
    for address in ("a", "b", "c"):
        limiter.release(address)
    assert limiter.total == 0 and limiter.by_address == {}


def test_body_rate_meter() -> None:
    meter = BodyRateMeter(min_rate=1000.0, window=1.0, now=0.0)
    meter.add(1500)
    assert meter.check(1.0, paused=False)
    meter.add(500)
    assert not meter.check(2.0, paused=False)


def test_body_rate_meter_skips_a_window_when_usher_was_not_reading() -> None:
    meter = BodyRateMeter(min_rate=1000.0, window=1.0, now=0.0)
    assert meter.check(1.0, paused=True)
    assert not meter.check(2.0, paused=False)
