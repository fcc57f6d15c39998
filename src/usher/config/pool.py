"""Pools: backends, and how usher balances, retries, persists and times out over them."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, Field

from usher.config.addresses import BackendAddress, HostPort, _address_or_none
from usher.config.base import _get, _items, _Model, _Problem
from usher.config.defaults import (
    DEFAULT_ALGORITHM,
    DEFAULT_BACKEND_WEIGHT,
    DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_DRAIN_TIMEOUT,
    DEFAULT_EWMA_DECAY,
    DEFAULT_FAIL_TIMEOUT,
    DEFAULT_MAX_EJECTION_PERCENT,
    DEFAULT_MAX_EJECTION_TIME,
    DEFAULT_MAX_FAILS,
    DEFAULT_MAX_IDLE_CONNECTIONS,
    DEFAULT_PANIC_THRESHOLD,
    DEFAULT_QUEUE_SIZE,
    DEFAULT_QUEUE_TIMEOUT,
    DEFAULT_READ_TIMEOUT,
    DEFAULT_RETRY_ATTEMPTS,
    DEFAULT_RETRY_BUDGET,
    DEFAULT_SEND_TIMEOUT,
    DEFAULT_STICKY_COOKIE,
    DEFAULT_STICKY_TABLE_SIZE,
    DEFAULT_STICKY_TTL,
    DEFAULT_TUNNEL_TIMEOUT,
    DEFAULT_UPSTREAM_IDLE_TIMEOUT,
)
from usher.config.discovery import Discovery
from usher.config.health import AgentOptions, HealthCheck
from usher.config.validators import _algorithm, _HeaderName, _ServerName
from usher.config.values import Duration, Percent, PositiveInteger


class BackendConfig(_Model):
    """One server of a pool; also the body of the admin API's POST of a backend.

    Strict types: `backup: 0` or `weight: "5"` are refused rather than read as `false` and 5,
    as the published schema (boolean, integer) says."""

    address: BackendAddress = Field(description="host:port of the server (port 1..65535).")
    weight: PositiveInteger = Field(
        default=DEFAULT_BACKEND_WEIGHT, description="Relative share of the traffic."
    )
    backup: bool = Field(
        default=False,
        strict=True,
        description="Only used when no non-backup backend is available: `true` or `false`.",
    )
    max_connections: PositiveInteger | None = Field(
        default=None,
        description=(
            "Most requests in flight to this backend (over all workers); more wait in the "
            "pool's `queue` (or get 503 without one). null: no limit."
        ),
    )


class PassiveHealth(_Model):
    """Marking backends down from failures of real requests (as nginx's max_fails)."""

    max_fails: int = Field(
        default=DEFAULT_MAX_FAILS,
        ge=0,
        description=(
            "Failures in a row on real traffic (connect errors, timeouts, invalid answers) "
            "that eject a backend; an answer resets the count; 0 disables."
        ),
    )
    fail_timeout: Duration = Field(
        default=DEFAULT_FAIL_TIMEOUT,
        gt=0,
        description=(
            "How long a backend stays out after `max_fails` failures in a row; each new "
            "ejection in a row lasts longer (2x, 3x...) up to `max_ejection_time`."
        ),
    )
    consecutive_5xx: int = Field(
        default=0,
        ge=0,
        description="5xx answers in a row that also eject a backend (as Envoy's); 0 disables.",
    )
    max_ejection_percent: Percent = Field(
        default=DEFAULT_MAX_EJECTION_PERCENT,
        description="Never eject more than this share of the pool's backends at once.",
    )
    max_ejection_time: Duration = Field(
        default=DEFAULT_MAX_EJECTION_TIME,
        gt=0,
        description="Longest a growing ejection may last.",
    )


class PoolTimeouts(_Model):
    """How long to wait on backends."""

    connect: Duration = Field(
        default=DEFAULT_CONNECT_TIMEOUT, gt=0, description="To establish a connection."
    )
    read: Duration = Field(
        default=DEFAULT_READ_TIMEOUT,
        gt=0,
        description="Between two reads of a response (including the wait for its head).",
    )
    send: Duration = Field(
        default=DEFAULT_SEND_TIMEOUT,
        gt=0,
        description=(
            "Between two writes of a request to a backend that does not read it; also the"
            " most a closing connection waits for the backend to take what it still holds."
        ),
    )
    idle: Duration = Field(
        default=DEFAULT_UPSTREAM_IDLE_TIMEOUT,
        gt=0,
        description="An idle keep-alive connection to a backend is closed after this.",
    )
    tunnel: Duration = Field(
        default=DEFAULT_TUNNEL_TIMEOUT,
        gt=0,
        description="A WebSocket (upgrade) tunnel with no traffic either way is closed after this.",
    )


class Retries(_Model):
    """Trying another backend when one fails before answering."""

    attempts: int = Field(
        default=DEFAULT_RETRY_ATTEMPTS,
        ge=0,
        description="How many other backends to try after the first fails (2: at most 3 tried).",
    )
    on: list[int] = Field(
        default=[],
        description=(
            "Answer statuses that are retried on another backend, for idempotent requests "
            "without a body (e.g. [502, 503, 504]). Connect failures are always retried."
        ),
    )
    budget: Percent = Field(
        default=DEFAULT_RETRY_BUDGET,
        description=(
            "Status retries may add at most this share to the pool's requests, so a failing "
            "pool is not hit with a multiple of its load."
        ),
    )

    @classmethod
    def _rules(cls, data: Mapping[str, Any]) -> list[_Problem]:
        problems: list[_Problem] = []
        for index, status in _items(_get(data, "on")):
            if isinstance(status, int) and not 400 <= status <= 599:
                problems.append((("on", index), f"must be an error status 400..599 (got {status})"))
        return problems


class HashOptions(_Model):
    """The key of `consistent_hash` (and its bounded-load option)."""

    key: Literal["source_ip", "header", "cookie", "path"] = Field(
        default="source_ip", description="What requests are hashed on."
    )
    name: _HeaderName | None = Field(
        default=None, description="The header or cookie name, for key header or cookie."
    )
    balance_factor: float | None = Field(
        default=None,
        gt=1.0,
        description=(
            "Bounded load (HAProxy's hash-balance-factor as a ratio): no backend takes more "
            "than this times the average load; 1.25 is typical. null: off."
        ),
    )

    @classmethod
    def _rules(cls, data: Mapping[str, Any]) -> list[_Problem]:
        key = _get(data, "key")
        if key in ("header", "cookie") and _get(data, "name") is None:
            return [(("name",), f"required for key {key}")]
        return []


class StickyCookie(_Model):
    """Persistence by a cookie that usher sets, naming the backend by an opaque id."""

    type: Literal["cookie"] = Field(description="`cookie`.")
    cookie: _HeaderName = Field(default=DEFAULT_STICKY_COOKIE, description="The cookie's name.")
    max_age: Duration | None = Field(
        default=None, description="The cookie's Max-Age; null: a session cookie."
    )
    path: str = Field(default="/", description="The cookie's Path.")
    secure: bool = Field(default=False, description="Mark the cookie Secure.")
    http_only: bool = Field(default=True, description="Mark the cookie HttpOnly.")


class StickySourceIp(_Model):
    """Persistence by client address: a table remembers each client's backend."""

    type: Literal["source_ip"] = Field(description="`source_ip`.")
    ttl: Duration = Field(
        default=DEFAULT_STICKY_TTL, gt=0, description="An entry unused this long is forgotten."
    )
    table_size: int = Field(
        default=DEFAULT_STICKY_TABLE_SIZE, gt=0, description="Most entries kept (least recent go)."
    )


class StickyHeader(_Model):
    """Persistence by a request header, such as a session id."""

    type: Literal["header"] = Field(description="`header`.")
    header: _HeaderName = Field(description="The header whose value pins a backend.")
    ttl: Duration = Field(
        default=DEFAULT_STICKY_TTL, gt=0, description="An entry unused this long is forgotten."
    )
    table_size: int = Field(
        default=DEFAULT_STICKY_TABLE_SIZE, gt=0, description="Most entries kept (least recent go)."
    )


Sticky = Annotated[StickyCookie | StickySourceIp | StickyHeader, Field(discriminator="type")]


class QueueOptions(_Model):
    """Requests that wait for a backend under its `max_connections`."""

    size: int = Field(default=DEFAULT_QUEUE_SIZE, gt=0, description="Most waiting requests.")
    timeout: Duration = Field(
        default=DEFAULT_QUEUE_TIMEOUT, gt=0, description="Longest wait; then 503."
    )


class UpstreamTls(_Model):
    """TLS to the backends of a pool (re-encryption): verified by default."""

    verify: bool = Field(
        default=True, description="Verify the backend's certificate chain and name."
    )
    ca: str | None = Field(
        default=None, description="PEM file of the CAs to verify with; null: the system's."
    )
    server_name: _ServerName | None = Field(
        default=None,
        description="SNI sent and name verified; null: the backend's host (an IP is checked "
        "against the certificate's IP addresses).",
    )
    cert: str | None = Field(
        default=None, description="mTLS to backends: PEM client certificate (chain) to present."
    )
    key: str | None = Field(default=None, description="mTLS to backends: its private key.")

    @classmethod
    def _rules(cls, data: Mapping[str, Any]) -> list[_Problem]:
        if (_get(data, "cert") is None) != (_get(data, "key") is None):
            missing = "key" if _get(data, "key") is None else "cert"
            return [((missing,), "cert and key go together")]
        return []


class PoolConfig(_Model):
    """A group of backends serving the same content, and how to balance over them."""

    algorithm: Annotated[str, AfterValidator(_algorithm)] = Field(
        default=DEFAULT_ALGORITHM,
        description="Balancing algorithm, by name: e.g. `round_robin`; `usher schema` lists all. "
        'Or a class of your own by import path: `"package.module:Name"` (see `python_path`).',
    )
    backends: list[BackendConfig] = Field(
        default=[], description="The servers; may be empty when `discovery` finds them."
    )
    discovery: list[Discovery] = Field(
        default=[],
        description="Sources of backends found at run time, joined to `backends`: dns, etcd, "
        "file (docs/discovery.md).",
    )
    passive_health: PassiveHealth = Field(
        default=PassiveHealth(), description="Marking backends down on failed requests."
    )
    timeouts: PoolTimeouts = Field(default=PoolTimeouts(), description="Backend-side timeouts.")
    retries: Retries = Field(default=Retries(), description="Retrying on another backend.")
    max_idle_connections: int = Field(
        default=DEFAULT_MAX_IDLE_CONNECTIONS,
        ge=0,
        description="Idle keep-alive connections kept per backend, for reuse.",
    )
    hash: HashOptions = Field(
        default=HashOptions(), description="consistent_hash: what to hash, bounded load."
    )
    ewma_decay: Duration = Field(
        default=DEFAULT_EWMA_DECAY,
        gt=0,
        description="p2c and least_response_time: how fast old latencies are forgotten.",
    )
    agent: AgentOptions | None = Field(
        default=None,
        description="Load reports from the backends: needed by `resource` and health type agent.",
    )
    sticky: Sticky | None = Field(
        default=None,
        description=(
            "Session persistence; it overrides the algorithm only while the pinned backend "
            "is ready."
        ),
    )
    queue: QueueOptions | None = Field(
        default=None,
        description="Let requests wait for a backend at its `max_connections`; null: 503 at once.",
    )
    slow_start: Duration | None = Field(
        default=None,
        gt=0,
        description="A backend that becomes ready ramps its weight up to full over this time.",
    )
    health_check: HealthCheck | None = Field(
        default=None, description="Active health checks; null: none (passive health still applies)."
    )
    tls: UpstreamTls | None = Field(
        default=None,
        description="Re-encrypt: speak TLS to the backends (http and tcp listeners); null: plain.",
    )
    send_proxy_protocol: Literal["v1", "v2"] | None = Field(
        default=None,
        description="Open each backend connection with a PROXY protocol header carrying the "
        "client's address (as HAProxy's send-proxy). On http, a connection that carries one "
        "client's header is reused for that client's connection only.",
    )
    panic_threshold: Percent = Field(
        default=DEFAULT_PANIC_THRESHOLD,
        description=(
            "Panic mode: when fewer than this share of backends is healthy, spread over all of "
            "them instead of melting the survivors (as Envoy's). 0%: never."
        ),
    )
    drain_timeout: Duration = Field(
        default=DEFAULT_DRAIN_TIMEOUT,
        gt=0,
        description=(
            "How long a draining backend waits for its requests in flight; then it is disabled "
            "(or removed) whatever is left, and those requests finish on their own."
        ),
    )

    @classmethod
    def _rules(cls, data: Mapping[str, Any]) -> list[_Problem]:
        problems: list[_Problem] = []
        has_agent = _get(data, "agent") is not None
        if _get(data, "algorithm") == "resource" and not has_agent:
            problems.append((("agent",), "required by algorithm resource"))
        if _get(_get(data, "health_check"), "type") == "agent" and not has_agent:
            problems.append((("agent",), "required by health_check type agent"))
        backends = _get(data, "backends")
        if backends in (None, [], ()) and not _items(_get(data, "discovery")):
            wanted = "required" if backends is None else "needs at least 1 item"
            problems.append((("backends",), f"{wanted} (or a discovery source)"))
        seen: dict[HostPort, int] = {}
        for index, backend in _items(_get(data, "backends")):
            address = _address_or_none(_get(backend, "address"))
            if address is None:
                continue
            if address in seen:
                problems.append(
                    (
                        ("backends", index, "address"),
                        f"duplicate backend {address} (also backends[{seen[address]}])",
                    )
                )
            else:
                seen[address] = index
        return problems
