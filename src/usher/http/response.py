"""The response side of one exchange: the backend's answer relayed to the client (functions of
the exchange, which holds the one piece of state, `chunked_out`: no object per request). Interim
answers, the framing and connection fate of the final one (HTTP/1.0 coding included), a retry
of the request when the pool retries the answer's status, and one write per batch of events."""

from __future__ import annotations

from typing import TYPE_CHECKING

from usher.errors import UpstreamProtocolError
from usher.http.codec import (
    CHUNKED,
    Data,
    EndOfMessage,
    Event,
    Response,
    Upgraded,
    encode_chunk,
    encode_last_chunk,
    encode_response_head,
)
from usher.http.framing import body_forbidden
from usher.http.headers import forward_response_headers, relayed_transfer_encoding
from usher.http.upgrades import switches_to_requested
from usher.pool.attempts import may_replay

if TYPE_CHECKING:
    from usher.http.exchange import Exchange


def relay_response(ex: Exchange, events: list[Event]) -> None:
    """Pass a batch of the backend's answer to `ex` on to its client."""
    ex.touch()
    # Everything for the client from this batch goes out in one write.
    out: list[bytes] = []
    for event in events:
        kind = type(event)
        if kind is Data:
            assert isinstance(event, Data)
            data = event.data
            ex.bytes_out += len(data)
            out.append(encode_chunk(data) if ex.chunked_out else data)
        elif kind is Response:
            assert isinstance(event, Response)
            if event.interim:
                status = event.status
                if ex.request.version == b"1.1" and not (status == 100 and ex.continued):
                    headers = forward_response_headers(
                        event.headers, version=event.version, upgrade=False
                    )
                    out.append(encode_response_head(status, event.reason, headers))
                    if status == 100:
                        ex.continued = True
                        ex.open_body_clock()  # the client was told to send the body
                continue
            if event.status == 101 and not switches_to_requested(
                ex.upstream_upgrade, event.headers
            ):
                _flush(ex, out)  # interim answers before it, if any
                _unasked_switch(ex)
                return
            if _retry_on_status(ex, event):
                return
            if _uncodable_for_http10(ex, event):
                return
            hooks = ex.hook_run
            if hooks is not None and hooks.refuses(event):  # on_response (usher.hooks)
                return
            out.append(_response_head(ex, event))
        elif kind is EndOfMessage:
            assert isinstance(event, EndOfMessage)
            if ex.chunked_out:
                out.append(encode_last_chunk(event.trailers))
            _flush(ex, out)
            ex.response_done = True
            ex.upstream_time = ex.attempt_time()
            if ex.request_done:
                ex.finish(True)
            else:
                # The backend answered before the request body ended: the rest of the
                # body has nowhere to go, so this connection ends with the answer.
                ex.finish(True, close=True)
            return
        elif kind is Upgraded:
            assert isinstance(event, Upgraded)
            _flush(ex, out)
            ex.tunnel().start(event.tail)
            return
    _flush(ex, out)


def _flush(ex: Exchange, out: list[bytes]) -> None:
    client = ex.client
    if not out or client.closed:
        return
    if len(out) == 1:
        client.transport.write(out[0])
    else:
        client.transport.writelines(out)


def _unasked_switch(ex: Exchange) -> None:
    """A 101 to a request that asked for no upgrade, or for another protocol: relaying it
    would turn the connection into a raw tunnel past every rule. The backend is wrong
    (502), and what it sends after the 101 is never read."""
    ex.link.drop()
    ex.link.upstream_failed(UpstreamProtocolError("a 101 switching to a protocol not asked for"))


def _retry_on_status(ex: Exchange, response: Response) -> bool:
    """Drop this answer and try another backend, when the pool retries its status."""
    request, attempts = ex.request, ex.attempts
    replayable = may_replay(request.method, request.has_body) and request.upgrade is None
    if attempts is None or not attempts.retry_status(response.status, replayable):
        return False
    ex.link.drop()
    ex.link.cancel_timers()
    ex.attempt()
    return True


def _response_head(ex: Exchange, response: Response) -> bytes:
    """Decide the framing and connection fate of the answer; returns its head."""
    request = ex.request
    status = response.status
    ex.status = status
    upgrade = status == 101 and ex.upstream_upgrade is not None
    headers = forward_response_headers(
        response.headers,
        version=response.version,
        upgrade=upgrade,
        strip=ex.client.listener.strip_response,
    )
    if ex.edge is not None and ex.edge.response_headers:
        headers += ex.edge.response_headers
    if ex.client.listener.hsts is not None:
        headers.append(ex.client.listener.hsts)  # before the route's rules: they may change it
    route = ex.route
    if route is not None and route.response_rules is not None:
        headers = route.response_rules.apply(headers)
    if ex.set_cookie is not None:
        headers.append((b"Set-Cookie", ex.set_cookie))
    keep_alive = ex.keep_alive and ex.request_done and not ex.client.listener.draining
    if request.upgrade is not None and not upgrade:
        keep_alive = False  # the client's reader stopped at the upgrade request
    if not upgrade:
        no_body = body_forbidden(status, head=request.method == b"HEAD")
        if response.content_length is not None and status != 204:
            headers.append((b"Content-Length", b"%d" % response.content_length))
        elif not no_body:
            if request.version == b"1.1":
                codings, ex.chunked_out = relayed_transfer_encoding(response.codings)
                headers.append((b"Transfer-Encoding", codings))
                if not ex.chunked_out:
                    keep_alive = False  # the body ends with the connection
            else:
                keep_alive = False  # an HTTP/1.0 client reads to the end of the connection
        if not keep_alive:
            headers.append((b"Connection", b"close"))
        elif request.version == b"1.0":
            headers.append((b"Connection", b"keep-alive"))
    ex.keep_alive = keep_alive
    ex.response_started = True
    return encode_response_head(status, response.reason, headers)


def _uncodable_for_http10(ex: Exchange, response: Response) -> bool:
    """A body under a transfer coding other than chunked cannot reach an HTTP/1.0 client:
    RFC 9112 §6.1 allows it no Transfer-Encoding, and without one the client would take
    the coded bytes for the body. Answers 502 (the backend is not at fault) when so."""
    request = ex.request
    if (
        request.version != b"1.0"
        or response.codings in ((), (CHUNKED,))
        or body_forbidden(response.status, head=request.method == b"HEAD")
    ):
        return False
    ex.link.drop()
    if ex.attempts is not None:
        ex.attempts.finish(True)
    ex.link.cancel_timers()
    ex.respond_error(502, "the backend used a transfer coding HTTP/1.0 cannot carry")
    return True
