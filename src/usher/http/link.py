"""One exchange's link to its backend: the connection (reused or opened, with the pool's PROXY
header and TLS), the request head and the body bytes held until it is there, flow control
both ways, and the deadlines on the backend (read, send, a tunnel's idle limit)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Final, Literal, cast

from usher.errors import UpstreamError, UpstreamTimeout
from usher.http.flow import BLOCK_BUFFERING, BLOCK_UPSTREAM_FULL
from usher.http.response import relay_response
from usher.pool.attempts import may_replay
from usher.proxy_protocol import encode as encode_proxy_header
from usher.timers import Deadline

if TYPE_CHECKING:
    from usher.http.codec import Event
    from usher.http.connection_pool import ConnectionPool, PendingConnect
    from usher.http.downstream import ClientConnection
    from usher.http.exchange import Exchange
    from usher.http.upstream import UpstreamConnection
    from usher.pool import Backend, Pool

# Body bytes held while the backend connection is being made; past this, stop reading.
BODY_BUFFER_LIMIT: Final = 64 * 1024


class UpstreamLink:
    """The backend side of one exchange, for the try under way."""

    __slots__ = (
        "_idle_for",
        "_send_wait",
        "body_buffer",
        "body_buffered",
        "body_started",
        "conn",
        "exchange",
        "head",
        "pending",
        "reused",
        "t_connect",
    )
    __deletable__ = ("exchange",)  # let go of at release (mypyc: may be deleted)

    def __init__(self, exchange: Exchange) -> None:
        self.exchange = exchange
        self.conn: UpstreamConnection | None = None
        self.pending: PendingConnect | None = None
        self.head = b""  # the request head as the backend gets it
        self.body_buffer: list[bytes] | None = []
        self.body_buffered = 0
        self.body_started = False  # some body bytes went to a backend: no more retries
        self.reused = False
        self.t_connect = 0.0
        # The limit on the backend's silence (read, or the tunnel's idle) runs on the
        # connection's own deadline; the send limit is made when first needed.
        self._idle_for = 0.0  # the limit the read deadline was armed with
        self._send_wait: Deadline | None = None

    # Getting a connection

    def open(self, backend: Backend) -> None:
        """Send the request to `backend`, on an idle connection when it has one."""
        # The http layer installed them (usher.pool.connections): a backend's are a ConnectionPool.
        connections = cast("ConnectionPool", backend.connections)
        # A connection that opened with one client's PROXY header serves that client only.
        owner = self.exchange.client if connections.send_proxy_protocol is not None else None
        conn = connections.take(owner)
        if conn is not None:
            self._attach(conn, reused=True)
        else:
            self.connect(backend)

    def connect(self, backend: Backend) -> None:
        client = self.exchange.client
        self.t_connect = client.listener.clock.now()
        connections = cast("ConnectionPool", backend.connections)
        version = connections.send_proxy_protocol
        preamble = proxy_preamble(client, version) if version is not None else None
        self.pending = connections.connect(
            client.loop,
            self._connected,
            preamble=preamble,
            owner=client if preamble is not None else None,
        )

    def _connected(self, conn: UpstreamConnection | None, exc: Exception | None) -> None:
        self.pending = None
        exchange = self.exchange
        if exchange.finished:
            if conn is not None:
                conn.close()
            return
        if conn is None:
            assert exc is not None
            exchange.attempt_failed(exc)
            return
        attempts = exchange.attempts
        if attempts is not None and attempts.backend is not None:
            exchange.client.listener.metrics.connect(
                attempts.pool.name,
                attempts.backend.label,
                exchange.client.listener.clock.now() - self.t_connect,
            )
        self._attach(conn, reused=False)

    def _attach(self, conn: UpstreamConnection, *, reused: bool) -> None:
        exchange = self.exchange
        client = exchange.client
        self.conn = conn
        self.reused = reused
        conn.user = self
        conn.used += 1
        conn.reader.expect(exchange.request.method)
        transport = conn.transport
        assert transport is not None
        buffered = self.body_buffer or ()
        if buffered:
            self.body_started = True
            transport.writelines([self.head, *buffered])
        else:
            transport.write(self.head)
        self.body_buffer = None
        self.body_buffered = 0
        client.unblock(BLOCK_BUFFERING)
        if conn.write_paused:  # a reused connection whose last request is still being sent
            self.upstream_pause_writing()
        if client.write_paused:
            # Not reading the backend is our doing: its read timeout starts on resume.
            transport.pause_reading()
        else:
            self.arm_read_timeout()

    # The request body

    def send_body(self, chunk: bytes) -> None:
        buffer = self.body_buffer
        if buffer is None:
            conn = self.conn
            if conn is not None:
                conn.write(chunk)
            return
        buffer.append(chunk)
        self.body_buffered += len(chunk)
        edge = self.exchange.edge
        if self.body_buffered > BODY_BUFFER_LIMIT and (
            edge is None or edge.inspect is None  # body rules need up to their limit
        ):
            self.exchange.client.block(BLOCK_BUFFERING)

    # Letting go of the connection

    def drop(self) -> None:
        """The rest of this answer is not wanted: the connection cannot be reused."""
        conn = self.conn
        if conn is not None:
            self.conn = None
            conn.user = None
            conn.close()

    def cut(self) -> None:
        """Reset the connection: the backend took too long."""
        conn = self.conn
        self.conn = None
        if conn is not None:
            conn.user = None
            conn.abort()

    def abort(self) -> None:
        """Stop connecting or close the connection, whatever the try had come to."""
        if self.pending is not None:
            self.pending.cancel()
            self.pending = None
        self.drop()
        self.cancel_timers()

    def release(self, pool: Pool | None, reusable: bool) -> None:
        """The exchange is over: the connection goes back to its backend's idle list when it
        can carry another request, else it closes."""
        self.cancel_timers()
        conn = self.conn
        if conn is not None:
            self.conn = None
            if conn.tunnel or not reusable or pool is None:
                conn.user = None
                conn.close()
            else:
                cast("ConnectionPool", conn.backend.connections).release(
                    conn, self.exchange.client.loop
                )
        if self.pending is not None:
            self.pending.cancel()
            self.pending = None
        # Nothing calls a released link: letting go of its exchange and of the timers (which
        # hold this link's methods) leaves no cycle, so refcounting frees the exchange at once.
        self._send_wait = None
        del self.exchange

    # Events from the backend (UpstreamUser)

    def upstream_events(self, events: list[Event]) -> None:
        exchange = self.exchange
        if not exchange.finished:
            relay_response(exchange, events)

    def upstream_failed(self, exc: Exception) -> None:
        """The backend spoke garbage; its connection is already closed."""
        exchange = self.exchange
        if exchange.finished:
            return
        self.conn = None
        if exchange.response_started:
            exchange.fail_midway()
        else:
            exchange.attempt_failed(exc)

    def upstream_lost(self, exc: Exception | None) -> None:
        """The backend connection closed while this exchange was using it."""
        exchange = self.exchange
        if exchange.finished:
            return
        conn = self.conn
        self.conn = None
        if conn is not None and conn.tunnel:
            exchange.client.close()
            exchange.finish(True, close=True)
            return
        if exchange.response_started:
            exchange.fail_midway()
            return
        request, attempts = exchange.request, exchange.attempts
        if (
            self.reused
            and not self.body_started
            and may_replay(request.method, request.has_body)
            and attempts is not None
            and attempts.backend is not None
        ):
            # A kept-alive connection the backend had closed just as we reused it: not the
            # backend's fault. Try again on a fresh connection to the same backend.
            self.reused = False
            self.cancel_timers()
            self.connect(attempts.backend)
            return
        exchange.attempt_failed(UpstreamError("the backend closed the connection before answering"))

    def tunnel_data(self, data: bytes) -> None:
        self.exchange.client.write(data)
        self.touch()

    def tunnel_eof(self) -> None:
        self.exchange.tunnel().backend_eof()

    # Flow control

    def pause_reading(self) -> None:
        """The client stopped taking our writes: stop reading the backend."""
        conn = self.conn
        if conn is not None and conn.transport is not None:
            conn.transport.pause_reading()
            self.cancel_read_timeout()  # the backend is not slow: we stopped reading it

    def resume_reading(self, *, answered: bool) -> None:
        conn = self.conn
        if conn is not None and conn.transport is not None and not conn.closed:
            conn.transport.resume_reading()
            if not answered:
                self.arm_read_timeout()

    def upstream_pause_writing(self) -> None:
        """The backend is not taking the body as fast as the client sends it."""
        exchange = self.exchange
        exchange.client.block(BLOCK_UPSTREAM_FULL)
        if exchange.pool is not None:
            wait = self._send_wait
            if wait is None:
                wait = self._send_wait = exchange.client.deadline(self._timed_out)
            if not wait.armed:
                wait.arm(exchange.pool.config.timeouts.send)

    def upstream_resume_writing(self) -> None:
        if self._send_wait is not None:
            self._send_wait.cancel()
        self.exchange.client.unblock(BLOCK_UPSTREAM_FULL)

    # Deadlines

    def arm_read_timeout(self) -> None:
        """The backend has its read limit (a tunnel: its idle limit) from now to send."""
        conn = self.conn
        if conn is None:
            return
        exchange = self.exchange
        pool = exchange.pool
        assert pool is not None
        timeouts = pool.config.timeouts
        client = exchange.client
        self._idle_for = timeouts.tunnel if client.tunnel is not None else timeouts.read
        conn.expect_within(client.loop, self._idle_for)

    def touch(self) -> None:
        """Bytes moved (through the tunnel, or from the backend): it is not idle."""
        conn = self.conn
        if conn is not None:
            conn.still_within(self._idle_for)

    def upstream_quiet(self) -> None:
        """The backend said nothing for the limit armed by `arm_read_timeout`."""
        exchange = self.exchange
        if exchange.finished or exchange.pool is None:
            return
        if not (exchange.request_done or exchange.response_started):
            # While the client is still sending the body, a quiet backend is waiting for it:
            # the client's body timeout applies, not the backend's read timeout.
            self.arm_read_timeout()
            return
        if exchange.client.tunnel is not None:
            exchange.tunnel().end()  # an idle tunnel ends quietly, like a closed one
            return
        self._timed_out()

    def _timed_out(self) -> None:
        self.cut()
        exchange = self.exchange
        if exchange.response_started:
            exchange.fail_midway()
        else:
            exchange.attempt_failed(UpstreamTimeout("the backend did not answer in time"))

    def cancel_read_timeout(self) -> None:
        conn = self.conn
        if conn is not None:
            conn.stop_expecting()

    def cancel_timers(self) -> None:
        self.cancel_read_timeout()
        if self._send_wait is not None:
            self._send_wait.cancel()


def proxy_preamble(client: ClientConnection, version: Literal["v1", "v2"]) -> bytes:
    """The PROXY header that tells a backend the client's address and ours."""
    source = (client.client_ip.decode(), client.client_port)
    if client.local is None:  # looked up only for pools that send PROXY headers
        local = client.transport.get_extra_info("sockname")
        if isinstance(local, tuple):
            client.local = (str(local[0]), int(local[1]))
    return encode_proxy_header(version, source, client.local)
