"""The downstream Protocol: moves bytes between a client socket and the sans-IO
`RequestReader`, and runs the requests it yields one at a time, in order (pipelined ones wait
their turn); what a quiet client means. The socket's own upkeep (closing, pausing, the
deadlines) is `ClientSocket`'s (http/client_socket.py)."""

from __future__ import annotations

import asyncio
from collections import deque
from typing import TYPE_CHECKING

from usher.errors import ClientError
from usher.http.answers import REJECTION_REASONS, error_answer, own_refusal
from usher.http.client_socket import ClientSocket
from usher.http.codec import EndOfMessage, Event, Headers, Request, RequestReader
from usher.http.exchange import Exchange
from usher.http.flow import BLOCK_BUFFERING, BLOCK_PIPELINE, BLOCK_UPGRADE, BLOCK_UPSTREAM_FULL
from usher.http.h2_downstream import H2Downstream, negotiated_h2, takes_prior_knowledge
from usher.http.tunnel import keeps_half_open
from usher.http.upstream import close_owned
from usher.logs import AccessRecord
from usher.tls import client_subject

if TYPE_CHECKING:
    from usher.http.listener import HttpListener
    from usher.http.upstream import UpstreamConnection


class ClientConnection(ClientSocket):
    __slots__ = (
        "_pumping",
        "between_requests",
        "cert_subject",
        "client_ip",
        "client_port",
        "edge_ip",
        "exchange",
        "h2",
        "h2c_first",
        "inbox",
        "local",
        "owned",
        "peer",
        "reader",
        "served",
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
        super().__init__(listener)
        # The client's and our addresses as a PROXY header told them, when one did.
        self.peer = peer
        self.local = local
        self.cert_subject: bytes | None = None
        self.reader = RequestReader(listener.limits, upgrade_filter=listener.forwarded_upgrade)
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
        self.write_paused = False
        self.edge_ip: str | None = None  # counted in the listener's connection limits
        self.served = 0  # requests, counted when max_requests_per_connection is set
        self.between_requests = False  # kept alive after an answer, no byte of the next yet
        self._pumping = False
        self.h2: H2Downstream | None = None  # the HTTP/2 connection that took the socket over
        self.h2c_first = False  # an http listener with http2: the first bytes may be h2c's

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
        if listener.config.serves_http2:  # HTTP/2: http2.md
            if negotiated_h2(transport):
                H2Downstream(self).start()
            else:
                self.h2c_first = listener.scheme == b"http"

    def data_received(self, data: bytes) -> None:
        self.listener.metrics.bytes(self.listener.name, "in", len(data))
        if self.h2c_first:
            self.h2c_first = False
            if takes_prior_knowledge(data):  # h2c with prior knowledge (http2.md)
                H2Downstream(self).start(data)
                return
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
        # What would otherwise leave this connection to the garbage collector: the reader's
        # parser and the deadlines point back at their owners.
        self.reader.release()
        self.forget_timers()

    def pause_writing(self) -> None:
        self.write_paused = True
        exchange = self.exchange
        if exchange is not None:
            exchange.client_pause_writing()
        self.arm_send_timer()

    def resume_writing(self) -> None:
        self.write_paused = False
        self.cancel_send_timer()
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

    # What ClientSocket asks

    def _may_still_send(self) -> bool:
        return self.refused or not self.reader.idle  # closed mid-request: linger

    def _reading_resumed(self) -> None:
        exchange = self.exchange
        if exchange is not None and not exchange.request_done:
            self.arm_read_timer(self.listener.timeouts.body)

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
