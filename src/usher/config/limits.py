"""Limits on clients: rate limits and IP lists (listener and route), sizes, connections and
client-side timeouts."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any

from annotated_types import Gt
from pydantic import Field

from usher.config.base import _get, _Model, _Problem
from usher.config.defaults import (
    DEFAULT_BODY_RATE_WINDOW,
    DEFAULT_BODY_TIMEOUT,
    DEFAULT_HEADER_TIMEOUT,
    DEFAULT_KEEPALIVE_TIMEOUT,
    DEFAULT_MAX_BODY_SIZE,
    DEFAULT_MAX_HEADER_SIZE,
    DEFAULT_MAX_HEADERS,
    DEFAULT_MAX_PIPELINED,
    DEFAULT_MAX_REQUEST_LINE,
    DEFAULT_RATE_KEY,
    DEFAULT_RATE_TABLE_SIZE,
    DEFAULT_WRITE_TIMEOUT,
)
from usher.config.validators import _RateKey
from usher.config.values import ByteRate, ByteSize, Cidr, Duration, Rate


class RateLimitFields(_Model):
    """A token bucket and the access lists; shared by listener and route `limits`."""

    rate: Rate | None = Field(
        default=None,
        description="Requests allowed per key, refilled continuously (`100/s`, `600/m`); "
        "over it: 429 with Retry-After. null: no rate limit. With `--workers N` the "
        "buckets are shared: the rate holds over all workers.",
    )
    burst: int | None = Field(
        default=None,
        gt=0,
        description="Bucket size: requests allowed at once after a quiet spell. "
        "null: one second of `rate` (at least 1).",
    )
    key: _RateKey = Field(
        default=DEFAULT_RATE_KEY,
        description="What a bucket is kept per: `source_ip` (the client address), "
        "`header:<Name>`, `cookie:<name>` (falling back to the client address when absent) "
        "or `route` (one bucket for the route or listener).",
    )
    allow: list[Cidr] | None = Field(
        default=None,
        description="Only clients in these networks are served (403 otherwise). null: all.",
    )
    deny: list[Cidr] = Field(
        default=[], description="Clients in these networks get 403; deny wins over allow."
    )

    @classmethod
    def _rules(cls, data: Mapping[str, Any]) -> list[_Problem]:
        if _get(data, "burst") is not None and _get(data, "rate") is None:
            return [(("burst",), "needs rate")]
        return []


class RouteLimits(RateLimitFields):
    """Rate limit and IP lists of one route, checked after the listener's."""


class ListenerLimits(RateLimitFields):
    """Limits on clients: sizes (413, 414, 431), rates (429), connections (503), IP lists (403),
    slow bodies (408) and keep-alive use."""

    max_body_size: Annotated[ByteSize, Gt(0)] | None = Field(
        default=DEFAULT_MAX_BODY_SIZE,
        description="Largest request body accepted; null: no limit.",
    )
    max_header_size: ByteSize = Field(
        default=DEFAULT_MAX_HEADER_SIZE,
        gt=0,
        description="Largest request head: request line and all headers together.",
    )
    max_request_line: ByteSize = Field(
        default=DEFAULT_MAX_REQUEST_LINE,
        gt=0,
        description="Longest request target (the URI of the request line); 414 beyond.",
    )
    max_headers: int = Field(
        default=DEFAULT_MAX_HEADERS, gt=0, description="Most header fields in a request."
    )
    max_connections: int | None = Field(
        default=None,
        gt=0,
        description="Most open client connections; over it new ones get 503 and are closed. "
        "null: no limit. Per worker: limit/N with `--workers N`.",
    )
    connections_per_ip: int | None = Field(
        default=None,
        gt=0,
        description="Most open connections from one client address; over it: 503 and closed. "
        "null: no limit. Per worker: limit/N (rounded up) with `--workers N`.",
    )
    rate_table_size: int = Field(
        default=DEFAULT_RATE_TABLE_SIZE,
        gt=0,
        description="Most rate-limit buckets kept (least recently used go first; a full "
        "bucket is the same as none).",
    )
    min_body_rate: ByteRate | None = Field(
        default=None,
        description="Slowest request body accepted, averaged over `body_rate_window` (408 "
        "below it; time spent waiting on the backend does not count). null: no floor.",
    )
    body_rate_window: Duration = Field(
        default=DEFAULT_BODY_RATE_WINDOW, gt=0, description="Window of `min_body_rate`."
    )
    max_requests_per_connection: int | None = Field(
        default=None,
        gt=0,
        description="After this many requests a connection's answer says Connection: close. "
        "null: no limit.",
    )
    max_pipelined: int = Field(
        default=DEFAULT_MAX_PIPELINED,
        gt=0,
        description="Most requests outstanding on one connection (the one being answered "
        "included); the next gets 429 and the connection closes after the answers before it.",
    )


class ListenerTimeouts(_Model):
    """How long to wait on clients."""

    header: Duration = Field(
        default=DEFAULT_HEADER_TIMEOUT,
        gt=0,
        description="To receive a request's headers, from its first byte (408 after).",
    )
    body: Duration = Field(
        default=DEFAULT_BODY_TIMEOUT,
        gt=0,
        description="Between two reads of a request body.",
    )
    idle: Duration = Field(
        default=DEFAULT_KEEPALIVE_TIMEOUT,
        gt=0,
        description="Keep-alive: between the end of a response and the next request.",
    )
    send: Duration = Field(
        default=DEFAULT_WRITE_TIMEOUT,
        gt=0,
        description=(
            "For a client that does not read our response (between two writes); also the"
            " most a closing connection waits for the client to take what it still holds."
        ),
    )
