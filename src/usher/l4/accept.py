"""Sockets of the layer-4 paths: a listening socket with its own accept loop, the exact
reading of a PROXY protocol header, and a connect to a backend with its timeout.

The layer-4 listeners (and http/https listeners that accept the PROXY protocol) accept raw
sockets rather than asyncio transports: the first bytes are read before deciding where the
connection goes and what carries it (a transport, TLS, or splice).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import socket
import struct
from collections.abc import Callable, Sequence
from typing import Any

from usher import handover
from usher.proxy_protocol import ProxyHeader, ProxyProtocolError, parse, safe_read_size

log = logging.getLogger("usher.l4")

# Accept errors that say "not now" (out of file descriptors, memory): wait, then go on.
_ACCEPT_PAUSE = 0.1
_TRANSIENT = frozenset(
    {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM, errno.ECONNABORTED, errno.EPROTO}
)


def reset(transport: asyncio.Transport) -> None:
    """Abort a connection with a reset, so that the kernel drops what it still holds for a
    peer that stopped reading, rather than keep it (as a plain close would) for minutes."""
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()


def close_within(
    loop: asyncio.AbstractEventLoop, transport: asyncio.Transport, limit: float
) -> asyncio.TimerHandle | None:
    """Close once what is buffered has gone out, but reset the connection if the peer has not
    taken it within `limit` seconds: a peer that stopped reading must not hold it for ever.
    Returns the timer to cancel when the connection is lost."""
    transport.close()
    if transport.get_write_buffer_size():
        return loop.call_later(limit, reset, transport)
    return None


def listening_socket(
    host: str, port: int, *, kind: int = socket.SOCK_STREAM, reuse_port: bool = False
) -> socket.socket:
    """A bound (and for TCP, listening) non-blocking socket; raises OSError. After an
    upgrade, the socket the old process handed over for this address, when there is one."""
    infos = socket.getaddrinfo(host, port, type=kind, flags=socket.AI_PASSIVE)
    family, _, proto, _, address = infos[0]
    inherited = handover.claim((handover.transport(kind), str(address[0]), int(address[1])))
    if inherited is not None:
        return inherited
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(address)
        if kind == socket.SOCK_STREAM:
            sock.listen(1024)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


class Acceptor:
    """Accepts connections on a listening socket and hands each to `handler` (which owns it
    from then on). Has what the balancer uses of an `asyncio.Server`."""

    def __init__(self, sock: socket.socket, handler: Callable[[socket.socket, Any], None]) -> None:
        self._sock = sock
        self._handler = handler
        self._task = asyncio.get_running_loop().create_task(self._accept_loop())

    @property
    def sockets(self) -> Sequence[socket.socket]:
        return (self._sock,)

    async def _accept_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                conn, address = await loop.sock_accept(self._sock)
            except OSError as exc:
                if exc.errno in _TRANSIENT:
                    log.warning("accept on %s: %s", self._sock.getsockname(), exc)
                    await asyncio.sleep(_ACCEPT_PAUSE)
                    continue
                return  # the socket was closed
            conn.setblocking(False)
            try:
                self._handler(conn, address)
            except Exception:  # one connection's bug must not stop the accept loop
                log.exception("handling a connection from %s", address)
                conn.close()

    def close(self) -> None:
        # The socket closes once the accept loop has let go of it: closing it while the loop
        # still watches its descriptor would leave the poller with a stale one.
        self._task.cancel()
        if self._task.done():
            self._sock.close()
        else:
            self._task.add_done_callback(lambda _: self._sock.close())

    async def wait_closed(self) -> None:
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


class DatagramServer:
    """A UDP endpoint with what the balancer uses of an `asyncio.Server`."""

    def __init__(self, transport: asyncio.DatagramTransport) -> None:
        self.transport = transport

    @property
    def sockets(self) -> Sequence[Any]:
        return (self.transport.get_extra_info("socket"),)

    def close(self) -> None:
        self.transport.close()

    async def wait_closed(self) -> None:
        await asyncio.sleep(0)


async def read_proxy_header(loop: asyncio.AbstractEventLoop, sock: socket.socket) -> ProxyHeader:
    """Read a PROXY protocol header, and not one byte more (TLS may start right after it).
    Raises ProxyProtocolError, or ConnectionError when the client closes first; the caller
    bounds the time."""
    buf = b""
    while True:
        data = await loop.sock_recv(sock, safe_read_size(buf))
        if not data:
            raise ConnectionError("the client closed before sending a PROXY header")
        buf += data
        parsed = parse(buf)
        if parsed is not None:
            header, consumed = parsed
            if consumed != len(buf):  # safe_read_size never reads past the end
                raise ProxyProtocolError("read past the PROXY header")
            return header


async def connect(loop: asyncio.AbstractEventLoop, host: str, port: int) -> socket.socket:
    """A connected non-blocking TCP socket to host:port (first address found); raises OSError.
    The caller bounds the time (the pool's connect timeout)."""
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    if not infos:
        raise OSError(f"cannot resolve {host}")
    family, _, proto, _, address = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM, proto)
    try:
        sock.setblocking(False)
        await loop.sock_connect(sock, address)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except BaseException:
        sock.close()
        raise
    return sock
