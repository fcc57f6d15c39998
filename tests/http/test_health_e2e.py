"""Health through real sockets: a backend dies under a steady request loop, comes back, fails
its /health, or hangs; what the clients see and when usher notices."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx

from tests.conftest import pool_of, simple_config
from usher.demo.origin import BackendOptions, start_backend

FAST_CHECKS = {
    "type": "http",
    "path": "/health",
    "interval": "100ms",
    "timeout": "300ms",
    "healthy_threshold": 2,
    "unhealthy_threshold": 2,
    "jitter": "0%",
}


def watch(pool: Any) -> list[tuple[float, str, str, str]]:
    """Every state change of the pool's backends, with the time it happened."""
    changes: list[tuple[float, str, str, str]] = []
    pool.on_state_change.append(
        lambda backend, old, new, why: changes.append((time.monotonic(), backend.label, new, why))
    )
    return changes


async def steady_loop(url: str, seconds: float, statuses: list[int]) -> None:
    async with httpx.AsyncClient(timeout=5) as client:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            statuses.append((await client.get(url)).status_code)
            await asyncio.sleep(0.005)


async def test_killed_backend_fails_no_request_and_is_ejected_by_checks(backends, balancer):
    servers = await backends(3)
    pool = pool_of(*servers, health_check=FAST_CHECKS, passive_health={"max_fails": 0})
    lb = await balancer(simple_config({"web": pool}))
    changes = watch(lb.pools["web"])
    statuses: list[int] = []
    loop = asyncio.create_task(steady_loop(lb.url("/"), 1.5, statuses))
    await asyncio.sleep(0.4)
    victim = servers[1]
    killed_at = time.monotonic()
    await victim.close()
    await loop
    assert statuses and set(statuses) == {200}  # connect failures were retried elsewhere
    label = f"127.0.0.1:{victim.port}"
    down = [c for c in changes if c[1] == label and c[2] == "unhealthy"]
    assert down, changes
    assert "unhealthy after 2 failed checks" in down[0][3]
    assert down[0][0] - killed_at < 1.0  # two 100ms checks, with room for a loaded machine


async def test_killed_backend_is_ejected_passively_at_its_first_failure(backends, balancer):
    servers = await backends(3)
    lb = await balancer(simple_config({"web": pool_of(*servers)}))  # no active checks at all
    changes = watch(lb.pools["web"])
    statuses: list[int] = []
    loop = asyncio.create_task(steady_loop(lb.url("/"), 1.0, statuses))
    await asyncio.sleep(0.3)
    victim = servers[0]
    await victim.close()
    await loop
    assert set(statuses) == {200}
    down = [c for c in changes if c[1] == f"127.0.0.1:{victim.port}"]
    assert [c[2] for c in down] == ["unhealthy"]
    assert "ejected for 10s after 1 failure" in down[0][3]


async def test_restarted_backend_returns_only_after_healthy_threshold(backends, balancer):
    servers = await backends(2)
    checks = {**FAST_CHECKS, "healthy_threshold": 3}
    lb = await balancer(simple_config({"web": pool_of(*servers, health_check=checks)}))
    pool = lb.pools["web"]
    changes = watch(pool)
    victim = servers[1]
    port = victim.port
    await victim.close()
    for _ in range(100):
        if any(c[2] == "unhealthy" for c in changes):
            break
        await asyncio.sleep(0.02)
    revived = await start_backend("127.0.0.1", port, BackendOptions(name="B2"))
    try:
        restarted_at = time.monotonic()
        for _ in range(150):
            if any(c[2] == "healthy" for c in changes):
                break
            await asyncio.sleep(0.02)
        up = [c for c in changes if c[2] == "healthy"]
        assert up and up[0][3] == "healthy after 3 passed checks"
        assert up[0][0] - restarted_at >= 0.2  # three checks 100ms apart: not before the third
        async with httpx.AsyncClient() as client:
            names = {(await client.get(lb.url("/"))).headers["x-backend"] for _ in range(6)}
        assert "B2" in names
    finally:
        await revived.close()


async def test_backend_failing_its_health_endpoint_gets_no_traffic(backends, balancer):
    servers = await backends(3)
    lb = await balancer(simple_config({"web": pool_of(*servers, health_check=FAST_CHECKS)}))
    changes = watch(lb.pools["web"])
    sick = servers[2]
    async with httpx.AsyncClient() as client:
        await client.post(f"http://127.0.0.1:{sick.port}/health/fail")
        for _ in range(100):
            if changes:
                break
            await asyncio.sleep(0.02)
        assert changes and "status 503 (expected 200-399)" in changes[0][3]
        names = [(await client.get(lb.url("/"))).headers["x-backend"] for _ in range(20)]
    assert sick.options.name not in names
    assert set(names) == {s.options.name for s in servers[:2]}


async def test_hanging_backend_is_ejected_by_check_timeouts(raw_backend, backends, balancer):
    async def hang(reader, writer):
        await reader.read()  # accepts, reads, never answers

    port = await raw_backend(hang)
    (good,) = await backends(1)
    pool = pool_of(good, f"127.0.0.1:{port}", health_check={**FAST_CHECKS, "timeout": "150ms"})
    lb = await balancer(simple_config({"web": pool}))
    changes = watch(lb.pools["web"])
    for _ in range(100):
        if changes:
            break
        await asyncio.sleep(0.02)
    assert changes and changes[0][1] == f"127.0.0.1:{port}"
    assert "timed out" in changes[0][3]
    async with httpx.AsyncClient() as client:
        statuses = [(await client.get(lb.url("/"))).status_code for _ in range(10)]
    assert statuses == [200] * 10
