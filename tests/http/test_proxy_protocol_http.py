"""The PROXY protocol on http/https listeners (accept) and http pools (send)."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import trustme

from tests.conftest import RunningBalancer, read_response
from usher.demo.origin import BackendServer
from usher.proxy_protocol import encode_v1, encode_v2, parse

StartBalancer = Callable[..., Awaitable[RunningBalancer]]
StartBackends = Callable[..., Awaitable[list[BackendServer]]]
Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@pytest.mark.parametrize("encode", [encode_v1, encode_v2], ids=["v1", "v2"])
async def test_http_listener_takes_client_address_from_header(
    backends: StartBackends, balancer: StartBalancer, encode: Callable[..., bytes]
) -> None:
    (backend,) = await backends(1)
    b = await balancer(
        {
            "listeners": [
                {"name": "web", "bind": "127.0.0.1:0", "pool": "p", "accept_proxy_protocol": True}
            ],
            "pools": {"p": {"backends": [{"address": f"127.0.0.1:{backend.port}"}]}},
        }
    )
    reader, writer = await asyncio.open_connection("127.0.0.1", b.port)
    writer.write(encode(("203.0.113.50", 1111), ("10.0.0.1", 80)))
    writer.write(b"GET /headers HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: 6.6.6.6\r\n\r\n")
    response = await asyncio.wait_for(read_response(reader), 5)
    writer.close()
    assert b'["X-Forwarded-For", "6.6.6.6, 203.0.113.50"]' in response.body.replace(b'","', b'", "')
    assert b"203.0.113.50" in response.body
    assert "203.0.113.50" in b.log.getvalue()


async def test_https_listener_reads_header_before_tls(
    backends: StartBackends, balancer: StartBalancer, tmp_path: Path
) -> None:
    (backend,) = await backends(1)
    ca = trustme.CA()
    site = ca.issue_cert("localhost")
    site.cert_chain_pems[0].write_to_path(str(tmp_path / "s.pem"))
    site.private_key_pem.write_to_path(str(tmp_path / "s.key"))
    b = await balancer(
        {
            "listeners": [
                {
                    "name": "web",
                    "bind": "127.0.0.1:0",
                    "protocol": "https",
                    "pool": "p",
                    "accept_proxy_protocol": True,
                    "tls": {
                        "certificates": [
                            {"cert": str(tmp_path / "s.pem"), "key": str(tmp_path / "s.key")}
                        ]
                    },
                }
            ],
            "pools": {"p": {"backends": [{"address": f"127.0.0.1:{backend.port}"}]}},
        }
    )
    reader, writer = await asyncio.open_connection("127.0.0.1", b.port)
    writer.write(encode_v2(("198.51.100.9", 2222), ("10.0.0.1", 443)))
    await writer.drain()
    ctx = ssl.create_default_context()
    ca.configure_trust(ctx)
    await writer.start_tls(ctx, server_hostname="localhost")
    writer.write(b"GET /headers HTTP/1.1\r\nHost: x\r\n\r\n")
    response = await asyncio.wait_for(read_response(reader), 5)
    writer.close()
    assert response.status == 200
    assert b"198.51.100.9" in response.body


async def test_missing_header_is_refused(backends: StartBackends, balancer: StartBalancer) -> None:
    (backend,) = await backends(1)
    b = await balancer(
        {
            "listeners": [
                {"name": "web", "bind": "127.0.0.1:0", "pool": "p", "accept_proxy_protocol": True}
            ],
            "pools": {"p": {"backends": [{"address": f"127.0.0.1:{backend.port}"}]}},
        }
    )
    reader, writer = await asyncio.open_connection("127.0.0.1", b.port)
    writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    with contextlib.suppress(ConnectionResetError):
        assert await asyncio.wait_for(reader.read(), 5) == b""
    writer.close()
    assert b.balancer.metrics.rejected_total[("web", "bad_proxy_header")] == 1


@pytest.mark.parametrize("version", ["v1", "v2"])
async def test_http_pool_sends_header_and_never_shares_a_connection_across_clients(
    balancer: StartBalancer, version: str
) -> None:
    connections: list[Any] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        first = await reader.read(4096)
        buf = first
        parsed = parse(buf)
        while parsed is None:
            buf += await reader.read(4096)
            parsed = parse(buf)
        header, consumed = parsed
        connections.append(header.source)
        buf = buf[consumed:]
        try:
            while True:
                while b"\r\n\r\n" not in buf:
                    more = await reader.read(4096)
                    if not more:
                        return
                    buf += more
                buf = buf.split(b"\r\n\r\n", 1)[1]
                body = f"{header.source[0]}:{header.source[1]}".encode()
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
                await writer.drain()
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        b = await balancer(
            {
                "listeners": [{"name": "web", "bind": "127.0.0.1:0", "pool": "p"}],
                "pools": {
                    "p": {
                        "backends": [{"address": f"127.0.0.1:{port}"}],
                        "send_proxy_protocol": version,
                    }
                },
            }
        )
        answers = []
        for _ in range(2):  # two clients, two requests each on keep-alive
            reader, writer = await asyncio.open_connection("127.0.0.1", b.port)
            local = writer.get_extra_info("sockname")
            for _ in range(2):
                writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
                response = await asyncio.wait_for(read_response(reader), 5)
                answers.append(response.body.decode())
                assert response.body.decode() == f"127.0.0.1:{local[1]}"
            writer.close()
            await writer.wait_closed()
        # One backend connection per client (reused within it), none shared between them.
        assert len(connections) == 2
        assert connections[0] != connections[1]
    finally:
        server.close()
        await server.wait_closed()


@pytest.mark.parametrize("version", ["v1", "v2"])
async def test_http_health_checks_send_a_local_header(version: str) -> None:
    from usher.clock import MonotonicClock
    from usher.config import PoolConfig
    from usher.health import HealthChecker
    from usher.pool import Pool

    firsts: list[bytes] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        data = await reader.readuntil(b"\r\n\r\n")
        parsed = parse(data)
        if parsed is None:
            data += await reader.readuntil(b"\r\n\r\n")
            parsed = parse(data)
        assert parsed is not None
        firsts.append(data[: parsed[1]])
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    config = PoolConfig.model_validate(
        {
            "backends": [{"address": f"127.0.0.1:{port}"}],
            "send_proxy_protocol": version,
            "health_check": {"type": "http", "interval": "50ms", "jitter": 0},
        }
    )
    pool = Pool("p", config, MonotonicClock())
    checker = HealthChecker(pool, pool.clock)
    checker.start()
    try:
        for _ in range(200):
            if pool.backends[0].last_check is not None:
                break
            await asyncio.sleep(0.02)
        assert pool.backends[0].last_check is not None and pool.backends[0].last_check[0]
        header = parse(firsts[0])
        assert header is not None
        assert header[0].source is None  # LOCAL / UNKNOWN: the balancer's own connection
    finally:
        await checker.stop()
        server.close()
        await server.wait_closed()


async def test_connections_owned_by_a_client_close_when_it_leaves(balancer: StartBalancer) -> None:
    # Connections that carry one client's PROXY header are of no use once it has gone; they
    # must neither stay open nor crowd shared ones out of max_idle_connections.
    accepted = 0
    open_now = 0

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal accepted, open_now
        accepted += 1
        open_now += 1
        buf = b""
        try:
            while (parsed := parse(buf)) is None:
                more = await reader.read(4096)
                if not more:
                    return
                buf += more
            buf = buf[parsed[1] :]
            while True:
                while b"\r\n\r\n" not in buf:
                    more = await reader.read(4096)
                    if not more:
                        return
                    buf += more
                buf = buf.split(b"\r\n\r\n", 1)[1]
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            open_now -= 1
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        b = await balancer(
            {
                "listeners": [{"name": "web", "bind": "127.0.0.1:0", "pool": "p"}],
                "pools": {
                    "p": {
                        "backends": [{"address": f"127.0.0.1:{port}"}],
                        "send_proxy_protocol": "v1",
                        "max_idle_connections": 4,
                    }
                },
            }
        )
        for _ in range(10):  # short-lived clients: one request each
            reader, writer = await asyncio.open_connection("127.0.0.1", b.port)
            writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            await asyncio.wait_for(read_response(reader), 5)
            writer.close()
            await writer.wait_closed()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 5
        while open_now and loop.time() < deadline:
            await asyncio.sleep(0.01)
        assert open_now == 0, "backend connections of departed clients are still open"
        assert not b.balancer.pools["p"].backends[0].idle
        before = accepted
        reader, writer = await asyncio.open_connection("127.0.0.1", b.port)
        for _ in range(3):  # a keep-alive client needs one backend connection
            writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            await asyncio.wait_for(read_response(reader), 5)
        writer.close()
        assert accepted - before == 1
    finally:
        server.close()
