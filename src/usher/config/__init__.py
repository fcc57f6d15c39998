"""Load the YAML config file into frozen, validated models, reporting every problem at once."""

from __future__ import annotations

import difflib
import ipaddress
import json
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import UnionType
from typing import Annotated, Any, Final, Literal, Self, Union, get_args, get_origin

import yaml
from annotated_types import Gt
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ModelWrapValidatorHandler,
    PlainSerializer,
    PlainValidator,
    ValidationError,
    WithJsonSchema,
    model_validator,
)
from pydantic_core import ErrorDetails, InitErrorDetails, PydanticCustomError

from usher.balancing import custom as custom_algorithms
from usher.balancing import registered_names
from usher.errors import ConfigError, ConfigIssue
from usher.tls_profile import (
    DEFAULT_CURVES,
    INTERMEDIATE_CIPHERS,
    check_cipher_string,
    check_curves,
)

__all__ = [
    "DEFAULT_ALGORITHM",
    "DEFAULT_BACKEND_WEIGHT",
    "DEFAULT_BODY_TIMEOUT",
    "DEFAULT_CONNECT_TIMEOUT",
    "DEFAULT_FAIL_TIMEOUT",
    "DEFAULT_HEADER_TIMEOUT",
    "DEFAULT_KEEPALIVE_TIMEOUT",
    "DEFAULT_MAX_BODY_SIZE",
    "DEFAULT_MAX_FAILS",
    "DEFAULT_MAX_HEADERS",
    "DEFAULT_MAX_HEADER_SIZE",
    "DEFAULT_MAX_IDLE_CONNECTIONS",
    "DEFAULT_MAX_REQUEST_LINE",
    "DEFAULT_PROTOCOL",
    "DEFAULT_READ_TIMEOUT",
    "DEFAULT_REDIRECT_STATUS",
    "DEFAULT_RETRY_ATTEMPTS",
    "DEFAULT_SEND_TIMEOUT",
    "DEFAULT_TUNNEL_TIMEOUT",
    "DEFAULT_UPSTREAM_IDLE_TIMEOUT",
    "DEFAULT_WRITE_TIMEOUT",
    "Address",
    "BackendAddress",
    "BackendConfig",
    "ByteSize",
    "ClusterConfig",
    "Config",
    "Discovery",
    "DnsDiscovery",
    "Duration",
    "EtcdDiscovery",
    "FileDiscovery",
    "HeaderRewrite",
    "HostPort",
    "Listener",
    "ListenerLimits",
    "ListenerTimeouts",
    "ListenerTls",
    "MaxAge",
    "PassiveHealth",
    "PoolConfig",
    "PoolTimeouts",
    "PositiveInteger",
    "Redirect",
    "Retries",
    "Route",
    "RouteMatch",
    "SplitTarget",
    "TlsCertificate",
    "backend_address_schema",
    "config_schema",
    "duration_pattern",
    "load_config",
    "parse_address",
    "parse_config",
    "parse_duration",
    "parse_max_age",
    "parse_size",
]

# Listener defaults.
DEFAULT_PROTOCOL: Final = "http"
DEFAULT_MAX_BODY_SIZE: Final = 1024**3
DEFAULT_MAX_HEADER_SIZE: Final = 32 * 1024
DEFAULT_MAX_REQUEST_LINE: Final = 8 * 1024
DEFAULT_MAX_HEADERS: Final = 100
DEFAULT_HEADER_TIMEOUT: Final = 10.0
DEFAULT_BODY_TIMEOUT: Final = 60.0
# Longer than the 60 s idle expiry of common upstream pools, as nginx's keepalive_timeout 75s.
DEFAULT_KEEPALIVE_TIMEOUT: Final = 75.0
DEFAULT_WRITE_TIMEOUT: Final = 60.0
DEFAULT_REDIRECT_STATUS: Final = 302
DEFAULT_CLIENT_CERT_HEADER: Final = "X-Client-Cert-Subject"
DEFAULT_MAX_SESSIONS: Final = 10_000
L4_PROTOCOLS: Final = frozenset({"tcp", "udp", "tls_passthrough"})
DEFAULT_RATE_KEY: Final = "source_ip"
DEFAULT_RATE_TABLE_SIZE: Final = 100_000
DEFAULT_BODY_RATE_WINDOW: Final = 10.0
DEFAULT_MAX_PIPELINED: Final = 100
DEFAULT_STRIP_RESPONSE_HEADERS: Final = ("Server", "X-Powered-By")
DEFAULT_ENCODED_SLASHES: Final = "refuse"
DEFAULT_REQUEST_ID_HEADER: Final = "X-Request-ID"
DEFAULT_FILTER_BODY_LIMIT: Final = 64 * 1024
MAX_FILTER_BODY_LIMIT: Final = 1024 * 1024
DEFAULT_FILTER_TAG_HEADER: Final = "X-Usher-Filter"

# Pool defaults.
DEFAULT_ALGORITHM: Final = "round_robin"
DEFAULT_BACKEND_WEIGHT: Final = 1
DEFAULT_MAX_FAILS: Final = 1
DEFAULT_FAIL_TIMEOUT: Final = 10.0
DEFAULT_CONNECT_TIMEOUT: Final = 5.0
DEFAULT_READ_TIMEOUT: Final = 60.0
DEFAULT_SEND_TIMEOUT: Final = 60.0
DEFAULT_UPSTREAM_IDLE_TIMEOUT: Final = 60.0
DEFAULT_TUNNEL_TIMEOUT: Final = 3600.0
DEFAULT_RETRY_ATTEMPTS: Final = 2
DEFAULT_RETRY_BUDGET: Final = 0.2
DEFAULT_MAX_IDLE_CONNECTIONS: Final = 32
DEFAULT_EWMA_DECAY: Final = 10.0
DEFAULT_QUEUE_SIZE: Final = 100
DEFAULT_QUEUE_TIMEOUT: Final = 5.0
DEFAULT_DRAIN_TIMEOUT: Final = 30.0
DEFAULT_DISCOVERY_INTERVAL: Final = 5.0
DEFAULT_DISCOVERY_TIMEOUT: Final = 2.0
DEFAULT_PANIC_THRESHOLD: Final = 0.0
DEFAULT_MAX_EJECTION_PERCENT: Final = 0.5
DEFAULT_MAX_EJECTION_TIME: Final = 300.0
DEFAULT_STICKY_COOKIE: Final = "USHER_BACKEND"
DEFAULT_STICKY_TTL: Final = 1800.0
DEFAULT_STICKY_TABLE_SIZE: Final = 100_000

DEFAULT_ADMIN_PORT: Final = 9900

# Health-check defaults.
DEFAULT_HEALTH_TYPE: Final = "tcp"
DEFAULT_HEALTH_INTERVAL: Final = 5.0
DEFAULT_HEALTH_TIMEOUT: Final = 2.0
DEFAULT_HEALTHY_THRESHOLD: Final = 2
DEFAULT_UNHEALTHY_THRESHOLD: Final = 3
DEFAULT_HEALTH_JITTER: Final = 0.1
DEFAULT_HEALTH_PATH: Final = "/health"
DEFAULT_EXPECT_STATUS: Final = "200-399"
DEFAULT_UDP_SEND: Final = "ping"
DEFAULT_AGENT_PATH: Final = "/load"
DEFAULT_AGENT_INTERVAL: Final = 5.0


# --- Value types -------------------------------------------------------------------------------

_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
# "ms" is listed before "m" so that "250ms" is not read as 250 minutes and a stray "s".
_DURATION_PART = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ms|s|m|h)")
_DURATION_PATTERN = r"^(([0-9]+(\.[0-9]+)?(ms|s|m|h))+|[0-9]+(\.[0-9]+)?)$"
_NUMBER = re.compile(r"[0-9]+(?:\.[0-9]+)?")


def parse_duration(value: object) -> float:
    """Seconds from `"250ms"`, `"5s"`, `"2m"`, `"1h"`, `"1m30s"` or a plain number of seconds."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        if math.isfinite(value) and value >= 0:
            return float(value)
    elif isinstance(value, str):
        text = value.strip()
        if _NUMBER.fullmatch(text):
            return float(text)
        parts = _DURATION_PART.findall(text)
        if parts and "".join(number + unit for number, unit in parts) == text:
            return sum(float(number) * _DURATION_UNITS[unit] for number, unit in parts)
    raise ValueError(f"invalid duration {value!r} (use e.g. 250ms, 5s, 2m)")


_SIZE_UNITS = {
    "": 1,
    "b": 1,
    "k": 1024,
    "kib": 1024,
    "kb": 1000,
    "m": 1024**2,
    "mib": 1024**2,
    "mb": 1000**2,
    "g": 1024**3,
    "gib": 1024**3,
    "gb": 1000**3,
    "t": 1024**4,
    "tib": 1024**4,
    "tb": 1000**4,
}
_SIZE = re.compile(r"([0-9]+)\s*([a-z]*)")
_SIZE_PATTERN = r"^\s*[0-9]+\s*([kKmMgGtT]([iI]?[bB])?|[bB])?\s*$"


def parse_size(value: object) -> int:
    """Bytes from an int, `"512"`, `"64KiB"`/`"16k"` (1024-based) or `"10MB"` (1000-based)."""
    if isinstance(value, int) and not isinstance(value, bool):
        if value >= 0:
            return value
    elif isinstance(value, float):
        if value.is_integer() and value >= 0:
            return int(value)
    elif isinstance(value, str):
        match = _SIZE.fullmatch(value.strip().lower())
        if match and match[2] in _SIZE_UNITS:
            return int(match[1]) * _SIZE_UNITS[match[2]]
    raise ValueError(f"invalid size {value!r} (use e.g. 512, 64KiB, 10MiB)")


_RATE = re.compile(r"\s*([0-9]+(?:\.[0-9]+)?)\s*/\s*(s|m|h)\s*")
_RATE_PATTERN = r"^\s*[0-9]+(\.[0-9]+)?\s*/\s*(s|m|h)\s*$"
_PER = {"s": 1.0, "m": 60.0, "h": 3600.0}


def parse_rate(value: object) -> float:
    """Events per second from `"100/s"`, `"600/m"`, `"1000/h"` or a number (per second)."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        if math.isfinite(value) and value > 0:
            return float(value)
    elif isinstance(value, str) and (match := _RATE.fullmatch(value)):
        rate = float(match[1]) / _PER[match[2]]
        if rate > 0:
            return rate
    raise ValueError(f"invalid rate {value!r} (use e.g. 100/s, 600/m, 1000/h; > 0)")


def parse_byte_rate(value: object) -> float:
    """Bytes per second from `"1KiB/s"`, `"500/s"`, `"60KiB/m"` or a number (per second)."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        if math.isfinite(value) and value > 0:
            return float(value)
    elif isinstance(value, str) and "/" in value:
        size, _, per = value.rpartition("/")
        if per.strip() in _PER:
            try:
                rate = parse_size(size) / _PER[per.strip()]
            except ValueError:
                pass
            else:
                if rate > 0:
                    return rate
    raise ValueError(f"invalid byte rate {value!r} (use e.g. 1KiB/s, 500/s, 60KiB/m; > 0)")


def parse_cidr(value: object) -> str:
    """A network in CIDR form (`10.0.0.0/8`, `2001:db8::/32`); a bare address is a /32 or /128."""
    if isinstance(value, str):
        try:
            return str(ipaddress.ip_network(value.strip(), strict=False))
        except ValueError:
            pass
    raise ValueError(f"invalid network {value!r} (use CIDR such as 10.0.0.0/8 or 2001:db8::/32)")


@dataclass(frozen=True, slots=True)
class HostPort:
    """A host (name, IPv4 or IPv6 address) and a TCP port."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


_BRACKETED = re.compile(r"\[([^\[\]]+)\]:([0-9]{1,5})")
_PLAIN = re.compile(r"([^:\[\]\s]+):([0-9]{1,5})")
_HOSTNAME = re.compile(
    r"(?=.{1,253}$)[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?(\.[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?)*"
)
_ZONE = re.compile(r"[A-Za-z0-9_.-]+")


def _address_pattern(port: str) -> str:
    """A regular expression for exactly the `host:port` texts `parse_address` takes, in the
    subset of syntax Python and JSON Schema (ECMA 262) read alike, for the published schemas.
    `_check_address_text` holds the parser to it."""
    hextet = "[0-9A-Fa-f]{1,4}"
    octet = "(25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])"
    ipv4 = rf"{octet}(\.{octet}){{3}}"
    # What ipaddress.IPv6Address reads: 8 groups, or 6 and an IPv4 tail; `::` stands for 1+.
    forms = [rf"({hextet}:){{7}}{hextet}", rf"({hextet}:){{6}}{ipv4}"]
    for left in range(8):
        head = "" if left == 0 else hextet + (rf"(:{hextet}){{{left - 1}}}" if left > 1 else "")
        right = 7 - left
        tail = "" if right == 0 else rf"({hextet}(:{hextet}){{0,{right - 1}}})?"
        forms.append(f"{head}::{tail}")
        if left <= 5:
            forms.append(f"{head}::({hextet}:){{0,{5 - left}}}{ipv4}")
    ipv6 = "(" + "|".join(forms) + ")(%[A-Za-z0-9_.-]+)?"
    label = "[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?"
    # A name has a character no IPv4 address has; digits and dots alone must be an IPv4.
    name = rf"(?=[^:]{{1,253}}:)(?=[^:]*[A-Za-z_-]){label}(\.{label})*"
    return rf"^(\[{ipv6}\]|{ipv4}|{name}):{port}$"


_PORT_TEXT = "(0|[1-9][0-9]{0,4})"  # no leading zeros; the range is checked on the number
_PORT_PATTERN = (
    "(0|[1-9][0-9]{0,3}|[1-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|655[0-2][0-9]|6553[0-5])"
)
_ADDRESS_TEXT = re.compile(_address_pattern(_PORT_TEXT))
_ADDRESS_PATTERN = _address_pattern(_PORT_PATTERN)
_BACKEND_ADDRESS_PATTERN = _address_pattern(_PORT_PATTERN.replace("(0|", "(", 1))


def duration_pattern() -> str:
    """The JSON Schema pattern of a duration written as text."""
    return _DURATION_PATTERN


def backend_address_schema() -> dict[str, str]:
    """The JSON Schema of a backend's `host:port` (port 1..65535)."""
    return dict(_BACKEND_ADDRESS_SCHEMA)


def parse_address(value: object, *, allow_port_zero: bool = True) -> HostPort:
    """A `HostPort` from `"host:port"` or `"[v6]:port"`; port 0 means "pick a free port"."""
    address = value if isinstance(value, HostPort) else _parse_host_port(value)
    low = 0 if allow_port_zero else 1
    if not low <= address.port <= 65535:
        raise ValueError(f"invalid address {str(value)!r} (port must be {low}..65535)")
    return address


def _parse_host_port(value: object) -> HostPort:
    bad = ValueError(f"invalid address {value!r} (expected host:port, [v6]:port for IPv6)")
    # ASCII only: "\u212a".lower() is a "k", and no schema pattern would see it as one.
    if not isinstance(value, str) or not value.isascii():
        raise bad
    if match := _BRACKETED.fullmatch(value):
        try:
            parsed = ipaddress.IPv6Address(match[1])
        except ValueError:
            raise bad from None
        if parsed.scope_id is not None and not _ZONE.fullmatch(parsed.scope_id):
            raise bad
        address = HostPort(str(parsed), int(match[2]))
    elif match := _PLAIN.fullmatch(value):
        host = match[1].lower()
        if re.fullmatch(r"[0-9.]+", host):
            try:
                host = str(ipaddress.IPv4Address(host))
            except ValueError:
                raise bad from None
        elif not _HOSTNAME.fullmatch(host):
            raise bad
        address = HostPort(host, int(match[2]))
    else:
        raise bad
    # The published pattern is the last word (no leading zeros in the port, say), so that what
    # the schema refuses is refused here too; the range is checked by the caller.
    if not _ADDRESS_TEXT.fullmatch(value):
        raise bad
    return address


def _parse_backend_address(value: object) -> HostPort:
    return parse_address(value, allow_port_zero=False)


Duration = Annotated[
    float,
    BeforeValidator(parse_duration),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "string", "pattern": _DURATION_PATTERN},
                {"type": "number", "minimum": 0},
            ],
            "description": "A duration: 250ms, 5s, 2m, 1h, 1m30s, or a number of seconds.",
        }
    ),
]
"""Seconds, written `250ms`, `5s`, `2m`, `1h` or as a plain number of seconds."""

# Days and years, for what lasts that long: a year is 365 days, as HSTS's max-age=31536000.
_LONG_UNITS = {"d": 86400, "y": 365 * 86400}
_LONG = re.compile(r"([0-9]+)(d|y)")


def parse_max_age(value: object) -> int:
    """Whole seconds from `"1y"` (365 days), `"180d"` or anything `parse_duration` reads."""
    if isinstance(value, str) and (match := _LONG.fullmatch(value.strip())):
        return int(match[1]) * _LONG_UNITS[match[2]]
    try:
        return int(parse_duration(value))
    except ValueError:
        raise ValueError(f"invalid max age {value!r} (use e.g. 1y, 180d, 12h)") from None


MaxAge = Annotated[
    int,
    BeforeValidator(parse_max_age),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "string", "pattern": r"^[0-9]+(d|y)$"},
                {"type": "string", "pattern": _DURATION_PATTERN},
                {"type": "number", "minimum": 0},
            ],
            "description": "A long duration in whole seconds: 1y (365 days), 180d, 12h, or "
            "anything a duration takes.",
        }
    ),
]
"""Whole seconds, written `1y` (365 days), `180d` or as a `Duration`."""

ByteSize = Annotated[
    int,
    BeforeValidator(parse_size),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "string", "pattern": _SIZE_PATTERN},
                {"type": "integer", "minimum": 0},
            ],
            "description": "A size in bytes: 512, 64KiB, 16k, 10MiB, 10MB (1000-based), 1GiB.",
        }
    ),
]
"""Bytes, written as an int, `64KiB`/`16k` (1024-based) or `10MB` (1000-based)."""

_ADDRESS_SCHEMA = {
    "type": "string",
    "pattern": _ADDRESS_PATTERN,
    "description": "host:port, or [v6]:port for IPv6: a host name, an IPv4 address or a "
    "bracketed IPv6 address, and a port 0..65535 (0: any free port) without leading zeros.",
}
_BACKEND_ADDRESS_SCHEMA = {
    "type": "string",
    "pattern": _BACKEND_ADDRESS_PATTERN,
    "description": "host:port, or [v6]:port for IPv6: a host name, an IPv4 address or a "
    "bracketed IPv6 address, and a port 1..65535 without leading zeros.",
}

# A plain validator, not a before one: HostPort is a dataclass, and pydantic would otherwise
# validate it field by field and accept a {host, port} mapping too.
Address = Annotated[
    HostPort,
    PlainValidator(parse_address),
    PlainSerializer(str, return_type=str, when_used="json"),
    WithJsonSchema(_ADDRESS_SCHEMA),
]
"""`host:port` or `[v6]:port`; port 0 asks the OS for a free port (listeners only)."""

BackendAddress = Annotated[
    HostPort,
    PlainValidator(_parse_backend_address),
    PlainSerializer(str, return_type=str, when_used="json"),
    WithJsonSchema(_BACKEND_ADDRESS_SCHEMA),
]
"""An `Address` that must name a real port, 1..65535."""


# RFC 9110 tchar: what a header name or a method may be made of.
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_POOL_NAME = re.compile(r"[A-Za-z0-9_.-]+")


def _header_name(value: str) -> str:
    if not _TOKEN.fullmatch(value):
        raise ValueError(f"invalid header name {value!r} (letters, digits and !#$%&'*+-.^_`|~)")
    return value


def _method(value: str) -> str:
    if not _TOKEN.fullmatch(value):
        raise ValueError(f"invalid method {value!r}")
    return value.upper()


def _upgrade_protocol(value: str) -> str:
    if not _TOKEN.fullmatch(value):
        raise ValueError(
            f"invalid upgrade protocol {value!r} (a protocol name such as websocket or h2c, "
            "or * for any but h2c)"
        )
    return value.lower()


def _server_name(value: str) -> str:
    name = value.strip().lower()
    bare = name[2:] if name.startswith("*.") else name
    if not _HOSTNAME.fullmatch(bare):
        raise ValueError(f"invalid host name {value!r} (expected e.g. example.com, *.example.com)")
    return name


def _path_prefix(value: str) -> str:
    if not value.startswith("/"):
        raise ValueError(f"path_prefix must start with / (got {value!r})")
    return value


def _regex(value: str) -> str:
    try:
        re.compile(value)
    except re.error as exc:
        raise ValueError(f"invalid regex {value!r}: {exc.msg} at position {exc.pos}") from None
    return value


def _request_path(value: str) -> str:
    if not value.startswith("/") or any(c.isspace() for c in value) or _has_control(value):
        raise ValueError(f"invalid request path {value!r} (e.g. /health)")
    return value


def _no_line_breaks(value: str) -> str:
    if _has_control(value):
        raise ValueError("must not contain CR, LF or NUL")
    return value


def _has_control(value: str) -> bool:
    return any(char in value for char in "\r\n\0")


def _algorithm(value: str) -> str:
    if custom_algorithms.is_import_path(value):
        custom_algorithms.load(value, fresh=True)  # its ValueError names the problem
        return value
    known = registered_names()
    if value not in known:
        raise ValueError(f"unknown algorithm {value!r} (known: {', '.join(known)})")
    return value


def _directory(value: str) -> str:
    # parse_config has made it absolute, relative to the config file's directory.
    if not os.path.isdir(value):
        raise ValueError(f"no such directory: {value}")
    return value


def _pool_name(value: str) -> str:
    if not _POOL_NAME.fullmatch(value):
        raise ValueError(f"invalid pool name {value!r} (letters, digits and _.- only)")
    return value


_HeaderName = Annotated[str, AfterValidator(_header_name)]
_UpgradeProtocol = Annotated[str, AfterValidator(_upgrade_protocol)]

Rate = Annotated[
    float,
    BeforeValidator(parse_rate),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "string", "pattern": _RATE_PATTERN},
                {"type": "number", "exclusiveMinimum": 0},
            ],
            "description": "Events per time unit: 100/s, 600/m, 1000/h, or a number per second.",
        }
    ),
]
"""Events per second, written `100/s`, `600/m` or `1000/h`."""

ByteRate = Annotated[
    float,
    BeforeValidator(parse_byte_rate),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "string", "pattern": r"^\s*[0-9]+\s*[A-Za-z]*\s*/\s*(s|m|h)\s*$"},
                {"type": "number", "exclusiveMinimum": 0},
            ],
            "description": "Bytes per time unit: 1KiB/s, 500/s, 60KiB/m, or a number per second.",
        }
    ),
]
"""Bytes per second, written `1KiB/s`, `500/s` or `60KiB/m`."""

Cidr = Annotated[
    str,
    BeforeValidator(parse_cidr),
    WithJsonSchema(
        {"type": "string", "description": "A network: 10.0.0.0/8, 2001:db8::/32, 192.0.2.7."}
    ),
]
"""An IPv4 or IPv6 network in CIDR form; a bare address is a one-address network."""

_RATE_KEY = re.compile(r"source_ip|route|(header|cookie):[!#$%&'*+\-.^_`|~0-9A-Za-z]+")


def _rate_key(value: str) -> str:
    if not _RATE_KEY.fullmatch(value):
        raise ValueError(
            f"invalid rate limit key {value!r} (source_ip, route, header:<Name> or cookie:<name>)"
        )
    return value


_RateKey = Annotated[str, AfterValidator(_rate_key)]
_Method = Annotated[str, AfterValidator(_method)]
_ServerName = Annotated[str, AfterValidator(_server_name)]
_PoolName = Annotated[str, AfterValidator(_pool_name)]


def _dns_name(value: str) -> str:
    """A domain name, lower case, without the root's trailing dot."""
    name = value.strip().rstrip(".").lower()
    if not name.isascii() or not _HOSTNAME.fullmatch(name):
        raise ValueError(f"invalid DNS name {value!r} (expected e.g. www.example.com)")
    return name


_DnsName = Annotated[str, AfterValidator(_dns_name)]


def parse_percent(value: object) -> float:
    """`"20%"` or a fraction such as `0.2` -> 0.2."""
    if isinstance(value, bool):
        raise ValueError(f"invalid percentage {value!r} (use e.g. 20% or 0.2)")
    if isinstance(value, int | float):
        number = float(value)
    elif isinstance(value, str) and re.fullmatch(r"\s*[0-9]+(\.[0-9]+)?\s*%\s*", value):
        number = float(value.strip().rstrip("%")) / 100
    else:
        raise ValueError(f"invalid percentage {value!r} (use e.g. 20% or 0.2)")
    if not 0.0 <= number <= 1.0:
        raise ValueError(f"percentage {value!r} is out of range (0% to 100%)")
    return number


Percent = Annotated[
    float,
    BeforeValidator(parse_percent),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "string", "pattern": r"^\s*[0-9]+(\.[0-9]+)?\s*%\s*$"},
                {"type": "number", "minimum": 0, "maximum": 1},
            ],
            "description": "A percentage: `20%`, or a fraction such as `0.2`.",
        }
    ),
]

_STATUS_RANGE = re.compile(r"([1-5][0-9][0-9])(?:-([1-5][0-9][0-9]))?")


def parse_status_ranges(value: str) -> tuple[tuple[int, int], ...]:
    """`"200-399"`, `"200,204"` or `"200-299,301"` -> ((200, 399),) and so on."""
    ranges: list[tuple[int, int]] = []
    for part in str(value).split(","):
        found = _STATUS_RANGE.fullmatch(part.strip())
        if found is None:
            raise ValueError(f"invalid status range {part.strip()!r} (use e.g. 200-399 or 200,204)")
        low = int(found.group(1))
        high = int(found.group(2) or low)
        if high < low:
            raise ValueError(f"invalid status range {part.strip()!r}: {high} < {low}")
        ranges.append((low, high))
    return tuple(ranges)


def _status_ranges(value: object) -> str:
    text = ",".join(str(v) for v in value) if isinstance(value, list) else str(value)
    parse_status_ranges(text)
    return text


def _port(value: int) -> int:
    if not 1 <= value <= 65535:
        raise ValueError(f"port must be 1..65535 (got {value})")
    return value


_Port = Annotated[int, AfterValidator(_port)]


def _json_integer(value: object) -> object:
    # JSON Schema's integer: 5 or 5.0, but neither true nor "5", which pydantic would convert.
    if isinstance(value, bool | str):
        raise ValueError(f"must be an integer, not {value!r}")
    return value


PositiveInteger = Annotated[int, Gt(0), BeforeValidator(_json_integer)]
"""An integer > 0 as JSON Schema has it: `5` or `5.0`, never `true` or `"5"`."""


def _cipher_string(value: str) -> str:
    if problem := check_cipher_string(value):
        raise ValueError(problem)
    return value


def _curve(value: str) -> str:
    if problem := check_curves([value]):
        raise ValueError(problem)
    return value


def _curve_list(value: list[str]) -> list[str]:
    if problem := check_curves(value):
        raise ValueError(problem)
    return value


def _tls_version(value: object) -> object:
    # YAML reads an unquoted 1.2 as a number.
    return str(value) if isinstance(value, float) else value


_CipherString = Annotated[str, AfterValidator(_cipher_string)]
_Curves = Annotated[list[Annotated[str, AfterValidator(_curve)]], AfterValidator(_curve_list)]
_TlsVersion = Annotated[Literal["1.2", "1.3"], BeforeValidator(_tls_version)]


# --- Models ------------------------------------------------------------------------------------

# Issues found by `_rules` travel through pydantic under this error type, message intact.
_RULE = "usher_rule"
_Loc = tuple[str | int, ...]
_Problem = tuple[_Loc, str]


class _Model(BaseModel):
    """Base of every config model: frozen, strict about keys, and checked by `_rules`.

    Rules that look at several fields are checked on the raw input, before and whatever the
    outcome of pydantic's own field validation: an after-validator would only run once every
    field is valid, hiding, say, an unknown pool behind a typo elsewhere in the file.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    @classmethod
    def _rules(cls, data: Mapping[str, Any]) -> list[_Problem]:
        """Problems that involve several fields, with their location inside this model."""
        return []

    @model_validator(mode="wrap")
    @classmethod
    def _check_rules(cls, data: Any, handler: ModelWrapValidatorHandler[Self]) -> Self:
        problems = cls._rules(data) if isinstance(data, Mapping) else []
        try:
            model = handler(data)
        except ValidationError as exc:
            if not problems:
                raise
            details = [_reraisable(error) for error in exc.errors()]
        else:
            if not problems:
                return model
            details = []
        for loc, message in problems:
            details.append({"type": _rule_error(message), "loc": loc, "input": data})
        raise ValidationError.from_exception_data(cls.__name__, details)


def _rule_error(message: str) -> PydanticCustomError:
    # The message goes in the context, not the template, so that braces in it stay as they are.
    return PydanticCustomError(_RULE, "{message}", {"message": message})


def _reraisable(error: ErrorDetails) -> InitErrorDetails:
    detail: InitErrorDetails = {"type": error["type"], "loc": error["loc"], "input": error["input"]}
    if error["type"] == _RULE:
        detail["type"] = _rule_error(error["msg"])
    elif "ctx" in error:
        detail["ctx"] = error["ctx"]
    return detail


def _get(data: object, key: str) -> Any:
    """A field of raw input or of an already built model; None when absent."""
    if isinstance(data, Mapping):
        return data.get(key)
    if isinstance(data, BaseModel):
        return getattr(data, key, None)
    return None


def _items(data: object) -> list[tuple[int, Any]]:
    return list(enumerate(data)) if isinstance(data, list | tuple) else []


def _address_or_none(value: object) -> HostPort | None:
    try:
        return parse_address(value)
    except ValueError:
        return None  # reported by the field's own validation


class TlsCertificate(_Model):
    """A certificate and its private key, served to clients asking for one of its names."""

    cert: str = Field(min_length=1, description="Path of the PEM certificate (chain) file.")
    key: str = Field(min_length=1, description="Path of the PEM private key file.")
    sni: list[_ServerName] = Field(
        default=[],
        description="Server names this certificate answers to; `*.example.com` wildcards "
        "allowed. Empty: only used as the default certificate.",
    )


class ListenerTls(_Model):
    """TLS termination settings of an `https` listener."""

    certificates: list[TlsCertificate] = Field(
        min_length=1,
        description="Certificates to serve; the first one without `sni` (or else the first "
        "one) is the default, for clients that send no or an unknown server name.",
    )

    client_ca: str | None = Field(
        default=None,
        description="mTLS from clients: PEM file of the CAs whose client certificates are "
        "accepted. null: no client certificates asked for.",
    )
    client_auth: Literal["required", "optional"] = Field(
        default="required",
        description="With `client_ca`: `required` refuses a client without a valid "
        "certificate at the handshake; `optional` asks for one and lets clients without one in.",
    )
    client_cert_header: _HeaderName = Field(
        default=DEFAULT_CLIENT_CERT_HEADER,
        description="With `client_ca`: the header that carries the verified client "
        "certificate's subject (RFC 4514) to the backends. Usher removes any such header sent by "
        "the client, so it cannot be forged.",
    )
    min_version: _TlsVersion = Field(
        default="1.2",
        description='Oldest TLS version accepted: `"1.2"` or `"1.3"` (quoted or not).',
    )
    ciphers: _CipherString | None = Field(
        default=None,
        description="OpenSSL cipher string for TLS 1.2 (TLS 1.3 suites are OpenSSL's, all "
        "AEAD); every name must be known to OpenSSL. null: Mozilla's intermediate profile, "
        f"`{INTERMEDIATE_CIPHERS}` (ECDHE with AES-GCM or ChaCha20-Poly1305: no CBC, no DHE). "
        "The client's order of preference wins.",
    )
    curves: _Curves = Field(
        default=list(DEFAULT_CURVES),
        min_length=1,
        description="Key-exchange groups accepted, for TLS 1.2 and 1.3, as OpenSSL names "
        "them (X25519, prime256v1 or P-256, secp384r1 or P-384, X448, secp521r1, ffdhe2048...).",
    )
    hsts: MaxAge | None = Field(
        default=None,
        description="Add `Strict-Transport-Security: max-age=N` (N: this in whole seconds, e.g. "
        "`1y`) to every response of this listener, replacing a backend's own. null: none.",
    )

    @classmethod
    def _rules(cls, data: Mapping[str, Any]) -> list[_Problem]:
        version = _tls_version(_get(data, "min_version"))
        if _get(data, "ciphers") is not None and version == "1.3":
            return [(("ciphers",), 'sets TLS 1.2 suites: not with min_version "1.3"')]
        return []

    def default_certificate(self) -> TlsCertificate:
        """The certificate for clients whose server name matches no `sni` list."""
        return next((cert for cert in self.certificates if not cert.sni), self.certificates[0])


class RouteMatch(_Model):
    """Conditions a request must meet for a route to apply; all given ones must hold."""

    # YAML reads `X-Canary: 1` as a number; a header or query value is text.
    model_config = ConfigDict(coerce_numbers_to_str=True)

    host: _ServerName | None = Field(
        default=None,
        description="Host header, exact (`api.example.com`) or wildcard (`*.example.com`); "
        "case-insensitive.",
    )
    sni: _ServerName | None = Field(
        default=None,
        description="`tls_passthrough` only: the server name of the TLS ClientHello, exact or "
        "wildcard (`*.example.com`: one label); case-insensitive.",
    )
    path_prefix: Annotated[str, AfterValidator(_path_prefix)] | None = Field(
        default=None, description="The path starts with this; must start with `/`."
    )
    path_regex: Annotated[str, AfterValidator(_regex)] | None = Field(
        default=None, description="The path matches this Python regular expression (search)."
    )
    methods: list[_Method] | None = Field(
        default=None, min_length=1, description="One of these methods (upper-cased)."
    )
    headers: dict[_HeaderName, str] = Field(
        default={}, description="Each header has exactly this value (names case-insensitive)."
    )
    query: dict[str, str] = Field(
        default={}, description="Each query parameter has exactly this value."
    )


class SplitTarget(_Model):
    """One pool of a weighted traffic split."""

    pool: str = Field(description="Name of the pool.")
    weight: int = Field(gt=0, description="Share of the traffic, relative to the other targets.")


class Redirect(_Model):
    """Answer with a redirect instead of proxying."""

    to: Annotated[str, AfterValidator(_no_line_breaks)] = Field(
        min_length=1, description="The Location to redirect to."
    )
    status: Literal[301, 302, 303, 307, 308] = Field(
        default=DEFAULT_REDIRECT_STATUS, description="The redirect status code."
    )


class HeaderRewrite(_Model):
    """Headers to set or remove on a request (before forwarding) or a response (before sending)."""

    model_config = ConfigDict(coerce_numbers_to_str=True)

    set: dict[_HeaderName, str] = Field(
        default={}, description="Headers to set, replacing any present with the same name."
    )
    remove: list[_HeaderName] = Field(default=[], description="Headers to remove.")

    @classmethod
    def _rules(cls, data: Mapping[str, Any]) -> list[_Problem]:
        problems: list[_Problem] = []
        values = _get(data, "set")
        names: list[tuple[_Loc, object]] = [
            (("remove", i), n) for i, n in _items(_get(data, "remove"))
        ]
        if isinstance(values, Mapping):
            names += [(("set", name), name) for name in values]
            # A CR or LF in a value would let the config inject headers of its own.
            problems += [
                (("set", name), f"value of header {name!r} must not contain CR, LF or NUL")
                for name, value in values.items()
                if isinstance(name, str) and isinstance(value, str) and _has_control(value)
            ]
        # Framing belongs to usher: rewriting it would unframe the body (request smuggling).
        problems += [
            (loc, f"{name} is managed by usher and cannot be rewritten")
            for loc, name in names
            if isinstance(name, str) and name.lower() in _FRAMING_HEADERS
        ]
        return problems


_FRAMING_HEADERS = frozenset({"content-length", "transfer-encoding", "connection", "upgrade"})


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


def _filter_body_limit(value: int) -> int:
    if value > MAX_FILTER_BODY_LIMIT:
        raise ValueError(f"must be at most 1MiB ({MAX_FILTER_BODY_LIMIT} bytes)")
    return value


def _request_id(value: object) -> bool | str:
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        return _header_name(value)
    raise ValueError(f"must be true, false or a header name, not {value!r}")


RequestIdSetting = Annotated[
    bool | str,
    PlainValidator(_request_id),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "boolean"},
                {"type": "string", "pattern": r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$"},
            ],
            "description": "true (X-Request-ID), false, or the header name to use.",
        }
    ),
]


def _rule_name(value: str) -> str:
    if not _POOL_NAME.fullmatch(value):
        raise ValueError(f"invalid rule name {value!r} (letters, digits and _.- only)")
    return value


_FILTER_ON = re.compile(r"method|path|query|body|(header):[!#$%&'*+\-.^_`|~0-9A-Za-z]+")


def _filter_on(value: str) -> str:
    if not _FILTER_ON.fullmatch(value):
        raise ValueError(
            f"invalid filter field {value!r} (method, path, query, header:<Name>, body)"
        )
    return value


class FilterRule(_Model):
    """One request filter rule: a field, a pattern, and what to do on a match."""

    name: Annotated[str, AfterValidator(_rule_name)] = Field(
        description="Names the rule in logs, metrics and the tag header (letters, digits, _.-)."
    )
    on: Annotated[str, AfterValidator(_filter_on)] = Field(
        description="What to look at: `method`, `path`, `query` (both percent-decoded), "
        "`header:<Name>` "
        "(every value) or `body` (the first `filter_body_limit` bytes)."
    )
    equals: str | None = Field(default=None, description="Match when the field is exactly this.")
    contains: str | None = Field(default=None, description="Match when the field contains this.")
    regex: Annotated[str, AfterValidator(_regex)] | None = Field(
        default=None, description="Match when this Python regular expression is found (search)."
    )
    action: Literal["deny", "tag"] = Field(
        default="deny",
        description="`deny`: answer 403; `tag`: forward with the rule's name added to the "
        "`tag_header` of the upstream request.",
    )

    @classmethod
    def _rules(cls, data: Mapping[str, Any]) -> list[_Problem]:
        given = [k for k in ("equals", "contains", "regex") if _get(data, k) is not None]
        if len(given) != 1:
            return [((), "a filter rule needs exactly one of equals, contains, regex")]
        return []


class Route(_Model):
    """Where matching requests go: one pool, a weighted split, or a redirect."""

    match: RouteMatch | None = Field(
        default=None, description="Conditions to meet; none: every request matches."
    )
    pool: str | None = Field(default=None, description="Send matching requests to this pool.")
    split: list[SplitTarget] | None = Field(
        default=None, min_length=1, description="Spread matching requests over pools by weight."
    )
    redirect: Redirect | None = Field(default=None, description="Answer with a redirect.")
    request_headers: HeaderRewrite | None = Field(
        default=None, description="Rewrite the request's headers before forwarding it."
    )
    response_headers: HeaderRewrite | None = Field(
        default=None, description="Rewrite the response's headers before sending it."
    )
    prefix_rewrite: str | None = Field(
        default=None,
        description=(
            "Replace the matched `match.path_prefix` with this before forwarding "
            "(`/api` -> `/` sends `/api/users` as `/users`)."
        ),
    )
    limits: RouteLimits | None = Field(
        default=None, description="Rate limit and IP lists for this route (after the listener's)."
    )
    filters: list[FilterRule] = Field(
        default=[], description="Request filter rules, tried in order: the first deny wins."
    )
    filter_body_limit: Annotated[ByteSize, AfterValidator(_filter_body_limit)] = Field(
        default=DEFAULT_FILTER_BODY_LIMIT,
        gt=0,
        description="`body` rules read at most this much of a body (held back from the backend "
        "until decided); the rest is not inspected. At most 1MiB.",
    )
    filter_tag_header: _HeaderName = Field(
        default=DEFAULT_FILTER_TAG_HEADER,
        description="The request header `tag` rules add their names to.",
    )
    upgrades: list[_UpgradeProtocol] = Field(
        default=["*"],
        description="The protocols a request may upgrade to (`Upgrade` header, e.g. websocket): "
        '`*` is any protocol but h2c, which must be listed by name (`["*", h2c]`), because its '
        "tunnel would carry HTTP/2 requests past routing and filters. Other protocols are "
        "removed from the request, which is forwarded as plain HTTP/1.1; `[]`: no upgrades.",
    )

    @classmethod
    def _rules(cls, data: Mapping[str, Any]) -> list[_Problem]:
        problems: list[_Problem] = []
        actions = [key for key in ("pool", "split", "redirect") if _get(data, key) is not None]
        if len(actions) != 1:
            problems.append(((), "a route needs exactly one of pool, split, redirect"))
        rewrite = _get(data, "prefix_rewrite")
        if rewrite is not None:
            prefix = _get(_get(data, "match"), "path_prefix")
            if prefix is None:
                problems.append((("prefix_rewrite",), "needs match.path_prefix to replace"))
            elif not isinstance(rewrite, str) or not rewrite.startswith("/"):
                problems.append((("prefix_rewrite",), "must start with '/'"))
        return problems


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


DNS_POLICIES: Final = ("weighted", "failover", "geo", "latency", "round_robin", "all")
DEFAULT_DNS_TTL: Final = 30.0
DEFAULT_DNS_RESPONSES_PER_SECOND: Final = 100.0
DEFAULT_DNS_SLIP: Final = 2


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


class Listener(_Model):
    """An address usher accepts clients on, and how their requests are routed."""

    name: str = Field(min_length=1, description="Unique name, used in logs and metrics.")
    bind: Address = Field(description="Address to listen on; port 0 picks a free port.")
    protocol: Literal["http", "https", "tcp", "udp", "tls_passthrough", "dns"] = Field(
        default=DEFAULT_PROTOCOL,
        description="`https` terminates TLS and needs `tls`; `tcp` and `udp` relay bytes or "
        "datagrams to `pool`; `tls_passthrough` routes TLS connections on their SNI "
        "(`routes` with `match: {sni: ...}`) without decrypting them; `dns` answers DNS "
        "queries (UDP and TCP on the same address) from the pools' healthy backends, per `dns`.",
    )
    tls: ListenerTls | None = Field(default=None, description="TLS settings; `https` only.")
    routes: list[Route] = Field(
        default=[], description="Routes tried in order; the first that matches wins."
    )
    pool: str | None = Field(
        default=None, description="Shorthand for one route sending everything to this pool."
    )
    limits: ListenerLimits = Field(
        default=ListenerLimits(), description="Limits on clients: sizes, rates, connections."
    )
    trusted_proxies: list[Cidr] = Field(
        default=[],
        description="Peers whose X-Forwarded-For is believed: the client address is then its "
        "rightmost hop outside these networks (for limits, IP lists, logs and X-Real-IP). "
        "Anyone else's X-Forwarded-For is never used.",
    )
    request_id: RequestIdSetting = Field(
        default=False,
        description="`true` or a header name: each request carries an ID in that header "
        "(X-Request-ID for `true`), kept from the client when sane or made up, sent to the "
        "backend, returned to the client and written in the access log.",
    )
    strip_response_headers: list[_HeaderName] = Field(
        default=list(DEFAULT_STRIP_RESPONSE_HEADERS),
        description="Backend response headers never passed to clients. By default Server and "
        "X-Powered-By are removed (they name the backend's software); `[]` passes them on.",
    )
    encoded_slashes: Literal["refuse", "decode", "keep"] = Field(
        default=DEFAULT_ENCODED_SLASHES,
        description="What a `%2F` in a request path becomes: `refuse` answers 400; `decode` "
        "makes it a `/` before the path is normalised (as nginx does); `keep` leaves it "
        "encoded, part of its segment, for backends that read it as data (Apache's "
        "`AllowEncodedSlashes NoDecode`). See docs/security.md.",
    )
    timeouts: ListenerTimeouts = Field(
        default=ListenerTimeouts(), description="Client-side timeouts."
    )
    accept_proxy_protocol: bool = Field(
        default=False,
        description="Clients (a load balancer in front) open each connection with a PROXY "
        "protocol v1 or v2 header; its source address is then the client's for logs, "
        "X-Forwarded-For, hashing and persistence. Not for `udp`.",
    )
    zero_copy: bool = Field(
        default=False,
        description="`tcp`/`tls_passthrough` on Linux: relay with splice(2) through a pipe, "
        "the bytes never copied into usher. Not with a pool that has `tls`.",
    )
    max_sessions: int = Field(
        default=DEFAULT_MAX_SESSIONS,
        gt=0,
        description="`udp`: most client sessions at once; datagrams of new clients beyond "
        "are dropped (and counted in usher_rejected_total{reason=max_sessions}). With "
        "`--workers N` each worker allows max_sessions/N (rounded up).",
    )
    dns: DnsSettings | None = Field(
        default=None, description="`dns` only: the zones served and their records."
    )

    def effective_routes(self) -> list[Route]:
        """The routes to try in order, with the `pool` shorthand spelled out."""
        if self.pool is not None:
            return [Route(pool=self.pool)]
        return list(self.routes)

    @classmethod
    def _rules(cls, data: Mapping[str, Any]) -> list[_Problem]:
        problems: list[_Problem] = []
        protocol = _get(data, "protocol") or DEFAULT_PROTOCOL
        has_tls = _get(data, "tls") is not None
        if protocol == "https" and not has_tls:
            problems.append((("tls",), "required for protocol https"))
        elif (protocol == "http" and has_tls) or (protocol in L4_PROTOCOLS and has_tls):
            problems.append((("tls",), "only allowed with protocol https"))
        has_routes = bool(_get(data, "routes"))
        has_pool = _get(data, "pool") is not None
        if protocol == "dns":
            problems += _dns_listener_rules(data, has_routes or has_pool)
        elif _get(data, "dns") is not None:
            problems.append((("dns",), "only for protocol dns"))
        if protocol != "dns" and has_routes == has_pool:
            problems.append(((), "a listener needs exactly one of routes, pool"))
        if protocol in ("tcp", "udp") and has_routes:
            problems.append((("routes",), f"protocol {protocol} takes one `pool`, not routes"))
        problems += _route_rules(data, protocol)
        if _get(data, "zero_copy") and protocol not in ("tcp", "tls_passthrough"):
            problems.append((("zero_copy",), "only for protocol tcp or tls_passthrough"))
        elif _get(data, "zero_copy") and not hasattr(os, "splice"):
            problems.append((("zero_copy",), "needs os.splice (Linux, Python 3.10+)"))
        if _get(data, "accept_proxy_protocol") and protocol == "udp":
            problems.append((("accept_proxy_protocol",), "not for protocol udp"))
        sessions = _get(data, "max_sessions")
        if sessions is not None and sessions != DEFAULT_MAX_SESSIONS and protocol != "udp":
            problems.append((("max_sessions",), "only for protocol udp"))
        if protocol in L4_PROTOCOLS or protocol == "dns":
            problems += _layer4_limit_rules(data, protocol)
        return problems


def _dns_listener_rules(data: Mapping[str, Any], has_pool: bool) -> list[_Problem]:
    problems: list[_Problem] = []
    if _get(data, "dns") is None:
        problems.append((("dns",), "required for protocol dns (zones and records)"))
    if has_pool:
        problems.append(((), "protocol dns takes `dns.records`, not pool or routes"))
    for key in ("accept_proxy_protocol", "zero_copy"):
        if _get(data, key):
            problems.append(((key,), "not for protocol dns"))
    return problems


# What layer-4 listeners can enforce: IP lists for all three, connection limits for the two
# that have connections. The rest needs HTTP requests to work on.
_L4_LIMITS: Final = frozenset({"allow", "deny", "max_connections", "connections_per_ip"})
_L7_LISTENER_KEYS: Final = (
    "trusted_proxies",
    "request_id",
    "strip_response_headers",
    "encoded_slashes",
)


def _layer4_limit_rules(data: Mapping[str, Any], protocol: str) -> list[_Problem]:
    problems: list[_Problem] = []

    def is_set(model: type[BaseModel], key: str, value: Any) -> bool:
        # A value equal to the default is not a setting (a dumped config writes them all).
        field = model.model_fields.get(key)
        default = None if field is None else field.get_default(call_default_factory=True)
        if isinstance(default, tuple):
            default = list(default)
        return value is not None and value != default

    limits = _get(data, "limits")
    if isinstance(limits, Mapping):
        for key, value in limits.items():
            if not is_set(ListenerLimits, key, value):
                continue
            if key not in _L4_LIMITS:
                problems.append(
                    (("limits", key), f"works on HTTP requests: not for protocol {protocol}")
                )
            elif protocol == "udp" and key in ("max_connections", "connections_per_ip"):
                problems.append((("limits", key), "udp has no connections: use max_sessions"))
            elif protocol == "dns" and key in ("max_connections", "connections_per_ip"):
                problems.append((("limits", key), "not for protocol dns (use dns.rate_limit)"))
    for key in _L7_LISTENER_KEYS:
        if is_set(Listener, key, _get(data, key)):
            problems.append(((key,), f"works on HTTP requests: not for protocol {protocol}"))
    return problems


def _route_rules(data: Mapping[str, Any], protocol: str) -> list[_Problem]:
    """tls_passthrough routes send to a pool on `match.sni` alone; http routes never see SNI."""
    problems: list[_Problem] = []
    for index, route in _items(_get(data, "routes")):
        match = _get(route, "match")
        if protocol != "tls_passthrough":
            if _get(match, "sni") is not None:
                problems.append(
                    (("routes", index, "match", "sni"), "only for protocol tls_passthrough")
                )
            continue
        for key in ("split", "redirect", "request_headers", "response_headers", "prefix_rewrite"):
            if _get(route, key) is not None:
                problems.append(
                    (("routes", index, key), "not for tls_passthrough (routes send to a pool)")
                )
        if isinstance(match, Mapping):
            for key, value in match.items():
                if key != "sni" and value not in (None, {}, []):
                    problems.append(
                        (
                            ("routes", index, "match", key),
                            "tls_passthrough routes match on sni only (the rest is encrypted)",
                        )
                    )
    return problems


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


class AgentOptions(_Model):
    """The backend's own load report (as HAProxy's agent-check), polled over HTTP.

    The answer is a number from 0 (idle) to 1 (full), optionally with `%`, or JSON such as
    `{"load": 0.42}` or `{"cpu": 0.42}`.
    """

    path: str = Field(default=DEFAULT_AGENT_PATH, description="Path of the load report.")
    port: _Port | None = Field(default=None, description="Port to ask; null: the backend's.")
    interval: Duration = Field(default=DEFAULT_AGENT_INTERVAL, gt=0, description="How often.")
    timeout: Duration = Field(default=DEFAULT_HEALTH_TIMEOUT, gt=0, description="Per request.")


_HTTP_ONLY = (
    "method",
    "path",
    "host",
    "expect_status",
    "expect_body",
    "tls",
    "tls_verify",
    "tls_ca",
    "tls_server_name",
)
_UDP_ONLY = ("send", "expect")


class HealthCheck(_Model):
    """Active health checks: one task per backend, run once for all workers (in the control
    process when there are several)."""

    type: Literal["tcp", "http", "udp", "agent"] = Field(
        default=DEFAULT_HEALTH_TYPE,
        description=(
            "tcp: a connect succeeds; http: a request gets an expected answer; udp: a datagram "
            "gets a matching reply; agent: the backend's load report (the pool's `agent`) answers."
        ),
    )
    interval: Duration = Field(default=DEFAULT_HEALTH_INTERVAL, gt=0, description="Between checks.")
    unhealthy_interval: Duration | None = Field(
        default=None, gt=0, description="Between checks while a backend is down; null: interval."
    )
    timeout: Duration = Field(default=DEFAULT_HEALTH_TIMEOUT, gt=0, description="Of one check.")
    healthy_threshold: int = Field(
        default=DEFAULT_HEALTHY_THRESHOLD, ge=1, description="Passes in a row to be healthy again."
    )
    unhealthy_threshold: int = Field(
        default=DEFAULT_UNHEALTHY_THRESHOLD, ge=1, description="Failures in a row to be unhealthy."
    )
    jitter: Percent = Field(
        default=DEFAULT_HEALTH_JITTER,
        description="Random spread of each interval, so checks of many backends do not align.",
    )
    port: _Port | None = Field(default=None, description="Check this port; null: the backend's.")
    method: Annotated[str, AfterValidator(_method)] = Field(
        default="GET", description="http: request method."
    )
    path: Annotated[str, AfterValidator(_request_path)] = Field(
        default=DEFAULT_HEALTH_PATH, description="http: request path."
    )
    host: Annotated[str, AfterValidator(_no_line_breaks)] | None = Field(
        default=None, description="http: Host header; null: the address."
    )
    expect_status: Annotated[str, BeforeValidator(_status_ranges)] = Field(
        default=DEFAULT_EXPECT_STATUS, description="http: statuses that pass, e.g. `200-399,404`."
    )
    expect_body: str | None = Field(
        default=None, description="http: a substring the body must contain."
    )
    tls: bool = Field(default=False, description="http: check over HTTPS.")
    tls_verify: bool = Field(default=True, description="http: verify the backend's certificate.")
    tls_ca: str | None = Field(default=None, description="http: CA file to verify with.")
    tls_server_name: str | None = Field(default=None, description="http: SNI and name to verify.")
    send: str = Field(default=DEFAULT_UDP_SEND, description="udp: the payload to send.")
    expect: str | None = Field(
        default=None, description="udp: a regex the reply must match; null: any reply passes."
    )

    @classmethod
    def _rules(cls, data: Mapping[str, Any]) -> list[_Problem]:
        problems: list[_Problem] = []
        kind = _get(data, "type") or DEFAULT_HEALTH_TYPE
        if kind == "agent":
            # An agent check polls the pool's `agent` section: its own timing keys do nothing.
            for key in ("interval", "timeout", "port"):
                if key in data and data[key] != cls.model_fields[key].default:
                    problems.append(((key,), "for type agent, set it in the pool's agent section"))
        # A default value is harmless (a dumped config has them all); a chosen one is a mistake.
        for keys, wanted in ((_HTTP_ONLY, "http"), (_UDP_ONLY, "udp")):
            for key in keys:
                if kind != wanted and key in data and data[key] != cls.model_fields[key].default:
                    problems.append(((key,), f"only for type {wanted}"))
        expect = _get(data, "expect")
        if isinstance(expect, str):
            try:
                re.compile(expect)
            except re.error as exc:
                problems.append((("expect",), f"invalid regex {expect!r}: {exc}"))
        return problems


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


CLUSTER_SHARES: Final = ("rate_limits", "sticky", "ejections")
DEFAULT_CLUSTER_TIMEOUT: Final = 0.005
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


# --- Loading -----------------------------------------------------------------------------------


class _Loader(yaml.SafeLoader):
    """YAML with YAML 1.2's booleans: only true/false. In YAML 1.1 `on`, `off`, `yes` and `no`
    are booleans too, which would turn the key `retries: {on: [502]}` into `True`."""


_Loader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:bool",
    re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
    list("tTfF"),
)


def parse_config(text: str, source: str = "<config>") -> Config:
    """Validate a config given as YAML text; raise ConfigError listing every problem."""
    try:
        loader = _Loader(text)
        try:
            root = loader.get_single_node()
            duplicates = _duplicate_keys(root, (), set()) if root is not None else []
            if any(issue.message == _RECURSIVE for issue in duplicates):
                raise ConfigError(duplicates, source)
            data = loader.construct_document(root) if root is not None else None
        finally:
            loader.dispose()
    except yaml.YAMLError as exc:
        raise ConfigError([_yaml_issue(exc)], source) from None
    if data is None:
        raise ConfigError([ConfigIssue("", "the config is empty")], source)
    if not isinstance(data, dict):
        line = root.start_mark.line + 1 if root is not None else None
        issue = ConfigIssue("", f"the config must be a mapping, not {_describe(data)}", line)
        raise ConfigError([issue], source)
    issues = duplicates
    _resolve_python_path(data, source)
    try:
        config = Config.model_validate(data)
    except ValidationError as exc:
        issues = issues + [_issue(error, data, root) for error in exc.errors()]
    if issues:
        raise ConfigError(_tidy(issues), source)
    return config


def _resolve_python_path(data: dict[str, Any], source: str) -> None:
    """Make `python_path` entries absolute (relative to the config file) and importable before
    validation, which imports the custom algorithms; and start a fresh load of those."""
    custom_algorithms.begin_load()
    dirs = data.get("python_path")
    if not isinstance(dirs, list):
        return  # reported by validation
    base = Path(source).parent
    data["python_path"] = [os.path.abspath(base / d) if isinstance(d, str) else d for d in dirs]
    custom_algorithms.add_python_path(
        d for d in data["python_path"] if isinstance(d, str) and os.path.isdir(d)
    )


def load_config(path: str | Path) -> Config:
    """Read and validate a config file; raise ConfigError listing every problem."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise ConfigError([ConfigIssue("", f"cannot read {path}: {reason}")], str(path)) from None
    except UnicodeDecodeError:
        raise ConfigError([ConfigIssue("", f"{path} is not UTF-8 text")], str(path)) from None
    return parse_config(text, str(path))


def config_schema() -> dict[str, Any]:
    """The JSON Schema of the config file."""
    schema = Config.model_json_schema()
    # Algorithms register at import time, so the list is filled in here rather than frozen in.
    algorithm = schema["$defs"]["PoolConfig"]["properties"]["algorithm"]
    algorithm["anyOf"] = [
        {"enum": registered_names()},
        {"pattern": f"^{custom_algorithms.IMPORT_PATH.pattern}$"},
    ]
    return schema


# --- Turning pydantic's errors into issues ----------------------------------------------------

_TYPE_NAMES = {
    "string_type": "a string",
    "int_type": "an integer",
    "int_parsing": "an integer",
    "int_from_float": "an integer",
    "float_type": "a number",
    "float_parsing": "a number",
    "bool_type": "true or false",
    "bool_parsing": "true or false",
    "list_type": "a list",
    "dict_type": "a mapping",
    "model_type": "a mapping",
    "model_attributes_type": "a mapping",
}
_SIMPLE_KEY = re.compile(r"[A-Za-z0-9_-]+")


def _issue(error: ErrorDetails, data: Mapping[str, Any], root: yaml.Node | None) -> ConfigIssue:
    loc = _clean_loc(error["loc"], data)
    names_key = error["type"] == "extra_forbidden" or error["loc"][-1:] == ("[key]",)
    return ConfigIssue(_render_path(loc), _message(error, loc), _line(root, loc, names_key))


def _clean_loc(loc: _Loc, data: object) -> _Loc:
    """The loc without pydantic's internal parts, found by following it through the data."""
    kept: list[str | int] = []
    current = data
    for position, part in enumerate(loc):
        found, child = _step(current, part)
        if found:
            current = child
        elif not (position == len(loc) - 1 and isinstance(current, Mapping) and part != "[key]"):
            # Not in the data: a union tag, "function-after[...]", "[key]" and the like;
            # only the last part of a loc may be absent, when it names a missing key.
            continue
        kept.append(part)
    return tuple(kept)


def _step(data: object, part: str | int) -> tuple[bool, object]:
    if isinstance(data, Mapping) and part in data:
        return True, data[part]
    if isinstance(data, list) and isinstance(part, int) and 0 <= part < len(data):
        return True, data[part]
    return False, None


def _render_path(loc: _Loc) -> str:
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        elif _SIMPLE_KEY.fullmatch(part):
            path += f".{part}" if path else part
        else:
            path += f"[{json.dumps(part)}]"
    return path


# Other YAML files usher validates (e.g. `usher simulate` scenarios) name their paths alike.
render_path = _render_path


def _message(error: ErrorDetails, loc: _Loc) -> str:
    kind = error["type"]
    ctx = error.get("ctx") or {}
    if kind == _RULE:
        return str(ctx["message"])
    if kind in ("value_error", "assertion_error") and "error" in ctx:
        return str(ctx["error"])
    if kind == "extra_forbidden":
        return "unknown key" + _suggestion(loc)
    if kind == "missing":
        return "required"
    if kind == "invalid_key":
        return "keys must be strings"
    if kind == "greater_than":
        return f"must be > {ctx['gt']:g}"
    if kind == "greater_than_equal":
        return f"must be >= {ctx['ge']:g}"
    if kind == "less_than":
        return f"must be < {ctx['lt']:g}"
    if kind == "less_than_equal":
        return f"must be <= {ctx['le']:g}"
    if kind == "literal_error":
        choices = re.split(r", | or ", str(ctx["expected"]))
        return "must be one of: " + ", ".join(choice.strip("'\"") for choice in choices)
    if kind == "union_tag_invalid":  # a discriminated union: sticky, discovery
        tags = str(ctx["expected_tags"]).replace("'", "")
        return f"{ctx['discriminator'].strip(chr(39))}: unknown {ctx['tag']!r} (one of: {tags})"
    if kind == "union_tag_not_found":
        return f"{ctx['discriminator'].strip(chr(39))}: required"
    if kind == "string_too_short":
        return "must not be empty"
    if kind == "too_short":
        count = ctx["min_length"]
        return f"needs at least {count} item" + ("" if count == 1 else "s")
    if kind in _TYPE_NAMES:
        return f"must be {_TYPE_NAMES[kind]}, not {_describe(error['input'])}"
    return error["msg"]


def _describe(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return repr(value if len(value) <= 40 else value[:37] + "...")
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return type(value).__name__


def _suggestion(loc: _Loc) -> str:
    model = _model_at(loc[:-1])
    if model is None or not isinstance(loc[-1], str):
        return ""
    close = difflib.get_close_matches(loc[-1], list(model.model_fields), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _model_at(loc: _Loc) -> type[BaseModel] | None:
    """The model class found at `loc` in the config, if any."""
    kind: Any = Config
    for part in loc:
        kind = _unwrap(kind)
        if isinstance(kind, type) and issubclass(kind, BaseModel) and isinstance(part, str):
            field = kind.model_fields.get(part)
            if field is None:
                return None
            kind = field.annotation
        elif get_origin(kind) is list and isinstance(part, int):
            kind = get_args(kind)[0]
        elif get_origin(kind) is dict:
            kind = get_args(kind)[1]
        else:
            return None
    kind = _unwrap(kind)
    return kind if isinstance(kind, type) and issubclass(kind, BaseModel) else None


def _unwrap(kind: Any) -> Any:
    """`X` from `Annotated[X, ...]` and from `X | None`."""
    while True:
        origin = get_origin(kind)
        if origin is Annotated:
            kind = get_args(kind)[0]
        elif origin is Union or origin is UnionType:
            options = [arg for arg in get_args(kind) if arg is not type(None)]
            if len(options) != 1:
                return kind
            kind = options[0]
        else:
            return kind


def _line(root: yaml.Node | None, loc: _Loc, names_key: bool) -> int | None:
    """1-based line of the YAML node at `loc`: the key's own line when `names_key`, and the
    enclosing mapping's line when the last part of `loc` is missing."""
    if root is None:
        return None
    node = root
    for position, part in enumerate(loc):
        if isinstance(node, yaml.MappingNode):
            found = None
            for key, value in node.value:
                # Several equal keys: the last one is what the loader kept.
                if isinstance(key, yaml.ScalarNode) and key.value == str(part):
                    found = (key, value)
            if found is None:
                break
            if names_key and position == len(loc) - 1:
                return int(found[0].start_mark.line) + 1
            node = found[1]
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int):
            if not 0 <= part < len(node.value):
                break
            node = node.value[part]
        else:
            break
    return int(node.start_mark.line) + 1


_RECURSIVE = "an alias refers to its own anchor (recursive data)"


def _duplicate_keys(node: yaml.Node, loc: _Loc, open_nodes: set[int]) -> list[ConfigIssue]:
    """YAML loaders keep the last of two equal keys silently; a config should not have any.
    Also reports recursive aliases, which no config needs and which nothing could walk."""
    line = int(node.start_mark.line) + 1
    if id(node) in open_nodes:
        return [ConfigIssue(_render_path(loc), _RECURSIVE, line)]
    issues: list[ConfigIssue] = []
    open_nodes.add(id(node))
    if isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for key, value in node.value:
            if not isinstance(key, yaml.ScalarNode):
                continue
            if key.value in seen and key.value != "<<":
                path = _render_path((*loc, key.value))
                issues.append(ConfigIssue(path, "duplicate key", int(key.start_mark.line) + 1))
            seen.add(key.value)
            issues += _duplicate_keys(value, (*loc, key.value), open_nodes)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            issues += _duplicate_keys(item, (*loc, index), open_nodes)
    open_nodes.discard(id(node))
    return issues


def _yaml_issue(exc: yaml.YAMLError) -> ConfigIssue:
    if isinstance(exc, yaml.MarkedYAMLError) and exc.problem_mark is not None:
        message = f"invalid YAML: {exc.problem}"
        if exc.context:
            message += f" ({exc.context})"
        return ConfigIssue("", message, int(exc.problem_mark.line) + 1)
    return ConfigIssue("", f"invalid YAML: {exc}")


def _tidy(issues: list[ConfigIssue]) -> list[ConfigIssue]:
    """Issues without repeats (a union reports once per member), in file order."""
    unique = list(dict.fromkeys(issues))
    return sorted(unique, key=lambda issue: (issue.line is None, issue.line or 0))
