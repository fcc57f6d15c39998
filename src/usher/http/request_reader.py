"""The server side's reader: requests from a client, bytes in, events out."""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

import httptools

from usher.errors import ClientError
from usher.http.events import Data, EndOfMessage, Event, Headers, Request, Upgraded
from usher.http.framing import CHUNKED, encode_headers, request_framing_error, transfer_codings


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

    def release(self) -> None:
        """The connection is gone: let go of the parser. It holds this reader's own bound
        methods, a cycle that only the garbage collector would free, once per connection."""
        self._parser = _SPENT_PARSER

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


class _Nobody:
    """The protocol of the parser a released reader holds: it is never fed again."""


_SPENT_PARSER: Final = httptools.HttpRequestParser(_Nobody())
