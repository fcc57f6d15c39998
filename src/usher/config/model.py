"""The whole config file (`Config`), the admin and cluster sections, and the rules across
listeners and pools (unknown pools, what layer 4 and DNS can do)."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, Field

from usher.config.addresses import Address, HostPort, _address_or_none
from usher.config.base import _get, _items, _Loc, _Model, _Problem
from usher.config.defaults import CLUSTER_SHARES, DEFAULT_ADMIN_PORT, DEFAULT_CLUSTER_TIMEOUT
from usher.config.listener import L4_PROTOCOLS, Listener
from usher.config.pool import PoolConfig
from usher.config.validators import _directory, _has_control, _PoolName
from usher.config.values import Duration


class AdminConfig(_Model):
    """The admin API, metrics and dashboard: served by the control side on their own address."""

    bind: Address = Field(
        default=HostPort("127.0.0.1", DEFAULT_ADMIN_PORT),
        description="host:port of the admin API (loopback by default: it changes the balancer).",
    )
    token: str | None = Field(
        default=None,
        min_length=1,
        description='When set, the API needs "Authorization: Bearer <token>"; the dashboard asks.',
    )


_STORE_URL = re.compile(r"(redis|rediss)://[^\s/]+(/[0-9]+)?|unix:///\S+")


def _store_url(value: str) -> str:
    if not _STORE_URL.fullmatch(value):
        raise ValueError(
            f"{value!r} is not a store address: redis://HOST:PORT/DB, rediss://... or "
            "unix:///path/to/redis.sock"
        )
    return value


def _node_name(value: str) -> str:
    if not value or _has_control(value) or "/" in value:
        raise ValueError(f"{value!r} is not a node name (no '/', spaces or control characters)")
    return value


class ClusterConfig(_Model):
    """State shared by several usher nodes in Redis or Valkey (docs/cluster.md)."""

    redis: Annotated[str, AfterValidator(_store_url)] = Field(
        description="The store: redis://HOST:PORT/DB, rediss://... (TLS) or unix:///path.sock."
    )
    node: Annotated[str, AfterValidator(_node_name)] | None = Field(
        default=None,
        description="This node's name, in logs and usher_cluster_up; null: the host name.",
    )
    share: list[Literal["rate_limits", "sticky", "ejections"]] = Field(
        default=list(CLUSTER_SHARES),
        description="What the nodes share: rate limits, sticky tables (source_ip, header), "
        "passive ejections.",
    )
    timeout: Duration = Field(
        default=DEFAULT_CLUSTER_TIMEOUT,
        gt=0,
        description="Longest a request waits on the store before it decides on local state.",
    )


class Config(_Model):
    """The whole config file."""

    python_path: list[Annotated[str, AfterValidator(_directory)]] = Field(
        default=[],
        description=(
            "Directories (relative to the config file) put first on `sys.path`, for custom "
            "algorithms (`algorithm: package.module:Name`) and hooks."
        ),
    )

    listeners: list[Listener] = Field(min_length=1, description="Where clients connect.")
    pools: dict[_PoolName, PoolConfig] = Field(
        default={}, description="Backend pools by name (letters, digits and `_.-`)."
    )
    admin: AdminConfig | None = Field(
        default=None, description="The admin API, /metrics and the dashboard; null: not served."
    )
    cluster: ClusterConfig | None = Field(
        default=None,
        description="Rate limits, sticky tables and ejections shared with other usher nodes "
        "through Redis; null: this node's own.",
    )

    @classmethod
    def _rules(cls, data: Mapping[str, Any]) -> list[_Problem]:
        problems: list[_Problem] = []
        names: dict[str, int] = {}
        binds: dict[HostPort, int] = {}
        for index, listener in _items(_get(data, "listeners")):
            name = _get(listener, "name")
            if isinstance(name, str) and name in names:
                where = f"listeners[{names[name]}]"
                problems.append(
                    (
                        ("listeners", index, "name"),
                        f"duplicate listener name {name!r} (also {where})",
                    )
                )
            elif isinstance(name, str):
                names[name] = index
            bind = _address_or_none(_get(listener, "bind"))
            # Port 0 is a fresh free port every time, so it never collides.
            if bind is not None and bind.port != 0 and bind in binds:
                where = f"listeners[{binds[bind]}]"
                problems.append(
                    (("listeners", index, "bind"), f"{bind} is already bound by {where}")
                )
            elif bind is not None:
                binds[bind] = index
        pools = _get(data, "pools")
        if pools is None:
            pools = {}
        if isinstance(pools, Mapping):
            problems += _unknown_pools(data, {str(name) for name in pools})
            problems += _l4_pool_rules(data, pools)
            problems += _dns_pool_rules(data, pools)
        return problems


def _dns_pool_rules(data: Mapping[str, Any], pools: Mapping[str, Any]) -> list[_Problem]:
    """A pool a dns record answers from needs IP addresses: they become A and AAAA records."""
    problems: list[_Problem] = []
    reported: set[tuple[str, int]] = set()
    for _, listener in _items(_get(data, "listeners")):
        for _, record in _items(_get(_get(listener, "dns"), "records")):
            used = [p for _, p in _items(_get(record, "pools"))]
            used += [_get(rule, "pool") for _, rule in _items(_get(record, "geo"))]
            for pool_name in used:
                pool = pools.get(pool_name) if isinstance(pool_name, str) else None
                for b, backend in _items(_get(pool, "backends")):
                    address = _address_or_none(_get(backend, "address"))
                    if address is None or (pool_name, b) in reported:
                        continue
                    try:
                        ipaddress.ip_address(address.host)
                    except ValueError:
                        reported.add((pool_name, b))
                        problems.append(
                            (
                                ("pools", pool_name, "backends", b, "address"),
                                f"{address.host} is not an IP address: record "
                                f"{_get(record, 'name')} answers it as A/AAAA",
                            )
                        )
    return problems


# Algorithms that need something only an HTTP request has (a response time).
_HTTP_ONLY_ALGORITHMS = frozenset({"least_response_time"})


def _l4_pool_rules(data: Mapping[str, Any], pools: Mapping[str, Any]) -> list[_Problem]:
    """A pool used by a tcp, udp or tls_passthrough listener must not need what only an HTTP
    request has (headers, cookies, paths, statuses); reported at the pool, naming the listener."""
    problems: list[_Problem] = []
    for _, listener in _items(_get(data, "listeners")):
        protocol = _get(listener, "protocol")
        if protocol not in L4_PROTOCOLS:
            continue
        name = _get(listener, "name")
        used = [_get(listener, "pool")] + [
            _get(r, "pool") for _, r in _items(_get(listener, "routes"))
        ]
        for pool_name in dict.fromkeys(p for p in used if isinstance(p, str)):
            pool = pools.get(pool_name)
            if not isinstance(pool, Mapping):
                continue
            why = f"pool {pool_name} is used by {protocol} listener {name!r}"
            at: _Loc = ("pools", pool_name)
            algorithm = _get(pool, "algorithm")
            if algorithm in _HTTP_ONLY_ALGORITHMS:
                problems.append(((*at, "algorithm"), f"{algorithm} needs HTTP responses; {why}"))
            key = _get(_get(pool, "hash"), "key")
            if algorithm == "consistent_hash" and key not in (None, "source_ip"):
                problems.append(
                    ((*at, "hash", "key"), f"only source_ip can be hashed at layer 4; {why}")
                )
            sticky = _get(_get(pool, "sticky"), "type")
            if sticky is not None and sticky != "source_ip":
                problems.append(
                    ((*at, "sticky", "type"), f"only source_ip persistence works at layer 4; {why}")
                )
            if _get(_get(pool, "retries"), "on"):
                problems.append(
                    ((*at, "retries", "on"), f"there are no statuses to retry at layer 4; {why}")
                )
            if protocol == "udp":
                for key in ("tls", "send_proxy_protocol"):
                    if _get(pool, key) is not None:
                        problems.append(((*at, key), f"not for udp; {why}"))
            if _get(pool, "tls") is not None and protocol == "tls_passthrough":
                problems.append(((*at, "tls"), f"passthrough relays the client's own TLS; {why}"))
            if _get(pool, "tls") is not None and _get(listener, "zero_copy"):
                problems.append(
                    ((*at, "tls"), f"zero_copy cannot encrypt (splice moves raw bytes); {why}")
                )
    return problems


def _unknown_pools(data: Mapping[str, Any], known: set[str]) -> list[_Problem]:
    """Every reference to a pool that is not defined, with its location."""
    refs: list[tuple[_Loc, object]] = []
    for i, listener in _items(_get(data, "listeners")):
        refs.append((("listeners", i, "pool"), _get(listener, "pool")))
        for j, route in _items(_get(listener, "routes")):
            here: _Loc = ("listeners", i, "routes", j)
            refs.append(((*here, "pool"), _get(route, "pool")))
            for k, target in _items(_get(route, "split")):
                refs.append(((*here, "split", k, "pool"), _get(target, "pool")))
        for j, record in _items(_get(_get(listener, "dns"), "records")):
            here = ("listeners", i, "dns", "records", j)
            for k, name in _items(_get(record, "pools")):
                refs.append(((*here, "pools", k), name))
            for k, rule in _items(_get(record, "geo")):
                refs.append(((*here, "geo", k, "pool"), _get(rule, "pool")))
    hint = f"known: {', '.join(sorted(known))}" if known else "no pools are defined"
    return [
        (loc, f"unknown pool {name!r} ({hint})")
        for loc, name in refs
        if isinstance(name, str) and name not in known
    ]
