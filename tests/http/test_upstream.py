"""Backend connections kept for reuse: flow control must not outlive the exchange that set it.

An answer's last bytes can come while the client's side is full: reading the backend is paused
then, the exchange ends, and its connection is parked before the client's resume_writing that
would have undone the pause. (Under load this hung the next request on that connection until its
read timeout.) Likewise a request's last bytes can still sit in our send buffer when a backend
that answered early completes. These tests park a connection in each state and check that the
next request through it flows.
"""

from __future__ import annotations

import asyncio

import httpx

from tests.conftest import pool_of, simple_config
from usher.http.upstream import UpstreamConnection, release, take_idle


async def parked_connection(lb, server) -> tuple[UpstreamConnection, object]:
    async with httpx.AsyncClient() as client:
        assert (await client.get(lb.url("/"))).status_code == 200
    (backend,) = lb.pools["web"].backends
    conn = take_idle(backend)
    assert conn is not None and conn.transport is not None
    return conn, backend


async def test_a_connection_parked_with_reading_paused_reads_again(backends, balancer):
    (server,) = await backends(1)
    lb = await balancer(simple_config({"web": pool_of(server)}))
    conn, _ = await parked_connection(lb, server)
    conn.transport.pause_reading()  # as a slow client's pause_writing does
    release(conn, asyncio.get_running_loop(), max_idle=8, idle_timeout=60)
    assert conn.transport.is_reading()
    # The next request goes over that same connection and its answer flows.
    async with httpx.AsyncClient(timeout=5) as client:
        response = await client.get(lb.url("/bytes/300000"))
    assert response.status_code == 200 and len(response.content) == 300000
    assert server.connections_total == 1


async def test_a_reused_connection_still_sending_holds_back_the_next_body(backends, balancer):
    (server,) = await backends(1)
    lb = await balancer(simple_config({"web": pool_of(server)}))
    conn, _ = await parked_connection(lb, server)
    conn.pause_writing()  # its send buffer was over the mark when the last exchange ended
    release(conn, asyncio.get_running_loop(), max_idle=8, idle_timeout=60)
    assert conn.write_paused

    body = b"x" * 100_000
    reader, writer = await asyncio.open_connection("127.0.0.1", lb.port)
    writer.write(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(body))
    writer.write(body[:10])
    await writer.drain()
    await asyncio.sleep(0.1)
    # The new exchange took the connection and stopped reading its client.
    (client,) = lb.balancer.listeners["web"].connections
    assert client.reading_blocked
    conn.resume_writing()  # the buffer drained
    assert not client.reading_blocked
    writer.write(body[10:])
    line = await asyncio.wait_for(reader.readline(), 5)
    assert b" 200 " in line
    await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert await asyncio.wait_for(reader.readexactly(len(body)), 5) == body
    writer.close()
