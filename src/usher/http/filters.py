"""The request-side security checks as filters: each looks at a routed request through a
`RequestView` and returns a `Verdict`, a frozen value saying what should happen. Filters never
hold the exchange or the client connection; the exchange applies their verdicts
(usher.http.screening), in the order the listener's guard put the filters in.

A listener's guard (usher.http.edge) builds them once per listener and route, when the config
loads, so a request passes only the filters that are configured for it.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from usher import waf  # at run time: the compiled dataclasses resolve their field types
from usher.limits import retry_after
from usher.routing import split_target

if TYPE_CHECKING:
    from usher.acl import IpList
    from usher.http.codec import Request
    from usher.http.ratelimit import RateLimiter

Header = tuple[bytes, bytes]

# A request ID from the client is kept when it is at most this long and made of these.
REQUEST_ID_MAX = 128
_ID_CHARS = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.:")
DEFAULT_ID = b"X-Request-ID"
FILTERED = "the request was refused by a filter rule"
NOT_ALLOWED = "your address is not allowed here"


# Verdicts


@dataclass(frozen=True, slots=True)
class Continue:
    """Nothing to do: the next filter, or the backend."""


@dataclass(frozen=True, slots=True)
class Respond:
    """Answer the request here, with an error; `close`: end the connection after it even when
    the body has been read (otherwise only while the body is still coming)."""

    status: int
    detail: str
    reason: str
    headers: tuple[Header, ...] = ()
    close: bool = False


@dataclass(frozen=True, slots=True)
class AddHeaders:
    """Headers for the backend's request and for the answer to the client. `replaces`: a header
    name whose copies from the client go first; `request_id`: the ID for the access log."""

    request: tuple[Header, ...] = ()
    response: tuple[Header, ...] = ()
    replaces: bytes | None = None
    request_id: bytes | None = None


@dataclass(frozen=True, slots=True)
class InspectBody:
    """Hold the request until `rules` have seen the first `rules.body_limit` bytes of the body;
    `found`: what the head rules found (tags so far)."""

    rules: waf.RequestFilter
    found: waf.Verdict


@dataclass(frozen=True, slots=True)
class MeterBody:
    """The body must arrive at `rate` bytes a second at least, measured over `window` seconds,
    from when the client may send it."""

    rate: float
    window: float


Verdict = Continue | Respond | AddHeaders | InspectBody | MeterBody
CONTINUE = Continue()


class RequestView:
    """What a filter may look at: the request (read, never written), the client's address
    (after `trusted_proxies`) and the time the request is screened at."""

    __slots__ = ("client_ip", "now", "request")

    def __init__(self, request: Request, client_ip: str, now: float) -> None:
        self.request = request
        self.client_ip = client_ip
        self.now = now


class Filter(Protocol):
    def check(self, view: RequestView) -> Verdict: ...


# Filters


class AddressFilter:
    """An allow or deny list of client addresses."""

    __slots__ = ("ips",)

    def __init__(self, ips: IpList) -> None:
        self.ips = ips

    def check(self, view: RequestView) -> Verdict:
        if self.ips.permits(view.client_ip):
            return CONTINUE
        return Respond(403, NOT_ALLOWED, "ip_denied")


class RateFilter:
    """A rate limit: 429 with Retry-After once the key's bucket is empty."""

    __slots__ = ("limiter",)

    def __init__(self, limiter: RateLimiter) -> None:
        self.limiter = limiter

    def check(self, view: RequestView) -> Verdict:
        limiter = self.limiter
        wait = limiter.store.take(limiter.key(view.request, view.client_ip), view.now)
        if wait <= 0.0:
            return CONTINUE
        seconds = b"%d" % retry_after(wait)
        return Respond(429, "too many requests", "rate_limited", ((b"Retry-After", seconds),))


class RequestIdFilter:
    """The request ID header: the client's when it is a sane one, else a new random one, sent
    to the backend and back to the client."""

    __slots__ = ("lname", "name")

    def __init__(self, name: bytes) -> None:
        self.name = name
        self.lname = name.lower()

    def check(self, view: RequestView) -> Verdict:
        lname = self.lname
        value = None
        for n, v in view.request.headers:
            if n.lower() == lname:
                if 0 < len(v) <= REQUEST_ID_MAX and _ID_CHARS.issuperset(v):
                    value = v
                break
        if value is None:
            value = secrets.token_hex(16).encode()
        # The client's copy goes and the ID is added after the header forwarding, as filter
        # tags are: a client's `Connection: X-Request-ID` cannot strip it from the backend's.
        header = ((self.name, value),)
        return AddHeaders(header, header, replaces=lname, request_id=value)


class RuleFilter:
    """A route's filter rules on the head: refuse, tag, or hand the body to the body rules."""

    __slots__ = ("rules",)

    def __init__(self, rules: waf.RequestFilter) -> None:
        self.rules = rules

    def check(self, view: RequestView) -> Verdict:
        rules = self.rules
        request = view.request
        path, query = split_target(request.target)
        found = rules.check_head(request, path, query)
        if found.denied_by is not None:
            return Respond(403, FILTERED, "filtered")
        if rules.body_rules and request.has_body:
            return InspectBody(rules, found)
        if found.tags:
            return AddHeaders(((rules.tag_header, ",".join(found.tags).encode()),))
        return CONTINUE


def check_body(inspect: InspectBody, body: bytes) -> Verdict:
    """The body rules' word on the first bytes of the body: refuse (and close: the rest of
    the body is not read), tag, or let it through."""
    rules = inspect.rules
    found = rules.check_body(body, inspect.found)
    if found.denied_by is not None:
        return Respond(403, FILTERED, "filtered", close=True)
    if found.tags:
        return AddHeaders(((rules.tag_header, ",".join(found.tags).encode()),))
    return CONTINUE


class BodyRateFloor:
    """`min_body_rate`: a request with a body has it metered."""

    __slots__ = ("meter",)

    def __init__(self, rate: float, window: float) -> None:
        self.meter = MeterBody(rate, window)

    def check(self, view: RequestView) -> Verdict:
        return self.meter if view.request.has_body else CONTINUE
