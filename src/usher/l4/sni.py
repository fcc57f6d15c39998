"""Read the server name (SNI) of a TLS ClientHello without decrypting anything, sans-IO.

Feed the bytes a connection starts with; the answer is `NEED_MORE`, a `Hello` (with the
server name, or None when the client sent none), `NotTls` or `Malformed`. The ClientHello may be
split across TLS records and across reads; at most `max_bytes` are buffered. The bytes fed are
kept in `buffered`, so that they can be relayed to the backend unchanged.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Final

from usher.errors import MalformedClientHello

__all__ = [
    "DEFAULT_MAX_HELLO",
    "NEED_MORE",
    "ClientHelloReader",
    "Hello",
    "Malformed",
    "NeedMore",
    "NotTls",
    "Result",
]

# A ClientHello with post-quantum key shares is ~2 KiB; 64 KiB leaves room for any real one.
DEFAULT_MAX_HELLO: Final = 64 * 1024
_HANDSHAKE: Final = 0x16
_CLIENT_HELLO: Final = 0x01
_SERVER_NAME: Final = 0x0000
_HOST_NAME: Final = 0x00
# A TLS record carries at most 2^14 bytes of plaintext (RFC 8446 5.1).
_MAX_RECORD: Final = 1 << 14


@dataclass(frozen=True, slots=True)
class NeedMore:
    """Not enough bytes yet."""


@dataclass(frozen=True, slots=True)
class Hello:
    """A complete ClientHello; `server_name` is lower-cased, or None without SNI."""

    server_name: str | None


@dataclass(frozen=True, slots=True)
class NotTls:
    """The first flight is not a TLS handshake (plain HTTP, SSH, ...)."""

    reason: str


@dataclass(frozen=True, slots=True)
class Malformed:
    """A TLS handshake record that does not hold a valid ClientHello, or one too large."""

    reason: str


Result = NeedMore | Hello | NotTls | Malformed
NEED_MORE: Final = NeedMore()


class ClientHelloReader:
    """Accumulates the first flight of a connection until its ClientHello can be read."""

    __slots__ = ("_result", "buffered", "max_bytes")

    def __init__(self, max_bytes: int = DEFAULT_MAX_HELLO) -> None:
        self.max_bytes = max_bytes
        self.buffered = b""
        self._result: Result = NEED_MORE

    def feed(self, data: bytes) -> Result:
        if not isinstance(self._result, NeedMore):
            return self._result  # decided already; later bytes change nothing
        self.buffered += data
        self._result = self._read()
        return self._result

    def _read(self) -> Result:
        buf = self.buffered
        if not buf:
            return NEED_MORE
        if buf[0] != _HANDSHAKE:
            return NotTls(f"first byte 0x{buf[0]:02x} is not a TLS handshake record")
        if len(buf) >= 2 and buf[1] != 0x03:
            return NotTls(f"record version {buf[1]}.x is not TLS")
        # Reassemble the handshake messages from as many records as are complete.
        handshake = b""
        offset = 0
        while len(buf) - offset >= 5:
            kind, major, length = struct.unpack_from("!BBxH", buf, offset)
            if kind != _HANDSHAKE:
                return Malformed(f"record of type {kind} before the ClientHello was complete")
            if major != 0x03:
                return Malformed("record version is not TLS")
            if length == 0 or length > _MAX_RECORD:
                return Malformed(f"handshake record of {length} bytes")
            if len(buf) - offset - 5 < length:
                break
            handshake += buf[offset + 5 : offset + 5 + length]
            offset += 5 + length
            if len(handshake) >= 4:
                if handshake[0] != _CLIENT_HELLO:
                    return Malformed(f"handshake message {handshake[0]} is not a ClientHello")
                (size,) = struct.unpack_from("!I", b"\0" + handshake[1:4])
                if 4 + size > self.max_bytes:
                    return Malformed(f"ClientHello of {size} bytes (limit {self.max_bytes})")
                if len(handshake) >= 4 + size:
                    try:
                        return Hello(_server_name(handshake[4 : 4 + size]))
                    except MalformedClientHello as exc:
                        return Malformed(str(exc))
        if len(buf) >= self.max_bytes:
            return Malformed(f"no complete ClientHello in the first {self.max_bytes} bytes")
        return NEED_MORE


class _Cursor:
    __slots__ = ("data", "pos")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def take(self, n: int, what: str) -> bytes:
        if self.pos + n > len(self.data):
            raise MalformedClientHello(f"ClientHello ends inside its {what}")
        chunk = self.data[self.pos : self.pos + n]
        self.pos += n
        return chunk

    def number(self, size: int, what: str) -> int:
        return int.from_bytes(self.take(size, what), "big")

    def vector(self, size: int, what: str) -> bytes:
        return self.take(self.number(size, what), what)

    @property
    def left(self) -> int:
        return len(self.data) - self.pos


def _server_name(body: bytes) -> str | None:
    hello = _Cursor(body)
    hello.take(2 + 32, "version and random")
    hello.vector(1, "session id")
    suites = hello.vector(2, "cipher suites")
    if not suites or len(suites) % 2:
        raise MalformedClientHello("ClientHello has an invalid cipher suite list")
    if not hello.vector(1, "compression methods"):
        raise MalformedClientHello("ClientHello has no compression method")
    if hello.left == 0:
        return None  # no extensions at all (very old clients)
    extensions = _Cursor(hello.vector(2, "extensions"))
    if hello.left:
        raise MalformedClientHello("bytes after the ClientHello's extensions")
    name: str | None = None
    seen: set[int] = set()
    while extensions.left:
        kind = extensions.number(2, "extension type")
        data = extensions.vector(2, "extension")
        if kind in seen:
            raise MalformedClientHello(f"extension {kind} appears twice")
        seen.add(kind)
        if kind == _SERVER_NAME:
            name = _host_name(data)
    return name


def _host_name(data: bytes) -> str | None:
    names = _Cursor(_Cursor(data).vector(2, "server name list"))
    while names.left:
        kind = names.number(1, "server name type")
        value = names.vector(2, "server name")
        if kind == _HOST_NAME:
            try:
                text = value.decode("ascii")
            except UnicodeDecodeError:
                raise MalformedClientHello("server name is not ASCII") from None
            if not text or any(c in text for c in "\0/ \\") or len(text) > 253:
                raise MalformedClientHello(f"invalid server name {text!r}")
            return text.rstrip(".").lower()
    return None
