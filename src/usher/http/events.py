"""The codec's events: what a reader gives and a writer takes (h11's vocabulary).

A message is a head (`Request`, `Response`, `InformationalResponse`), then its body as `Data`
events, then `EndOfMessage`; `Upgraded` ends HTTP on a connection. `ConnState` is where one
side of a connection stands, as the writers track it.
"""

from __future__ import annotations

import enum

Headers = list[tuple[bytes, bytes]]


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


class ConnState(enum.Enum):
    """Where one side of a connection is: h11's states, less the ones usher never needs."""

    IDLE = "IDLE"  # between messages (an interim 1xx answer leaves the server side here)
    SEND_BODY = "SEND_BODY"  # the head went out; Data, then EndOfMessage
    DONE = "DONE"  # the message ended and the connection may carry another
    MUST_CLOSE = "MUST_CLOSE"  # the message ended and the connection must close
    SWITCHED = "SWITCHED"  # a 101 (or an upgrade): the bytes are no longer HTTP
