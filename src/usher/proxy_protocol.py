"""PROXY protocol v1 and v2 (HAProxy's proxy-protocol.txt), sans-IO: parse a header from the
bytes a connection starts with, and encode one for a backend.

`parse(buf)` returns `(ProxyHeader, consumed)`, or None while more bytes are needed, and
raises `ProxyProtocolError` on anything the spec does not allow. `safe_read_size(buf)` says how
many bytes may be read next without reading past the header, for callers that hand the socket
on afterwards (TLS starts right after the header).
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass
from typing import Final, Literal

from usher.errors import ProxyProtocolError

__all__ = [
    "MAX_V1_LENGTH",
    "MAX_V2_LENGTH",
    "V2_SIGNATURE",
    "ProxyHeader",
    "ProxyProtocolError",
    "encode",
    "encode_v1",
    "encode_v2",
    "encode_v2_local",
    "parse",
    "safe_read_size",
]

V1_PREFIX: Final = b"PROXY "
V2_SIGNATURE: Final = b"\r\n\r\n\x00\r\nQUIT\n"
# The spec's bound for a v1 line, CRLF included.
MAX_V1_LENGTH: Final = 107
# A v2 header: 16 fixed bytes and at most 65535 of addresses and TLVs; usher accepts less.
MAX_V2_LENGTH: Final = 16 + 4096
# The shortest header of either version ("PROXY UNKNOWN\r\n"): safe to read first.
_MIN_HEADER: Final = 15

Address = tuple[str, int]
Transport = Literal["tcp4", "tcp6", "udp4", "udp6", "unix", "unknown"]

_V2_FAMILIES: Final[dict[int, tuple[Transport, int]]] = {
    0x00: ("unknown", 0),
    0x11: ("tcp4", 12),
    0x12: ("udp4", 12),
    0x21: ("tcp6", 36),
    0x22: ("udp6", 36),
    0x31: ("unix", 216),
    0x32: ("unix", 216),
}


@dataclass(frozen=True, slots=True)
class ProxyHeader:
    """What a PROXY header says. `source`/`destination` are None for v1 UNKNOWN, v2 LOCAL and
    families without IP addresses: the connection's own addresses then stand."""

    version: Literal[1, 2]
    command: Literal["proxy", "local"]
    transport: Transport
    source: Address | None
    destination: Address | None
    tlvs: bytes = b""


def parse(buf: bytes) -> tuple[ProxyHeader, int] | None:
    """The header at the start of `buf` and its length, or None when more bytes are needed."""
    if buf.startswith(V2_SIGNATURE):
        return _parse_v2(buf)
    if buf.startswith(V1_PREFIX):
        return _parse_v1(buf)
    if V2_SIGNATURE.startswith(buf) or V1_PREFIX.startswith(buf):
        return None  # too short to tell yet
    raise ProxyProtocolError("not a PROXY protocol header (no v1 or v2 signature)")


def safe_read_size(buf: bytes) -> int:
    """How many bytes may be read next without reading past the end of the header."""
    if len(buf) < _MIN_HEADER:
        return _MIN_HEADER - len(buf)
    if buf.startswith(V2_SIGNATURE):
        if len(buf) < 16:
            return 16 - len(buf)
        length: int = struct.unpack_from("!H", buf, 14)[0]
        return max(16 + length - len(buf), 1)
    # v1 ends at CRLF: the next two bytes could be it, or one when the last byte is CR.
    return 1 if buf.endswith(b"\r") else 2


def _parse_v1(buf: bytes) -> tuple[ProxyHeader, int] | None:
    end = buf.find(b"\r\n")
    if end < 0:
        if len(buf) >= MAX_V1_LENGTH:
            raise ProxyProtocolError(f"v1 header longer than {MAX_V1_LENGTH} bytes")
        if b"\n" in buf:
            raise ProxyProtocolError("v1 header has LF without CR")
        return None
    consumed = end + 2
    if consumed > MAX_V1_LENGTH:
        raise ProxyProtocolError(f"v1 header longer than {MAX_V1_LENGTH} bytes")
    try:
        line = buf[:end].decode("ascii")
    except UnicodeDecodeError:
        raise ProxyProtocolError("v1 header is not ASCII") from None
    parts = line.split(" ")
    if len(parts) >= 2 and parts[1] == "UNKNOWN":
        # The receiver must ignore whatever follows UNKNOWN.
        return ProxyHeader(1, "proxy", "unknown", None, None), consumed
    if len(parts) != 6:
        raise ProxyProtocolError(f"v1 header needs 6 fields, got {len(parts)}: {line!r}")
    _, family, src, dst, sport, dport = parts
    if family not in ("TCP4", "TCP6"):
        raise ProxyProtocolError(f"v1 protocol must be TCP4, TCP6 or UNKNOWN, not {family!r}")
    version = 4 if family == "TCP4" else 6
    source = (_ip(src, version), _port(sport))
    destination = (_ip(dst, version), _port(dport))
    transport: Transport = "tcp4" if version == 4 else "tcp6"
    return ProxyHeader(1, "proxy", transport, source, destination), consumed


def _ip(text: str, version: int) -> str:
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        raise ProxyProtocolError(f"invalid IP address {text!r}") from None
    if address.version != version:
        raise ProxyProtocolError(f"{text!r} is not an IPv{version} address")
    return str(address)


def _port(text: str) -> int:
    if not text.isdigit() or (len(text) > 1 and text[0] == "0") or int(text) > 65535:
        raise ProxyProtocolError(f"invalid port {text!r}")
    return int(text)


def _parse_v2(buf: bytes) -> tuple[ProxyHeader, int] | None:
    if len(buf) < 16:
        return None
    ver_cmd, family, length = struct.unpack_from("!BBH", buf, 12)
    if ver_cmd >> 4 != 2:
        raise ProxyProtocolError(f"v2 header with version {ver_cmd >> 4}")
    command = ver_cmd & 0x0F
    if command not in (0, 1):
        raise ProxyProtocolError(f"v2 header with unknown command {command}")
    if 16 + length > MAX_V2_LENGTH:
        raise ProxyProtocolError(f"v2 header of {16 + length} bytes (limit {MAX_V2_LENGTH})")
    if len(buf) < 16 + length:
        return None
    consumed = 16 + length
    body = buf[16:consumed]
    if family not in _V2_FAMILIES:
        raise ProxyProtocolError(f"v2 header with unknown family/protocol 0x{family:02x}")
    transport, size = _V2_FAMILIES[family]
    if length < size:
        raise ProxyProtocolError(f"v2 {transport} addresses need {size} bytes, got {length}")
    if command == 0:
        # LOCAL: the balancer's own connection (a health check); addresses are ignored.
        return ProxyHeader(2, "local", transport, None, None, body[size:]), consumed
    source: Address | None = None
    destination: Address | None = None
    if size == 12:
        src, dst, sport, dport = struct.unpack_from("!4s4sHH", body)
        source = (str(ipaddress.IPv4Address(src)), sport)
        destination = (str(ipaddress.IPv4Address(dst)), dport)
    elif size == 36:
        src, dst, sport, dport = struct.unpack_from("!16s16sHH", body)
        source = (str(ipaddress.IPv6Address(src)), sport)
        destination = (str(ipaddress.IPv6Address(dst)), dport)
    return ProxyHeader(2, "proxy", transport, source, destination, body[size:]), consumed


# --- Encoding ----------------------------------------------------------------------------------


def _version_of(source: Address, destination: Address) -> int | None:
    """4 or 6 when both addresses are of that family (an IPv4-mapped IPv6 counts as 4)."""
    versions = set()
    for host, _ in (source, destination):
        try:
            address = ipaddress.ip_address(host.split("%", 1)[0])
        except ValueError:
            return None
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            versions.add(4)
        else:
            versions.add(address.version)
    return versions.pop() if len(versions) == 1 else None


def _plain(host: str, version: int) -> str:
    address = ipaddress.ip_address(host.split("%", 1)[0])
    if version == 4 and isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        return str(address.ipv4_mapped)
    return str(address)


def encode_v1(source: Address | None, destination: Address | None) -> bytes:
    """A v1 line for a TCP connection; `PROXY UNKNOWN` when the addresses are missing or of
    different families."""
    version = _version_of(source, destination) if source and destination else None
    if version is None or source is None or destination is None:
        return b"PROXY UNKNOWN\r\n"
    src, dst = _plain(source[0], version), _plain(destination[0], version)
    return f"PROXY TCP{version} {src} {dst} {source[1]} {destination[1]}\r\n".encode("ascii")


def encode_v2(source: Address | None, destination: Address | None) -> bytes:
    """A v2 PROXY header for a TCP connection; a LOCAL one (UNSPEC) when the addresses are
    missing or of different families."""
    version = _version_of(source, destination) if source and destination else None
    if version is None or source is None or destination is None:
        return encode_v2_local()
    src = ipaddress.ip_address(_plain(source[0], version)).packed
    dst = ipaddress.ip_address(_plain(destination[0], version)).packed
    family = 0x11 if version == 4 else 0x21
    body = src + dst + struct.pack("!HH", source[1], destination[1])
    return V2_SIGNATURE + struct.pack("!BBH", 0x21, family, len(body)) + body


def encode_v2_local() -> bytes:
    """A v2 LOCAL header: the connection is the sender's own (e.g. a health check)."""
    return V2_SIGNATURE + struct.pack("!BBH", 0x20, 0x00, 0)


def encode(
    version: Literal["v1", "v2"], source: Address | None, destination: Address | None
) -> bytes:
    return encode_v1(source, destination) if version == "v1" else encode_v2(source, destination)
