"""The data plane alone: it serves its listeners with no checks and no admin API, follows the
backends' state it is given, and leaves what a reload dropped to its owner."""

from __future__ import annotations

from typing import Any

import httpx
import yaml

from tests.conftest import pool_of, simple_config
from usher.config import Config, parse_config
from usher.process.sync import pools_state
from usher.runtime import reload
from usher.runtime.dataplane import DataPlane
from usher.shared import RowIndex


def cfg(d: dict[str, Any]) -> Config:
    return parse_config(yaml.safe_dump(d))


async def test_a_data_plane_serves_its_listeners_and_stops(backends) -> None:
    (origin,) = await backends(1)
    plane = DataPlane(cfg(simple_config({"web": pool_of(origin)})))
    await plane.start()
    try:
        url = plane.bound["web"].url
        async with httpx.AsyncClient() as client:
            answer = await client.get(url + "/")
        assert answer.status_code == 200
        assert answer.headers["X-Backend"] == origin.options.name
        assert set(plane.connections()) == {"web"}
        assert plane.listening_fds()  # an upgrade has sockets to hand over
    finally:
        await plane.stop(timeout=0)
    assert plane.servers == {}
    assert plane.listening_fds() == []


async def test_a_data_plane_takes_on_the_state_it_is_sent() -> None:
    config = cfg(simple_config({"web": pool_of("127.0.0.1:9001", "127.0.0.1:9002")}))
    decider = DataPlane(config)  # stands for the control process: it decides
    follower = DataPlane(config)
    pool = decider.pools["web"]
    first, second = pool.backends
    pool.set_state(second, "disabled")
    pool.set_weight(first, 7)
    follower.apply(pools_state(decider.pools, RowIndex(8)))
    (one, two) = follower.pools["web"].backends
    assert (one.label, one.weight, one.state) == ("127.0.0.1:9001", 7, "enabled")
    assert (two.label, two.state) == ("127.0.0.1:9002", "disabled")
    assert one.shared is None  # no shared table to attach to in one process


async def test_a_reload_leaves_dropped_backends_and_removed_pools_to_the_owner() -> None:
    before = cfg(
        {
            **simple_config({"web": pool_of("127.0.0.1:9001", "127.0.0.1:9002")}),
            "pools": {
                "web": pool_of("127.0.0.1:9001", "127.0.0.1:9002"),
                "old": pool_of("127.0.0.1:9003"),
            },
        }
    )
    plane = DataPlane(before)
    old_pool = plane.pools["old"]
    await plane.start()
    try:
        after = cfg(simple_config({"web": pool_of("127.0.0.1:9001")}))
        applied = await reload.reload_to(plane, after)
    finally:
        await plane.stop(timeout=0)
    ((name, dropped),) = applied.dropped
    assert (name, dropped.label) == ("web", "127.0.0.1:9002")
    assert dropped in plane.pools["web"].backends  # still there: the owner drains it
    assert dropped.state == "enabled"
    assert applied.retired == [old_pool]
    assert list(plane.pools) == ["web"]
    assert applied.report.listeners_kept == ["web"]
    assert applied.report.backends_draining == ["web/127.0.0.1:9002"]
    assert applied.report.pools_removed == ["old"]
    assert plane.config is applied.plan.config
