"""Connections to backends: the upstream Protocol.

An `UpstreamConnection` moves bytes between a backend socket and its current user (the
exchange that borrowed it); it parses responses with the sans-IO `ResponseReader`. Its
backend's keep-alive pool (`http.connection_pool.ConnectionPool`) parks it between exchanges.
A connection that began with one client's PROXY header can serve that client only: it is
parked on the client's own list, and closed when the client leaves (`close_owned`).
"""

from __future__ import annotations

import asyncio
import socket
from typing import TYPE_CHECKING, Protocol, cast

from usher.config import DEFAULT_SEND_TIMEOUT
from usher.errors import UpstreamProtocolError
from usher.http.codec import Event, ResponseReader
from usher.http.tunnel import keeps_half_open
from usher.l4.accept import close_within
from usher.timers import Deadline, wakeups_for

if TYPE_CHECKING:
    from usher.http.connection_pool import ConnectionPool
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
    def upstream_quiet(self) -> None: ...
    def upstream_pause_writing(self) -> None: ...
    def upstream_resume_writing(self) -> None: ...
    def tunnel_data(self, data: bytes) -> None: ...
    def tunnel_eof(self) -> None: ...


class UpstreamConnection(asyncio.Protocol):
    __slots__ = (
        "_closing",
        "_wait",
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
        self.generation = backend.connections.generation  # see ConnectionPool.renew
        self.used = 0  # requests carried so far
        self.write_paused = False  # our send buffer is over its high-water mark
        # The pool's timeouts.send (set by ConnectionPool._open): the most a close waits for
        # its buffer to go.
        self.send_timeout = DEFAULT_SEND_TIMEOUT
        # The client connection whose PROXY header opened this one: reused for it alone.
        self.owner: Owner | None = None
        # Its one deadline, on the pool's clock, made when first needed: in use, the user's
        # limit on the backend's silence (read, or a tunnel's idle); parked, when it expires.
        # One timer for both, so that a connection moving between the two (every request
        # on a kept-alive connection) re-arms a pending timer rather than make a new one.
        self._wait: Deadline | None = None
        self._closing: asyncio.TimerHandle | None = None  # a reset if the close takes too long

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is not a subclass
        cast("ConnectionPool", self.backend.connections).opened(self)
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
        cast("ConnectionPool", self.backend.connections).lost(self)
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
        if self._wait is not None:
            self._wait.cancel()
        if self._closing is not None:
            self._closing.cancel()
            self._closing = None

    def park(self, loop: asyncio.AbstractEventLoop, idle_timeout: float) -> None:
        """Wait, reading, for reuse (the pool has put it on an idle list); close after
        `idle_timeout`."""
        self.user = None
        transport = self.transport
        if transport is not None and not transport.is_reading():
            # Reading stopped for a client that read slowly; an idle connection must read,
            # to see the backend close it, and the next user expects the answer to flow.
            transport.resume_reading()
        # The expiry timer is lazy (a Deadline): a busy connection is parked after every
        # answer, and a timer that fires early and re-arms once per timeout costs less than
        # one timer handle per request.
        self._deadline(loop).arm(idle_timeout)

    def unpark(self) -> None:
        if self._wait is not None:
            self._wait.disarm()  # the timer stays; it will find the connection busy

    def expect_within(self, loop: asyncio.AbstractEventLoop, limit: float) -> None:
        """In use: the backend has `limit` seconds from now to send (else `upstream_quiet`)."""
        self._deadline(loop).arm(limit)

    def still_within(self, limit: float) -> None:
        """Bytes moved: a pending `expect_within` counts its `limit` from now."""
        wait = self._wait
        if wait is not None and wait.armed:
            wait.arm(limit)

    def stop_expecting(self) -> None:
        """No limit on the backend's silence for now (the timer stays for the next arming)."""
        if self._wait is not None:
            self._wait.disarm()

    def _deadline(self, loop: asyncio.AbstractEventLoop) -> Deadline:
        wait = self._wait
        if wait is None:
            clock = cast("ConnectionPool", self.backend.connections).clock
            wait = self._wait = Deadline(clock, wakeups_for(clock, loop), self._expired)
        return wait

    def _expired(self) -> None:
        if self.closed:
            return
        user = self.user
        if user is None:
            self.close()  # parked for its idle timeout
        else:
            user.upstream_quiet()


def close_owned(owner: Owner) -> None:
    """The client has gone: the connections that could serve only it are of no more use."""
    owned, owner.owned = owner.owned, None
    for conn in owned or ():
        conn.close()
