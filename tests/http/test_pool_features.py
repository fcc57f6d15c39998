"""Pool features end to end through real sockets: persistence, connection limits and the wait
queue, status retries with their budget, outlier ejection on 5xx, draining."""

from __future__ import annotations

import asyncio
import collections

import httpx

from tests.conftest import pool_of, simple_config


async def test_sticky_cookie_pins_a_client_and_moves_when_its_backend_is_gone(backends, balancer):
    servers = await backends(3)
    lb = await balancer(simple_config({"web": pool_of(*servers, sticky={"type": "cookie"})}))
    async with httpx.AsyncClient() as client:
        first = await client.get(lb.url("/"))
        cookie = first.headers["set-cookie"]
        assert cookie.startswith("USHER_BACKEND=") and "HttpOnly" in cookie
        assert "127.0.0.1" not in cookie  # the id is opaque
        pinned = first.headers["x-backend"]
        for _ in range(10):
            again = await client.get(lb.url("/"))
            assert again.headers["x-backend"] == pinned
            assert "set-cookie" not in again.headers  # the client already has it
        # Its backend goes away: the algorithm picks again and the cookie moves.
        await next(s for s in servers if s.options.name == pinned).close()
        moved = await client.get(lb.url("/"))
        assert moved.status_code == 200
        assert moved.headers["x-backend"] != pinned
        assert moved.headers["set-cookie"] != cookie
        assert (await client.get(lb.url("/"))).headers["x-backend"] == moved.headers["x-backend"]
    async with httpx.AsyncClient() as fresh:  # without the cookie: round robin as usual
        names = {
            (await fresh.get(lb.url("/"), headers={"Cookie": ""})).headers["x-backend"]
            for _ in range(4)
        }
    assert len(names) == 2


async def test_sticky_header_pins_by_session_id(backends, balancer):
    servers = await backends(3)
    pool = pool_of(*servers, sticky={"type": "header", "header": "X-Session-ID"})
    lb = await balancer(simple_config({"web": pool}))
    async with httpx.AsyncClient() as client:
        seen: dict[str, set[str]] = collections.defaultdict(set)
        for i in range(30):
            session = f"s{i % 5}"
            response = await client.get(lb.url("/"), headers={"X-Session-ID": session})
            seen[session].add(response.headers["x-backend"])
    assert all(len(names) == 1 for names in seen.values())
    assert len(set().union(*seen.values())) > 1  # different sessions spread out


async def test_sticky_source_ip(backends, balancer):
    servers = await backends(3)
    lb = await balancer(simple_config({"web": pool_of(*servers, sticky={"type": "source_ip"})}))
    async with httpx.AsyncClient() as client:
        names = {(await client.get(lb.url("/"))).headers["x-backend"] for _ in range(10)}
    assert len(names) == 1


async def test_max_connections_queue_and_its_limits(backends, balancer):
    (server,) = await backends(1)
    pool = {
        "backends": [{"address": f"127.0.0.1:{server.port}", "max_connections": 1}],
        "queue": {"size": 1, "timeout": "2s"},
    }
    lb = await balancer(simple_config({"web": pool}))
    async with httpx.AsyncClient(timeout=10) as client:
        responses = await asyncio.gather(*(client.get(lb.url("/sleep/0.3")) for _ in range(3)))
    statuses = sorted(r.status_code for r in responses)
    assert statuses == [200, 200, 503]  # one ran, one waited its turn, one found the queue full
    assert server.requests_total == 2


async def test_queue_wait_runs_out(backends, balancer):
    (server,) = await backends(1)
    pool = {
        "backends": [{"address": f"127.0.0.1:{server.port}", "max_connections": 1}],
        "queue": {"size": 5, "timeout": "200ms"},
    }
    lb = await balancer(simple_config({"web": pool}))
    async with httpx.AsyncClient(timeout=10) as client:
        slow = asyncio.create_task(client.get(lb.url("/sleep/1")))
        await asyncio.sleep(0.1)
        waited = await client.get(lb.url("/"))
        assert waited.status_code == 503
        assert "no backend had room in time" in waited.text
        assert (await slow).status_code == 200


async def test_without_a_queue_a_full_backend_gives_503(backends, balancer):
    (server,) = await backends(1)
    pool = {"backends": [{"address": f"127.0.0.1:{server.port}", "max_connections": 1}]}
    lb = await balancer(simple_config({"web": pool}))
    async with httpx.AsyncClient(timeout=10) as client:
        slow = asyncio.create_task(client.get(lb.url("/sleep/0.5")))
        await asyncio.sleep(0.1)
        assert (await client.get(lb.url("/"))).status_code == 503
        assert (await slow).status_code == 200


async def test_statuses_are_retried_on_another_backend(backends, balancer):
    (failing,) = await backends(1, fail_rate=1.0)
    (good,) = await backends(1)
    pool = pool_of(failing, good, retries={"attempts": 1, "on": [500]})
    lb = await balancer(simple_config({"web": pool}))
    async with httpx.AsyncClient() as client:
        statuses = [(await client.get(lb.url("/"))).status_code for _ in range(10)]
        post = await client.post(lb.url("/"), content=b"x")  # a body: never retried
    assert statuses == [200] * 10
    assert failing.requests_total == 6  # half of the first tries (and the POST's)
    assert post.status_code in (200, 500)


async def test_retry_budget_stops_retries_against_a_failing_pool(backends, balancer):
    servers = await backends(2, fail_rate=1.0)
    pool = pool_of(*servers, retries={"attempts": 1, "on": [500], "budget": "0%"})
    lb = await balancer(simple_config({"web": pool}))
    async with httpx.AsyncClient() as client:
        statuses = [(await client.get(lb.url("/"))).status_code for _ in range(30)]
    # The reserve of 10 retries is spent, then answers are passed on as they are.
    assert statuses.count(500) == 30
    assert sum(s.requests_total for s in servers) == 40


async def test_consecutive_5xx_eject_a_backend(backends, balancer):
    (failing,) = await backends(1, fail_rate=1.0)
    (good,) = await backends(1)
    pool = pool_of(failing, good, passive_health={"consecutive_5xx": 2, "fail_timeout": "30s"})
    lb = await balancer(simple_config({"web": pool}))
    async with httpx.AsyncClient() as client:
        statuses = [(await client.get(lb.url("/"))).status_code for _ in range(20)]
    assert statuses.count(500) == 2  # then ejected: only the good one answers
    backend = lb.pools["web"].find(f"127.0.0.1:{failing.port}")
    assert backend is not None and backend.status(lb.pools["web"].clock.now()) == "unhealthy"


async def test_drain_with_requests_in_flight_loses_none(backends, balancer):
    a, b = await backends(2)
    lb = await balancer(simple_config({"web": pool_of(a, b)}))
    pool = lb.pools["web"]
    target = pool.find(f"127.0.0.1:{a.port}")
    assert target is not None
    async with httpx.AsyncClient(timeout=10) as client:
        in_flight = [asyncio.create_task(client.get(lb.url("/sleep/0.4"))) for _ in range(4)]
        await asyncio.sleep(0.15)
        assert target.active == 2
        drain = asyncio.create_task(pool.drain(target, timeout=5))
        await asyncio.sleep(0.05)
        during = [(await client.get(lb.url("/"))).headers["x-backend"] for _ in range(6)]
        assert await drain is True
        results = await asyncio.gather(*in_flight)
    assert [r.status_code for r in results] == [200] * 4
    assert during == ["B"] * 6
    assert target.state == "disabled"
