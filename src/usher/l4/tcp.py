"""`tcp` and `tls_passthrough` listeners: accept, read what must be read first (a PROXY
header, the TLS ClientHello), pick a pool and a backend, connect (retrying the next backend),
then relay bytes both ways, through transports or with splice (`zero_copy`).

One log line and one usher_connections_total count per connection, when it ends.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from usher.acl import IpList
from usher.errors import ConnectError
from usher.l4.accept import Acceptor, connect, listening_socket, read_proxy_header
from usher.l4.relay import ABORTED, StreamRelay
from usher.l4.sni import ClientHelloReader, Hello, Malformed, NotTls
from usher.l4.splice import SpliceRelay
from usher.limits import ConnectionLimiter
from usher.logs import AccessLog, ConnectionRecord
from usher.metrics import Metrics
from usher.pool import Backend, Pool, Selection
from usher.pool.attempts import Attempts
from usher.proxy_protocol import ProxyProtocolError, encode
from usher.tls import upstream_server_name

if TYPE_CHECKING:
    from usher.clock import Clock
    from usher.config import Listener as ListenerConfig
    from usher.config import Route as RouteConfig
    from usher.routing import Router

log = logging.getLogger("usher.l4")

# Read size while waiting for the ClientHello.
_HELLO_READ = 16 * 1024
Address = tuple[str, int]


def _address(value: Any) -> Address:
    return (str(value[0]), int(value[1]))


class SniRouter:
    """tls_passthrough routes: exact names first, then `*.example.com` wildcards (one label),
    then the route without `match` (the default), in the order written."""

    __slots__ = ("default", "exact", "wildcard")

    def __init__(self, routes: Sequence[RouteConfig], pools: Sequence[Pool | None]) -> None:
        self.exact: dict[str, Pool] = {}
        self.wildcard: list[tuple[str, Pool]] = []
        self.default: Pool | None = None
        # A listener built before its pools exist (a reload binds first) has no routes yet.
        for config, pool in zip(routes, pools, strict=False):
            if pool is None:
                continue
            sni = config.match.sni if config.match is not None else None
            if sni is None:
                if self.default is None:
                    self.default = pool
            elif sni.startswith("*."):
                self.wildcard.append((sni[1:], pool))
            else:
                self.exact.setdefault(sni, pool)

    def route(self, server_name: str | None) -> Pool | None:
        if server_name is not None:
            name = server_name.lower()
            pool = self.exact.get(name)
            if pool is not None:
                return pool
            for suffix, candidate in self.wildcard:
                if name.endswith(suffix) and "." not in name[: -len(suffix)]:
                    return candidate
        return self.default


class TcpListener:
    """The runtime side of one `tcp` or `tls_passthrough` listener."""

    def __init__(
        self,
        config: ListenerConfig,
        router: Router,
        *,
        clock: Clock,
        access_log: AccessLog,
        metrics: Metrics | None = None,
        workers: int = 1,
    ) -> None:
        self.clock = clock
        self.access_log = access_log
        self.metrics = metrics or Metrics()
        self.connections: set[TcpSession] = set()
        self.draining = False
        self.workers = workers
        # Kept across reloads: open connections are counted in it until they close.
        self.limiter = ConnectionLimiter(None, None)
        self.apply(config, router)

    def apply(self, config: ListenerConfig, router: Router) -> None:
        """A reload: new routes and settings for the next connections; open ones go on."""
        self.config = config
        self.name = config.name
        self.router = SniRouter(config.effective_routes(), [r.pool for r in router.routes])
        self.draining = False
        limits = config.limits
        self.ips = IpList.build(limits.allow, limits.deny)
        self.limiter.configure(limits.max_connections, limits.connections_per_ip, self.workers)

    def drain(self) -> None:
        """Relayed connections are not cut on drain: they end on their own, or at the stop
        timeout (as HAProxy's hard-stop-after)."""
        self.draining = True

    def bind(self, reuse_port: bool) -> Acceptor:
        bind = self.config.bind
        sock = listening_socket(bind.host, bind.port, reuse_port=reuse_port)
        return Acceptor(sock, self.accept)

    def accept(self, sock: socket.socket, address: Any) -> None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        session = TcpSession(self, sock, _address(address))
        self.connections.add(session)
        session.task = asyncio.get_running_loop().create_task(session.run())


class TcpSession:
    """One client connection, from accept to close."""

    __slots__ = (
        "backend",
        "backend_sock",
        "client",
        "connect_time",
        "counted_ip",
        "ended",
        "listener",
        "local",
        "pool",
        "record",
        "relay",
        "sock",
        "started",
        "task",
    )

    def __init__(self, listener: TcpListener, sock: socket.socket, client: Address) -> None:
        self.listener = listener
        self.sock = sock
        self.client = client
        self.local = _address(sock.getsockname())
        self.pool: Pool | None = None
        self.backend: Backend | None = None
        self.backend_sock: socket.socket | None = None
        self.relay: StreamRelay | SpliceRelay | None = None
        self.task: asyncio.Task[None] | None = None
        self.started = listener.clock.now()
        self.connect_time = 0.0
        self.counted_ip: str | None = None  # counted in the listener's connection limits
        self.ended = False
        self.record = ConnectionRecord(_label(client), listener.name, listener.config.protocol)

    async def run(self) -> None:
        try:
            await self._run()
        except asyncio.CancelledError:
            self.end(ABORTED)
        except Exception:
            log.exception("listener %s: connection from %s", self.listener.name, self.record.client)
            self.end("error")

    async def _run(self) -> None:
        listener = self.listener
        config = listener.config
        loop = asyncio.get_running_loop()
        first = b""
        try:
            async with asyncio.timeout(config.timeouts.header):
                if config.accept_proxy_protocol:
                    header = await read_proxy_header(loop, self.sock)
                    if header.source is not None and header.destination is not None:
                        self.client, self.local = header.source, header.destination
                        self.record.client = _label(self.client)
                if config.protocol == "tls_passthrough":
                    first = await self._read_hello(loop)
                    if self.ended:
                        return
        except TimeoutError:
            self._refuse("first_flight_timeout", "no complete first flight in time")
            return
        except ProxyProtocolError as exc:
            self._refuse("bad_proxy_header", f"invalid PROXY header: {exc}")
            return
        except OSError:
            self.end("client_closed")
            return
        if not self._admit():
            return
        pool = listener.router.route(self.record.sni)
        if pool is None:
            self._refuse("no_route", f"no route for server name {self.record.sni!r}")
            return
        self.pool = pool
        self.record.pool = pool.name
        await self._connect(loop, pool, first)

    async def _read_hello(self, loop: asyncio.AbstractEventLoop) -> bytes:
        reader = ClientHelloReader()
        while True:
            data = await loop.sock_recv(self.sock, _HELLO_READ)
            if not data:
                self.end("client_closed")
                return b""
            result = reader.feed(data)
            if isinstance(result, Hello):
                self.record.sni = result.server_name
                return reader.buffered
            if isinstance(result, NotTls | Malformed):
                kind = "not_tls" if isinstance(result, NotTls) else "bad_client_hello"
                self._refuse(kind, result.reason)
                return b""

    async def _connect(self, loop: asyncio.AbstractEventLoop, pool: Pool, first: bytes) -> None:
        listener = self.listener
        config = pool.config
        client_ip = self.client[0]
        key = client_ip.encode() if config.algorithm == "consistent_hash" else None
        selection = Selection(client_ip, pool.clock.now(), key)
        attempts = Attempts(pool, selection, listener.metrics)
        error = ""
        while (backend := attempts.next([])) is not None:
            try:
                async with asyncio.timeout(config.timeouts.connect):
                    relay = await self._open(loop, pool, backend)
            except (OSError, TimeoutError) as exc:
                reason = attempts.out_of_resources(exc, f"listener {listener.name}")
                if reason is not None:
                    # No socket or pipe for us: not the backend's fault, nor would another
                    # backend fare better.
                    listener.metrics.rejected(listener.name, reason)
                    self.end(reason)
                    return
                error = str(exc) or "connect timed out"
                # Nothing reached the backend yet: another one may always be tried.
                attempts.failed(ConnectError(error), detail=f"connect: {error}")
                continue
            self.connect_time = attempts.elapsed()
            listener.metrics.connect(pool.name, backend.label, self.connect_time)
            pool.chosen(selection, [], backend)
            self.backend = backend
            self.record.backend = backend.label
            self.relay = relay
            await self._start(loop, relay, first)
            return
        if selection.tried:
            log.warning(
                "listener %s: no backend of pool %s could be reached from %s (last: %s)",
                listener.name,
                pool.name,
                self.record.client,
                error,
            )
            self.end("connect_failed")
        else:
            listener.metrics.rejected(listener.name, "no_backend")  # as HTTP's 503
            self.end("no_backend")

    async def _open(
        self, loop: asyncio.AbstractEventLoop, pool: Pool, backend: Backend
    ) -> StreamRelay | SpliceRelay:
        """Connect to `backend`, send the PROXY header, do TLS: everything that failing
        allows a retry on the next backend."""
        config = pool.config
        sock = await connect(loop, backend.host, backend.port)
        try:
            if config.send_proxy_protocol is not None:
                await loop.sock_sendall(
                    sock, encode(config.send_proxy_protocol, self.client, self.local)
                )
            idle = config.timeouts.tunnel
            if self.listener.config.zero_copy:
                self.backend_sock = sock
                return SpliceRelay(loop, self.sock, sock, idle, self._moved, self.end)
            # What is left for a side once the other has gone may take one send timeout.
            relay = StreamRelay(loop, idle, self._moved, self.end, config.timeouts.send)
            tls = config.tls
            await loop.create_connection(
                relay.backend_side,
                sock=sock,
                ssl=pool.upstream_tls.get(),
                server_hostname=(
                    upstream_server_name(tls, backend.host) if tls is not None else None
                ),
            )
        except BaseException:
            sock.close()
            raise
        return relay

    async def _start(
        self, loop: asyncio.AbstractEventLoop, relay: StreamRelay | SpliceRelay, first: bytes
    ) -> None:
        if isinstance(relay, SpliceRelay):
            if first:
                try:
                    await loop.sock_sendall(relay.backend, first)
                except OSError:
                    relay.fail(False)
                    return
            relay.start()
            return
        try:
            await loop.connect_accepted_socket(relay.client_side, self.sock)
        except OSError:
            # end() leaves the client socket to the relay, which never got it.
            self.sock.close()
            relay.abort()
            return
        relay.start(first)

    def _moved(self, from_client: bool, n: int) -> None:
        record = self.record
        if from_client:
            record.bytes_in += n
            self.listener.metrics.bytes(self.listener.name, "in", n)
        else:
            record.bytes_out += n
            self.listener.metrics.bytes(self.listener.name, "out", n)

    def _admit(self) -> bool:
        """IP lists and connection limits, on the client address after any PROXY header:
        a refused connection is closed at once, with a log line."""
        listener = self.listener
        ip = self.client[0]
        if listener.ips is not None and not listener.ips.permits(ip):
            self._refuse("ip_denied", "address not allowed")
            return False
        if listener.limiter.active:
            why = listener.limiter.admit(ip)
            if why is not None:
                self._refuse(why, why.replace("_", " ") + " reached")
                return False
            self.counted_ip = ip
        return True

    def _refuse(self, result: str, reason: str) -> None:
        log.warning(
            "listener %s: closing connection from %s: %s",
            self.listener.name,
            self.record.client,
            reason,
        )
        self.listener.metrics.rejected(self.listener.name, result)
        self.end(result)

    def abort(self) -> None:
        if self.relay is not None:
            self.relay.abort()
        elif self.task is not None:
            self.task.cancel()

    def end(self, result: str) -> None:
        """The connection is over (once): close what is left, count, log."""
        if self.ended:
            return
        self.ended = True
        listener = self.listener
        if self.counted_ip is not None:
            listener.limiter.release(self.counted_ip)
            self.counted_ip = None
        if self.relay is None:
            self.sock.close()
            if self.backend_sock is not None:
                self.backend_sock.close()
        backend = self.backend
        pool = self.pool
        if backend is not None and pool is not None:
            # The connection's latency sample is its connect time: all L4 can measure.
            pool.on_finish(backend, self.connect_time, True)
        record = self.record
        record.result = result
        record.duration = self.listener.clock.now() - self.started
        listener.metrics.connection(listener.name, record.pool, record.backend, result)
        listener.connections.discard(self)
        listener.access_log.write(record)


def _label(address: Address) -> str:
    host, port = address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
