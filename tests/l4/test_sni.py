"""The ClientHello reader, on real ClientHellos made by Python's ssl module."""

from __future__ import annotations

import ssl
import struct

import pytest

from usher.l4.sni import NEED_MORE, ClientHelloReader, Hello, Malformed, NotTls


def client_hello(server_name: str | None) -> bytes:
    ctx = ssl.create_default_context()
    ctx.check_hostname = server_name is not None
    if server_name is None:
        ctx.verify_mode = ssl.CERT_NONE
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(incoming, outgoing, server_hostname=server_name)
    with pytest.raises(ssl.SSLWantReadError):
        obj.do_handshake()
    return outgoing.read()


def resplit(hello: bytes, size: int) -> bytes:
    """The same handshake message cut into TLS records of `size` bytes."""
    body = hello[5:]
    out = b""
    for i in range(0, len(body), size):
        piece = body[i : i + size]
        out += bytes([0x16]) + hello[1:3] + struct.pack("!H", len(piece)) + piece
    return out


def test_reads_the_server_name() -> None:
    hello = client_hello("API.Example.com")
    assert ClientHelloReader().feed(hello) == Hello("api.example.com")


def test_no_server_name() -> None:
    assert ClientHelloReader().feed(client_hello(None)) == Hello(None)


def test_byte_by_byte_and_across_records() -> None:
    hello = resplit(client_hello("db.internal"), 50)
    reader = ClientHelloReader()
    for i in range(len(hello) - 1):
        assert reader.feed(hello[i : i + 1]) is NEED_MORE
    assert reader.feed(hello[-1:]) == Hello("db.internal")
    assert reader.buffered == hello  # everything kept, to relay unchanged


def test_not_tls() -> None:
    assert isinstance(ClientHelloReader().feed(b"GET / HTTP/1.1\r\n"), NotTls)
    assert isinstance(ClientHelloReader().feed(b"\x16\x02\x00"), NotTls)
    assert isinstance(ClientHelloReader().feed(b"SSH-2.0-OpenSSH\r\n"), NotTls)


@pytest.mark.parametrize(
    "bad",
    [
        b"\x16\x03\x01\x00\x00",  # empty record
        b"\x16\x03\x01\x00\x04\x02\x00\x00\x00",  # a ServerHello
        b"\x16\x03\x01\x00\x08\x01\x00\x00\x04\x03\x03\x00\x00",  # ends inside random
        b"\x16\x03\x01\x00\x01\x01" + b"\x17\x03\x01\x00\x01\x00",  # other record midway
    ],
)
def test_malformed(bad: bytes) -> None:
    assert isinstance(ClientHelloReader().feed(bad), Malformed)


def test_cap_on_buffered_bytes() -> None:
    hello = client_hello("example.com")
    reader = ClientHelloReader(max_bytes=100)
    assert isinstance(reader.feed(hello), Malformed)
    # A handshake that announces a huge ClientHello is refused before it arrives.
    huge = b"\x16\x03\x01\x00\x04\x01\x10\x00\x00"
    assert isinstance(ClientHelloReader(max_bytes=4096).feed(huge), Malformed)


def test_truncated_server_name_extension() -> None:
    hello = bytearray(client_hello("example.com"))
    at = hello.find(b"example.com")
    hello[at - 2 : at] = struct.pack("!H", 200)  # name length beyond its extension
    assert isinstance(ClientHelloReader().feed(bytes(hello)), Malformed)
