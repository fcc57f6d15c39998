"""HTTP/2 header blocks and HTTP/1.1 heads, translated both ways (RFC 9113 §8.2-8.3).

A stream's request becomes the HTTP/1.1 head the downstream reader parses, so that it meets
the same limits and checks as any HTTP/1.1 request; the answer's head becomes `:status` and
the fields HTTP/2 may carry. Pure functions: no connection, no I/O.
"""

from __future__ import annotations

from typing import Final

from usher.errors import MalformedRequest
from usher.http.events import Headers

# Fields that name a connection's framing or fate: meaningless (and malformed) in HTTP/2,
# RFC 9113 §8.2.2. `te` is among them except as `te: trailers` in a request.
CONNECTION_SPECIFIC: Final = frozenset(
    {b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade"}
)

_CHUNKED: Final = (b"transfer-encoding", b"chunked")


def _check_token(value: bytes, what: str) -> None:
    # Bytes that would end or split the request line of the HTTP/1.1 head.
    for byte in value:
        if byte <= 0x20 or byte == 0x7F:
            raise MalformedRequest(f"{what} holds a space or control byte")


def _check_field(name: bytes, value: bytes) -> None:
    if not name or b":" in name or b"\r" in name or b"\n" in name or b" " in name:
        raise MalformedRequest(f"bad field name {name[:40]!r}")
    if b"\r" in value or b"\n" in value or b"\x00" in value:
        raise MalformedRequest(f"field {name[:40]!r} holds CR, LF or NUL")


def request_head(headers: Headers, *, ends_stream: bool) -> tuple[bytes, bytes, bool]:
    """The HTTP/1.1 head of a stream's request: (head bytes, method, chunked). The body is
    chunked when it has no content-length and the HEADERS did not end the stream. Raises
    MalformedRequest."""
    method = path = authority = scheme = b""
    fields: Headers = []
    cookies: list[bytes] = []
    host = b""
    length = False
    for name, value in headers:
        if name[:1] == b":":
            if fields or cookies or host or length:
                raise MalformedRequest("a pseudo-header after a regular field")
            if name == b":method":
                method = value
            elif name == b":path":
                path = value
            elif name == b":authority":
                authority = value
            elif name == b":scheme":
                scheme = value
            else:
                raise MalformedRequest(f"unknown pseudo-header {name[:40]!r}")
            continue
        _check_field(name, value)
        if name in CONNECTION_SPECIFIC or (name == b"te" and value.lower() != b"trailers"):
            raise MalformedRequest(f"connection-specific field {name.decode('latin-1')}")
        if name == b"cookie":
            cookies.append(value)  # split crumbs are joined again, §8.2.3
        elif name == b"host":
            host = value
        else:
            if name == b"content-length":
                length = True
            fields.append((name, value))
    if not method or not scheme or not path:
        raise MalformedRequest("a request needs :method, :scheme and :path")
    if method == b"CONNECT":
        raise MalformedRequest("CONNECT is not supported by a reverse proxy")
    _check_token(method, ":method")
    _check_token(path, ":path")
    # :authority wins over Host (RFC 9113 §8.3.1); with neither, the reader answers 400.
    host = authority or host
    if host:
        _check_token(host, ":authority")
        fields.insert(0, (b"host", host))
    if cookies:
        fields.append((b"cookie", b"; ".join(cookies)))
    chunked = not length and not ends_stream
    if chunked:
        fields.append(_CHUNKED)
    lines = [method, b" ", path, b" HTTP/1.1\r\n"]
    for name, value in fields:
        lines += (name, b": ", value, b"\r\n")
    lines.append(b"\r\n")
    return b"".join(lines), method, chunked


def trailer_fields(trailers: Headers) -> Headers:
    """A request's trailers as a chunked body's last chunk carries them; raises
    MalformedRequest for a pseudo-header or a field HTTP/1.1 cannot carry."""
    for name, value in trailers:
        if name[:1] == b":":
            raise MalformedRequest("a pseudo-header in trailers")
        _check_field(name, value)
    return trailers


def response_fields(status: int, headers: Headers) -> Headers:
    """An HTTP/1.1 answer's head as an HTTP/2 header block: `:status` first, names in lower
    case, the connection-specific fields dropped."""
    out: Headers = [(b":status", b"%d" % status)]
    for name, value in headers:
        lname = name.lower()
        if lname in CONNECTION_SPECIFIC or lname == b"te":
            continue
        out.append((lname, value))
    return out


def trailers_out(trailers: Headers) -> Headers:
    """A chunked answer's trailers as an HTTP/2 trailing header block."""
    return [
        (lname, value)
        for lname, value in ((name.lower(), value) for name, value in trailers)
        if lname not in CONNECTION_SPECIFIC and lname != b"te"
    ]
