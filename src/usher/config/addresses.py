"""`host:port` addresses: the parser, the published patterns it is held to, and their types."""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Annotated

from pydantic import PlainSerializer, PlainValidator, WithJsonSchema


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


def _address_or_none(value: object) -> HostPort | None:
    try:
        return parse_address(value)
    except ValueError:
        return None  # reported by the field's own validation
