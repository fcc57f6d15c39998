"""Sources of backends found at run time: DNS, etcd, a file."""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import Field, PlainSerializer, PlainValidator, WithJsonSchema

from usher.config.addresses import Address, HostPort, parse_address
from usher.config.base import _get, _Model, _Problem
from usher.config.defaults import (
    DEFAULT_BACKEND_WEIGHT,
    DEFAULT_DISCOVERY_INTERVAL,
    DEFAULT_DISCOVERY_TIMEOUT,
)
from usher.config.validators import _DnsName, _Port
from usher.config.values import Duration, PositiveInteger


def _resolver(value: object) -> HostPort:
    """A DNS server to ask: an IP address and port (a name would need a resolver itself)."""
    bad = ValueError(
        f"invalid resolver {value!r} (expected ip:port or [v6]:port, e.g. 127.0.0.1:5353)"
    )
    if not isinstance(value, str):
        raise bad
    try:
        return HostPort(str(ipaddress.ip_address(value.strip())), 53)  # no port: the DNS one
    except ValueError:
        pass
    try:
        address = parse_address(value.strip(), allow_port_zero=False)
        ipaddress.ip_address(address.host)
    except ValueError:
        raise bad from None
    return address


_Resolver = Annotated[
    HostPort,
    PlainValidator(_resolver),
    PlainSerializer(str, return_type=str, when_used="json"),
    WithJsonSchema(
        {"type": "string", "description": "ip:port or [v6]:port of a DNS server (port 53 if none)."}
    ),
]


class DnsDiscovery(_Model):
    """Backends from DNS: SRV records (port, weight from the record) or A/AAAA with `port`."""

    type: Literal["dns"] = Field(description="dns.")
    name: _DnsName = Field(
        description="The name to look up: `_service._proto.name` asks for SRV, any other for "
        "A and AAAA (then `port` is required)."
    )
    port: _Port | None = Field(
        default=None, description="A/AAAA: the backends' port; null for SRV (the record says)."
    )
    resolver: _Resolver | None = Field(
        default=None, description="The DNS server to ask (ip:port); null: the system's."
    )
    interval: Duration = Field(
        default=DEFAULT_DISCOVERY_INTERVAL,
        gt=0,
        description="Re-resolve at least this often; sooner when the records' TTL ends first.",
    )
    weight: PositiveInteger = Field(
        default=DEFAULT_BACKEND_WEIGHT, description="A/AAAA: each backend's weight."
    )
    timeout: Duration = Field(default=DEFAULT_DISCOVERY_TIMEOUT, gt=0, description="Per query.")

    @classmethod
    def _rules(cls, data: Mapping[str, Any]) -> list[_Problem]:
        name = _get(data, "name")
        srv = isinstance(name, str) and name.startswith("_")
        if srv and _get(data, "port") is not None:
            return [(("port",), "an SRV name (starting with _) gives its own ports")]
        if isinstance(name, str) and not srv and _get(data, "port") is None:
            return [(("port",), "required for an A/AAAA name (SRV names start with _)")]
        return []


class EtcdDiscovery(_Model):
    """Backends from etcd: every key under `prefix` holds one backend entry as JSON."""

    type: Literal["etcd"] = Field(description="etcd.")
    endpoints: list[Address] = Field(
        default=["127.0.0.1:2379"],
        validate_default=True,
        min_length=1,
        description="host:port of etcd members (client URLs); tried in turn.",
    )
    prefix: str = Field(min_length=1, description="The key prefix, e.g. `/usher/pools/api/`.")
    interval: Duration = Field(
        default=DEFAULT_DISCOVERY_INTERVAL,
        gt=0,
        description="While etcd is unreachable: how long between reconnection attempts.",
    )
    timeout: Duration = Field(default=DEFAULT_DISCOVERY_TIMEOUT, gt=0, description="Per request.")


class FileDiscovery(_Model):
    """Backends from a YAML or JSON file: a list of backend entries (as a pool's `backends`,
    or plain `host:port` strings), re-read when it changes (as Prometheus file_sd)."""

    type: Literal["file"] = Field(description="file.")
    path: str = Field(min_length=1, description="The file; relative paths from the working dir.")
    interval: Duration = Field(
        default=DEFAULT_DISCOVERY_INTERVAL, gt=0, description="How often to look for a change."
    )


Discovery = Annotated[DnsDiscovery | EtcdDiscovery | FileDiscovery, Field(discriminator="type")]
