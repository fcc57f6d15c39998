"""Framing rules in one place: transfer codings, which messages have a body, and the bytes.

Readers and writers both ask here: `transfer_codings` and `request_framing_error` for what a
Transfer-Encoding means, `body_forbidden` for the 1xx/HEAD/204/304 rule, `HeadFraming` for the
framing and Connection headers of a head given to a writer, and the `encode_*` functions for
the bytes on the wire.
"""

from __future__ import annotations

from typing import Final

from usher.errors import ClientError, LocalProtocolError
from usher.http.events import Headers

CHUNKED: Final = b"chunked"
PLAIN_CHUNKED: Final = (CHUNKED,)


def transfer_codings(headers: Headers) -> tuple[bytes, ...]:
    """The transfer codings of a message, lower-cased, from all its Transfer-Encoding headers,
    without the empty list elements RFC 9110 §5.6.1 says to ignore (`,chunked` is `chunked`)."""
    codings: list[bytes] = []
    for name, value in headers:
        if len(name) == 17 and name.lower() == b"transfer-encoding":
            codings.extend(c for c in (t.strip(b" \t").lower() for t in value.split(b",")) if c)
    return tuple(codings)


def ends_chunked(codings: tuple[bytes, ...]) -> bool:
    """Whether a body with these transfer codings is chunked (RFC 9112 §6.3): only when chunked
    comes last; after `gzip` or `chunked, gzip` a response's body runs to the close."""
    return bool(codings) and codings[-1] == CHUNKED


def chunked_twice(codings: tuple[bytes, ...]) -> bool:
    """Chunked applied more than once (RFC 9112 §7.1 forbids it): refused in either direction."""
    return codings.count(CHUNKED) > 1


def request_framing_error(codings: tuple[bytes, ...]) -> ClientError | None:
    """Why a request's Transfer-Encoding is refused, or None when it is plain `chunked`.

    Like nginx, usher takes no transfer coding but chunked (RFC 9112 §6.1: 501 for a coding the
    server does not understand): a backend then reads the same body usher read, whatever its
    parser makes of `gzip, chunked`.
    """
    if codings == (CHUNKED,):
        return None
    if not ends_chunked(codings):
        return ClientError(400, "the last transfer coding of a request must be chunked")
    if chunked_twice(codings):
        return ClientError(400, "chunked is applied more than once")
    other = b", ".join(codings[:-1]).decode("latin-1")
    return ClientError(501, f"transfer coding {other} is not supported")


NO_BODY_STATUSES: Final = frozenset({204, 304})


def body_forbidden(status: int, *, head: bool) -> bool:
    """A response that carries no body whatever its headers say (RFC 9110 §6.4.1): any 1xx
    (101 included: what follows is no longer HTTP), 204, 304, and every answer to HEAD."""
    return head or status < 200 or status in NO_BODY_STATUSES


CRLF: Final = b"\r\n"
LAST_CHUNK: Final = b"0\r\n\r\n"

REASONS: Final[dict[int, bytes]] = {
    100: b"Continue",
    101: b"Switching Protocols",
    200: b"OK",
    204: b"No Content",
    301: b"Moved Permanently",
    302: b"Found",
    303: b"See Other",
    304: b"Not Modified",
    307: b"Temporary Redirect",
    308: b"Permanent Redirect",
    400: b"Bad Request",
    403: b"Forbidden",
    404: b"Not Found",
    405: b"Method Not Allowed",
    408: b"Request Timeout",
    413: b"Content Too Large",
    414: b"URI Too Long",
    429: b"Too Many Requests",
    431: b"Request Header Fields Too Large",
    500: b"Internal Server Error",
    501: b"Not Implemented",
    502: b"Bad Gateway",
    503: b"Service Unavailable",
    504: b"Gateway Timeout",
    505: b"HTTP Version Not Supported",
}


def encode_headers(headers: Headers) -> bytes:
    return b"".join([name + b": " + value + CRLF for name, value in headers])


def encode_request_head(method: bytes, target: bytes, headers: Headers) -> bytes:
    return method + b" " + target + b" HTTP/1.1\r\n" + encode_headers(headers) + CRLF


def encode_response_head(status: int, reason: bytes, headers: Headers) -> bytes:
    if not reason:
        reason = REASONS.get(status, b"")
    return b"HTTP/1.1 %d %s\r\n" % (status, reason) + encode_headers(headers) + CRLF


def encode_chunk(data: bytes) -> bytes:
    if not data:
        return b""  # a zero-size chunk would end the body
    return b"%x\r\n" % len(data) + data + CRLF


def encode_last_chunk(trailers: Headers | None) -> bytes:
    if not trailers:
        return LAST_CHUNK
    return b"0\r\n" + encode_headers(trailers) + CRLF


def _content_length(value: bytes) -> int:
    if not value.isdigit():
        raise LocalProtocolError(f"Content-Length {value!r} is not a number")
    return int(value)


def _asks_close(value: bytes) -> bool:
    return any(t.strip(b" \t").lower() == b"close" for t in value.split(b","))


class HeadFraming:
    """The framing headers of a head given to a writer, and the head without them."""

    __slots__ = ("chunked", "close", "content_length", "length_at", "rest", "te_at")

    def __init__(self, headers: Headers, *, keep_connection: bool) -> None:
        # `rest`: the headers in their order, the framing ones still in place (their
        # positions noted) so a head the caller framed comes out as it was given.
        self.rest: Headers = []
        self.content_length: int | None = None
        self.chunked = False
        self.close = False
        self.length_at = self.te_at = -1
        for header in headers:
            name = header[0].lower()
            if name == b"content-length":
                if self.length_at >= 0:
                    raise LocalProtocolError("more than one Content-Length")
                self.content_length = _content_length(header[1])
                self.length_at = len(self.rest)
            elif name == b"transfer-encoding":
                if self.te_at >= 0 or transfer_codings([header]) != PLAIN_CHUNKED:
                    raise LocalProtocolError("a writer frames with plain chunked only")
                self.chunked = True
                self.te_at = len(self.rest)
            elif name == b"connection":
                self.close = self.close or _asks_close(header[1])
                if not keep_connection:
                    continue  # the writer says keep-alive or close itself
            self.rest.append(header)
        if self.length_at >= 0 and self.te_at >= 0:
            raise LocalProtocolError("both Content-Length and Transfer-Encoding")

    def headers(self, *, length: bool, chunked: bool) -> Headers:
        """`rest` with only the framing asked for: given ones kept in place, others appended."""
        headers = [
            h
            for i, h in enumerate(self.rest)
            if (i != self.length_at or length) and (i != self.te_at or chunked)
        ]
        if length and self.length_at < 0:
            headers.append((b"Content-Length", b"%d" % (self.content_length or 0)))
        if chunked and self.te_at < 0:
            headers.append((b"Transfer-Encoding", CHUNKED))
        return headers
