"""The answers usher gives itself (error pages, redirects, 100 Continue), built through the
codec's `ServerWriter`, and the rejection reason each error status is counted under."""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING, Final

from usher.errors import ClientError
from usher.http.codec import (
    REASONS,
    Data,
    EndOfMessage,
    Event,
    Headers,
    InformationalResponse,
    Request,
    Response,
    ServerWriter,
)

if TYPE_CHECKING:
    from usher.http.exchange import Exchange

# usher_rejected_total{reason} for the answers usher gives itself.
REJECTION_REASONS = {
    400: "bad_request",
    405: "bad_request",
    505: "bad_request",
    408: "timeout",
    429: "pipelined",
    413: "too_large",
    414: "too_large",
    431: "too_large",
    404: "no_route",
    503: "no_backend",
}

# Sent by usher itself when it, not a backend, must read the body first.
CONNECTION_CLOSE: Final = (b"Connection", b"close")


def answer_writer(request: Request | None) -> ServerWriter:
    """A writer for one answer usher makes itself, to `request` (None: to bytes that were no
    request, answered as to an HTTP/1.1 GET)."""
    writer = ServerWriter()
    if request is not None:
        writer.begin(request)
    return writer


def own_refusal(inbox: deque[Event | ClientError]) -> ClientError | None:
    """The refusal queued for the request at the head of `inbox` itself (one that comes before
    the request's end), if any; a refusal after its end is for a later request."""
    for index in range(1, len(inbox)):
        event = inbox[index]
        if isinstance(event, ClientError):
            return event
        if type(event) is EndOfMessage:
            return None
    return None


def error_answer(
    status: int,
    detail: str,
    *,
    keep_alive: bool,
    hsts: tuple[bytes, bytes] | None,
    headers: Headers | None = None,
    request: Request | None = None,
) -> tuple[bytes, int]:
    """A short text error page (to `request`, when there is one: a HEAD gets the head only):
    its bytes, and the length of the body in them."""
    reason = REASONS.get(status, b"Error")
    body = b"%d %s: %s\n" % (status, reason, detail.encode())
    headers = [
        *(headers or ()),
        (b"Content-Type", b"text/plain; charset=utf-8"),
        (b"Content-Length", b"%d" % len(body)),
    ]
    if hsts is not None:
        headers.append(hsts)
    if not keep_alive:
        headers.append(CONNECTION_CLOSE)
    writer = answer_writer(request)
    head = writer.send(Response(status, reason, b"1.1", headers))
    if not writer.body_allowed:
        body = b""
    return head + writer.send(Data(body)) + writer.send(EndOfMessage()), len(body)


def redirect_answer(
    request: Request,
    status: int,
    location: bytes,
    *,
    keep_alive: bool,
    hsts: tuple[bytes, bytes] | None,
) -> bytes:
    """A redirect to `location`, without a body."""
    headers = [(b"Location", location), (b"Content-Length", b"0")]
    if hsts is not None:
        headers.append(hsts)
    if not keep_alive:
        headers.append(CONNECTION_CLOSE)
    writer = answer_writer(request)
    head = writer.send(Response(status, b"", b"1.1", headers))
    return head + writer.send(EndOfMessage())


def continue_answer(request: Request) -> bytes:
    """The 100 Continue usher says itself, when it reads the body before a backend is chosen."""
    return answer_writer(request).send(InformationalResponse(100))


def answer_error(
    exchange: Exchange,
    status: int,
    detail: str,
    *,
    reason: str | None = None,
    headers: Headers | None = None,
) -> None:
    """Answer `exchange` with an error page of usher's own, counted as a rejection when it is
    the client's doing (or `reason` names why), and end it."""
    client = exchange.client
    listener = client.listener
    if reason is not None or status in (404, 503) or 400 <= status < 500:
        listener.metrics.rejected(
            listener.name, reason or REJECTION_REASONS.get(status, "bad_request")
        )
    exchange.status = status
    if not exchange.request_done or exchange.request.upgrade is not None:
        exchange.keep_alive = False
    keep_alive = exchange.keep_alive = exchange.keep_alive and not listener.draining
    edge = exchange.edge
    if edge is not None and edge.response_headers:
        headers = [*(headers or ()), *edge.response_headers]
    exchange.bytes_out = client.send_error(
        status, detail, keep_alive=keep_alive, headers=headers, request=exchange.request
    )
    exchange.response_started = exchange.response_done = True
    exchange.finish(status < 500, close=not keep_alive)


def answer_redirect(exchange: Exchange, status: int, location: bytes) -> None:
    """Answer `exchange` with the redirect its route configures, and end it."""
    exchange.status = status
    if not exchange.request_done:
        exchange.keep_alive = False
    client = exchange.client
    client.write(
        redirect_answer(
            exchange.request,
            status,
            location,
            keep_alive=exchange.keep_alive,
            hsts=client.listener.hsts,
        )
    )
    exchange.response_started = exchange.response_done = True
    exchange.finish(True, close=not exchange.keep_alive)
