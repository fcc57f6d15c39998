"""The client side's reader: responses from a backend, bytes in, events out."""

from __future__ import annotations

from typing import Final

import httptools

from usher.errors import UpstreamProtocolError
from usher.http.events import Data, EndOfMessage, Event, Headers, Response, Upgraded
from usher.http.framing import (
    CHUNKED,
    PLAIN_CHUNKED,
    body_forbidden,
    chunked_twice,
    ends_chunked,
    transfer_codings,
)

# A backend is trusted more than a client, but its header block must still be bounded.
MAX_RESPONSE_HEAD: Final = 64 * 1024
MAX_RESPONSE_HEADERS: Final = 200


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
            else PLAIN_CHUNKED
            if coding == CHUNKED
            else transfer_codings(self._headers)
        )
        chunked = ends_chunked(codings)  # else the body runs to the connection's end
        if chunked_twice(codings):
            self._fail("chunked is applied more than once")
        no_body = body_forbidden(status, head=self._method_head)
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
