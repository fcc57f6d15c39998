"""One request's phases, from routing to the access log: route, edge screening, the upstream
head, attempts, finish. The other jobs each have an owner the exchange holds: `Attempts`
(which backend, retry or give up), `UpstreamLink` (the backend connection, the body, flow
control and deadlines), response.py (the answer on its way to the client) and `Tunnel`
(after a 101); answers.py makes usher's own answers, recording.py the metrics and log line.
None of them keeps the exchange once it is finished, so a finished exchange is freed by
reference counting, without the cyclic collector."""

from __future__ import annotations

from typing import TYPE_CHECKING

from usher.errors import ClientError
from usher.http.answers import answer_error, answer_redirect, continue_answer
from usher.http.codec import (
    Data,
    EndOfMessage,
    Event,
    Headers,
    Request,
    Upgraded,
    encode_chunk,
    encode_last_chunk,
    encode_request_head,
)
from usher.http.flow import BLOCK_BUFFERING, BLOCK_UPGRADE
from usher.http.forwarding import controlled_names, normalise_target, upstream_headers
from usher.http.headers import expects_continue, forward_trailers
from usher.http.link import UpstreamLink
from usher.http.recording import record_exchange
from usher.http.request_key import hash_key
from usher.http.tunnel import Tunnel
from usher.logs import AccessRecord
from usher.pool import Pool, Selection
from usher.pool.attempts import Attempts, answer_for

if TYPE_CHECKING:
    from usher.http.downstream import ClientConnection
    from usher.http.hook_phases import HookRun
    from usher.http.screening import EdgeState
    from usher.routing import Route

# nginx's convention for "the client closed the connection before the answer".
CLIENT_CLOSED = 499


class Exchange:
    """One request and its response, from routing to the access log."""

    __slots__ = (
        "attempts",
        "body_clock",
        "bytes_out",
        "chunked_out",
        "client",
        "continued",
        "edge",
        "expects_continue",
        "finished",
        "hook_run",
        "keep_alive",
        "link",
        "pool",
        "record",
        "request",
        "request_done",
        "response_done",
        "response_started",
        "route",
        "set_cookie",
        "status",
        "t_start",
        "upgraded",
        "upstream_time",
        "upstream_upgrade",
    )

    def __init__(self, client: ClientConnection, request: Request) -> None:
        self.client = client
        self.request = request
        self.t_start = client.listener.clock.now()  # the injected clock, as its deadlines
        self.route: Route | None = None
        self.pool: Pool | None = None
        self.attempts: Attempts | None = None  # set once a pool is chosen
        self.link = UpstreamLink(self)
        self.upgraded: Tunnel | None = None  # made for an upgrade request's bytes
        # The Upgrade value forwarded: the request's, less what the route does not allow.
        self.upstream_upgrade: bytes | None = None
        self.request_done = False
        self.response_started = False
        self.response_done = False
        self.chunked_out = False  # the response body is relayed chunked (coded by usher)
        self.keep_alive = request.keep_alive
        self.finished = False
        self.status = 0
        self.bytes_out = 0
        self.upstream_time: float | None = None
        self.set_cookie: bytes | None = None
        # The access-log line's start time, taken only when there will be a line to write.
        self.record = (
            AccessRecord.now(client.client_ip, request.method, request.target, client.listener.name)
            if client.listener.access_log.enabled
            else None
        )
        self.edge: EdgeState | None = None  # set by the listener's guard, when it has one
        # The client waits for a 100 Continue before it sends the body (HTTP/1.1 only).
        self.expects_continue = (
            request.has_body and request.version == b"1.1" and expects_continue(request.headers)
        )
        self.body_clock = False  # timeouts.body runs for this request's body
        self.continued = False  # a 100 Continue went to the client (one is enough)
        self.hook_run: HookRun | None = None  # the route's hooks, when it has any

    # Phases

    def start(self) -> None:
        request = self.request
        client = self.client
        listener = client.listener
        if not self._normalise_target():
            return
        route = self.route = listener.router.route(request)
        guard = listener.guard
        if guard is not None and guard.screen(self, route):
            return
        if route is None:
            self.respond_error(404, "no route matches this request")
            return
        if route.redirect is not None:
            self.respond_redirect(route.redirect.status, route.redirect.location)
            return
        self.pool = route.pick_pool()
        hooks = route.hooks
        if hooks is not None:
            hooks.start(self)  # on_request and select (usher.hooks), then forward()
        elif self.forward():
            self.attempt()

    def forward(self) -> bool:
        """Build the head to forward; True when a backend is to be chosen now (False: the
        request was answered, or the body rules decide first)."""
        request = self.request
        client = self.client
        listener = client.listener
        route = self.route
        pool = self.pool
        assert route is not None and pool is not None
        edge = self.edge
        client_ip = client.client_ip if edge is None else edge.client_ip
        if request.upgrade is not None:
            upgrade = self.upstream_upgrade = route.upgrades.forwarded(request.upgrade)
            if upgrade is None and request.has_body:
                # The reader kept the upgrade for another route (a reload came in between):
                # the body went to the tunnel bytes and cannot be forwarded as a body.
                self.respond_error(400, "this route does not allow the upgrade asked for")
                return False
        inspecting = edge is not None and edge.inspect is not None
        headers = upstream_headers(
            request,
            client,
            route,
            edge,
            upgrade=self.upstream_upgrade,
            real_ip=client_ip,
            drop_expect=inspecting and self.expects_continue,
        )
        target = route.rewrite_target(request.target)
        self.link.head = encode_request_head(request.method, target, headers)
        key = hash_key(pool.config, request, client_ip)
        # No time yet: Attempts.next reads the pool's clock for each choice it makes.
        selection = Selection(client_ip.decode(), 0.0, key)
        self.attempts = Attempts(pool, selection, listener.metrics)
        if inspecting:
            assert edge is not None
            edge.head = (request.method, target, headers)
            if self.expects_continue:
                client.write(continue_answer(request))
                self.continued = True  # a backend's own 100 later is not passed on
                self.open_body_clock()
            return False  # the body rules decide first (EdgeState.decide)
        return True

    def _normalise_target(self) -> bool:
        """False when the request's target was refused (400)."""
        try:
            normalise_target(self.request, self.client)
        except ClientError as exc:
            self.keep_alive = False
            self.respond_error(exc.status, exc.detail)
            return False
        return True

    def open_body_clock(self) -> None:
        """The client may send the body now (no Expect, a 100 Continue went out, or the body
        began): timeouts.body and min_body_rate count from here, so a head that promises a body
        and then goes silent is answered 408 instead of holding the connection as long as the
        backend waits."""
        if self.body_clock or self.finished or self.request_done:
            return
        self.body_clock = True
        client = self.client
        client.arm_read_timer(client.listener.timeouts.body)
        edge = self.edge
        if edge is not None and edge.floor is not None:
            edge.start_meter(self)

    def reencode_head(self, method: bytes, target: bytes, headers: Headers) -> None:
        self.link.head = encode_request_head(method, target, headers)

    def resume_after_inspection(self) -> None:
        """The body rules let the request through: now choose a backend and send it."""
        self.client.unblock(BLOCK_BUFFERING)
        self.attempt()

    def attempt(self) -> None:
        if self.finished:
            return  # woken from the queue after the client left
        attempts = self.attempts
        assert attempts is not None
        headers = self.request.headers
        backend = attempts.next(headers)
        if backend is None:
            if attempts.may_wait() and attempts.wait(
                self.client.loop, self._dequeued, self._queue_timed_out
            ):
                return
            self.respond_error(*attempts.verdict())
            return
        self.set_cookie = attempts.pool.chosen(attempts.selection, headers, backend)
        self.link.open(backend)

    def _dequeued(self) -> None:
        """A slot is free: try again (soon, not inside the other request's finish)."""
        if not self.finished:
            self.client.loop.call_soon(self.attempt)

    def _queue_timed_out(self) -> None:
        if not self.finished:
            self.respond_error(503, "no backend had room in time")

    def attempt_failed(self, exc: Exception) -> None:
        """The current attempt failed before any answer: try another backend if allowed."""
        attempts = self.attempts
        assert attempts is not None
        self.link.conn = None
        self.link.cancel_timers()
        shortage = attempts.out_of_resources(exc, f"listener {self.client.listener.name}")
        if shortage is not None:  # no socket for us: neither this backend's fault nor others'
            self.respond_error(503, "the balancer is out of resources", reason=shortage)
        elif attempts.failed(exc, replayable=not self.link.body_started):
            self.attempt()
        else:
            self.respond_error(*answer_for(exc))

    # Events from the client

    def request_event(self, event: Event) -> None:
        request = self.request
        kind = type(event)
        if kind is Data:
            assert isinstance(event, Data)
            chunk = encode_chunk(event.data) if request.chunked else event.data
            self._send_body(chunk)
            if not self.body_clock:
                self.open_body_clock()  # the body began without a 100 Continue
            self.client.arm_read_timer(self.client.listener.timeouts.body)
            if self.edge is not None:
                self.edge.body_data(self, event.data)
        elif kind is EndOfMessage:
            assert isinstance(event, EndOfMessage)
            if request.chunked:
                trailers = event.trailers
                if trailers:
                    trailers = forward_trailers(
                        trailers, controlled_names(self.client.listener, self.edge, self.route)
                    )
                self._send_body(encode_last_chunk(trailers))
            self.request_done = True
            self.touch()  # the read timeout counts from here
            self.client.disarm_read_timer()
            edge = self.edge
            if edge is not None:
                edge.cancel()
                if edge.inspect is not None:
                    edge.decide(self)
            if self.response_done:
                self.finish(True)
        elif kind is Upgraded:
            assert isinstance(event, Upgraded)
            if event.tail:
                self.tunnel().hold(event.tail)
            if not self.finished:
                self.client.block(BLOCK_UPGRADE)

    def attempt_time(self) -> float:
        return self.attempts.elapsed() if self.attempts is not None else 0.0

    def _send_body(self, chunk: bytes) -> None:
        if not self.finished:
            self.link.send_body(chunk)

    def client_refused(self, exc: ClientError) -> None:
        """The client's request turned bad mid-way (e.g. a body over the size limit)."""
        if self.response_started:
            self._abort_upstream()
            self.status = self.status or exc.status
            self.finish(True, close=True)
            self.client.abort()
            return
        self._abort_upstream()
        self.keep_alive = False
        self.respond_error(exc.status, exc.detail)

    def client_lost(self) -> None:
        if self.finished:
            return
        conn = self.link.conn
        if conn is not None and conn.tunnel:
            conn.close()
        self._abort_upstream()
        if not self.response_done:
            self.status = CLIENT_CLOSED
            # The answer never came: this says nothing of the backend.
            if self.attempts is not None:
                self.attempts.abandon()
        self.finish(True, close=True)

    def client_pause_writing(self) -> None:
        self.link.pause_reading()

    def client_resume_writing(self) -> None:
        self.link.resume_reading(answered=self.response_done)

    def touch(self) -> None:
        """Bytes moved (through the tunnel, or from the backend): it is not idle."""
        self.link.touch()

    def tunnel(self) -> Tunnel:
        """The tunnel of this upgrade request, made at its first use."""
        tunnel = self.upgraded
        if tunnel is None:
            tunnel = self.upgraded = Tunnel(self)
        return tunnel

    # Answers made by usher itself

    def respond_error(
        self, status: int, detail: str, *, reason: str | None = None, headers: Headers | None = None
    ) -> None:
        answer_error(self, status, detail, reason=reason, headers=headers)

    def respond_redirect(self, status: int, location: bytes) -> None:
        answer_redirect(self, status, location)

    # Endings

    def fail_midway(self) -> None:
        """The backend failed after the answer had started: all we can do is cut the client."""
        if self.attempts is not None:
            self.attempts.finish(False)
        self.finish(False, close=True)
        self.client.abort()

    def _abort_upstream(self) -> None:
        if self.attempts is not None:
            self.attempts.stop_waiting()
        self.link.abort()

    def finish(self, ok: bool, *, close: bool = False) -> None:
        if self.finished:
            return
        self.finished = True
        if self.edge is not None:
            self.edge.cancel()
        client = self.client
        self.link.release(self.pool, self.request_done and self.response_done)
        if self.attempts is not None:
            # The try's latency is the time to its answer's end (a tunnel's: its handshake, not
            # the life of the WebSocket), taken when the answer ended; else the time until now.
            self.attempts.finish(ok, self.upstream_time)
        if self.request.upgrade is None or self.status != 101:
            record_exchange(self)
        if client.exchange is self:
            client.exchange_done(self.keep_alive and not close)
