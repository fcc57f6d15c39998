"""TLS test servers: certificates from trustme, a tiny HTTPS/TLS backend on 127.0.0.1:0."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
import trustme


def server_context(ca: trustme.CA, *names: str) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(*names).configure_cert(ctx)
    return ctx


def write_ca(ca: trustme.CA, path: Path) -> str:
    ca.cert_pem.write_to_path(str(path))
    return str(path)


async def http_answer(
    name: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    """Answer every request on the connection with `name` (keep-alive)."""
    while True:
        head = await reader.readuntil(b"\r\n\r\n")
        if not head:
            return
        body = name.encode()
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
        await writer.drain()


TlsServerFactory = Callable[[ssl.SSLContext, str], Awaitable[int]]


@pytest.fixture
async def tls_server() -> AsyncIterator[TlsServerFactory]:
    """A TLS server answering HTTP requests with its name; returns its port."""
    servers: list[asyncio.Server] = []

    async def start(ctx: ssl.SSLContext, name: str) -> int:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                await http_answer(name, reader, writer)
            except (asyncio.IncompleteReadError, ConnectionError, ssl.SSLError):
                pass
            finally:
                writer.close()

        server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=ctx)
        servers.append(server)
        return int(server.sockets[0].getsockname()[1])

    yield start
    for server in servers:
        server.close()
        await server.wait_closed()
