"""The writers: events in, bytes out, with the framing and keep-alive decided here (h11's
shape). `ServerWriter` answers a client, `ClientWriter` sends requests to a backend."""

from __future__ import annotations

from typing import Final

from usher.errors import LocalProtocolError
from usher.http.events import (
    ConnState,
    Data,
    EndOfMessage,
    InformationalResponse,
    Request,
    Response,
)
from usher.http.framing import (
    HeadFraming,
    body_forbidden,
    encode_chunk,
    encode_last_chunk,
    encode_request_head,
    encode_response_head,
)
from usher.http.request_reader import RequestReader
from usher.http.response_reader import ResponseReader

_CONNECTION_CLOSE: Final = (b"Connection", b"close")
_CONNECTION_KEEP_ALIVE: Final = (b"Connection", b"keep-alive")


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
        framing = HeadFraming(event.headers, keep_connection=False)
        headers = framing.headers(length=False, chunked=False)
        return encode_response_head(event.status, event.reason, headers)

    def _response(self, response: Response) -> bytes:
        status = response.status
        if status < 200 and status != 101:
            raise LocalProtocolError(f"status {status} goes in an InformationalResponse")
        if self.our_state is not ConnState.IDLE:
            raise LocalProtocolError(f"an answer in state {self.our_state.name}")
        if status == 101:
            framing = HeadFraming(response.headers, keep_connection=True)
            self.our_state = ConnState.SWITCHED
            headers = framing.headers(length=False, chunked=False)
            return encode_response_head(status, response.reason, headers)
        framing = HeadFraming(response.headers, keep_connection=False)
        keep_alive = self._keep_alive and not framing.close
        no_body = body_forbidden(status, head=self._head)
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
        framing = HeadFraming(event.headers, keep_connection=True)
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
