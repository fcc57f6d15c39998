"""The keep-alive pool of one backend: its counts and repr, idle expiry, max idle, connections
bound to one client, connects, and renewal on a reload."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from tests.http.fake_transport import FakeTransport
from usher.clock import MonotonicClock
from usher.config import parse_config
from usher.errors import ConnectError
from usher.http.connection_pool import ConnectionPool
from usher.http.upstream import UpstreamConnection
from usher.pool import Backend, Pool


def pool_config(address: str = "127.0.0.1:9001", **options: Any) -> Any:
    config = parse_config(
        json.dumps(
            {
                "listeners": [{"name": "web", "bind": "127.0.0.1:8080", "pool": "web"}],
                "pools": {"web": {"backends": [{"address": address}], **options}},
            }
        )
    )
    return config.pools["web"]


def one_backend_pool(**options: Any) -> tuple[Pool, Backend, ConnectionPool]:
    pool = Pool("web", pool_config(**options), MonotonicClock())
    (backend,) = pool.backends
    return pool, backend, backend.connections


def open_connection(backend: Backend) -> tuple[UpstreamConnection, FakeTransport]:
    conn = UpstreamConnection(backend)
    transport = FakeTransport(("127.0.0.1", 9001))
    conn.connection_made(transport)  # type: ignore[arg-type]
    return conn, transport


class Client:
    """A client whose PROXY header opened connections that serve it alone (upstream.Owner)."""

    def __init__(self) -> None:
        self.owned: list[UpstreamConnection] | None = None
        self.closed = False


def test_a_backend_has_its_own_pool_with_its_pool_settings() -> None:
    _, backend, connections = one_backend_pool(
        max_idle_connections=3, timeouts={"idle": 7, "connect": 2, "send": 4}
    )
    assert connections.backend is backend
    assert (connections.max_idle, connections.idle_timeout) == (3, 7)
    assert (connections.connect_timeout, connections.send_timeout) == (2, 4)
    assert backend.idle is connections.idle and backend.generation == connections.generation == 0


async def test_the_repr_shows_active_idle_and_connecting_connections() -> None:
    _, backend, connections = one_backend_pool()
    label = "<ConnectionPool 127.0.0.1:9001 [Connections: {} active, {} idle, 0 connecting]>"
    assert repr(connections) == label.format(0, 0)
    first, _ = open_connection(backend)
    second, _ = open_connection(backend)
    assert repr(connections) == label.format(2, 0)
    connections.release(first, asyncio.get_running_loop())
    assert repr(connections) == label.format(1, 1)
    first.connection_lost(None)
    assert repr(connections) == label.format(1, 0)
    assert connections.take() is None
    second.connection_lost(None)
    assert repr(connections) == label.format(0, 0)


async def test_a_released_connection_is_taken_again_most_recent_first() -> None:
    _, backend, connections = one_backend_pool()
    loop = asyncio.get_running_loop()
    older, _ = open_connection(backend)
    newer, _ = open_connection(backend)
    connections.release(older, loop)
    connections.release(newer, loop)
    assert connections.take() is newer
    assert connections.take() is older
    assert connections.take() is None


async def test_an_idle_connection_closes_at_the_idle_timeout() -> None:
    _, backend, connections = one_backend_pool(timeouts={"idle": 0.05})
    conn, transport = open_connection(backend)
    connections.release(conn, asyncio.get_running_loop())
    assert backend.idle == [conn]
    deadline = asyncio.get_running_loop().time() + 5
    while not transport.closed and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.02)
    assert conn.closed and transport.closed
    assert connections.take() is None  # closed: dropped, not handed out


async def test_a_reused_connection_does_not_expire_while_in_use() -> None:
    _, backend, connections = one_backend_pool(timeouts={"idle": 0.05})
    conn, transport = open_connection(backend)
    connections.release(conn, asyncio.get_running_loop())
    assert connections.take() is conn
    await asyncio.sleep(0.2)
    assert not conn.closed and not transport.closed


async def test_no_more_than_max_idle_connections_are_kept() -> None:
    _, backend, connections = one_backend_pool(max_idle_connections=1)
    loop = asyncio.get_running_loop()
    kept, kept_transport = open_connection(backend)
    extra, extra_transport = open_connection(backend)
    connections.release(kept, loop)
    connections.release(extra, loop)
    assert backend.idle == [kept] and not kept_transport.closed
    assert extra.closed and extra_transport.closed


async def test_a_connection_that_cannot_carry_another_request_is_closed() -> None:
    _, backend, connections = one_backend_pool()
    conn, transport = open_connection(backend)
    conn.reader.reusable = False
    connections.release(conn, asyncio.get_running_loop())
    assert backend.idle == [] and transport.closed


async def test_a_client_bound_connection_is_parked_for_that_client_alone() -> None:
    _, backend, connections = one_backend_pool(max_idle_connections=0)
    loop = asyncio.get_running_loop()
    client = Client()
    conn, transport = open_connection(backend)
    conn.owner = client
    connections.release(conn, loop)  # not counted in max_idle_connections
    assert client.owned == [conn] and backend.idle == [] and not transport.closed
    assert connections.take() is None
    assert connections.take(Client()) is None
    assert connections.take(client) is conn
    client.closed = True
    connections.release(conn, loop)  # the client has gone: of no more use
    assert transport.closed and client.owned == []


async def test_a_reload_that_changes_how_connections_are_made_renews_them() -> None:
    pool, backend, connections = one_backend_pool(max_idle_connections=4)
    loop = asyncio.get_running_loop()
    idle, idle_transport = open_connection(backend)
    busy, busy_transport = open_connection(backend)
    connections.release(idle, loop)
    pool.reconfigure(pool_config(max_idle_connections=2, send_proxy_protocol="v1"))
    assert backend.connections is connections  # the backend stayed: so did its pool
    assert connections.generation == 1 and connections.max_idle == 2
    assert connections.send_proxy_protocol == "v1"
    assert idle_transport.closed and backend.idle == []
    connections.release(busy, loop)  # made with the old settings: not reused
    assert busy_transport.closed and backend.idle == []
    fresh, _ = open_connection(backend)
    assert fresh.generation == 1
    connections.release(fresh, loop)
    assert backend.idle == [fresh]


async def test_a_reload_with_the_same_connection_settings_keeps_idle_connections() -> None:
    pool, backend, connections = one_backend_pool()
    conn, transport = open_connection(backend)
    connections.release(conn, asyncio.get_running_loop())
    pool.reconfigure(pool_config(timeouts={"idle": 9}))
    assert connections.generation == 0 and connections.idle_timeout == 9
    assert backend.idle == [conn] and not transport.closed


async def test_close_idle_closes_the_idle_connections_only() -> None:
    _, backend, connections = one_backend_pool()
    idle, idle_transport = open_connection(backend)
    _, busy_transport = open_connection(backend)
    connections.release(idle, asyncio.get_running_loop())
    connections.close_idle()
    assert idle_transport.closed and not busy_transport.closed and backend.idle == []


async def test_a_connect_is_counted_until_it_is_done() -> None:
    accepted: list[asyncio.StreamWriter] = []

    async def accept(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(writer)

    server = await asyncio.start_server(accept, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        _, _, connections = one_backend_pool(address=f"127.0.0.1:{port}", timeouts={"send": 3})
        loop = asyncio.get_running_loop()
        result: asyncio.Future[UpstreamConnection | None] = loop.create_future()
        connections.connect(loop, lambda conn, exc: result.set_result(conn))
        assert connections.connecting == 1 and "0 active, 0 idle, 1 connecting" in repr(connections)
        conn = await asyncio.wait_for(result, 5)
        assert conn is not None and conn.send_timeout == 3 and conn.owner is None
        assert "1 active, 0 idle, 0 connecting" in repr(connections)
        conn.close()
    finally:
        for writer in accepted:
            writer.close()
        server.close()
        await server.wait_closed()


async def test_a_refused_connect_reports_a_connect_error() -> None:
    probe = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = probe.sockets[0].getsockname()[1]
    probe.close()
    await probe.wait_closed()
    _, _, connections = one_backend_pool(address=f"127.0.0.1:{port}")
    loop = asyncio.get_running_loop()
    result: asyncio.Future[Exception | None] = loop.create_future()
    connections.connect(loop, lambda conn, exc: result.set_result(exc))
    error = await asyncio.wait_for(result, 5)
    assert isinstance(error, ConnectError) and f"127.0.0.1:{port} failed" in str(error)
    assert connections.connecting == 0 and connections.live == 0
