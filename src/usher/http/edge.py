"""Security at the edge of an HTTP listener: who may connect, and which filters
(usher.http.filters) a request passes. Built only when a listener or one of its routes
configures something, so a listener without any of it does no work for it; the filters of each
route are put in order once, when the config loads.

The proxy calls in at three points: `admit` when a connection is accepted, `release` when it
ends, and `screen` once a request is routed (the exchange applies the filters' verdicts:
usher.http.screening). The client address comes from one place,
`ClientConnection.client_ip` (the peer, or what PROXY protocol says), refined per request by
`forwarded_client` only for peers in `trusted_proxies`.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

from usher.acl import IpList, NetworkSet
from usher.http.filters import (
    DEFAULT_ID,
    NOT_ALLOWED,
    REQUEST_ID_MAX,
    AddressFilter,
    BodyRateFloor,
    Filter,
    RateFilter,
    RequestIdFilter,
    RuleFilter,
)
from usher.http.ratelimit import RateLimiter
from usher.http.screening import EdgeState, screen
from usher.logs import AccessRecord
from usher.waf import RequestFilter

if TYPE_CHECKING:
    from usher.clock import Clock
    from usher.config import Listener as ListenerConfig
    from usher.config import Route as RouteConfig
    from usher.http.downstream import ClientConnection
    from usher.http.exchange import Exchange
    from usher.limits import ConnectionLimiter
    from usher.metrics import Metrics
    from usher.routing import Route

# The names other modules import from here.
__all__ = [
    "DEFAULT_ID",
    "REQUEST_ID_MAX",
    "EdgeState",
    "FdGuard",
    "ListenerGuard",
    "RateLimiter",
    "refuse_connection",
]

# Open descriptors kept free for backend connections, logs and the admin API: a new client
# connection whose descriptor number reaches (soft limit - this) is refused.
FD_RESERVE_MIN = 16
FD_RESERVE_FRACTION = 0.05
# A burst of refusals for lack of descriptors is logged once; quiet this long ends the burst.
FD_BURST_QUIET = 5.0


def _route_filters(
    config: RouteConfig, workers: int, table_size: int, previous: RateLimiter | None, scope: str
) -> tuple[RateLimiter | None, tuple[Filter, ...]]:
    """What one route adds, in order: its IP lists, its rate limit, its filter rules; and the
    rate limiter, kept for the next reload."""
    limits = config.limits
    filters: list[Filter] = []
    rate = None
    if limits is not None:
        ips = IpList.build(limits.allow, limits.deny)
        if ips is not None:
            filters.append(AddressFilter(ips))
        rate = RateLimiter.build(limits, workers, table_size, previous, scope)
        if rate is not None:
            filters.append(RateFilter(rate))
    if config.filters:
        rules = RequestFilter(config.filters, config.filter_body_limit, config.filter_tag_header)
        filters.append(RuleFilter(rules))
    return rate, tuple(filters)


class ListenerGuard:
    """Everything a listener and its routes configure for security, compiled once: the
    connection checks, and per route the filters a request passes (`pipeline`)."""

    __slots__ = (
        "clock",
        "connections",
        "forwarded_ips",
        "ips",
        "max_requests",
        "metrics",
        "name",
        "pipelines",
        "rate",
        "route_rates",
        "screens",
        "trusted",
        "unrouted",
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
        # A trusted proxy's clients are judged per request, by X-Forwarded-For.
        self.forwarded_ips = (
            AddressFilter(self.ips) if self.ips is not None and self.trusted is not None else None
        )
        before: list[RateLimiter | None] = []
        kept: RateLimiter | None = None
        if previous is not None:
            before, kept = previous.route_rates, previous.rate
        self.rate: RateLimiter | None = RateLimiter.build(limits, workers, table, kept, self.name)
        self.max_requests = limits.max_requests_per_connection
        # The listener's filters, before every route's: the request ID, the rate limit.
        first: list[Filter] = []
        rid = config.request_id
        if rid is not False:
            first.append(RequestIdFilter(DEFAULT_ID if rid is True else str(rid).encode("latin-1")))
        if self.rate is not None:
            first.append(RateFilter(self.rate))
        last: tuple[Filter, ...] = ()
        if limits.min_body_rate is not None:
            last = (BodyRateFloor(limits.min_body_rate, limits.body_rate_window),)
        self.unrouted: tuple[Filter, ...] = (*first, *last)
        self.route_rates: list[RateLimiter | None] = []
        self.pipelines: list[tuple[Filter, ...]] = []
        for i, route in enumerate(config.effective_routes()):
            kept = before[i] if i < len(before) else None
            rate, filters = _route_filters(route, workers, table, kept, f"{self.name}/{i}")
            self.route_rates.append(rate)
            self.pipelines.append((*first, *filters, *last))
        # Whether requests need looking at, or only connections (then `screen` is a no-op).
        self.screens = (
            self.trusted is not None
            or self.max_requests is not None
            or bool(self.unrouted)
            or any(self.pipelines)
        )

    def needed(self) -> bool:
        return self.screens or self.ips is not None or self.connections.active

    def pipeline(self, route: Route | None) -> tuple[Filter, ...]:
        """The filters a request to `route` passes, in order (None: no route matched)."""
        return self.unrouted if route is None else self.pipelines[route.index]

    # Connections

    def admit(self, conn: ClientConnection) -> bool:
        """A new connection: False when it was refused (answered and closing)."""
        ip = conn.client_ip.decode("latin-1")
        ips = self.ips
        # A trusted proxy's clients are judged per request, by X-Forwarded-For.
        judged_here = self.trusted is None or not self.trusted.contains(ip)
        if ips is not None and judged_here and not ips.permits(ip):
            refuse_connection(conn, 403, NOT_ALLOWED, "ip_denied")
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
        return screen(exchange, self, route)


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
