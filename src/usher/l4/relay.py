"""Relaying a TCP connection both ways through asyncio transports (the portable path).

Back-pressure: when one side's write buffer passes its high-water mark (`pause_writing`), the
other side stops reading until it drains. Half-close passes through: an EOF from one side
becomes a `write_eof` on the other, and the connection closes once both directions are done.
No traffic either way for `idle` seconds aborts both (a graceful close would wait for a peer
that does not read). Once one side is gone, what is buffered for the other gets `linger`
seconds to drain before that side is aborted too, so a peer that never reads cannot hold the
connection, its sockets and its backend count for ever.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Final

# How the relay ended (the log's result and usher_connections_total{result}).
OK: Final = "ok"
IDLE: Final = "idle_timeout"
CLIENT_RESET: Final = "client_reset"
BACKEND_RESET: Final = "backend_reset"
ABORTED: Final = "aborted"

# How long bytes still buffered for a side may take to drain once the connection is closing.
DEFAULT_LINGER: Final = 5.0


class _Side(asyncio.Protocol):
    """One end of the relay: what it reads goes to the other end's transport."""

    __slots__ = ("closed", "eof", "is_client", "peer", "pending", "relay", "transport")

    def __init__(self, relay: StreamRelay, is_client: bool) -> None:
        self.relay = relay
        self.is_client = is_client
        self.peer: _Side | None = None
        self.transport: asyncio.Transport | None = None
        # Bytes read before the other side existed (a backend that speaks first).
        self.pending: list[bytes] = []
        self.eof = False
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        # The relay's `moved`, inlined: this runs for every chunk either way.
        relay = self.relay
        relay.last_activity = relay.loop.time()
        relay.on_bytes(self.is_client, len(data))
        peer = self.peer
        if peer is not None:
            transport = peer.transport
            if transport is not None:
                transport.write(data)
                return
        self.pending.append(data)
        _pause(self.transport)

    def eof_received(self) -> bool | None:
        self.eof = True
        self.relay.half_closed(self)
        # TLS cannot stay half open: returning False lets the transport close.
        return self.transport is not None and self.transport.get_extra_info("sslcontext") is None

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.relay.lost(self, exc)

    def pause_writing(self) -> None:
        if self.peer is not None:
            _pause(self.peer.transport)

    def resume_writing(self) -> None:
        if self.peer is not None:
            _resume(self.peer.transport)


def _pause(transport: asyncio.Transport | None) -> None:
    if transport is not None and not transport.is_closing():
        with contextlib.suppress(RuntimeError):
            transport.pause_reading()


def _resume(transport: asyncio.Transport | None) -> None:
    if transport is not None and not transport.is_closing():
        with contextlib.suppress(RuntimeError):
            transport.resume_reading()


class StreamRelay:
    """Both sides of one relayed connection. Make `backend_side()` the protocol of the backend
    connection, then `attach` the client transport; `on_done(result)` is called once, when both
    sides have closed."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        idle: float,
        on_bytes: Callable[[bool, int], None],
        on_done: Callable[[str], None],
        linger: float = DEFAULT_LINGER,
    ) -> None:
        self.loop = loop
        self.idle = idle
        self.linger = linger
        self.limit = idle  # how long without traffic ends the connection
        self.on_bytes = on_bytes
        self.on_done = on_done
        self.client = _Side(self, True)
        self.backend = _Side(self, False)
        self.client.peer = self.backend
        self.backend.peer = self.client
        self.result: str | None = None
        self.last_activity = loop.time()
        self._timer: asyncio.TimerHandle | None = None
        self._linger: asyncio.TimerHandle | None = None
        self._done = False

    def backend_side(self) -> _Side:
        return self.backend

    def client_side(self) -> _Side:
        return self.client

    def start(self, first: bytes) -> None:
        """Both transports exist: send the client's first bytes on, and any the backend sent
        already back, and start the idle timer."""
        backend, client = self.backend.transport, self.client.transport
        assert backend is not None and client is not None
        if first:
            backend.write(first)
        if self.backend.pending:
            # Resume first: writing may fill the client's buffer, and its pause_writing must win.
            _resume(backend)
            client.writelines(self.backend.pending)
            self.backend.pending.clear()
        if self.backend.closed:
            self.lost(self.backend, None)
        elif self.backend.eof:
            self.half_closed(self.backend)
        self._timer = self.loop.call_later(self.limit, self._check_idle)

    def moved(self, from_client: bool, n: int) -> None:
        self.last_activity = self.loop.time()
        self.on_bytes(from_client, n)

    def half_closed(self, side: _Side) -> None:
        peer = side.peer
        assert peer is not None
        transport = peer.transport
        if transport is None:
            return  # start() passes it on once the other side exists
        if side.eof and peer.eof:
            self._close_both(OK)
        elif transport.is_closing():
            pass
        elif transport.can_write_eof():
            transport.write_eof()
        elif self.limit > self.linger:
            # A TLS peer cannot be half-closed (its close_notify would end our reading too):
            # the EOF stays with us, and a peer that waits for it would wait for the whole
            # idle timeout. From now on `linger` without traffic ends the connection.
            self.limit = self.linger
            if self._timer is not None:
                self._timer.cancel()
                quiet = self.loop.time() - self.last_activity
                self._timer = self.loop.call_later(max(self.limit - quiet, 0.0), self._check_idle)

    def lost(self, side: _Side, exc: Exception | None) -> None:
        if exc is not None and self.result is None:
            self.result = CLIENT_RESET if side.is_client else BACKEND_RESET
        peer = side.peer
        assert peer is not None
        if peer.transport is not None and not peer.transport.is_closing():
            # What is still buffered for the peer is sent before it closes, if it reads.
            peer.transport.close()
            self._start_linger()
        if peer.closed or peer.transport is None:
            self._finish()

    def abort(self) -> None:
        """Cut both sides now (shutdown after the drain time)."""
        self.result = self.result or ABORTED
        for side in (self.client, self.backend):
            if side.transport is not None:
                side.transport.abort()
        if self.client.transport is None:
            self._finish()

    def _close_both(self, result: str) -> None:
        self.result = self.result or result
        for side in (self.client, self.backend):
            if side.transport is not None and not side.transport.is_closing():
                side.transport.close()
        self._start_linger()

    def _start_linger(self) -> None:
        if self._linger is None and not self._done:
            self._linger = self.loop.call_later(self.linger, self._linger_over)

    def _linger_over(self) -> None:
        """A side closed gracefully has not drained in time: its reader is not reading."""
        self._linger = None
        for side in (self.client, self.backend):
            if side.transport is not None and not side.closed:
                side.transport.abort()

    def _check_idle(self) -> None:
        self._timer = None
        quiet = self.loop.time() - self.last_activity
        if quiet >= self.limit:
            # abort, not close: close() would wait for a write buffer that a peer which
            # stopped reading never drains.
            self.result = self.result or IDLE
            for side in (self.client, self.backend):
                if side.transport is not None:
                    side.transport.abort()
        else:
            self._timer = self.loop.call_later(self.limit - quiet, self._check_idle)

    def _finish(self) -> None:
        if self._done:
            return
        self._done = True
        for timer in (self._timer, self._linger):
            if timer is not None:
                timer.cancel()
        self._timer = self._linger = None
        self.on_done(self.result or OK)
