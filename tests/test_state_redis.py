"""The cluster store (usher.state.redis) against a real redis-server: two links in one
process stand for two nodes. The end-to-end checks, with two usher processes, are in
tests/test_cluster.py."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from tests.redis_server import RedisServer
from usher.clock import MonotonicClock
from usher.config import ClusterConfig, parse_config
from usher.errors import ConfigError
from usher.limits import LocalRateStore
from usher.state.redis import ClusterBuckets, ClusterKeyTable, ClusterLink

CLOCK = MonotonicClock()


@pytest.fixture
def store(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path)
    server.start()
    yield server
    server.kill()


@pytest.fixture
async def nodes(store: RedisServer) -> AsyncIterator[tuple[ClusterLink, ClusterLink]]:
    # A timeout well above a round trip on a busy machine: these tests are about sharing;
    # test_a_slow_store_* is about the timeout.
    a = ClusterLink(ClusterConfig(redis=store.url, node="a", timeout=0.2), CLOCK)
    b = ClusterLink(ClusterConfig(redis=store.url, node="b", timeout=0.2), CLOCK)
    a.start()
    b.start()
    await until(lambda: a.up and b.up, "both links up")
    yield a, b
    await a.stop()
    await b.stop()


async def until(condition: Callable[[], bool], what: str, timeout: float = 5.0) -> float:
    """Seconds it took `condition` to hold (polled every millisecond)."""
    start = time.monotonic()
    while not condition():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.001)
    return time.monotonic() - start


async def test_two_nodes_share_one_bucket(nodes: tuple[ClusterLink, ClusterLink]) -> None:
    a, b = nodes
    rate, burst = 100.0, 10.0
    buckets = [
        ClusterBuckets(link, "l:", rate, burst, LocalRateStore(rate, burst, 100), 100)
        for link in (a, b)
    ]
    admitted = 0
    start = time.monotonic()
    while time.monotonic() - start < 1.0:
        for bucket in buckets:
            if bucket.take("client", CLOCK.now()) == 0.0:
                admitted += 1
        await asyncio.sleep(0.001)
    expected = burst + rate * (time.monotonic() - start)
    assert 0.9 * expected <= admitted <= 1.1 * expected, (admitted, expected)


async def test_a_refused_take_says_when_to_come_back(
    nodes: tuple[ClusterLink, ClusterLink],
) -> None:
    a, _ = nodes
    bucket = ClusterBuckets(a, "l:", 1.0, 1.0, LocalRateStore(1.0, 1.0, 10), 10)
    waits = []
    for _ in range(50):
        waits.append(bucket.take("k", CLOCK.now()))
        await asyncio.sleep(0.002)
    admitted = waits.count(0.0)
    assert admitted <= 2, waits  # the burst of 1, and at most one on credit before the store said
    assert all(0 < w <= 1.0 for w in waits if w), waits


async def test_a_pin_made_on_one_node_is_seen_on_the_other(
    nodes: tuple[ClusterLink, ClusterLink],
) -> None:
    a, b = nodes
    on_a, on_b = ClusterKeyTable(a, "web", 100), ClusterKeyTable(b, "web", 100)
    on_a.put("10.0.0.1", "127.0.0.1:9001", CLOCK.now(), 60)
    took = await until(lambda: on_b.get("10.0.0.1", CLOCK.now()) is not None, "the pin on b")
    assert on_b.get("10.0.0.1", CLOCK.now()) == "127.0.0.1:9001"
    assert took < 1.0


async def test_a_node_that_missed_a_pin_adopts_it(
    store: RedisServer, nodes: tuple[ClusterLink, ClusterLink]
) -> None:
    a, _ = nodes
    ClusterKeyTable(a, "web", 100).put("user1", "127.0.0.1:9001", CLOCK.now(), 60)
    client = aioredis.Redis.from_url(store.url, decode_responses=True)
    await until_async(lambda: client.exists("usher:st:web\x00user1"))
    late = ClusterLink(ClusterConfig(redis=store.url, node="late"), CLOCK)
    late.start()
    try:
        await until(lambda: late.up, "the late link")
        table = ClusterKeyTable(late, "web", 100)
        assert table.get("user1", CLOCK.now()) is None  # it heard nothing
        table.put("user1", "127.0.0.1:9002", CLOCK.now(), 60)  # its own pick, first
        await until(lambda: table.get("user1", CLOCK.now()) == "127.0.0.1:9001", "adoption")
        assert await client.get("usher:st:web\x00user1") == "127.0.0.1:9001"
    finally:
        await late.stop()
        await client.aclose()


async def test_put_if_absent_keeps_the_pin_this_node_knows_and_adopts_the_stores(
    store: RedisServer, nodes: tuple[ClusterLink, ClusterLink]
) -> None:
    a, b = nodes
    on_a, on_b = ClusterKeyTable(a, "web", 100), ClusterKeyTable(b, "web", 100)
    assert on_a.put_if_absent("user2", "127.0.0.1:9001", CLOCK.now(), 60) == "127.0.0.1:9001"
    assert on_a.put_if_absent("user2", "127.0.0.1:9002", CLOCK.now(), 60) == "127.0.0.1:9001"
    client = aioredis.Redis.from_url(store.url, decode_responses=True)
    try:
        await until_async(lambda: client.exists("usher:st:web\x00user2"))
        # b has not heard of it yet, or has: either way the store's first pin is what b keeps.
        on_b.put_if_absent("user2", "127.0.0.1:9003", CLOCK.now(), 60)
        await until(lambda: on_b.get("user2", CLOCK.now()) == "127.0.0.1:9001", "adoption")
        assert await client.get("usher:st:web\x00user2") == "127.0.0.1:9001"
    finally:
        await client.aclose()


async def until_async(check: Callable[[], object], timeout: float = 5.0) -> None:
    start = time.monotonic()
    while not await check():  # type: ignore[misc]
        assert time.monotonic() - start < timeout, "timed out"
        await asyncio.sleep(0.005)


async def test_an_ejection_reaches_every_node_and_a_late_one_catches_up(
    store: RedisServer, nodes: tuple[ClusterLink, ClusterLink]
) -> None:
    a, b = nodes
    seen: list[tuple[str, str, float]] = []
    b.on_ejection = lambda pool, backend, seconds: seen.append((pool, backend, seconds))
    a.eject("web", "127.0.0.1:9001", CLOCK.now() + 30)
    took = await until(lambda: bool(seen), "the ejection on b")
    assert took < 1.0
    pool, backend, seconds = seen[0]
    assert (pool, backend) == ("web", "127.0.0.1:9001")
    assert 25 < seconds <= 30
    late = ClusterLink(ClusterConfig(redis=store.url, node="late"), CLOCK)
    caught: list[str] = []
    late.on_ejection = lambda pool, backend, seconds: caught.append(backend)
    late.start()
    try:
        await until(lambda: late.up, "the late link")
        assert caught == ["127.0.0.1:9001"]  # from the store's keys, on connecting
    finally:
        await late.stop()


async def test_a_node_that_does_not_share_ejections_ignores_the_others(
    store: RedisServer, nodes: tuple[ClusterLink, ClusterLink]
) -> None:
    a, b = nodes
    apart = ClusterLink(ClusterConfig(redis=store.url, share=["rate_limits"]), CLOCK)
    ignored: list[str] = []
    apart.on_ejection = lambda pool, backend, seconds: ignored.append(backend)
    seen: list[str] = []
    b.on_ejection = lambda pool, backend, seconds: seen.append(backend)
    apart.start()
    try:
        await until(lambda: apart.up, "the link")
        a.eject("web", "127.0.0.1:9001", CLOCK.now() + 30)
        await until(lambda: bool(seen), "the ejection on b")
        await asyncio.sleep(0.05)
        assert ignored == []
    finally:
        await apart.stop()


async def test_with_the_store_down_decisions_are_local_and_caught_up_on_its_return(
    store: RedisServer, nodes: tuple[ClusterLink, ClusterLink], caplog: pytest.LogCaptureFixture
) -> None:
    a, b = nodes
    local = LocalRateStore(1000.0, 1000.0, 10)
    bucket = ClusterBuckets(a, "l:", 1000.0, 1000.0, local, 10)
    store.kill()
    await until(lambda: not a.up, "a to see the store gone")
    assert bucket.take("k", CLOCK.now()) == 0.0
    assert len(local) == 1  # decided by the local bucket
    seen: list[str] = []
    b.on_ejection = lambda pool, backend, seconds: seen.append(backend)
    ClusterKeyTable(a, "web", 100).put("user1", "127.0.0.1:9001", CLOCK.now(), 60)
    a.eject("web", "127.0.0.1:9002", CLOCK.now() + 30)
    downs = [r for r in caplog.records if "unreachable" in r.getMessage()]
    assert len(downs) == 2  # once per link, however many reconnection attempts
    store.start()
    await until(lambda: a.up and b.up, "the links back")
    await until(lambda: seen == ["127.0.0.1:9002"], "the ejection made while down")
    client = aioredis.Redis.from_url(store.url, decode_responses=True)
    try:
        assert await client.get("usher:st:web\x00user1") == "127.0.0.1:9001"
    finally:
        await client.aclose()
    assert any("is back" in r.getMessage() for r in caplog.records)


async def test_a_slow_store_never_holds_a_request(
    store: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    link = ClusterLink(ClusterConfig(redis=store.url, node="a", timeout=0.005), CLOCK)
    link.start()
    client = aioredis.Redis.from_url(store.url)
    try:
        await until(lambda: link.up, "the link")
        local = LocalRateStore(100.0, 100.0, 10)
        bucket = ClusterBuckets(link, "l:", 100.0, 100.0, local, 10)
        # The store stops answering for 0.5 s (it sleeps in a command, as when it is busy).
        sleeper = asyncio.ensure_future(client.execute_command("DEBUG", "SLEEP", "0.5"))
        await asyncio.sleep(0.05)
        waits = []
        for _ in range(20):
            waits.append(bucket.take("k", CLOCK.now()))
            await asyncio.sleep(0.002)
        assert waits == [0.0] * 20  # none waited, none refused
        assert len(local) == 1  # once the lease was late, the local bucket decided
        assert sum("slower than" in r.getMessage() for r in caplog.records) == 1
        await sleeper
    finally:
        await client.aclose()
        await link.stop()


def test_collect_reports_usher_cluster_up() -> None:
    link = ClusterLink(ClusterConfig(redis="redis://127.0.0.1:1/0", node="edge-1"), CLOCK)
    (family,) = link.collect()
    assert family.name == "usher_cluster_up"
    assert [(s.labels, s.value) for s in family.samples] == [({"node": "edge-1"}, 0)]


def test_a_bad_cluster_section_is_named_by_its_path() -> None:
    text = """
listeners: [{name: a, bind: 127.0.0.1:0, routes: [{pool: p}]}]
pools: {p: {backends: [{address: 127.0.0.1:1}]}}
cluster: {redis: "http://x", node: "a/b", share: [rate_limits, stick], timeout: 0}
"""
    with pytest.raises(ConfigError) as caught:
        parse_config(text)
    message = str(caught.value)
    for path in ("cluster.redis", "cluster.node", "cluster.share[1]", "cluster.timeout"):
        assert path in message, message


def test_the_cluster_section_defaults_share_everything() -> None:
    cluster = ClusterConfig(redis="unix:///run/redis.sock")
    assert cluster.share == ["rate_limits", "sticky", "ejections"]
    assert cluster.timeout == 0.005
    assert cluster.node is None  # the host name, when the link is made
    assert ClusterLink(cluster, CLOCK).node == socket.gethostname()
