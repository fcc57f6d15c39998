"""Connections to backends: the upstream Protocol, and the keep-alive pool kept on each backend.

An `UpstreamConnection` moves bytes between a backend socket and its current user (the
exchange that borrowed it); it parses responses with the sans-IO `ResponseReader`. When an
exchange is done with a connection that can carry another request, it goes back on its
backend's idle list (most recent last) until `timeouts.idle` expires it. A connection that
began with one client's PROXY header can serve that client only: it is parked on the client's
own list instead (not counted in `max_idle_connections`), and closed when the client leaves.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from usher.config import DEFAULT_SEND_TIMEOUT
from usher.errors import ConnectError, UpstreamProtocolError
from usher.http.codec import Event, ResponseReader
from usher.http.tunnel import keeps_half_open
from usher.l4.accept import close_within
from usher.net import open_connection
from usher.timers import Deadline
from usher.tls import upstream_server_name

if TYPE_CHECKING:
    from usher.config import UpstreamTls
    from usher.pool import Backend


class Owner(Protocol):
    """A client whose PROXY header opened connections that serve it alone."""

    owned: list[UpstreamConnection] | None
    closed: bool  # the client has gone


class UpstreamUser(Protocol):
    """What an upstream connection reports to the exchange using it."""

    def upstream_events(self, events: list[Event]) -> None: ...
    def upstream_failed(self, exc: Exception) -> None: ...
    def upstream_lost(self, exc: Exception | None) -> None: ...
    def upstream_pause_writing(self) -> None: ...
    def upstream_resume_writing(self) -> None: ...
    def tunnel_data(self, data: bytes) -> None: ...
    def tunnel_eof(self) -> None: ...


class UpstreamConnection(asyncio.Protocol):
    __slots__ = (
        "_closing",
        "_idle",
        "backend",
        "closed",
        "generation",
        "owner",
        "reader",
        "send_timeout",
        "transport",
        "tunnel",
        "used",
        "user",
        "write_paused",
    )

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self.transport: asyncio.Transport | None = None
        self.reader = ResponseReader()
        self.user: UpstreamUser | None = None
        self.tunnel = False
        self.closed = False
        self.generation = backend.generation  # see Backend.renew_connections
        self.used = 0  # requests carried so far
        self.write_paused = False  # our send buffer is over its high-water mark
        # The pool's timeouts.send (set by _open): the most a close waits for its buffer to go.
        self.send_timeout = DEFAULT_SEND_TIMEOUT
        # The client connection whose PROXY header opened this one: reused for it alone.
        self.owner: Owner | None = None
        self._idle: Deadline | None = None  # when a parked connection expires, once parked
        self._closing: asyncio.TimerHandle | None = None  # a reset if the close takes too long

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is not a subclass
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        user = self.user
        if user is None:
            # An idle connection that speaks is closing or confused: it is no use for reuse.
            self.close()
            return
        if self.tunnel:
            user.tunnel_data(data)
            return
        try:
            events = self.reader.feed(data)
        except UpstreamProtocolError as exc:
            self.close()
            user.upstream_failed(exc)
            return
        if events:
            user.upstream_events(events)

    def eof_received(self) -> bool | None:
        user = self.user
        if user is not None and self.tunnel:
            user.tunnel_eof()
            # Keep our half open, the client may still be sending (not possible over TLS).
            return self.transport is not None and keeps_half_open(self.transport)
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._cancel_timers()
        idle = self.backend.idle
        if self in idle:
            idle.remove(self)
        user = self.user
        if user is None:
            return
        if not self.tunnel and self.reader.close_delimited:
            # The end of the connection is the end of this body: the response is complete.
            user.upstream_events(self.reader.eof())
        if self.user is not None:
            self.user = None
            user.upstream_lost(exc)

    def pause_writing(self) -> None:
        self.write_paused = True
        if self.user is not None:
            self.user.upstream_pause_writing()

    def resume_writing(self) -> None:
        self.write_paused = False
        if self.user is not None:
            self.user.upstream_resume_writing()

    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.closed:
            self.transport.write(data)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._cancel_timers()
            if self.transport is not None:
                loop = asyncio.get_running_loop()
                self._closing = close_within(loop, self.transport, self.send_timeout)

    def abort(self) -> None:
        self.closed = True
        self._cancel_timers()
        if self.transport is not None:
            self.transport.abort()

    def _cancel_timers(self) -> None:
        if self._idle is not None:
            self._idle.cancel()
        if self._closing is not None:
            self._closing.cancel()
            self._closing = None

    def park(self, loop: asyncio.AbstractEventLoop, idle_timeout: float) -> None:
        """Put this connection on its backend's idle list until it is reused or expires."""
        self.user = None
        transport = self.transport
        if transport is not None and not transport.is_reading():
            # Reading stopped for a client that read slowly; an idle connection must read,
            # to see the backend close it, and the next user expects the answer to flow.
            transport.resume_reading()
        owner = self.owner
        if owner is None:
            self.backend.idle.append(self)
        elif owner.owned is None:
            owner.owned = [self]
        else:
            owner.owned.append(self)
        # The expiry timer is lazy (a Deadline): a busy connection is parked after every
        # answer, and a timer that fires early and re-arms once per timeout costs less than
        # one timer handle per request.
        idle = self._idle
        if idle is None:
            idle = self._idle = Deadline(loop, self._expired)
        idle.arm(idle_timeout)

    def unpark(self) -> None:
        if self._idle is not None:
            self._idle.disarm()  # the timer stays; it will find the connection busy

    def _expired(self) -> None:
        if not self.closed:
            self.close()


def take_idle(backend: Backend, owner: Owner | None = None) -> UpstreamConnection | None:
    """The most recently parked live connection to `backend` that belongs to `owner` (None:
    the shared ones), if any."""
    if owner is None:
        idle = backend.idle
    elif owner.owned is None:
        return None
    else:
        idle = owner.owned
    generation = backend.generation
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


def close_owned(owner: Owner) -> None:
    """The client has gone: the connections that could serve only it are of no more use."""
    owned, owner.owned = owner.owned, None
    for conn in owned or ():
        conn.close()


def release(
    conn: UpstreamConnection,
    loop: asyncio.AbstractEventLoop,
    *,
    max_idle: int,
    idle_timeout: float,
) -> None:
    """Give a connection back after a complete exchange: park it if it can be reused."""
    conn.user = None
    backend = conn.backend
    if (
        conn.closed
        or not conn.reader.reusable
        or conn.generation != backend.generation
        or (conn.owner is None and len(backend.idle) >= max_idle)
        or (conn.owner is not None and conn.owner.closed)
    ):
        conn.close()
    else:
        conn.park(loop, idle_timeout)


async def _open(
    loop: asyncio.AbstractEventLoop,
    backend: Backend,
    tls: UpstreamTls | None,
    context: ssl.SSLContext | None,
    preamble: bytes | None,
    owner: Owner | None,
    send_timeout: float,
) -> tuple[asyncio.BaseTransport, UpstreamConnection]:
    """Connect; a PROXY header (`preamble`) goes first, in the clear, before any TLS."""

    generation = backend.generation  # the settings this connection is made with

    def protocol() -> UpstreamConnection:
        conn = UpstreamConnection(backend)
        conn.send_timeout = send_timeout
        conn.owner = owner
        conn.generation = generation
        return conn

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


class PendingConnect:
    """A connection attempt in progress; `cancel()` drops it (the client went away)."""

    __slots__ = ("_dropped", "_task", "_timer", "timed_out")

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        backend: Backend,
        timeout: float,
        done: Callable[[UpstreamConnection | None, Exception | None], None],
        *,
        tls: UpstreamTls | None = None,
        context: ssl.SSLContext | None = None,
        preamble: bytes | None = None,
        owner: Owner | None = None,
        send_timeout: float,
    ) -> None:
        self.timed_out = False
        self._dropped = False
        self._task = loop.create_task(
            _open(loop, backend, tls, context, preamble, owner, send_timeout)
        )
        self._timer: asyncio.TimerHandle | None = loop.call_later(timeout, self._on_timeout)

        def finished(task: asyncio.Task[tuple[asyncio.BaseTransport, UpstreamConnection]]) -> None:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            if self._dropped:
                if not task.cancelled() and task.exception() is None:
                    task.result()[1].close()  # connected just as the client left
                return
            if task.cancelled():
                if self.timed_out:
                    done(None, ConnectError(f"connect to {backend.label} timed out"))
                return
            exc = task.exception()
            if exc is not None:
                error = ConnectError(f"connect to {backend.label} failed: {exc}")
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
