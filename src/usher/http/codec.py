"""Sans-IO HTTP/1.1 codec on httptools (llhttp): bytes in, events out; events in, bytes out.

This module is the codec's face: it re-exports what the rest of usher uses. The parts:

- `events`: the vocabulary, `Request`, `Response`, `InformationalResponse`, `Data`,
  `EndOfMessage`, `Upgraded`, and `ConnState` (where one side of a connection stands).
- `request_reader`: `RequestReader` parses what a client sends (server side), within
  `HeadLimits`; it raises `ClientError` with the status to answer.
- `response_reader`: `ResponseReader` parses what a backend answers (client side); it raises
  `UpstreamProtocolError`.
- `writers`: `ServerWriter` and `ClientWriter` take events and give bytes, owning framing
  (Content-Length, chunked, or a body to the close) and keep-alive.
- `framing`: the rules both directions share, decided once: what a Transfer-Encoding means,
  which answers carry no body (1xx, HEAD, 204, 304), and the `encode_*` functions.

Nothing here owns a socket. llhttp is strict: a request with both Content-Length and
Transfer-Encoding, duplicate Content-Lengths, an obfuscated Transfer-Encoding, bare LF, or
control bytes in headers is a parse error, which is what keeps request smuggling out. Its one
leniency (on Transfer-Encoding, see `RequestReader._new_parser`) leaves that header to usher,
which takes plain chunked only.
"""

from __future__ import annotations

from usher.errors import ClientError, LocalProtocolError, UpstreamProtocolError
from usher.http.events import (
    ConnState,
    Data,
    EndOfMessage,
    Event,
    Headers,
    InformationalResponse,
    Request,
    Response,
    Upgraded,
)
from usher.http.framing import (
    CHUNKED,
    CRLF,
    LAST_CHUNK,
    REASONS,
    encode_chunk,
    encode_headers,
    encode_last_chunk,
    encode_request_head,
    encode_response_head,
    request_framing_error,
    transfer_codings,
)
from usher.http.request_reader import HeadLimits, RequestReader
from usher.http.response_reader import MAX_RESPONSE_HEAD, MAX_RESPONSE_HEADERS, ResponseReader
from usher.http.writers import ClientWriter, ServerWriter

__all__ = [
    "CHUNKED",
    "CRLF",
    "LAST_CHUNK",
    "MAX_RESPONSE_HEAD",
    "MAX_RESPONSE_HEADERS",
    "REASONS",
    "ClientError",
    "ClientWriter",
    "ConnState",
    "Data",
    "EndOfMessage",
    "Event",
    "HeadLimits",
    "Headers",
    "InformationalResponse",
    "LocalProtocolError",
    "Request",
    "RequestReader",
    "Response",
    "ResponseReader",
    "ServerWriter",
    "Upgraded",
    "UpstreamProtocolError",
    "encode_chunk",
    "encode_headers",
    "encode_last_chunk",
    "encode_request_head",
    "encode_response_head",
    "request_framing_error",
    "transfer_codings",
]
