"""The PROXY protocol codec: the spec's examples byte for byte, and the `proxy-protocol`
package from PyPI as an independent reader and writer."""

from __future__ import annotations

import socket
import struct
from ipaddress import IPv4Address, IPv6Address

import pytest
from proxyprotocol.result import (
    ProxyResultIPv4,
    ProxyResultIPv6,
    ProxyResultLocal,
    ProxyResultUnknown,
)
from proxyprotocol.v1 import ProxyProtocolV1
from proxyprotocol.v2 import ProxyProtocolV2

from usher.proxy_protocol import (
    MAX_V1_LENGTH,
    V2_SIGNATURE,
    ProxyHeader,
    ProxyProtocolError,
    encode_v1,
    encode_v2,
    encode_v2_local,
    parse,
    safe_read_size,
)

V6_MAX = "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"

# Section 2.1 of proxy-protocol.txt: the longest lines of each kind.
SPEC_V1 = [
    (
        b"PROXY TCP4 255.255.255.255 255.255.255.255 65535 65535\r\n",
        ProxyHeader(1, "proxy", "tcp4", ("255.255.255.255", 65535), ("255.255.255.255", 65535)),
    ),
    (
        f"PROXY TCP6 {V6_MAX} {V6_MAX} 65535 65535\r\n".encode(),
        ProxyHeader(1, "proxy", "tcp6", (V6_MAX, 65535), (V6_MAX, 65535)),
    ),
    (b"PROXY UNKNOWN\r\n", ProxyHeader(1, "proxy", "unknown", None, None)),
    (
        f"PROXY UNKNOWN {V6_MAX} {V6_MAX} 65535 65535\r\n".encode(),
        ProxyHeader(1, "proxy", "unknown", None, None),
    ),
]


@pytest.mark.parametrize(("line", "expected"), SPEC_V1)
def test_v1_spec_examples(line: bytes, expected: ProxyHeader) -> None:
    assert len(line) <= MAX_V1_LENGTH
    assert parse(line + b"GET / HTTP/1.1\r\n") == (expected, len(line))
    # Every prefix asks for more, and never for more than what is left of the header.
    for cut in range(len(line)):
        assert parse(line[:cut]) is None
        assert 1 <= safe_read_size(line[:cut]) <= len(line) - cut


def test_v1_spec_max_lengths() -> None:
    assert len(SPEC_V1[1][0]) == 104
    assert len(SPEC_V1[3][0]) == MAX_V1_LENGTH == 107


def test_v2_signature_is_the_specs() -> None:
    assert bytes.fromhex("0D0A0D0A000D0A515549540A") == V2_SIGNATURE


def test_v2_tcp4_bytes() -> None:
    header = encode_v2(("192.0.2.1", 56324), ("198.51.100.2", 443))
    assert header == (
        V2_SIGNATURE
        + bytes([0x21, 0x11, 0x00, 0x0C])
        + bytes([192, 0, 2, 1, 198, 51, 100, 2])
        + struct.pack("!HH", 56324, 443)
    )
    assert parse(header + b"rest") == (
        ProxyHeader(2, "proxy", "tcp4", ("192.0.2.1", 56324), ("198.51.100.2", 443)),
        28,
    )
    for cut in range(len(header)):
        assert parse(header[:cut]) is None
        assert 1 <= safe_read_size(header[:cut]) <= len(header) - cut


def test_v2_tcp6_and_local() -> None:
    header = encode_v2(("2001:db8::1", 1), ("2001:db8::2", 2))
    assert header[12:16] == bytes([0x21, 0x21, 0x00, 36])
    assert parse(header) == (
        ProxyHeader(2, "proxy", "tcp6", ("2001:db8::1", 1), ("2001:db8::2", 2)),
        52,
    )
    local = encode_v2_local()
    assert local == V2_SIGNATURE + bytes([0x20, 0x00, 0x00, 0x00])
    assert parse(local) == (ProxyHeader(2, "local", "unknown", None, None), 16)


def test_v2_tlvs_are_kept_and_skipped() -> None:
    tlv = bytes([0x04]) + struct.pack("!H", 3) + b"abc"  # PP2_TYPE_NOOP
    body = bytes([10, 0, 0, 1, 10, 0, 0, 2]) + struct.pack("!HH", 1, 2) + tlv
    header = V2_SIGNATURE + bytes([0x21, 0x11]) + struct.pack("!H", len(body)) + body
    parsed = parse(header + b"x")
    assert parsed is not None
    assert parsed[0].tlvs == tlv and parsed[1] == len(header)


def test_mixed_or_missing_families_encode_as_unknown() -> None:
    assert encode_v1(("10.0.0.1", 1), ("::1", 2)) == b"PROXY UNKNOWN\r\n"
    assert encode_v1(None, None) == b"PROXY UNKNOWN\r\n"
    assert encode_v2(("10.0.0.1", 1), ("::1", 2)) == encode_v2_local()
    # An IPv4-mapped IPv6 address (a dual-stack socket) is IPv4 on the wire.
    assert encode_v1(("::ffff:10.0.0.1", 1), ("10.0.0.2", 2)) == (
        b"PROXY TCP4 10.0.0.1 10.0.0.2 1 2\r\n"
    )


@pytest.mark.parametrize(
    "bad",
    [
        b"GET / HTTP/1.1\r\n",
        b"PROXY TCP5 1.2.3.4 1.2.3.4 1 2\r\n",
        b"PROXY TCP4 1.2.3.4 1.2.3.4 1 65536\r\n",
        b"PROXY TCP4 1.2.3.4 1.2.3.4 01 2\r\n",
        b"PROXY TCP4 ::1 ::1 1 2\r\n",
        b"PROXY TCP4 1.2.3.4 1.2.3.4 1\r\n",
        b"PROXY TCP4 1.2.3.4 1.2.3.4 1 2\n",
        b"PROXY " + b"A" * 200,
        V2_SIGNATURE + bytes([0x31, 0x11, 0, 12]) + bytes(12),  # version 3
        V2_SIGNATURE + bytes([0x22, 0x11, 0, 12]) + bytes(12),  # command 2
        V2_SIGNATURE + bytes([0x21, 0x11, 0, 4]) + bytes(4),  # too short for TCP4
        V2_SIGNATURE + bytes([0x21, 0x99, 0, 0]),  # unknown family
        V2_SIGNATURE + bytes([0x21, 0x11, 0xFF, 0xFF]),  # beyond usher's size cap
    ],
)
def test_invalid_headers_are_errors(bad: bytes) -> None:
    with pytest.raises(ProxyProtocolError):
        parse(bad)


# The independent implementation: the proxy-protocol package.


@pytest.mark.parametrize(
    ("source", "dest"),
    [
        (("203.0.113.7", 40000), ("198.51.100.1", 5432)),
        (("2001:db8::7", 1), ("2001:db8::1", 65535)),
    ],
)
def test_package_reads_what_we_write(source: tuple[str, int], dest: tuple[str, int]) -> None:
    for ours, theirs in ((encode_v1, ProxyProtocolV1()), (encode_v2, ProxyProtocolV2())):
        result = theirs.unpack(ours(source, dest))
        assert (str(result.source[0]), result.source[1]) == source
        assert (str(result.dest[0]), result.dest[1]) == dest


def test_package_reads_local_and_unknown() -> None:
    assert isinstance(ProxyProtocolV2().unpack(encode_v2_local()), ProxyResultLocal)
    assert isinstance(ProxyProtocolV1().unpack(b"PROXY UNKNOWN\r\n"), ProxyResultUnknown)


def test_we_read_what_the_package_writes() -> None:
    v4 = ProxyResultIPv4(
        (IPv4Address("192.0.2.9"), 1234),
        (IPv4Address("192.0.2.10"), 80),
        protocol=socket.SOCK_STREAM,
    )
    v6 = ProxyResultIPv6(
        (IPv6Address("2001:db8::9"), 1234),
        (IPv6Address("2001:db8::a"), 80),
        protocol=socket.SOCK_STREAM,
    )
    for writer in (ProxyProtocolV1(), ProxyProtocolV2()):
        for result, transport in ((v4, "tcp4"), (v6, "tcp6")):
            data = writer.pack(result)
            parsed = parse(data)
            assert parsed is not None
            header, consumed = parsed
            assert consumed == len(data)
            assert header.transport == transport
            assert header.source == (str(result.source[0]), 1234)
            assert header.destination == (str(result.dest[0]), 80)
    # And byte for byte, where the package writes the same thing.
    assert ProxyProtocolV1().pack(v4) == encode_v1(("192.0.2.9", 1234), ("192.0.2.10", 80))
    assert ProxyProtocolV2().pack(v4) == encode_v2(("192.0.2.9", 1234), ("192.0.2.10", 80))
