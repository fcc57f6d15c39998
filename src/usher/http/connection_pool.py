"""The keep-alive pool of one backend: its idle connections, its connects, and their settings.

A `ConnectionPool` belongs to one `Backend` (as `backend.connections`). It is made with the
defaults and takes its pool's settings (`configure`, at start and on each reload, in one call):
the idle timeout and `max_idle_connections`, the connect and send timeouts, the TLS settings
and context, and the PROXY header version. A connection an exchange is done with comes back
through `release` and is parked on the idle list (most recent last) until `timeouts.idle`
expires it; one that began with one client's PROXY header can serve that client only, so it is
parked on the client's own list instead (not counted in `max_idle_connections`).

Connections remember the generation they were opened in: a reload that changes how
connections are made (TLS, PROXY header) calls `renew`, and the older ones are not reused.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable
from typing import TYPE_CHECKING, Literal

from usher.clock import MonotonicClock
from usher.config import (
    DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_MAX_IDLE_CONNECTIONS,
    DEFAULT_SEND_TIMEOUT,
    DEFAULT_UPSTREAM_IDLE_TIMEOUT,
)
from usher.errors import ConnectError
from usher.http.upstream import Owner, UpstreamConnection
from usher.net import open_connection
from usher.pool import connections as backend_connections
from usher.tls import upstream_server_name

if TYPE_CHECKING:
    from usher.clock import Clock
    from usher.config import PoolConfig, UpstreamTls
    from usher.pool import Backend

Connected = Callable[[UpstreamConnection | None, Exception | None], None]


def _no_tls_context() -> ssl.SSLContext | None:
    return None


class ConnectionPool:
    """One backend's upstream connections: idle ones for reuse, the count of open and
    connecting ones, and the settings new ones are made with."""

    __slots__ = (
        "backend",
        "clock",
        "connect_timeout",
        "connecting",
        "generation",
        "idle",
        "idle_timeout",
        "live",
        "max_idle",
        "send_proxy_protocol",
        "send_timeout",
        "tls",
        "tls_context",
    )

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        # Idle shared connections, most recently used last.
        self.idle: list[UpstreamConnection] = []
        self.generation = 0  # see renew
        self.live = 0  # connections open now, in use or idle
        self.connecting = 0  # connects under way
        self.max_idle = DEFAULT_MAX_IDLE_CONNECTIONS
        self.idle_timeout = DEFAULT_UPSTREAM_IDLE_TIMEOUT
        self.connect_timeout = DEFAULT_CONNECT_TIMEOUT
        self.send_timeout = DEFAULT_SEND_TIMEOUT
        self.tls: UpstreamTls | None = None
        self.send_proxy_protocol: Literal["v1", "v2"] | None = None
        # The pool's context for `tls` (Pool.tls_context: built once per pool, on first use).
        self.tls_context: Callable[[], ssl.SSLContext | None] = _no_tls_context
        # The pool's (the balancer's) clock, which parked connections expire on.
        self.clock: Clock = MonotonicClock()

    def configure(
        self,
        config: PoolConfig,
        tls_context: Callable[[], ssl.SSLContext | None],
        clock: Clock,
    ) -> None:
        """Take the pool's settings (at start and on a reload). Connections already made keep
        theirs until `renew` says they must not be reused."""
        self.max_idle = config.max_idle_connections
        self.idle_timeout = config.timeouts.idle
        self.connect_timeout = config.timeouts.connect
        self.send_timeout = config.timeouts.send
        self.tls = config.tls
        self.send_proxy_protocol = config.send_proxy_protocol
        self.tls_context = tls_context
        self.clock = clock

    @property
    def active(self) -> int:
        """Open connections not on the shared idle list: in use, or parked for their client."""
        return self.live - len(self.idle)

    # Reuse

    def take(self, owner: Owner | None = None) -> UpstreamConnection | None:
        """The most recently parked live connection that belongs to `owner` (None: the shared
        ones), if any."""
        if owner is None:
            idle = self.idle
        elif owner.owned is None:
            return None
        else:
            idle = owner.owned  # the client's list: connections to any of its backends
        generation = self.generation
        backend = self.backend
        for index in range(len(idle) - 1, -1, -1):
            conn: UpstreamConnection = idle[index]
            if conn.closed or conn.transport is None or conn.transport.is_closing():
                del idle[index]
            elif conn.generation != generation:  # made with settings a reload changed
                del idle[index]
                conn.close()
            elif conn.backend is backend:
                del idle[index]
                conn.unpark()
                return conn
        return None

    def release(self, conn: UpstreamConnection, loop: asyncio.AbstractEventLoop) -> None:
        """Give a connection back after a complete exchange: park it if it can be reused."""
        conn.user = None
        owner = conn.owner
        if (
            conn.closed
            or not conn.reader.reusable
            or conn.generation != self.generation
            or (owner is None and len(self.idle) >= self.max_idle)
            or (owner is not None and owner.closed)
        ):
            conn.close()
        else:
            self.park(conn, loop)

    def park(self, conn: UpstreamConnection, loop: asyncio.AbstractEventLoop) -> None:
        """Keep `conn` for reuse: on the idle list, or its owner's, until `timeouts.idle`."""
        owner = conn.owner
        if owner is None:
            self.idle.append(conn)
        elif owner.owned is None:
            owner.owned = [conn]
        else:
            owner.owned.append(conn)
        conn.park(loop, self.idle_timeout)

    def opened(self, conn: UpstreamConnection) -> None:
        self.live += 1

    def lost(self, conn: UpstreamConnection) -> None:
        """`conn` closed: it is neither open nor idle any more."""
        self.live -= 1
        idle = self.idle
        if conn in idle:
            idle.remove(conn)

    def close_idle(self) -> None:
        idle = self.idle
        while idle:
            idle.pop().close()

    def renew(self) -> None:
        """Connections opened so far must not carry another request (their settings changed)."""
        self.generation += 1
        self.close_idle()

    # Connecting

    def connect(
        self,
        loop: asyncio.AbstractEventLoop,
        done: Connected,
        *,
        preamble: bytes | None = None,
        owner: Owner | None = None,
    ) -> PendingConnect:
        """Start a new connection; `done` gets it, or the ConnectError. The PROXY header
        (`preamble`) goes first, in the clear, before any TLS."""
        return PendingConnect(self, loop, done, self.tls_context(), preamble, owner)

    async def _open(
        self,
        loop: asyncio.AbstractEventLoop,
        context: ssl.SSLContext | None,
        preamble: bytes | None,
        owner: Owner | None,
    ) -> tuple[asyncio.BaseTransport, UpstreamConnection]:
        backend = self.backend
        generation = self.generation  # the settings this connection is made with
        send_timeout = self.send_timeout

        def protocol() -> UpstreamConnection:
            conn = UpstreamConnection(backend)
            conn.send_timeout = send_timeout
            conn.owner = owner
            conn.generation = generation
            return conn

        tls = self.tls
        server_name = upstream_server_name(tls, backend.host) if tls is not None else None
        return await open_connection(
            loop,
            protocol,
            backend.host,
            backend.port,
            tls=context,
            server_name=server_name,
            preamble=preamble,
        )

    def __repr__(self) -> str:
        return (
            f"<ConnectionPool {self.backend.label} [Connections: {self.active} active,"
            f" {len(self.idle)} idle, {self.connecting} connecting]>"
        )


class PendingConnect:
    """A connection attempt in progress; `cancel()` drops it (the client went away)."""

    __slots__ = ("_dropped", "_task", "_timer", "timed_out")

    def __init__(
        self,
        pool: ConnectionPool,
        loop: asyncio.AbstractEventLoop,
        done: Connected,
        context: ssl.SSLContext | None,
        preamble: bytes | None,
        owner: Owner | None,
    ) -> None:
        self.timed_out = False
        self._dropped = False
        label = pool.backend.label
        self._task = loop.create_task(pool._open(loop, context, preamble, owner))
        self._timer: asyncio.TimerHandle | None = loop.call_later(
            pool.connect_timeout, self._on_timeout
        )
        pool.connecting += 1

        def finished(task: asyncio.Task[tuple[asyncio.BaseTransport, UpstreamConnection]]) -> None:
            pool.connecting -= 1
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            if self._dropped:
                if not task.cancelled() and task.exception() is None:
                    task.result()[1].close()  # connected just as the client left
                return
            if task.cancelled():
                if self.timed_out:
                    done(None, ConnectError(f"connect to {label} timed out"))
                return
            exc = task.exception()
            if exc is not None:
                error = ConnectError(f"connect to {label} failed: {exc}")
                error.__cause__ = exc  # shortage.local_reason looks for our own EMFILE there
                done(None, error)
            else:
                done(task.result()[1], None)

        self._task.add_done_callback(finished)

    def _on_timeout(self) -> None:
        self._timer = None
        self.timed_out = True
        self._task.cancel()

    def cancel(self) -> None:
        self._dropped = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._task.cancel()


# Every backend built from now on keeps its connections in a ConnectionPool: the pool layer
# asks for them through usher.pool.connections, which does not import http.
backend_connections.install(ConnectionPool)
