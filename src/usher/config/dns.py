"""What a `dns` listener serves: zones, records and response-rate limiting."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from pydantic import Field

from usher.config.base import _get, _items, _Model, _Problem
from usher.config.defaults import (
    DEFAULT_DNS_RESPONSES_PER_SECOND,
    DEFAULT_DNS_SLIP,
    DEFAULT_DNS_TTL,
)
from usher.config.validators import _DnsName
from usher.config.values import Cidr, Duration


class DnsGeoRule(_Model):
    """Clients from these networks are answered from this pool (first matching rule wins)."""

    clients: list[Cidr] = Field(
        min_length=1, description="Networks of the clients (or of their EDNS Client Subnet)."
    )
    pool: str = Field(description="The pool (site) that answers them.")


class DnsRecord(_Model):
    """One name the listener answers, and how it picks addresses from the pools' backends."""

    name: _DnsName = Field(description="The name, inside one of `dns.zones`.")
    policy: Literal["weighted", "failover", "geo", "latency", "round_robin", "all"] = Field(
        default="all",
        description="`weighted`: one backend drawn by weight over the healthy backends of "
        "`pools`; `failover`: the healthy backends of the first pool that has one; `geo`: the "
        "first `geo` rule matching the client's subnet; `latency`: the backends with the lowest "
        "health-check round trip from this node; `round_robin`: the healthy backends, rotated "
        "at each answer; `all`: every healthy backend.",
    )
    pools: list[str] = Field(
        default=[], description="The pools (sites) whose backends' addresses are answered."
    )
    geo: list[DnsGeoRule] = Field(
        default=[],
        description="`geo` only: rules tried in order, the first matching the client wins; a "
        "client no rule matches is answered from `pools` (the default); one whose site is down, "
        "from its next matching rule, then `pools`, then the other rules' sites.",
    )
    answers: int | None = Field(
        default=None, gt=0, description="Most addresses in one answer (default: no cap)."
    )
    ttl: Duration | None = Field(default=None, description="TTL of the answers (default: dns.ttl).")
    when_all_down: Literal["all", "servfail"] = Field(
        default="all",
        description="When no backend of the record is healthy: `all` answers every address "
        "(better a chance than nothing), `servfail` answers SERVFAIL.",
    )

    @classmethod
    def _rules(cls, data: Mapping[str, Any]) -> list[_Problem]:
        problems: list[_Problem] = []
        policy = _get(data, "policy") or "all"
        has_geo = bool(_get(data, "geo"))
        if policy == "geo" and not has_geo:
            problems.append((("geo",), "policy geo needs geo rules (clients -> pool)"))
        if policy != "geo" and has_geo:
            problems.append((("geo",), f"only for policy geo (this record is {policy})"))
        if policy != "geo" and not _get(data, "pools"):
            problems.append((("pools",), f"policy {policy} needs at least one pool"))
        return problems


class DnsRateLimit(_Model):
    """Response-rate limiting per client subnet (/24 for IPv4, /56 for IPv6), as BIND's RRL:
    a token bucket per subnet; past it, every `slip`-th answer goes out truncated (TC, empty,
    so that a real client retries over TCP) and the others are dropped. TCP is not limited."""

    responses_per_second: float = Field(
        default=DEFAULT_DNS_RESPONSES_PER_SECOND, gt=0, description="Answers per second."
    )
    burst: float | None = Field(
        default=None, gt=0, description="Bucket size (default: one second's worth)."
    )
    slip: int = Field(
        default=DEFAULT_DNS_SLIP,
        ge=0,
        description="Every slip-th limited answer is sent truncated; 0 drops them all.",
    )


class DnsSettings(_Model):
    """What a `dns` listener serves: its zones and their records."""

    zones: list[_DnsName] = Field(
        min_length=1, description="Zones answered with authority; REFUSED outside them."
    )
    ttl: Duration = Field(default=DEFAULT_DNS_TTL, description="TTL of the answers by default.")
    nameservers: list[_DnsName] = Field(
        default=[],
        description="The zones' NS names (also the SOA's primary); default `ns.<zone>`.",
    )
    records: list[DnsRecord] = Field(default=[], description="The names answered.")
    rate_limit: DnsRateLimit | None = Field(
        default=DnsRateLimit(), description="Response-rate limiting on UDP; null: none."
    )

    @classmethod
    def _rules(cls, data: Mapping[str, Any]) -> list[_Problem]:
        problems: list[_Problem] = []
        zones = [
            z.strip().lower().rstrip(".")
            for _, z in _items(_get(data, "zones"))
            if isinstance(z, str)
        ]
        seen: dict[str, int] = {}
        for index, record in _items(_get(data, "records")):
            name = _get(record, "name")
            if not isinstance(name, str):
                continue
            name = name.strip().lower().rstrip(".")
            if zones and not any(name == z or name.endswith("." + z) for z in zones):
                problems.append(
                    (
                        ("records", index, "name"),
                        f"{name} is in none of the zones ({', '.join(zones)})",
                    )
                )
            if name in seen:
                problems.append(
                    (
                        ("records", index, "name"),
                        f"duplicate record {name} (also records[{seen[name]}])",
                    )
                )
            else:
                seen[name] = index
        return problems
