"""Sans-IO HTTP/1.1 codec on httptools (llhttp): bytes in, events out; events in, bytes out.

`RequestReader` parses what a client sends (server side), `ResponseReader` what a backend
answers (client side). Neither owns a socket. The `encode_*` functions build the bytes to send.
llhttp is strict: a request with both Content-Length and Transfer-Encoding, duplicate
Content-Lengths, an obfuscated Transfer-Encoding, bare LF, or control bytes in headers is a
parse error, which is what keeps request smuggling out. Its one leniency (on Transfer-Encoding,
see `RequestReader._new_parser`) leaves that header to usher, which takes plain chunked only.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from typing import Final

import httptools

from usher.errors import ClientError, LocalProtocolError, UpstreamProtocolError

Headers = list[tuple[bytes, bytes]]

# A backend is trusted more than a client, but its header block must still be bounded.
MAX_RESPONSE_HEAD: Final = 64 * 1024
MAX_RESPONSE_HEADERS: Final = 200


class Request:
    """The head of a request. The body follows as `Data` events, then `EndOfMessage`."""

    __slots__ = (
        "chunked",
        "content_length",
        "headers",
        "host",
        "keep_alive",
        "method",
        "target",
        "upgrade",
        "version",
    )

    def __init__(
        self,
        method: bytes,
        target: bytes,
        version: bytes,
        headers: Headers,
        *,
        host: bytes = b"",
        keep_alive: bool = True,
        chunked: bool = False,
        content_length: int | None = None,
        upgrade: bytes | None = None,
    ) -> None:
        self.method = method
        self.target = target
        self.version = version
        self.headers = headers
        self.host = host
        self.keep_alive = keep_alive
        self.chunked = chunked
        self.content_length = content_length
        self.upgrade = upgrade

    @property
    def has_body(self) -> bool:
        return self.chunked or bool(self.content_length)

    def __repr__(self) -> str:
        return f"<Request {self.method.decode()} {self.target.decode('latin-1')}>"


class Response:
    """The head of a response (interim 1xx ones included)."""

    __slots__ = (
        "chunked",
        "codings",
        "content_length",
        "headers",
        "keep_alive",
        "reason",
        "status",
        "version",
    )

    def __init__(
        self,
        status: int,
        reason: bytes,
        version: bytes,
        headers: Headers,
        *,
        keep_alive: bool = True,
        chunked: bool = False,
        content_length: int | None = None,
        codings: tuple[bytes, ...] = (),
    ) -> None:
        self.status = status
        self.reason = reason
        self.version = version
        self.headers = headers
        self.keep_alive = keep_alive
        self.chunked = chunked
        self.content_length = content_length
        # The Transfer-Encoding as `transfer_codings` reads it; chunked when it ends in chunked.
        self.codings = codings

    @property
    def interim(self) -> bool:
        return 100 <= self.status < 200 and self.status != 101

    def __repr__(self) -> str:
        return f"<Response {self.status}>"


class InformationalResponse:
    """An interim 1xx answer to send (100 Continue, 103 Early Hints); 101 is a `Response`."""

    __slots__ = ("headers", "reason", "status")

    def __init__(self, status: int, headers: Headers | None = None, reason: bytes = b"") -> None:
        self.status = status
        self.headers = headers or []
        self.reason = reason

    def __repr__(self) -> str:
        return f"<InformationalResponse {self.status}>"


class Data:
    """A piece of a message body."""

    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        self.data = data

    def __repr__(self) -> str:
        return f"<Data {len(self.data)} bytes>"


class EndOfMessage:
    """The message is complete; `trailers` holds chunked trailers, if any."""

    __slots__ = ("trailers",)

    def __init__(self, trailers: Headers | None = None) -> None:
        self.trailers = trailers

    def __repr__(self) -> str:
        return f"<EndOfMessage trailers={len(self.trailers or ())}>"


class Upgraded:
    """The connection switched protocols; `tail` holds bytes that followed the HTTP head."""

    __slots__ = ("tail",)

    def __init__(self, tail: bytes) -> None:
        self.tail = tail

    def __repr__(self) -> str:
        return f"<Upgraded tail={len(self.tail)}>"


Event = Request | Response | Data | EndOfMessage | Upgraded


CHUNKED: Final = b"chunked"
_PLAIN_CHUNKED: Final = (CHUNKED,)


def transfer_codings(headers: Headers) -> tuple[bytes, ...]:
    """The transfer codings of a message, lower-cased, from all its Transfer-Encoding headers,
    without the empty list elements RFC 9110 §5.6.1 says to ignore (`,chunked` is `chunked`)."""
    codings: list[bytes] = []
    for name, value in headers:
        if len(name) == 17 and name.lower() == b"transfer-encoding":
            codings.extend(c for c in (t.strip(b" \t").lower() for t in value.split(b",")) if c)
    return tuple(codings)


def request_framing_error(codings: tuple[bytes, ...]) -> ClientError | None:
    """Why a request's Transfer-Encoding is refused, or None when it is plain `chunked`.

    Like nginx, usher takes no transfer coding but chunked (RFC 9112 §6.1: 501 for a coding the
    server does not understand): a backend then reads the same body usher read, whatever its
    parser makes of `gzip, chunked`.
    """
    if codings == (CHUNKED,):
        return None
    if not codings or codings[-1] != CHUNKED:
        return ClientError(400, "the last transfer coding of a request must be chunked")
    if codings.count(CHUNKED) > 1:
        return ClientError(400, "chunked is applied more than once")
    other = b", ".join(codings[:-1]).decode("latin-1")
    return ClientError(501, f"transfer coding {other} is not supported")


class HeadLimits:
    """Size limits for a request head and body; a listener's `limits` in the config."""

    __slots__ = ("max_body_size", "max_header_size", "max_headers", "max_request_line")

    def __init__(
        self,
        *,
        max_header_size: int = 32 * 1024,
        max_request_line: int = 8 * 1024,
        max_headers: int = 100,
        max_body_size: int | None = None,
    ) -> None:
        self.max_header_size = max_header_size
        self.max_request_line = max_request_line
        self.max_headers = max_headers
        self.max_body_size = max_body_size


class RequestReader:
    """Parses requests from a client. Raises `ClientError` (with the status to answer) on bad input.

    After a `ClientError` the reader is unusable: the connection must be answered and closed.
    """

    __slots__ = (
        "_after_chunk_header",
        "_body_size",
        "_content_length",
        "_events",
        "_feed_used",
        "_head_bytes",
        "_head_offset",
        "_headers",
        "_in_head",
        "_in_message",
        "_limits",
        "_muted",
        "_parser",
        "_pending_error",
        "_raw_body",
        "_require_host",
        "_trailer_bytes",
        "_trailers",
        "_unframed",
        "_upgrade_filter",
        "_url",
        "upgraded",
    )

    def __init__(
        self,
        limits: HeadLimits | None = None,
        *,
        upgrade_filter: Callable[[Request], bytes | None] | None = None,
        require_host: bool = True,
    ) -> None:
        self._limits = limits or HeadLimits()
        # RFC 9112 §3.2 wants a Host in every HTTP/1.1 request; the demo origin, which is
        # no proxy and routes nothing on it, lets a bare `GET / HTTP/1.1` by.
        self._require_host = require_host
        # Given an upgrade request, the Upgrade value to keep, or None to decline the upgrade
        # and read the request (and its body) as plain HTTP/1.1. None: every upgrade is kept.
        self._upgrade_filter = upgrade_filter
        self._parser = self._new_parser()
        self._events: list[Event] = []
        self._headers: Headers = []
        self._trailers: Headers | None = None
        self._url = b""
        self._head_bytes = 0
        self._body_size = 0
        self._content_length: int | None = None
        self._in_head = False
        self._in_message = False
        self._pending_error: ClientError | None = None
        # Bytes of the current feed that belonged to messages before the current head, and
        # where the current head began in the feed (-1: in an earlier feed).
        self._feed_used = 0
        self._head_offset = -1
        # After a chunk header and before any of its body: possibly in the trailers, which
        # httptools buffers like headers, so they are bounded like a head.
        self._after_chunk_header = False
        self._trailer_bytes = 0
        self.upgraded = False
        # A chunked request whose body llhttp may not be reading as chunked (see _reframe),
        # the bytes it took for a body running to the close, and whether the head callbacks
        # are off (while a fresh parser is given the head again).
        self._unframed: Request | None = None
        self._raw_body: list[bytes] = []
        self._muted = False

    def _new_parser(self) -> httptools.HttpRequestParser:
        parser = httptools.HttpRequestParser(self)
        # llhttp refuses `Transfer-Encoding: chunked<TAB>` (it takes only spaces after chunked)
        # though RFC 9110 §5.6.3 allows any optional whitespace. With this leniency it reads
        # such a body to the close instead, and usher re-frames it (_reframe). Every other
        # coding list is refused by on_headers_complete before llhttp reads a body byte, so
        # nothing but plain chunked is ever taken: the strictness stays usher's.
        parser.set_dangerous_leniencies(lenient_transfer_encoding=True)
        return parser

    @property
    def idle(self) -> bool:
        """No request is partly received."""
        return not self._in_message

    @property
    def parsed_before_error(self) -> list[Event]:
        """After `feed` raised: the events of that same feed that came before the bad bytes
        (a good pipelined request ahead of a bad one still deserves its answer)."""
        return self._events

    def feed(self, data: bytes) -> list[Event]:
        events = self._events = []
        self._feed_used = 0
        self._head_offset = -1
        if self._after_chunk_header:
            self._trailer_bytes += len(data)
        try:
            self._parse(data)
            while self._raw_body:
                self._parse(self._reframe())
        except httptools.HttpParserCallbackError:
            raise self._pending_error or ClientError(400, "malformed request") from None
        except httptools.HttpParserError as exc:
            raise ClientError(400, f"malformed request: {exc}") from None
        limit = self._limits.max_header_size
        if self._in_head:
            # httptools holds an unfinished head whole: bound it as it grows.
            if self._head_offset >= 0:
                self._head_bytes = len(data) - self._head_offset
            else:
                self._head_bytes += len(data)
            if self._head_bytes > limit:
                raise ClientError(431, "request header fields too large")
        elif self._after_chunk_header and self._trailer_bytes > limit:
            raise ClientError(431, "request trailer fields too large")
        return events

    def _parse(self, data: bytes) -> None:
        base = 0  # where `data` starts in the bytes given to feed()
        while True:
            try:
                self._parser.feed_data(data)
                return
            except httptools.HttpParserUpgrade as exc:
                tail = data[exc.args[0] :]
                if not self._decline_upgrade():
                    self.upgraded = True
                    self._events.append(Upgraded(tail))
                    return
                base += exc.args[0]
                self._feed_used = base
                data = tail

    def _decline_upgrade(self) -> bool:
        """The upgrade request just parsed is not to be upgraded (its route does not allow the
        protocol): make it a plain request and go on parsing. httptools ended the message at
        its head, skipping any body; a fresh parser is given a head with the same framing
        (no Request comes of it) and then reads the body, and whatever follows, as HTTP/1.1."""
        upgrade_filter = self._upgrade_filter
        events = self._events
        if upgrade_filter is None or len(events) < 2 or type(events[-1]) is not EndOfMessage:
            return False
        request = events[-2]
        if type(request) is not Request:
            return False
        kept = upgrade_filter(request)
        if kept is not None:
            request.upgrade = kept
            return False
        request.upgrade = None
        events.pop()  # the end comes after the body
        if request.chunked:
            framing = b"Transfer-Encoding: chunked\r\n"
        else:
            framing = b"Content-Length: %d\r\n" % (request.content_length or 0)
        self._parser = self._new_parser()
        self._muted = True
        try:
            self._parser.feed_data(b"POST / HTTP/1.1\r\nHost: x\r\n" + framing + b"\r\n")
        finally:
            self._muted = False
        return True

    def _reframe(self) -> bytes:
        """llhttp did not see the chunked that usher saw (`chunked<TAB>`, `chunked,`) and took
        what followed the head for a body running to the close. Give a fresh parser the head
        as usher read it, with plain `chunked`, its callbacks off; returns the bytes the old
        parser took, for the new one to read as the chunked body they are."""
        request = self._unframed
        assert request is not None
        raw = b"".join(self._raw_body)
        self._raw_body = []
        self._unframed = None
        headers = [h for h in request.headers if h[0].lower() != b"transfer-encoding"]
        headers.append((b"Transfer-Encoding", CHUNKED))
        head = b"%s %s HTTP/%s\r\n%s\r\n" % (
            request.method,
            request.target,
            request.version,
            encode_headers(headers),
        )
        self._parser = self._new_parser()
        self._muted = True
        try:
            self._parser.feed_data(head)
        finally:
            self._muted = False
        return raw

    # httptools callbacks: they run inside feed().

    def on_message_begin(self) -> None:
        if self._muted:
            self._in_message = True  # a replayed head: the message goes on with its body
            return
        self._in_message = True
        self._in_head = True
        self._head_offset = self._feed_used
        self._head_bytes = 0
        self._after_chunk_header = False
        self._headers = []
        self._trailers = None
        self._url = b""
        self._body_size = 0

    def on_url(self, url: bytes) -> None:
        if self._muted:
            return
        self._url += url
        if len(self._url) > self._limits.max_request_line:
            self._fail(414, "request URI too long")

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._muted:
            return
        # llhttp leaves trailing whitespace in values; RFC 9112 §5.1 says it is not part of them.
        value = value.rstrip(b" \t")
        if self._in_head:
            headers = self._headers
            headers.append((name, value))
            if len(headers) > self._limits.max_headers:
                self._fail(431, "too many request header fields")
        else:
            if self._trailers is None:
                self._trailers = []
            self._trailers.append((name, value))
            if len(self._trailers) > self._limits.max_headers:
                self._fail(431, "too many trailer fields")

    def on_headers_complete(self) -> None:
        if self._muted:
            return  # the request was given already; the body follows
        parser = self._parser
        limits = self._limits
        version = parser.get_http_version().encode()
        if version != b"1.1" and version != b"1.0":
            self._fail(505, f"HTTP version {version.decode()} is not supported")
        method: bytes = parser.get_method()
        if method == b"CONNECT":
            self._fail(405, "CONNECT is not supported by a reverse proxy")
        host = b""
        hosts = 0
        chunked = False
        content_length: int | None = None
        upgrade: bytes | None = None
        coding = b""
        size = len(self._url) + 16
        for name, value in self._headers:
            size += len(name) + len(value) + 4
            lname = name.lower()
            if lname == b"host":
                hosts += 1
                host = value
            elif lname == b"content-length":
                content_length = int(value)  # llhttp has checked its digits and uniqueness
            elif lname == b"transfer-encoding":
                # Each value joined (b"" for no other header yet): one plain `chunked` stays
                # exactly that, and anything else gets the full check below.
                coding = value if not chunked else coding + b"," + value
                chunked = True
            elif lname == b"upgrade":
                upgrade = value
        if size > limits.max_header_size:
            self._fail(431, "request header fields too large")
        if chunked and coding != CHUNKED:
            refusal = request_framing_error(transfer_codings(self._headers))
            if refusal is not None:
                self._pending_error = refusal
                raise refusal
        if hosts > 1 or (hosts == 0 and version == b"1.1" and self._require_host):
            self._fail(400, "a request needs exactly one Host header")
        max_body = limits.max_body_size
        if max_body is not None and content_length is not None and content_length > max_body:
            self._fail(413, f"request body is larger than {max_body} bytes")
        self._content_length = content_length
        self._in_head = False
        self._head_bytes = 0
        self._feed_used += size
        request = Request(
            method,
            self._url,
            version,
            self._headers,
            host=host,
            keep_alive=parser.should_keep_alive(),
            chunked=chunked,
            content_length=content_length,
            upgrade=upgrade if parser.should_upgrade() else None,
        )
        if chunked:
            self._unframed = request  # until llhttp shows it reads chunks (on_chunk_header)
        self._events.append(request)

    def on_chunk_header(self) -> None:
        self._unframed = None
        self._after_chunk_header = True
        self._trailer_bytes = 0

    def on_chunk_complete(self) -> None:
        self._after_chunk_header = False

    def on_body(self, body: bytes) -> None:
        if self._unframed is not None:
            self._raw_body.append(body)  # not a body yet: the bytes after a head (_reframe)
            return
        self._after_chunk_header = False
        self._feed_used += len(body)
        max_body = self._limits.max_body_size
        if max_body is not None:
            self._body_size += len(body)
            if self._body_size > max_body:
                self._fail(413, f"request body is larger than {max_body} bytes")
        self._events.append(Data(body))

    def on_message_complete(self) -> None:
        self._in_message = False
        self._events.append(EndOfMessage(self._trailers))

    def _fail(self, status: int, detail: str) -> None:
        self._pending_error = ClientError(status, detail)
        raise self._pending_error


class ResponseReader:
    """Parses responses from a backend. Call `expect(method)` before each request is sent:
    the answer to HEAD has no body whatever its headers say. Raises `UpstreamProtocolError`."""

    __slots__ = (
        "_chunked",
        "_content_length",
        "_events",
        "_head_bytes",
        "_headers",
        "_in_head",
        "_in_message",
        "_method_head",
        "_parser",
        "_pending_error",
        "_reason",
        "_trailers",
        "_unframed",
        "done",
        "reusable",
    )

    def __init__(self) -> None:
        self._parser = httptools.HttpResponseParser(self)
        self._events: list[Event] = []
        self._headers: Headers = []
        self._trailers: Headers | None = None
        self._reason = b""
        self._head_bytes = 0
        self._in_head = False
        self._in_message = False
        self._method_head = False
        self._chunked = False
        self._content_length: int | None = None
        self._pending_error: UpstreamProtocolError | None = None
        # A chunked answer whose first chunk llhttp has not shown yet (see on_body).
        self._unframed = False
        # `done`: the final response is complete. `reusable`: the connection may carry another.
        self.done = False
        self.reusable = True

    def expect(self, method: bytes) -> None:
        self._method_head = method == b"HEAD"
        self.done = False

    @property
    def idle(self) -> bool:
        return not self._in_message

    @property
    def close_delimited(self) -> bool:
        """The body in progress ends when the backend closes the connection."""
        return (
            self._in_message
            and not self._in_head
            and not self._chunked
            and self._content_length is None
        )

    def feed(self, data: bytes) -> list[Event]:
        events = self._events = []
        if self.done:
            # Bytes after a complete response that we did not ask for: the backend is confused.
            self.reusable = False
            return events
        if self._in_head or not self._in_message:
            self._head_bytes += len(data)
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            self.reusable = False
            events.append(Upgraded(data[exc.args[0] :]))
        except httptools.HttpParserCallbackError:
            if self.done:  # garbage after a complete response: keep the response, not the conn
                self.reusable = False
                return events
            raise self._pending_error or UpstreamProtocolError("invalid response") from None
        except httptools.HttpParserError as exc:
            if self.done:
                self.reusable = False
                return events
            raise UpstreamProtocolError(f"invalid response: {exc}") from None
        if self._in_head and self._head_bytes > MAX_RESPONSE_HEAD:
            raise UpstreamProtocolError("response head too large")
        return events

    def eof(self) -> list[Event]:
        """The backend closed the connection: ends a close-delimited body, or is an error."""
        self.reusable = False
        if self.close_delimited:
            self._in_message = False
            self.done = True
            return [EndOfMessage()]
        if self._in_message or not self.done:
            raise UpstreamProtocolError("backend closed the connection before the response ended")
        return []

    def on_message_begin(self) -> None:
        if self.done:
            self.reusable = False  # a second response to one request: the backend is confused
        self._in_message = True
        self._in_head = True
        self._headers = []
        self._trailers = None
        self._reason = b""

    def on_status(self, reason: bytes) -> None:
        self._reason += reason

    def on_header(self, name: bytes, value: bytes) -> None:
        value = value.rstrip(b" \t")
        if self._in_head:
            self._headers.append((name, value))
            if len(self._headers) > MAX_RESPONSE_HEADERS:
                self._fail("too many response header fields")
        else:
            if self._trailers is None:
                self._trailers = []
            self._trailers.append((name, value))

    def on_headers_complete(self) -> None:
        parser = self._parser
        status: int = parser.get_status_code()
        version = parser.get_http_version().encode()
        if version != b"1.1" and version != b"1.0":
            self._fail(f"HTTP version {version.decode()} in a response")
        if not 100 <= status <= 599:
            # llhttp takes any three digits: 099 would be relayed as "99" and, being under 200,
            # wait for a final answer that never comes (RFC 9110 §15: 100-599).
            self._fail(f"status {status:03d} is outside 100-599")
        content_length: int | None = None
        # The status line and the header lines, as they were sent (give or take their spaces).
        size = 17 + len(self._reason)
        coding: bytes | None = None
        for name, value in self._headers:
            size += len(name) + len(value) + 4
            n = len(name)
            if n == 14 and name.lower() == b"content-length":
                content_length = int(value)
            elif n == 17 and name.lower() == b"transfer-encoding":
                coding = value if coding is None else coding + b"," + value
        if size > MAX_RESPONSE_HEAD:
            self._fail("response head too large")
        codings: tuple[bytes, ...] = (
            ()
            if coding is None
            else _PLAIN_CHUNKED
            if coding == CHUNKED
            else transfer_codings(self._headers)
        )
        # "gzip" or "chunked, gzip" (chunked not last) means the body runs to the connection's end.
        chunked = bool(codings) and codings[-1] == CHUNKED
        if codings.count(CHUNKED) > 1:
            self._fail("chunked is applied more than once")
        no_body = self._method_head or status in (204, 304) or 100 <= status < 200
        self._chunked = self._unframed = chunked and not no_body
        self._content_length = 0 if no_body else content_length
        self._in_head = False
        self._head_bytes = 0
        keep_alive = parser.should_keep_alive()
        if not keep_alive:
            self.reusable = False
        self._events.append(
            Response(
                status,
                self._reason,
                version,
                self._headers,
                keep_alive=keep_alive,
                chunked=self._chunked,
                content_length=content_length,
                codings=codings,
            )
        )
        if self._method_head and status >= 200:
            # llhttp cannot be told that this response has no body: end it here, and give the
            # next response a fresh parser. Any byte that still reaches the old parser is a
            # protocol error that makes the connection unusable (see on_body).
            self._events.append(EndOfMessage())
            self._in_message = False
            self.done = True
            self._parser = httptools.HttpResponseParser(self)

    def on_chunk_header(self) -> None:
        self._unframed = False

    def on_body(self, body: bytes) -> None:
        if self.done:
            self.reusable = False
            return
        if self._unframed:
            # llhttp read `chunked<TAB>` (or `chunked,`) as no chunked coding, so this is raw
            # chunked framing it takes for a body running to the close: refuse the answer
            # rather than relay the framing as content.
            self._fail("a Transfer-Encoding llhttp does not read as chunked")
        self._events.append(Data(body))

    def on_message_complete(self) -> None:
        if self.done:  # the stale parser of a HEAD response
            return
        self._in_message = False
        if self._parser.get_status_code() < 200:
            return  # an interim 1xx response has no body and no end: the final one follows
        self._events.append(EndOfMessage(self._trailers))
        if self._content_length is None and not self._chunked:
            self.reusable = False
        if not self._parser.should_keep_alive():
            self.reusable = False
        self.done = True

    def _fail(self, detail: str) -> None:
        self._pending_error = UpstreamProtocolError(detail)
        raise self._pending_error


# Encoding: events in, bytes out.

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


# Writers: events in, bytes out, with the framing rules in one place (h11's shape).


class ConnState(enum.Enum):
    """Where one side of a connection is: h11's states, less the ones usher never needs."""

    IDLE = "IDLE"  # between messages (an interim 1xx answer leaves the server side here)
    SEND_BODY = "SEND_BODY"  # the head went out; Data, then EndOfMessage
    DONE = "DONE"  # the message ended and the connection may carry another
    MUST_CLOSE = "MUST_CLOSE"  # the message ended and the connection must close
    SWITCHED = "SWITCHED"  # a 101 (or an upgrade): the bytes are no longer HTTP


_NO_BODY_STATUSES: Final = frozenset({204, 304})
_CONNECTION_CLOSE: Final = (b"Connection", b"close")
_CONNECTION_KEEP_ALIVE: Final = (b"Connection", b"keep-alive")


def _content_length(value: bytes) -> int:
    if not value.isdigit():
        raise LocalProtocolError(f"Content-Length {value!r} is not a number")
    return int(value)


def _asks_close(value: bytes) -> bool:
    return any(t.strip(b" \t").lower() == b"close" for t in value.split(b","))


class _Framing:
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
                if self.te_at >= 0 or transfer_codings([header]) != _PLAIN_CHUNKED:
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


class _BodyWriter:
    """The body half shared by both writers: counts a length, chunks, or passes bytes."""

    __slots__ = ("_chunked", "_left", "_must_close", "body_allowed", "our_state")

    def __init__(self) -> None:
        self.our_state = ConnState.IDLE
        # After a head: whether it may carry body bytes (not for HEAD, 204, 304, nor a
        # Content-Length of 0), for a caller holding a body it may have to leave out.
        self.body_allowed = False
        self._chunked = False
        self._left: int | None = None  # bytes still owed under a Content-Length (or no body)
        self._must_close = False

    def _open_body(self, *, chunked: bool, length: int | None, must_close: bool) -> None:
        self._chunked = chunked
        self._left = length
        self._must_close = must_close
        self.body_allowed = length != 0
        self.our_state = ConnState.SEND_BODY

    def _body(self, event: Data | EndOfMessage) -> bytes:
        if self.our_state is not ConnState.SEND_BODY:
            raise LocalProtocolError(f"no body to send in state {self.our_state.name}")
        if type(event) is Data:
            data = event.data
            if self._left is not None:
                if len(data) > self._left:
                    raise LocalProtocolError(f"{len(data)} bytes of body over the length")
                self._left -= len(data)
            return encode_chunk(data) if self._chunked else data
        assert isinstance(event, EndOfMessage)
        if self._left:
            raise LocalProtocolError(f"the body ended {self._left} bytes short of its length")
        self.our_state = ConnState.MUST_CLOSE if self._must_close else ConnState.DONE
        # Trailers go only with chunked; elsewhere they may be dropped (RFC 9110 §6.5.1).
        return encode_last_chunk(event.trailers) if self._chunked else b""


class ServerWriter(_BodyWriter):
    """Writes answers to a client: `begin(request)` with the request being answered (or not
    at all, for an answer to bytes that were no request), then `send` its events.

    The writer owns the framing and the connection headers: it writes Content-Length (kept
    in place when given), chunked for an HTTP/1.1 client when no length is given, or a body
    to the close for HTTP/1.0; no body for HEAD, 1xx, 204 and 304; `Connection: close`
    when the connection ends with this answer (a `Connection: close` given, a client that
    asked for it, a body to the close), `Connection: keep-alive` for an HTTP/1.0 client
    that keeps it. The given Connection headers are dropped, except on a 101.
    """

    __slots__ = ("_head", "_keep_alive", "_reader", "_version")

    def __init__(self, reader: RequestReader | None = None) -> None:
        super().__init__()
        self._reader = reader
        self._head = False
        self._version = b"1.1"
        self._keep_alive = True

    def begin(self, request: Request) -> None:
        """The next answer is to `request` (its method, version and keep-alive count)."""
        if self.our_state is ConnState.DONE:
            self.our_state = ConnState.IDLE
        if self.our_state is not ConnState.IDLE:
            raise LocalProtocolError(f"a new answer in state {self.our_state.name}")
        self._head = request.method == b"HEAD"
        self._version = request.version
        self._keep_alive = request.keep_alive

    @property
    def their_state(self) -> ConnState | None:
        """The client's side, as the reader given at construction tells it (None without)."""
        reader = self._reader
        if reader is None:
            return None
        if reader.upgraded:
            return ConnState.SWITCHED
        return ConnState.IDLE if reader.idle else ConnState.SEND_BODY

    def send(self, event: Response | InformationalResponse | Data | EndOfMessage) -> bytes:
        kind = type(event)
        if kind is Response:
            assert isinstance(event, Response)
            return self._response(event)
        if kind is InformationalResponse:
            assert isinstance(event, InformationalResponse)
            return self._informational(event)
        assert isinstance(event, (Data, EndOfMessage))
        return self._body(event)

    def _informational(self, event: InformationalResponse) -> bytes:
        if not 100 <= event.status < 200 or event.status == 101:
            raise LocalProtocolError(f"status {event.status} is not an interim answer")
        if self.our_state is not ConnState.IDLE:
            raise LocalProtocolError(f"an interim answer in state {self.our_state.name}")
        if self._version != b"1.1":
            return b""  # RFC 9110 §15.2: no 1xx to an HTTP/1.0 client
        framing = _Framing(event.headers, keep_connection=False)
        headers = framing.headers(length=False, chunked=False)
        return encode_response_head(event.status, event.reason, headers)

    def _response(self, response: Response) -> bytes:
        status = response.status
        if status < 200 and status != 101:
            raise LocalProtocolError(f"status {status} goes in an InformationalResponse")
        if self.our_state is not ConnState.IDLE:
            raise LocalProtocolError(f"an answer in state {self.our_state.name}")
        if status == 101:
            framing = _Framing(response.headers, keep_connection=True)
            self.our_state = ConnState.SWITCHED
            headers = framing.headers(length=False, chunked=False)
            return encode_response_head(status, response.reason, headers)
        framing = _Framing(response.headers, keep_connection=False)
        keep_alive = self._keep_alive and not framing.close
        no_body = self._head or status in _NO_BODY_STATUSES
        length = framing.content_length
        chunked = False
        if length is not None:
            # A HEAD or 304 answer may say the length of the body it does not carry.
            send_length = status != 204
            owed: int | None = 0 if no_body else length
        elif no_body:
            send_length, owed = False, 0
        elif self._version == b"1.1":
            send_length, owed, chunked = False, None, True
        else:
            send_length, owed, keep_alive = False, None, False  # a body to the close
        headers = framing.headers(length=send_length, chunked=chunked)
        if not keep_alive:
            headers.append(_CONNECTION_CLOSE)
        elif self._version == b"1.0":
            headers.append(_CONNECTION_KEEP_ALIVE)
        self._open_body(chunked=chunked, length=owed, must_close=not keep_alive)
        return encode_response_head(status, response.reason, headers)


class ClientWriter(_BodyWriter):
    """Writes requests to a server, always as HTTP/1.1. The body's framing is the given
    Content-Length or `Transfer-Encoding: chunked`; with neither, the request has no body.
    Connection headers are sent as given; `close` among them ends the connection after
    the answer (`our_state` MUST_CLOSE)."""

    __slots__ = ("_reader",)

    def __init__(self, reader: ResponseReader | None = None) -> None:
        super().__init__()
        self._reader = reader

    @property
    def their_state(self) -> ConnState | None:
        """The server's side, as the reader given at construction tells it (None without)."""
        reader = self._reader
        if reader is None:
            return None
        if reader.done:
            return ConnState.DONE if reader.reusable else ConnState.MUST_CLOSE
        return ConnState.IDLE if reader.idle else ConnState.SEND_BODY

    def start_next_cycle(self) -> None:
        """The answer came and the connection is reused: the next request may go."""
        if self.our_state is not ConnState.DONE:
            raise LocalProtocolError(f"no next request in state {self.our_state.name}")
        self.our_state = ConnState.IDLE

    def send(self, event: Request | Data | EndOfMessage) -> bytes:
        if type(event) is not Request:
            assert isinstance(event, (Data, EndOfMessage))
            return self._body(event)
        assert isinstance(event, Request)
        if self.our_state is not ConnState.IDLE:
            raise LocalProtocolError(f"a request in state {self.our_state.name}")
        framing = _Framing(event.headers, keep_connection=True)
        length = framing.content_length
        self._open_body(
            chunked=framing.chunked,
            length=None if framing.chunked else length or 0,
            must_close=framing.close,
        )
        if self._reader is not None:
            self._reader.expect(event.method)
        headers = framing.headers(length=length is not None, chunked=framing.chunked)
        return encode_request_head(event.method, event.target, headers)
