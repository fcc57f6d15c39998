"""Soak: 2,000 WebSocket sessions through usher, opened and closed in bounded time, leave its
descriptors, active connections and memory where they started (issue 12)."""

from __future__ import annotations

import asyncio
import gc

from websockets.asyncio.client import connect as ws_connect

from tests.conftest import pool_of, simple_config
from tests.http.tunnel_helpers import open_descriptors, rss_bytes, settled

SESSIONS = 2000
CONCURRENCY = 25  # sessions open at once
MIB = 1024 * 1024
# Everything runs in this process (clients, usher, the demo backend); after the warm-up,
# what 2,000 more sessions may leave behind is allocator slack, not a session's worth each.
RSS_TOLERANCE = 16 * MIB


async def session(port: int, n: int) -> None:
    async with ws_connect(f"ws://127.0.0.1:{port}/ws", ping_interval=None) as ws:
        message = f"session {n}"
        await ws.send(message)
        assert await ws.recv() == message


async def sessions(port: int, count: int) -> None:
    queue = iter(range(count))

    async def worker() -> None:
        for n in queue:
            await session(port, n)

    await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))


async def test_2000_websocket_sessions_return_descriptors_and_memory(backends, balancer):
    (server,) = await backends(1)
    lb = await balancer(simple_config({"web": pool_of(server)}))
    port = lb.port
    await asyncio.wait_for(sessions(port, 200), 30)  # warm-up: caches, buffers, the allocator
    descriptors, active = await settled(lb, open_descriptors())
    assert active == 0
    gc.collect()
    rss = rss_bytes()

    started = asyncio.get_running_loop().time()
    await asyncio.wait_for(sessions(port, SESSIONS), 90)
    print(f"\n[soak] {SESSIONS} sessions in {asyncio.get_running_loop().time() - started:.1f} s")

    assert await settled(lb, descriptors) == (descriptors, 0.0)
    gc.collect()
    grown = rss_bytes() - rss
    print(f"\n[soak] {SESSIONS} sessions: descriptors {descriptors}, RSS {grown / MIB:+.1f} MiB")
    assert grown < RSS_TOLERANCE, f"RSS grew by {grown / MIB:.1f} MiB over {SESSIONS} sessions"
    assert lb.pools["web"].backends[0].active == 0
    assert server.connections_total == 200 + SESSIONS
