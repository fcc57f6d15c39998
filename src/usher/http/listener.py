"""The runtime side of one `http`/`https` listener: what its client connections share (limits,
timeouts, the client-certificate header, the edge guard), and `apply` for a reload."""

from __future__ import annotations

from typing import TYPE_CHECKING

from usher.http.codec import HeadLimits, Request
from usher.http.downstream import ClientConnection
from usher.http.edge import FdGuard, ListenerGuard
from usher.http.headers import header_key
from usher.limits import ConnectionLimiter
from usher.logs import AccessLog
from usher.metrics import Metrics

if TYPE_CHECKING:
    from usher.clock import Clock
    from usher.config import Listener as ListenerConfig
    from usher.routing import Router


class HttpListener:
    """The runtime side of one `http`/`https` listener: what its connections share."""

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
        self.config = config
        self.metrics = metrics or Metrics()
        self.name = config.name
        self.router = router
        self.clock = clock
        self.access_log = access_log
        self.limits = _head_limits(config)
        self.timeouts = config.timeouts
        self.encoded_slashes = config.encoded_slashes
        self.scheme = b"https" if config.protocol == "https" else b"http"
        self.cert_header = _cert_header(config)
        self.cert_strip = _cert_strip(config)
        self.connections: set[ClientConnection] = set()
        self.draining = False
        self.workers = workers
        # Kept across reloads: open connections are counted in it until they close.
        self.connection_limiter = ConnectionLimiter(None, None)
        self.fd_guard = FdGuard(clock)
        self.built_guard: ListenerGuard | None = None  # also when not needed: its rate buckets
        self._apply_edge(config)

    def _apply_edge(self, config: ListenerConfig) -> None:
        limits = config.limits
        workers = self.workers
        limiter = self.connection_limiter
        limiter.configure(limits.max_connections, limits.connections_per_ip, workers)
        self.hsts = _hsts_header(config)
        strip = {name.lower().encode("latin-1") for name in config.strip_response_headers}
        if self.hsts is not None:
            strip.add(b"strict-transport-security")  # one policy: the listener's, not the backend's
        self.strip_response = frozenset(strip)
        self.max_pipelined = limits.max_pipelined
        guard = ListenerGuard(
            config,
            clock=self.clock,
            metrics=self.metrics,
            connections=limiter,
            workers=workers,
            previous=self.built_guard,
        )
        self.built_guard = guard
        self.guard: ListenerGuard | None = guard if guard.needed() else None

    def apply(self, config: ListenerConfig, router: Router) -> None:
        """A reload: new routes, limits and timeouts for the next requests and connections;
        open connections keep going."""
        self.config = config
        self.router = router
        self.limits = _head_limits(config)
        self.timeouts = config.timeouts
        self.encoded_slashes = config.encoded_slashes
        self.cert_header = _cert_header(config)
        self.cert_strip = _cert_strip(config)
        self.draining = False
        self._apply_edge(config)

    def __call__(self) -> ClientConnection:
        return ClientConnection(self)

    def forwarded_upgrade(self, request: Request) -> bytes | None:
        """The reader's upgrade filter: the Upgrade value the request's route lets through
        (None: no upgrade, the request is read on as plain HTTP/1.1). Decided as the head is
        parsed, so that a declined upgrade's body is read as a body, not as tunnel bytes."""
        assert request.upgrade is not None
        route = self.router.route(request)
        if route is None:
            return request.upgrade  # answered 404 without reading on
        return route.upgrades.forwarded(request.upgrade)

    def drain(self) -> None:
        """Stop keeping connections alive: idle ones close now, busy ones after their answer."""
        self.draining = True
        for conn in list(self.connections):
            if conn.h2 is not None:
                conn.h2.drain()  # GOAWAY: its streams finish, no new ones (http2.md)
                continue
            # Waiting between two requests: close. A connection whose first request has not
            # come in whole yet has it answered first (with Connection: close): its client
            # connected while we accepted, and may have sent it already (as in an upgrade).
            if conn.exchange is None and conn.between_requests and not conn.inbox:
                conn.close()


def _cert_strip(config: ListenerConfig) -> bytes | None:
    """The client-cert header as `header_key` gives it, on every listener with TLS: whether or
    not it asks for certificates, a client never sets that header itself."""
    tls = config.tls
    if tls is None:
        return None
    return header_key(tls.client_cert_header.encode("latin-1"))


def _hsts_header(config: ListenerConfig) -> tuple[bytes, bytes] | None:
    """The Strict-Transport-Security header of every answer on an https listener with `hsts`."""
    tls = config.tls
    if tls is None or tls.hsts is None:
        return None
    return (b"Strict-Transport-Security", b"max-age=%d" % tls.hsts)


def _cert_header(config: ListenerConfig) -> bytes | None:
    """The header carrying the client certificate's subject, on listeners that ask for one."""
    tls = config.tls
    if tls is None or tls.client_ca is None:
        return None
    return tls.client_cert_header.encode("latin-1")


def _head_limits(config: ListenerConfig) -> HeadLimits:
    limits = config.limits
    return HeadLimits(
        max_header_size=limits.max_header_size,
        max_request_line=limits.max_request_line,
        max_headers=limits.max_headers,
        max_body_size=limits.max_body_size,
    )
