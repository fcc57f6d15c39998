"""The runtime listener for each protocol, and binding it: what the balancer calls, so that it
does not need to know how an http, tcp, udp or tls_passthrough listener accepts clients."""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from usher import handover
from usher.dns.server import DnsListener
from usher.http.proxy import ClientConnection, HttpListener
from usher.l4.accept import Acceptor, listening_socket, read_proxy_header
from usher.l4.tcp import TcpListener
from usher.l4.udp import UdpListener
from usher.proxy_protocol import ProxyProtocolError

if TYPE_CHECKING:
    from collections.abc import Sequence

    from usher.clock import Clock
    from usher.config import Listener as ListenerConfig
    from usher.logs import AccessLog
    from usher.metrics import Metrics
    from usher.routing import Router

log = logging.getLogger("usher.l4")

AnyListener = HttpListener | TcpListener | UdpListener | DnsListener


class Abortable(Protocol):
    """A client connection (or UDP session) the balancer can cut at the end of a stop."""

    def abort(self) -> None: ...


class Serving(Protocol):
    """What the balancer uses of a listening server (asyncio.Server has it)."""

    @property
    def sockets(self) -> Sequence[Any]: ...
    def close(self) -> None: ...
    async def wait_closed(self) -> None: ...


def build_listener(
    config: ListenerConfig,
    router: Router,
    *,
    clock: Clock,
    access_log: AccessLog,
    metrics: Metrics,
    workers: int = 1,
) -> AnyListener:
    kind: type[AnyListener] = HttpListener
    if config.protocol in ("tcp", "tls_passthrough"):
        kind = TcpListener
    elif config.protocol == "udp":
        kind = UdpListener
    elif config.protocol == "dns":
        kind = DnsListener
    return kind(
        config, router, clock=clock, access_log=access_log, metrics=metrics, workers=workers
    )


async def bind_listener(
    listener: AnyListener,
    tls: Callable[[], ssl.SSLContext | None],
    *,
    reuse_port: bool,
) -> Serving:
    """Start accepting; raises OSError when the address cannot be bound. `tls` gives the
    listener's current server context (it may change on reload)."""
    if isinstance(listener, TcpListener):
        return listener.bind(reuse_port)
    if isinstance(listener, UdpListener | DnsListener):
        return await listener.bind(reuse_port)
    lc = listener.config
    if lc.accept_proxy_protocol:
        sock = listening_socket(lc.bind.host, lc.bind.port, reuse_port=reuse_port)
        return Acceptor(sock, _ProxiedHttp(listener, tls))
    loop = asyncio.get_running_loop()
    inherited = handover.claim(handover.key_for(lc.bind.host, lc.bind.port))
    if inherited is not None:  # after an upgrade: the old process's socket
        return await loop.create_server(listener, sock=inherited, ssl=tls(), backlog=1024)
    return await loop.create_server(
        listener,
        lc.bind.host,
        lc.bind.port,
        ssl=tls(),
        backlog=1024,
        reuse_port=reuse_port or None,
    )


class _ProxiedHttp:
    """http/https with `accept_proxy_protocol`: read the PROXY header from the raw socket, byte
    exact, then hand the socket to the usual HTTP protocol (TLS starts right after it)."""

    def __init__(self, listener: HttpListener, tls: Callable[[], ssl.SSLContext | None]) -> None:
        self.listener = listener
        self.tls = tls
        self.pending: set[asyncio.Task[None]] = set()

    def __call__(self, sock: socket.socket, address: Any) -> None:
        task = asyncio.get_running_loop().create_task(self._start(sock, address))
        self.pending.add(task)
        task.add_done_callback(self.pending.discard)

    async def _start(self, sock: socket.socket, address: Any) -> None:
        listener = self.listener
        loop = asyncio.get_running_loop()
        peer: tuple[str, int] = (str(address[0]), int(address[1]))
        name = sock.getsockname()
        local: tuple[str, int] = (str(name[0]), int(name[1]))
        try:
            async with asyncio.timeout(listener.timeouts.header):
                header = await read_proxy_header(loop, sock)
            if header.source is not None and header.destination is not None:
                peer, local = header.source, header.destination
            await loop.connect_accepted_socket(
                lambda: ClientConnection(listener, peer=peer, local=local), sock, ssl=self.tls()
            )
        except (ProxyProtocolError, TimeoutError) as exc:
            reason = "no PROXY header in time" if isinstance(exc, TimeoutError) else str(exc)
            log.warning(
                "listener %s: closing connection from %s:%s: %s",
                listener.name,
                address[0],
                address[1],
                reason,
            )
            listener.metrics.rejected(listener.name, "bad_proxy_header")
            sock.close()
        except (OSError, asyncio.CancelledError):
            sock.close()  # the client left, or the TLS handshake failed
