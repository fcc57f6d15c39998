"""Security at the edge of an HTTP listener: who may connect, how often they may ask, and what
may pass. Built only when a listener or one of its routes configures something, so a listener
without any of it does no work for it.

The proxy calls in at three points: `admit` when a connection is accepted, `release` when it
ends, and `screen` once a request is routed. The client address comes from one place,
`ClientConnection.client_ip` (the peer, or what PROXY protocol says), refined per request by
`forwarded_client` only for peers in `trusted_proxies`.
"""

from __future__ import annotations

import secrets
import sys
from typing import TYPE_CHECKING

from usher.acl import IpList, NetworkSet, forwarded_client
from usher.errors import ClientError
from usher.limits import BodyRateMeter, ConnectionLimiter, LocalRateStore, RateStore, retry_after
from usher.logs import AccessRecord
from usher.routing import split_target
from usher.state import cluster, installed
from usher.state.redis import ClusterBuckets
from usher.state.shm import SharedBuckets
from usher.waf import RequestFilter, Verdict

if TYPE_CHECKING:
    import asyncio

    from usher.clock import Clock
    from usher.config import Listener as ListenerConfig
    from usher.config import RateLimitFields
    from usher.config import Route as RouteConfig
    from usher.http.codec import Headers, Request
    from usher.http.downstream import ClientConnection
    from usher.http.exchange import Exchange
    from usher.metrics import Metrics
    from usher.routing import Route

# A request ID from the client is kept when it is at most this long and made of these.
REQUEST_ID_MAX = 128
_ID_CHARS = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.:")
# Open descriptors kept free for backend connections, logs and the admin API: a new client
# connection whose descriptor number reaches (soft limit - this) is refused.
FD_RESERVE_MIN = 16
FD_RESERVE_FRACTION = 0.05
# A burst of refusals for lack of descriptors is logged once; quiet this long ends the burst.
FD_BURST_QUIET = 5.0


class RateLimiter:
    """One token bucket per key, for a listener or a route."""

    __slots__ = ("kind", "name", "signature", "store")

    def __init__(self, key: str, store: RateStore, signature: tuple[object, ...] = ()) -> None:
        self.kind, _, name = key.partition(":")
        self.name = name.lower().encode("latin-1")
        self.store = store
        self.signature = signature  # what the buckets depend on: equal means reusable

    @classmethod
    def build(
        cls,
        fields: RateLimitFields,
        workers: int,
        table_size: int,
        previous: RateLimiter | None = None,
        scope: str = "",
    ) -> RateLimiter | None:
        """The limiter `fields` configure; `previous` itself (its buckets full or empty as they
        are) when a reload left its rate, burst, key and table size as they were.

        In a worker of `--workers N` the buckets are shared by every worker (usher.state),
        under `scope` (the listener, the route): the limit is exact whichever worker takes a
        connection. Otherwise (one process, or no shared state) the buckets are this
        process's, with 1/`workers` of the rate. With `cluster:` sharing rate limits, the
        bucket is the cluster's (usher.state.redis), and the store above decides only while
        Redis is down or slow."""
        if fields.rate is None:
            return None
        burst = fields.burst if fields.burst is not None else max(1.0, fields.rate)
        shared = installed()
        link = cluster("rate_limits")
        signature: tuple[object, ...]
        store: RateStore
        if shared is not None:
            signature = ("shared", scope, fields.key, fields.rate, burst)
            store = SharedBuckets(shared, f"rl:{scope}:", fields.rate, burst)
        else:
            rate = fields.rate / workers
            local_burst = max(1.0, burst / workers)
            signature = (fields.key, rate, local_burst, table_size)
            store = LocalRateStore(rate, local_burst, table_size)
        if link is not None:
            # One bucket for every node; the store above decides while Redis is away.
            signature = ("cluster", scope, *signature)
            store = ClusterBuckets(link, f"{scope}:", fields.rate, burst, store, table_size)
        if previous is not None and previous.signature == signature:
            return previous
        return cls(fields.key, store, signature)

    def key(self, request: Request, client_ip: str) -> str:
        kind = self.kind
        if kind == "source_ip":
            return client_ip
        if kind == "route":
            return ""
        name = self.name
        if kind == "header":
            for n, v in request.headers:
                if n.lower() == name:
                    return "h:" + v.decode("latin-1")
        else:
            for n, v in request.headers:
                if n.lower() == b"cookie":
                    for part in v.split(b";"):
                        k, _, value = part.strip().partition(b"=")
                        if k.lower() == name:
                            return "c:" + value.decode("latin-1")
        return (
            client_ip  # no such header or cookie: the client address, so omitting it is no way out
        )


class RouteGuard:
    """What one route adds: IP lists, a rate limit, filter rules."""

    __slots__ = ("filter", "ips", "rate")

    def __init__(
        self,
        config: RouteConfig,
        workers: int,
        table_size: int,
        previous: RateLimiter | None = None,
        scope: str = "",
    ) -> None:
        limits = config.limits
        self.ips = IpList.build(limits.allow, limits.deny) if limits is not None else None
        self.rate = (
            RateLimiter.build(limits, workers, table_size, previous, scope)
            if limits is not None
            else None
        )
        self.filter = (
            RequestFilter(config.filters, config.filter_body_limit, config.filter_tag_header)
            if config.filters
            else None
        )

    @classmethod
    def build(
        cls,
        config: RouteConfig,
        workers: int,
        table_size: int,
        previous: RateLimiter | None = None,
        scope: str = "",
    ) -> RouteGuard | None:
        guard = cls(config, workers, table_size, previous, scope)
        if guard.ips is None and guard.rate is None and guard.filter is None:
            return None
        return guard


class EdgeState:
    """The per-request part: the client address, headers to add, a body under inspection."""

    __slots__ = (
        "client_ip",
        "filter",
        "floor",
        "head",
        "inspect",
        "meter",
        "request_headers",
        "response_headers",
        "timer",
        "verdict",
    )

    def __init__(self, client_ip: bytes) -> None:
        self.client_ip = client_ip
        self.request_headers: Headers = []
        self.response_headers: Headers = []
        self.filter: RequestFilter | None = None
        self.verdict: Verdict | None = None
        self.inspect: bytearray | None = None
        self.head: tuple[bytes, bytes, Headers] | None = None
        self.meter: BodyRateMeter | None = None
        # The guard whose min_body_rate this body must keep, once the body clock opens.
        self.floor: ListenerGuard | None = None
        self.timer: asyncio.TimerHandle | None = None

    def body_data(self, exchange: Exchange, data: bytes) -> None:
        if self.meter is not None:
            self.meter.add(len(data))
        inspect = self.inspect
        if inspect is not None:
            assert self.filter is not None
            room = self.filter.body_limit - len(inspect)
            inspect += data[:room]
            if len(data) >= room:
                self.decide(exchange)

    def decide(self, exchange: Exchange) -> None:
        """Enough of the body (or all of it) is here: run the body rules, then go on or refuse."""
        inspect, self.inspect = self.inspect, None
        if inspect is None or exchange.finished:
            return
        assert self.filter is not None and self.verdict is not None and self.head is not None
        verdict = self.filter.check_body(bytes(inspect), self.verdict)
        if verdict.denied_by is not None:
            exchange.keep_alive = False
            exchange.respond_error(
                403, "the request was refused by a filter rule", reason="filtered"
            )
            return
        if verdict.tags:
            method, target, headers = self.head  # edge.request_headers are in it already
            tag = (self.filter.tag_header, ",".join(verdict.tags).encode())
            self.request_headers.append(tag)
            exchange.reencode_head(method, target, [*headers, tag])
        exchange.resume_after_inspection()

    def cancel(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None


class ListenerGuard:
    """Everything a listener and its routes configure for security, compiled once."""

    __slots__ = (
        "body_window",
        "clock",
        "connections",
        "ips",
        "max_requests",
        "metrics",
        "min_body_rate",
        "name",
        "rate",
        "request_id",
        "routes",
        "screens",
        "trusted",
    )

    def __init__(
        self,
        config: ListenerConfig,
        *,
        clock: Clock,
        metrics: Metrics,
        connections: ConnectionLimiter,
        workers: int,
        previous: ListenerGuard | None = None,
    ) -> None:
        """`previous`: the guard this one replaces on a reload. Its rate limiters are kept
        where they are configured as before (a route's by position), so a reload does not
        hand every client a fresh burst."""
        limits = config.limits
        table = limits.rate_table_size
        self.name = config.name
        self.clock = clock
        self.metrics = metrics
        self.connections = connections
        self.trusted = NetworkSet(config.trusted_proxies) if config.trusted_proxies else None
        self.ips = IpList.build(limits.allow, limits.deny)
        before: list[RouteGuard | None] = []
        kept: RateLimiter | None = None
        if previous is not None:
            before, kept = previous.routes, previous.rate
        self.rate: RateLimiter | None = RateLimiter.build(limits, workers, table, kept, self.name)
        self.routes: list[RouteGuard | None] = [
            RouteGuard.build(r, workers, table, _route_rate(before, i), f"{self.name}/{i}")
            for i, r in enumerate(config.effective_routes())
        ]
        self.max_requests = limits.max_requests_per_connection
        self.min_body_rate = limits.min_body_rate
        self.body_window = limits.body_rate_window
        rid = config.request_id
        self.request_id = (
            None if rid is False else (DEFAULT_ID if rid is True else str(rid).encode("latin-1"))
        )
        # Whether requests need looking at, or only connections (then `screen` is a no-op).
        self.screens = (
            self.trusted is not None
            or self.rate is not None
            or any(r is not None for r in self.routes)
            or self.max_requests is not None
            or self.min_body_rate is not None
            or self.request_id is not None
        )

    def needed(self) -> bool:
        return self.screens or self.ips is not None or self.connections.active

    # Connections

    def admit(self, conn: ClientConnection) -> bool:
        """A new connection: False when it was refused (answered and closing)."""
        ip = conn.client_ip.decode("latin-1")
        ips = self.ips
        # A trusted proxy's clients are judged per request, by X-Forwarded-For.
        judged_here = self.trusted is None or not self.trusted.contains(ip)
        if ips is not None and judged_here and not ips.permits(ip):
            refuse_connection(conn, 403, "your address is not allowed here", "ip_denied")
            return False
        if self.connections.active:
            why = self.connections.admit(ip)
            if why is not None:
                refuse_connection(conn, 503, "too many connections", why)
                return False
            conn.edge_ip = ip
        return True

    # Requests

    def screen(self, exchange: Exchange, route: Route | None) -> bool:
        """Check a routed request; True when it was answered here (refused)."""
        if not self.screens:
            return False
        conn = exchange.client
        request = exchange.request
        peer = conn.client_ip
        state = exchange.edge = EdgeState(peer)
        ip = peer.decode("latin-1")
        trusted = self.trusted
        if trusted is not None and trusted.contains(ip):
            ip = forwarded_client(ip, request.headers, trusted)
            state.client_ip = ip.encode("latin-1")
            if exchange.record is not None:  # None when the access log is off
                exchange.record.client = state.client_ip
            if self.ips is not None and not self.ips.permits(ip):
                return self._refuse(exchange, 403, "your address is not allowed here", "ip_denied")
        if self.max_requests is not None:
            conn.served += 1
            if conn.served >= self.max_requests:
                exchange.keep_alive = False
        if self.request_id is not None:
            self._request_id(exchange, state)
        now = self.clock.now()
        if self.rate is not None and self._limited(exchange, self.rate, ip, now):
            return True
        guard = self.routes[route.index] if route is not None else None
        if guard is not None:
            if guard.ips is not None and not guard.ips.permits(ip):
                return self._refuse(exchange, 403, "your address is not allowed here", "ip_denied")
            if guard.rate is not None and self._limited(exchange, guard.rate, ip, now):
                return True
            if guard.filter is not None and self._filter(exchange, state, guard.filter):
                return True
        if self.min_body_rate is not None and request.has_body:
            state.floor = self  # metered from Exchange.open_body_clock
        return False

    def start_meter(self, exchange: Exchange, state: EdgeState) -> None:
        """The client may send the body now: the rate floor counts from here, not while it
        waits, as Expect: 100-continue tells it to, for a 100 Continue."""
        assert self.min_body_rate is not None
        state.floor = None
        state.meter = BodyRateMeter(self.min_body_rate, self.body_window, self.clock.now())
        state.timer = exchange.client.loop.call_later(
            self.body_window, self._check_body_rate, exchange
        )

    def _request_id(self, exchange: Exchange, state: EdgeState) -> None:
        name = self.request_id
        assert name is not None
        lname = name.lower()
        value = None
        for n, v in exchange.request.headers:
            if n.lower() == lname:
                if 0 < len(v) <= REQUEST_ID_MAX and _ID_CHARS.issuperset(v):
                    value = v
                break
        if value is None:
            value = secrets.token_hex(16).encode()
        # The client's copy goes and the ID is added after the header forwarding, as filter
        # tags are: a client's `Connection: X-Request-ID` cannot strip it from the backend's.
        exchange.request.headers = [
            (n, v) for n, v in exchange.request.headers if n.lower() != lname
        ]
        state.request_headers.append((name, value))
        state.response_headers.append((name, value))
        if exchange.record is not None:
            exchange.record.request_id = value

    def _limited(self, exchange: Exchange, limiter: RateLimiter, ip: str, now: float) -> bool:
        wait = limiter.store.take(limiter.key(exchange.request, ip), now)
        if wait <= 0.0:
            return False
        seconds = b"%d" % retry_after(wait)
        return self._refuse(
            exchange, 429, "too many requests", "rate_limited", [(b"Retry-After", seconds)]
        )

    def _filter(self, exchange: Exchange, state: EdgeState, rules: RequestFilter) -> bool:
        path, query = split_target(exchange.request.target)
        verdict = rules.check_head(exchange.request, path, query)
        if verdict.denied_by is not None:
            return self._refuse(
                exchange, 403, "the request was refused by a filter rule", "filtered"
            )
        if rules.body_rules and exchange.request.has_body:
            state.filter = rules
            state.verdict = verdict
            state.inspect = bytearray()
        elif verdict.tags:
            state.request_headers.append((rules.tag_header, ",".join(verdict.tags).encode()))
        return False

    def _refuse(
        self,
        exchange: Exchange,
        status: int,
        detail: str,
        reason: str,
        headers: Headers | None = None,
    ) -> bool:
        if not exchange.request_done:
            exchange.keep_alive = False  # the body is still coming: no way to skip it safely
        exchange.respond_error(status, detail, reason=reason, headers=headers)
        return True

    def _check_body_rate(self, exchange: Exchange) -> None:
        state = exchange.edge
        if state is None or state.meter is None or exchange.finished or exchange.request_done:
            return
        client = exchange.client
        if not state.meter.check(self.clock.now(), paused=client.reading_blocked):
            state.timer = None
            exchange.client_refused(ClientError(408, "the request body arrived too slowly"))
            return
        state.timer = client.loop.call_later(self.body_window, self._check_body_rate, exchange)


DEFAULT_ID = b"X-Request-ID"


def _route_rate(routes: list[RouteGuard | None], index: int) -> RateLimiter | None:
    guard = routes[index] if index < len(routes) else None
    return guard.rate if guard is not None else None


def refuse_connection(
    conn: ClientConnection, status: int, detail: str, reason: str, *, linger: bool = True
) -> None:
    """Answer a connection that will not be served and close it, after a short linger unless
    told not to (when descriptors run out, they matter more than the answer)."""
    listener = conn.listener
    record = AccessRecord.now(conn.client_ip, b"-", b"-", listener.name)
    conn.refused = linger  # close() lingers then: the request may be on its way already
    sent = conn.send_error(status, detail, keep_alive=False)
    conn.close()
    record.finish(status, sent, None, None, 0.0)
    listener.access_log.write(record)
    listener.metrics.request(listener.name, None, None, status, 0.0)
    listener.metrics.rejected(listener.name, reason)


class FdGuard:
    """Refuses new connections near the open-file limit, so accepted ones can still reach a
    backend; logs once per burst of refusals. (At the limit itself libuv accepts and closes
    connections it has no descriptor for: usher never crashes on EMFILE.)"""

    __slots__ = ("ceiling", "clock", "last", "refused", "soft")

    def __init__(self, clock: Clock) -> None:
        import resource

        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        self.soft = soft
        reserve = max(FD_RESERVE_MIN, int(soft * FD_RESERVE_FRACTION))
        self.ceiling = sys.maxsize if soft == resource.RLIM_INFINITY else soft - reserve
        self.clock = clock
        self.last = -FD_BURST_QUIET
        self.refused = 0

    def refuse(self, conn: ClientConnection, fd: int) -> None:
        now = self.clock.now()
        if now - self.last >= FD_BURST_QUIET:
            print(
                f"usher: listener {conn.listener.name}: {fd + 1} of {self.soft} file descriptors "
                f"in use; refusing new connections (503) until some close"
                + (f" ({self.refused} refused in the previous burst)" if self.refused else ""),
                file=sys.stderr,
                flush=True,
            )
            self.refused = 0
        self.last = now
        self.refused += 1
        refuse_connection(
            conn, 503, "the server is out of connections", "out_of_files", linger=False
        )
