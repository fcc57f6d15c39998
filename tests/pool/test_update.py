"""`Pool.update`, the one door for membership changes: reload, admin, discovery and the workers'
sync all go through it."""

from __future__ import annotations

from typing import Any

import pytest

from usher.clock import ManualClock
from usher.config import PoolConfig, parse_address
from usher.pool import ADMIN_SOURCE, BackendSpec, Pool, Selection


def make_pool(n: int = 3, **options: Any) -> tuple[Pool, ManualClock]:
    config = PoolConfig.model_validate(
        {"backends": [{"address": f"127.0.0.1:{9001 + i}"} for i in range(n)], **options}
    )
    clock = ManualClock(1000.0)
    return Pool("web", config, clock), clock


def spec(port: int, **fields: Any) -> BackendSpec:
    return BackendSpec(parse_address(f"127.0.0.1:{port}"), **fields)


def test_new_backends_join_after_the_others_and_ramp_up() -> None:
    pool, clock = make_pool(2, slow_start="10s")
    a, b = pool.backends
    a.requests_total = 7
    unlisted = pool.update([spec(9003, weight=2), spec(9001)])
    assert [x.label for x in pool.backends] == [
        "127.0.0.1:9001",
        "127.0.0.1:9002",
        "127.0.0.1:9003",
    ]
    assert unlisted == [b]  # still in the pool: the caller decides
    assert pool.backends[0] is a and a.requests_total == 7  # live state kept
    new = pool.backends[2]
    assert new.weight == 2 and new.effective_weight == pytest.approx(0.2)
    clock.advance(10)
    pool.select(Selection("x", clock.now()))
    assert new.effective_weight == 2


def test_weight_tier_and_source_change_in_place() -> None:
    pool, _ = make_pool(2)
    a, b = pool.backends
    assert pool.update([spec(9001, weight=5, backup=True, source=ADMIN_SOURCE), spec(9002)]) == []
    assert (a.weight, a.effective_weight, a.backup, a.source) == (5, 5.0, True, ADMIN_SOURCE)
    assert pool.algorithm_for(a) is not pool.algorithm_for(b)  # the tiers were rebuilt


def test_an_update_that_changes_nothing_keeps_the_algorithms() -> None:
    pool, _ = make_pool(2)
    before = pool.algorithm_for(pool.backends[0])
    pool.update([spec(9001), spec(9002)])
    assert pool.algorithm_for(pool.backends[0]) is before


def test_state_and_health_when_given_are_set_with_their_reason() -> None:
    pool, _ = make_pool(2)
    a, b = pool.backends
    changes: list[tuple[str, str, str, str]] = []
    pool.on_state_change.append(lambda x, old, new, why: changes.append((x.label, old, new, why)))
    pool.update(
        [
            spec(9001, state="disabled", reason="by the operator"),
            spec(9002, healthy=False, reason="down"),
        ]
    )
    assert a.state == "disabled" and not b.healthy
    assert changes == [
        ("127.0.0.1:9001", "healthy", "disabled", "by the operator"),
        ("127.0.0.1:9002", "healthy", "unhealthy", "down"),
    ]
    pool.update([spec(9001), spec(9002)])  # not given: left as they are
    assert a.state == "disabled" and not b.healthy


def test_a_backend_listed_twice_is_added_once() -> None:
    pool, _ = make_pool(1)
    pool.update([spec(9001), spec(9002, weight=2), spec(9002, weight=3)])
    assert [(x.label, x.weight) for x in pool.backends] == [
        ("127.0.0.1:9001", 1),
        ("127.0.0.1:9002", 2),
    ]
