"""The downstream Protocol: moves bytes between a client socket and the sans-IO
`RequestReader`, and runs the requests it yields one at a time, in order (pipelined ones wait
their turn); lingering close, the reasons to stop reading, the client's read and send timers."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING

from usher.errors import ClientError
from usher.http.answers import REJECTION_REASONS, error_answer, own_refusal
from usher.http.codec import EndOfMessage, Event, Headers, Request, RequestReader
from usher.http.exchange import Exchange
from usher.http.flow import BLOCK_BUFFERING, BLOCK_PIPELINE, BLOCK_UPGRADE, BLOCK_UPSTREAM_FULL
from usher.http.tunnel import keeps_half_open
from usher.http.upstream import close_owned
from usher.l4.accept import close_within, reset
from usher.logs import AccessRecord
from usher.timers import Deadline, wakeups_for
from usher.tls import client_subject

if TYPE_CHECKING:
    from usher.http.listener import HttpListener
    from usher.http.upstream import UpstreamConnection

# How long a connection closed mid-request keeps reading (and dropping) the client's bytes.
LINGER = 2.0


class ClientConnection(asyncio.Protocol):
    __slots__ = (
        "_blocks",
        "_closing",
        "_pumping",
        "_read_wait",
        "_send_wait",
        "between_requests",
        "cert_subject",
        "client_ip",
        "client_port",
        "closed",
        "edge_ip",
        "exchange",
        "inbox",
        "listener",
        "local",
        "loop",
        "owned",
        "peer",
        "reader",
        "refused",
        "served",
        "transport",
        "tunnel",
        "write_paused",
    )

    def __init__(
        self,
        listener: HttpListener,
        *,
        peer: tuple[str, int] | None = None,
        local: tuple[str, int] | None = None,
    ) -> None:
        self.listener = listener
        # The client's and our addresses as a PROXY header told them, when one did.
        self.peer = peer
        self.local = local
        self.cert_subject: bytes | None = None
        self.loop = asyncio.get_running_loop()
        self.reader = RequestReader(listener.limits, upgrade_filter=listener.forwarded_upgrade)
        self.transport: asyncio.Transport = None  # type: ignore[assignment]  # set on connect
        self.client_ip = b""
        self.client_port = 0
        # What the reader produced and no exchange has taken yet; a ClientError is a refusal.
        # None while empty, as it nearly always is between two reads: a deque is 760 bytes,
        # which an idle connection would carry for nothing.
        self.inbox: deque[Event | ClientError] | None = None
        self.exchange: Exchange | None = None
        self.tunnel: UpstreamConnection | None = None
        # Idle backend connections opened with this client's PROXY header (upstream.Owner).
        self.owned: list[UpstreamConnection] | None = None
        self.closed = False
        self.refused = False
        self.write_paused = False
        self.edge_ip: str | None = None  # counted in the listener's connection limits
        self.served = 0  # requests, counted when max_requests_per_connection is set
        self.between_requests = False  # kept alive after an answer, no byte of the next yet
        self._blocks = 0
        self._pumping = False
        # The client's wait for its next bytes (head, body, next request) and for taking ours,
        # on the balancer's clock; each made when first armed (most clients never stop reading).
        self._read_wait: Deadline | None = None
        self._send_wait: Deadline | None = None
        self._closing: asyncio.TimerHandle | None = None  # lingering or a reset at the end

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is not a subclass
        peer = self.peer or transport.get_extra_info("peername")
        if isinstance(peer, tuple):
            self.client_ip = peer[0].encode()
            self.client_port = peer[1]
        if self.listener.cert_header is not None:
            subject = client_subject(transport.get_extra_info("peercert"))
            self.cert_subject = subject.encode("utf-8") if subject is not None else None
        # No setsockopt(TCP_NODELAY) here: uvloop and asyncio set it on every TCP transport.
        listener = self.listener
        listener.connections.add(self)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            # Descriptors are numbered lowest-free first: this one's number is a count.
            fd = sock.fileno()
            if fd >= listener.fd_guard.ceiling:
                listener.fd_guard.refuse(self, fd)
                return
        guard = listener.guard
        if guard is not None and not guard.admit(self):
            return
        self.arm_read_timer(listener.timeouts.header)

    def data_received(self, data: bytes) -> None:
        self.listener.metrics.bytes(self.listener.name, "in", len(data))
        if self.tunnel is not None:
            self.tunnel.write(data)
            if self.exchange is not None:
                self.exchange.touch()
            return
        if self.refused:
            return  # the reader has failed; the refusal is queued and the connection will close
        exchange = self.exchange
        if self.reader.upgraded:
            if exchange is not None:
                exchange.tunnel().hold(data)
            return
        if exchange is None and self.reader.idle and not self.inbox:
            # The first bytes of a new request: the keep-alive wait becomes the header wait.
            self.arm_read_timer(self.listener.timeouts.header)
            self.between_requests = False
        try:
            events = self.reader.feed(data)
        except ClientError as exc:
            # The refusal takes its turn after whatever was parsed before the bad bytes.
            inbox = self.inbox
            if inbox is None:
                inbox = self.inbox = deque()
            inbox.extend(self.reader.parsed_before_error)
            inbox.append(exc)
            self.refused = True
            self._pump()
            return
        if events:
            inbox = self.inbox
            if inbox is None:
                inbox = self.inbox = deque(events)
            else:
                inbox.extend(events)
            if len(inbox) > self.listener.max_pipelined:
                self._cap_pipeline(inbox)
            self._pump()

    def _cap_pipeline(self, inbox: deque[Event | ClientError]) -> None:
        """Too many requests sent ahead of their answers: those past the cap are refused."""
        cap = self.listener.max_pipelined
        seen = 0 if self.exchange is None else 1
        for index, event in enumerate(inbox):
            if type(event) is Request:
                seen += 1
                if seen > cap:
                    kept = list(inbox)[:index]
                    inbox.clear()
                    inbox.extend(kept)
                    inbox.append(ClientError(429, "too many pipelined requests"))
                    self.refused = True
                    return

    def eof_received(self) -> bool | None:
        exchange = self.exchange
        if self.tunnel is not None and exchange is not None:
            exchange.tunnel().client_eof()
            return keeps_half_open(self.transport)
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.listener.connections.discard(self)
        if self.edge_ip is not None:
            self.listener.connection_limiter.release(self.edge_ip)
            self.edge_ip = None
        self._cancel_timers()
        exchange = self.exchange
        if exchange is not None:
            self.exchange = None
            exchange.client_lost()
        if self.owned is not None:
            close_owned(self)

    def pause_writing(self) -> None:
        self.write_paused = True
        exchange = self.exchange
        if exchange is not None:
            exchange.client_pause_writing()
        wait = self._send_wait
        if wait is None:
            wait = self._send_wait = self.deadline(self._send_timed_out)
        wait.arm(self.listener.timeouts.send)

    def resume_writing(self) -> None:
        self.write_paused = False
        if self._send_wait is not None:
            self._send_wait.cancel()
        exchange = self.exchange
        if exchange is not None:
            exchange.client_resume_writing()

    # Flow of requests

    def _pump(self) -> None:
        if self._pumping:
            return  # the outer call's loop will see the new state
        self._pumping = True
        try:
            inbox = self.inbox
            if inbox is None:
                return
            while inbox and not self.closed:
                event = inbox[0]
                if isinstance(event, ClientError):
                    exchange = self.exchange
                    if exchange is not None and exchange.request_done:
                        self.block(BLOCK_PIPELINE)  # it refuses a later request: wait its turn
                        return
                    inbox.clear()
                    self._refuse(event)
                    return
                if type(event) is Request:
                    if self.exchange is not None:
                        self.block(BLOCK_PIPELINE)
                        return
                    refusal = own_refusal(inbox) if self.refused else None
                    if refusal is not None:
                        # Its own bad bytes came with its head: refused before any of it is
                        # written to a backend (a kept-alive connection would take it at once).
                        inbox.clear()
                        self._refuse(refusal)
                        return
                    inbox.popleft()
                    self.disarm_read_timer()
                    exchange = self.exchange = Exchange(self, event)
                    if (
                        inbox
                        and type(inbox[0]) is EndOfMessage
                        and event.upgrade is None
                        and not event.chunked  # an empty chunked body still has its last chunk
                    ):
                        # A request without a body is complete before it starts: an answer
                        # usher gives itself (404, 503, a redirect) can keep the connection.
                        inbox.popleft()
                        exchange.request_done = True
                    exchange.start()
                    if event.has_body and not exchange.expects_continue:
                        exchange.open_body_clock()
                else:
                    inbox.popleft()
                    exchange = self.exchange
                    if exchange is not None:
                        exchange.request_event(event)
        finally:
            self._pumping = False
            if not self.inbox:
                self.inbox = None  # drained: an idle connection holds no deque

    def exchange_done(self, keep_alive: bool) -> None:
        self.exchange = None
        if not keep_alive or self.listener.draining:
            self.close()
            return
        # Whatever the finished exchange held the client back for is over, even if the event
        # that would have said so (the backend's resume_writing) comes after it.
        self.unblock(BLOCK_PIPELINE | BLOCK_UPSTREAM_FULL | BLOCK_BUFFERING | BLOCK_UPGRADE)
        if self.inbox:
            self._pump()
        # Asked of a method: _pump may have started the next exchange, and compiled code
        # checks at run time that self.exchange is still None, as narrowed above.
        if self._waiting_for_request():
            timeouts = self.listener.timeouts
            self.between_requests = self.reader.idle and not self.inbox
            self.arm_read_timer(timeouts.idle if self.reader.idle else timeouts.header)

    def _waiting_for_request(self) -> bool:
        return self.exchange is None and not self.closed

    def _refuse(self, exc: ClientError) -> None:
        """Answer a bad request and close the connection."""
        exchange = self.exchange
        if exchange is not None and not exchange.finished:
            exchange.client_refused(exc)
            return
        listener = self.listener
        record = AccessRecord.now(self.client_ip, b"-", b"-", listener.name)
        sent = self.send_error(exc.status, exc.detail, keep_alive=False)
        record.finish(exc.status, sent, None, None, 0.0)
        listener.access_log.write(record)
        listener.metrics.request(listener.name, None, None, exc.status, 0.0)
        listener.metrics.rejected(listener.name, REJECTION_REASONS.get(exc.status, "bad_request"))
        self.close()

    # Output

    def write(self, data: bytes) -> None:
        if not self.closed:
            self.transport.write(data)

    def send_error(
        self,
        status: int,
        detail: str,
        *,
        keep_alive: bool,
        headers: Headers | None = None,
        request: Request | None = None,
    ) -> int:
        """Write a short text error page (to `request`, when there is one: a HEAD gets the
        head only); returns the body length sent."""
        answer, sent = error_answer(
            status,
            detail,
            keep_alive=keep_alive,
            hsts=self.listener.hsts,
            headers=headers,
            request=request,
        )
        self.write(answer)
        return sent

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._cancel_timers()
            transport = self.transport
            if (self.refused or not self.reader.idle) and transport.can_write_eof():
                self._linger(transport)
            else:
                self._close_transport()

    def _close_transport(self) -> None:
        self._closing = close_within(self.loop, self.transport, self.listener.timeouts.send)

    def _linger(self, transport: asyncio.Transport) -> None:
        """Close a connection the client may still be sending on, as nginx's lingering close:
        closing at once would answer its next bytes with a reset, which can destroy our answer
        before the client reads it. Send our FIN, read and drop what comes, close soon."""
        self.refused = True  # data_received drops everything from now on
        transport.write_eof()
        if self._blocks:
            self._blocks = 0
            transport.resume_reading()
        self._closing = self.loop.call_later(LINGER, self._close_transport)

    def abort(self, *, with_reset: bool = False) -> None:
        """Cut the connection now; `with_reset` also drops what the kernel still holds for a
        client that stopped reading."""
        self.closed = True
        self._cancel_timers()
        if with_reset:
            reset(self.transport)
        else:
            self.transport.abort()

    # Reading control

    def block(self, reason: int) -> None:
        if not self._blocks and not self.closed:
            self.transport.pause_reading()
        self._blocks |= reason

    def unblock(self, reason: int) -> None:
        if self._blocks & reason:
            self._blocks &= ~reason
            if not self._blocks and not self.closed:
                self.transport.resume_reading()
                exchange = self.exchange
                if exchange is not None and not exchange.request_done:
                    self.arm_read_timer(self.listener.timeouts.body)

    @property
    def reading_blocked(self) -> bool:
        return bool(self._blocks)

    # Timers

    def arm_read_timer(self, delay: float) -> None:
        """The client has `delay` seconds from now to send its next bytes."""
        wait = self._read_wait
        if wait is None:
            wait = self._read_wait = self.deadline(self._read_timed_out)
        wait.arm(delay)

    def disarm_read_timer(self) -> None:
        if self._read_wait is not None:
            self._read_wait.disarm()

    def deadline(self, on_expiry: Callable[[], None]) -> Deadline:
        """A deadline on the balancer's clock, woken by this connection's loop (or by a manual
        clock): the client's waits, and the backend's for the exchange it carries."""
        clock = self.listener.clock
        return Deadline(clock, wakeups_for(clock, self.loop), on_expiry)

    def _cancel_timers(self) -> None:
        if self._read_wait is not None:
            self._read_wait.cancel()
        if self._send_wait is not None:
            self._send_wait.cancel()
        if self._closing is not None:
            self._closing.cancel()
            self._closing = None

    def _read_timed_out(self) -> None:
        if self.closed:
            return
        exchange = self.exchange
        if exchange is not None:
            # Only a body we were willing to read counts against the client.
            if not exchange.request_done and not self._blocks:
                exchange.client_refused(
                    ClientError(408, "the request body was not received in time")
                )
            return
        if self.reader.idle and not self.inbox:
            self.close()  # a keep-alive connection that stayed quiet: nothing to answer
        else:
            self._refuse(ClientError(408, "the request head was not received in time"))

    def _send_timed_out(self) -> None:
        self.abort(with_reset=True)  # the client stopped reading; nothing more can be said to it
