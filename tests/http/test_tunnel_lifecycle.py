"""Upgraded (101) connections end cleanly: however a WebSocket tunnel closes, both of usher's
sockets close and `usher_active_connections` comes back down (issue 12, item 1)."""

from __future__ import annotations

import asyncio
import socket
import ssl
import struct
from collections.abc import Awaitable, Callable

import trustme
from websockets.asyncio.client import connect as ws_connect

from tests.conftest import pool_of, simple_config
from tests.http.tunnel_helpers import (
    RawWebSocket,
    active_connections,
    open_descriptors,
    settled,
    ws_frame,
)


async def close_normally(port: int) -> None:
    """The WebSocket closing handshake; the backend then closes TCP first (RFC 6455 §7.1.1)."""
    async with ws_connect(f"ws://127.0.0.1:{port}/ws", ping_interval=None) as ws:
        await ws.send("hello")
        assert await ws.recv() == "hello"


async def client_aborts(port: int) -> None:
    ws = await ws_connect(f"ws://127.0.0.1:{port}/ws", ping_interval=None)
    await ws.send("hello")
    assert await ws.recv() == "hello"
    ws.transport.abort()
    await ws.wait_closed()


async def client_resets(port: int) -> None:
    ws = await RawWebSocket.open(port)
    await ws.echo(b"hello")
    sock = ws.writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    ws.writer.transport.abort()


async def client_half_closes(port: int) -> None:
    """The client's EOF reaches the backend, which closes; usher then closes towards us."""
    ws = await RawWebSocket.open(port)
    await ws.echo(b"hello")
    ws.writer.write_eof()
    assert await ws.read_to_eof() == b""
    ws.close()


async def backend_closes_first(port: int) -> None:
    """A frame with RSV bits set: the backend sends close 1002 and ends the connection."""
    ws = await RawWebSocket.open(port)
    await ws.echo(b"hello")
    ws.writer.write(ws_frame(0x1, b"bad", rsv=0x40))
    assert await ws.read_to_eof() == b"\x88\x02\x03\xea"
    ws.close()


async def both_close_at_once(port: int) -> None:
    """A close frame and the client's FIN in one go, and the client gone without reading."""
    ws = await RawWebSocket.open(port)
    await ws.echo(b"hello")
    ws.writer.write(ws_frame(0x8, b"\x03\xe8"))
    ws.writer.write_eof()
    ws.close()


ENDINGS: list[Callable[[int], Awaitable[None]]] = [
    close_normally,
    client_aborts,
    client_resets,
    client_half_closes,
    backend_closes_first,
    both_close_at_once,
]


async def test_200_websocket_sessions_leave_no_descriptor_or_active_connection(backends, balancer):
    (server,) = await backends(1)
    lb = await balancer(simple_config({"web": pool_of(server)}))
    await close_normally(lb.port)  # the first session loads what later ones reuse
    descriptors, _ = await settled(lb, open_descriptors())
    assert active_connections(lb) == 0
    sessions = [ENDINGS[i % len(ENDINGS)] for i in range(200)]
    for start in range(0, len(sessions), 10):
        batch = sessions[start : start + 10]
        await asyncio.wait_for(asyncio.gather(*(end(lb.port) for end in batch)), 30)
    assert await settled(lb, descriptors) == (descriptors, 0.0)
    assert lb.pools["web"].backends[0].active == 0
    assert lb.log.getvalue().count('"GET /ws" 101') == 201


async def test_idle_tunnels_close_both_sides_after_timeouts_tunnel(backends, balancer):
    (server,) = await backends(1)
    lb = await balancer(simple_config({"web": pool_of(server, timeouts={"tunnel": "300ms"})}))
    await close_normally(lb.port)
    descriptors, _ = await settled(lb, open_descriptors())
    sockets = [await RawWebSocket.open(lb.port) for _ in range(20)]
    for ws in sockets:
        await ws.echo(b"hello")
    assert active_connections(lb) == 20
    # Nothing moves: usher closes each tunnel without a word, towards the client...
    for ws in sockets:
        assert await ws.read_to_eof(5) == b""
        ws.close()
    # ...and towards the backend: nothing of the 40 sockets is left.
    assert await settled(lb, descriptors) == (descriptors, 0.0)
    assert lb.pools["web"].backends[0].active == 0


async def test_tunnels_over_tls_end_cleanly_too(backends, balancer, tmp_path):
    """A TLS side cannot be half-closed: an EOF towards it ends the tunnel instead."""
    ca = trustme.CA()
    cert = ca.issue_cert("localhost")
    cert.cert_chain_pems[0].write_to_path(str(tmp_path / "s.pem"))
    cert.private_key_pem.write_to_path(str(tmp_path / "s.key"))
    tls = {"certificates": [{"cert": str(tmp_path / "s.pem"), "key": str(tmp_path / "s.key")}]}
    (server,) = await backends(1)
    lb = await balancer(simple_config({"web": pool_of(server)}, protocol="https", tls=tls))
    client_tls = ssl.create_default_context()
    ca.configure_trust(client_tls)
    url = f"wss://localhost:{lb.port}/ws"

    async def normally() -> None:
        async with ws_connect(url, ssl=client_tls, ping_interval=None) as ws:
            await ws.send("hello")
            assert await ws.recv() == "hello"

    async def aborting() -> None:
        ws = await ws_connect(url, ssl=client_tls, ping_interval=None)
        await ws.send("hello")
        assert await ws.recv() == "hello"
        ws.transport.abort()
        await ws.wait_closed()

    await normally()
    descriptors, _ = await settled(lb, open_descriptors())
    for _ in range(10):
        await asyncio.wait_for(asyncio.gather(normally(), aborting(), normally()), 30)
    assert await settled(lb, descriptors) == (descriptors, 0.0)
    assert lb.pools["web"].backends[0].active == 0


async def test_tunnels_to_a_tls_backend_end_cleanly(balancer, tmp_path, caplog):
    """The backend's EOF over TLS ends the tunnel (TLS cannot stay half open) without asyncio's
    warning that keeping it open has no effect."""
    ca = trustme.CA()
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("backend.internal").configure_cert(server_tls)
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))

    async def switch_then_echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        await reader.readuntil(b"\r\n\r\n")
        writer.write(
            b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: x\r\n\r\n"
        )
        while (data := await reader.read(1024)) not in (b"", b"bye"):
            writer.write(data)
        writer.write(b"bye")
        writer.close()  # the backend ends first

    tls_backend = await asyncio.start_server(switch_then_echo, "127.0.0.1", 0, ssl=server_tls)
    port = tls_backend.sockets[0].getsockname()[1]
    tls = {"ca": str(tmp_path / "ca.pem"), "server_name": "backend.internal"}
    lb = await balancer(simple_config({"web": pool_of(f"127.0.0.1:{port}", tls=tls)}))

    async def session() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", lb.port)
        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: x\r\n\r\n")
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert head.startswith(b"HTTP/1.1 101 ")
        writer.write(b"ping")
        assert await asyncio.wait_for(reader.readexactly(4), 5) == b"ping"
        writer.write(b"bye")
        assert await asyncio.wait_for(reader.read(), 5) == b"bye"
        writer.close()

    try:
        await session()
        descriptors, _ = await settled(lb, open_descriptors())
        for _ in range(10):
            await asyncio.gather(session(), session())
        assert await settled(lb, descriptors) == (descriptors, 0.0)
    finally:
        tls_backend.close()
    assert "has no effect when using ssl" not in caplog.text
