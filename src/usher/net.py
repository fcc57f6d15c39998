"""Opening a connection to a backend the way usher's own connections are made.

A backend that expects PROXY headers gets its preamble first, in the clear, on the bare socket,
and only then TLS (if any) and the protocol: the proxy's upstream connections and the health
probes both connect so.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable
from typing import TypeVar

from usher.l4.accept import connect

P = TypeVar("P", bound=asyncio.BaseProtocol)


async def open_connection(
    loop: asyncio.AbstractEventLoop,
    factory: Callable[[], P],
    host: str,
    port: int,
    *,
    tls: ssl.SSLContext | None = None,
    server_name: str | None = None,
    preamble: bytes | None = None,
) -> tuple[asyncio.Transport, P]:
    """Connect `factory()`'s protocol to host:port; `preamble` (a PROXY header) goes first,
    before any TLS. The caller bounds the time; raises OSError or ssl.SSLError."""
    if preamble is None:
        return await loop.create_connection(
            factory, host, port, ssl=tls, server_hostname=server_name
        )
    sock = await connect(loop, host, port)
    try:
        await loop.sock_sendall(sock, preamble)
        return await loop.create_connection(
            factory, sock=sock, ssl=tls, server_hostname=server_name
        )
    except BaseException:
        sock.close()
        raise
