"""`udp` listeners: a session per client address, each with its own connected datagram socket
to one backend, so replies find their way back to the right client.

A session keeps its backend while that backend is ready (affinity); when it is not (unhealthy,
ejected, draining), the client's next datagram picks another. A session with no datagram
either way for the pool's `timeouts.idle` expires (decided on the injected clock, swept by a
loop timer). Beyond `max_sessions`, datagrams of new clients are dropped and counted.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections import deque
from typing import TYPE_CHECKING, Any, Final

from usher.acl import IpList
from usher.l4.accept import DatagramServer, listening_socket
from usher.limits import share
from usher.logs import AccessLog, ConnectionRecord
from usher.metrics import Metrics
from usher.pool import Backend, Pool, Selection
from usher.shortage import local_reason, report

if TYPE_CHECKING:
    from usher.clock import Clock
    from usher.config import Listener as ListenerConfig
    from usher.routing import Router

log = logging.getLogger("usher.l4")

# Datagrams of a new session held while its backend socket is being made; more are dropped.
PENDING_LIMIT: Final = 64
# The longest wait between two sweeps for expired sessions.
SWEEP_INTERVAL: Final = 1.0

Address = tuple[str, int]


class _Front(asyncio.DatagramProtocol):
    def __init__(self, listener: UdpListener) -> None:
        self.listener = listener

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.listener.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.listener.datagram(data, (str(addr[0]), int(addr[1])))

    def error_received(self, exc: Exception) -> None:
        pass  # an ICMP error about a reply to a client that went away: nothing to do


class UdpListener:
    """The runtime side of one `udp` listener."""

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
        self.workers = workers
        self.clock = clock
        self.access_log = access_log
        self.metrics = metrics or Metrics()
        self.sessions: dict[Address, UdpSession] = {}
        self.connections: set[UdpSession] = set()
        self.transport: asyncio.DatagramTransport | None = None
        self.draining = False
        self._sweeper: asyncio.TimerHandle | None = None
        self.apply(config, router)

    def apply(self, config: ListenerConfig, router: Router) -> None:
        self.config = config
        self.name = config.name
        self.pool: Pool | None = router.routes[0].pool if router.routes else None
        self.draining = False
        self.ips = IpList.build(config.limits.allow, config.limits.deny)
        # Each worker has its own sessions: it keeps its share, as max_connections does.
        self.max_sessions = share(config.max_sessions, self.workers)

    def drain(self) -> None:
        self.draining = True

    async def bind(self, reuse_port: bool) -> DatagramServer:
        bind = self.config.bind
        sock = listening_socket(bind.host, bind.port, kind=socket.SOCK_DGRAM, reuse_port=reuse_port)
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(lambda: _Front(self), sock=sock)
        self._arm_sweeper()
        return _UdpServer(transport, self)

    # Datagrams from clients

    def datagram(self, data: bytes, client: Address) -> None:
        now = self.clock.now()
        session = self.sessions.get(client)
        if session is not None and not session.backend.ready(now):
            session.close("backend_down")  # affinity ends with the backend: pick again
            session = None
        if session is None:
            session = self._open(client, now)
            if session is None:
                return
        session.send(data, now)

    def _open(self, client: Address, now: float) -> UdpSession | None:
        pool = self.pool
        if self.draining or pool is None:
            return None
        if self.ips is not None and not self.ips.permits(client[0]):
            self.metrics.rejected(self.name, "ip_denied")  # dropped: UDP has nothing to close
            return None
        if len(self.sessions) >= self.max_sessions:
            self.metrics.rejected(self.name, "max_sessions")
            return None
        key = client[0].encode() if pool.config.algorithm == "consistent_hash" else None
        selection = Selection(client[0], now, key)
        backend = pool.choose(selection, [])
        if backend is None:
            self.metrics.rejected(self.name, "no_backend")
            return None
        pool.chosen(selection, [], backend)
        session = UdpSession(self, client, pool, backend, now)
        self.sessions[client] = session
        self.connections.add(session)
        session.open()
        return session

    def reply(self, data: bytes, client: Address) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.sendto(data, client)
            self.metrics.bytes(self.name, "out", len(data))

    # Expiry

    def sweep(self) -> int:
        """Close the sessions idle for longer than their pool's `timeouts.idle`; returns how
        many."""
        now = self.clock.now()
        expired = [s for s in self.sessions.values() if now - s.last >= s.idle]
        for session in expired:
            session.close("idle_timeout")
        return len(expired)

    def _arm_sweeper(self) -> None:
        interval = SWEEP_INTERVAL
        if self.pool is not None:
            interval = min(interval, self.pool.config.timeouts.idle / 2)
        loop = asyncio.get_running_loop()
        self._sweeper = loop.call_later(interval, self._sweep_tick)

    def _sweep_tick(self) -> None:
        self.sweep()
        self._arm_sweeper()

    def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        for session in list(self.sessions.values()):
            session.close("aborted")


class _UdpServer(DatagramServer):
    def __init__(self, transport: asyncio.DatagramTransport, listener: UdpListener) -> None:
        super().__init__(transport)
        self.listener = listener

    def close(self) -> None:
        self.listener.close()
        super().close()


class UdpSession(asyncio.DatagramProtocol):
    """One client's session: its backend socket, queue and counters."""

    def __init__(
        self, listener: UdpListener, client: Address, pool: Pool, backend: Backend, now: float
    ) -> None:
        self.listener = listener
        self.client = client
        self.pool = pool
        self.backend = backend
        self.idle = pool.config.timeouts.idle
        self.last = now
        self.started = time.perf_counter()
        self.transport: asyncio.DatagramTransport | None = None
        self.pending: deque[bytes] = deque()
        self.closed = False
        self.record = ConnectionRecord(f"{client[0]}:{client[1]}", listener.name, "udp")
        self.record.pool = pool.name
        self.record.backend = backend.label
        self._task: asyncio.Task[Any] | None = None

    def open(self) -> None:
        self.pool.on_start(self.backend)
        loop = asyncio.get_running_loop()
        self._task = loop.create_task(
            loop.create_datagram_endpoint(
                lambda: self, remote_addr=(self.backend.host, self.backend.port)
            )
        )
        self._task.add_done_callback(self._opened)

    def _opened(self, task: asyncio.Task[Any]) -> None:
        self._task = None
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            self._failed(exc, "udp socket")

    def _failed(self, exc: BaseException, what: str) -> None:
        reason = local_reason(exc)
        if reason is None:
            self.close(
                "connect_failed" if what == "udp socket" else "backend_error", f"{what}: {exc}"
            )
            return
        # Our own shortage, not the backend's fault: refused, and no failure counted.
        listener = self.listener
        report(f"listener {listener.name}", reason, exc)
        listener.metrics.rejected(listener.name, reason)
        self.close(reason, local=True)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        datagrams: asyncio.DatagramTransport = transport  # type: ignore[assignment]
        self.transport = datagrams
        if self.closed:
            transport.close()
            return
        while self.pending:
            datagrams.sendto(self.pending.popleft())

    def send(self, data: bytes, now: float) -> None:
        self.last = now
        self.record.bytes_in += len(data)
        self.listener.metrics.bytes(self.listener.name, "in", len(data))
        if self.transport is not None:
            self.transport.sendto(data)
        elif len(self.pending) < PENDING_LIMIT:
            self.pending.append(data)

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.last = self.listener.clock.now()
        self.record.bytes_out += len(data)
        self.listener.reply(data, self.client)

    def error_received(self, exc: Exception) -> None:
        # ICMP port unreachable: nothing listens there. A failure on real traffic, as a
        # refused TCP connect is; the client's next datagram picks again. (ENOBUFS is ours.)
        self._failed(exc, "udp")

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None

    def abort(self) -> None:
        self.close("aborted")

    def close(self, result: str, detail: str = "", *, local: bool = False) -> None:
        """End the session; `detail` says what the backend did wrong (a failure), `local` that
        it ended for a reason of our own that says nothing of the backend."""
        if self.closed:
            return
        self.closed = True
        listener = self.listener
        if listener.sessions.get(self.client) is self:
            del listener.sessions[self.client]
        listener.connections.discard(self)
        if self._task is not None:
            self._task.cancel()
        if self.transport is not None:
            self.transport.close()
        if local:
            self.pool.on_abandon(self.backend)
        else:
            self.pool.on_finish(self.backend, 0.0, not detail, detail)
        record = self.record
        record.result = result
        record.duration = time.perf_counter() - self.started
        listener.metrics.connection(listener.name, record.pool, record.backend, result)
        listener.access_log.write(record)
