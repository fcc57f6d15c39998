"""The translation between HTTP/2 header blocks and HTTP/1.1 heads (h2_headers)."""

from __future__ import annotations

import pytest

from usher.errors import MalformedRequest
from usher.http.codec import RequestReader
from usher.http.h2_headers import (
    request_head,
    response_fields,
    trailer_fields,
    trailers_out,
)

BASE = [(b":method", b"GET"), (b":scheme", b"https"), (b":path", b"/a?b=1")]


def test_a_get_becomes_a_request_line_with_host_from_authority() -> None:
    head, method, chunked = request_head(
        [*BASE, (b":authority", b"example.test"), (b"accept", b"*/*")], ends_stream=True
    )
    assert method == b"GET" and not chunked
    assert head == b"GET /a?b=1 HTTP/1.1\r\nhost: example.test\r\naccept: */*\r\n\r\n"
    (request,) = RequestReader().feed(head)[:1]
    assert request.host == b"example.test"  # type: ignore[union-attr]


def test_authority_wins_over_host_and_cookies_are_joined() -> None:
    head, _, _ = request_head(
        [
            *BASE,
            (b":authority", b"a.test"),
            (b"host", b"b.test"),
            (b"cookie", b"x=1"),
            (b"cookie", b"y=2"),
        ],
        ends_stream=True,
    )
    assert b"host: a.test\r\n" in head and b"b.test" not in head
    assert b"cookie: x=1; y=2\r\n" in head


def test_a_body_without_length_is_chunked_and_one_with_length_is_not() -> None:
    post = [(b":method", b"POST"), *BASE[1:], (b":authority", b"a.test")]
    head, _, chunked = request_head(post, ends_stream=False)
    assert chunked and head.endswith(b"transfer-encoding: chunked\r\n\r\n")
    head, _, chunked = request_head([*post, (b"content-length", b"5")], ends_stream=False)
    assert not chunked and b"transfer-encoding" not in head
    _, _, chunked = request_head(post, ends_stream=True)  # END_STREAM on HEADERS: no body
    assert not chunked


@pytest.mark.parametrize(
    ("headers", "why"),
    [
        ([(b":method", b"GET"), (b":path", b"/")], "needs :method, :scheme and :path"),
        ([*BASE[:2], (b":path", b"/a b")], ":path holds a space"),
        ([*BASE, (b":authority", b"a.test\r\nx: y")], ":authority holds"),
        ([*BASE, (b"x-a", b"1\r\nx-b: 2")], "holds CR, LF or NUL"),
        ([*BASE, (b"connection", b"close")], "connection-specific field connection"),
        ([*BASE, (b"te", b"gzip")], "connection-specific field te"),
        ([*BASE, (b"x-a", b"1"), (b":authority", b"a")], "pseudo-header after"),
        ([*BASE, (b":protocol", b"websocket")], "unknown pseudo-header"),
        ([(b":method", b"CONNECT"), *BASE[1:]], "CONNECT"),
    ],
)
def test_malformed_requests_are_refused_with_the_reason(
    headers: list[tuple[bytes, bytes]], why: str
) -> None:
    with pytest.raises(MalformedRequest, match=why):
        request_head(headers, ends_stream=True)


def test_te_trailers_is_kept() -> None:
    head, _, _ = request_head(
        [*BASE, (b":authority", b"a"), (b"te", b"trailers")], ends_stream=True
    )
    assert b"te: trailers\r\n" in head


def test_the_answer_loses_its_connection_fields_and_gains_status() -> None:
    fields = response_fields(
        200,
        [
            (b"Content-Type", b"text/plain"),
            (b"Transfer-Encoding", b"chunked"),
            (b"Connection", b"keep-alive"),
            (b"Keep-Alive", b"timeout=5"),
            (b"Upgrade", b"h2c"),
            (b"Set-Cookie", b"a=1"),
        ],
    )
    assert fields == [
        (b":status", b"200"),
        (b"content-type", b"text/plain"),
        (b"set-cookie", b"a=1"),
    ]


def test_trailers_both_ways() -> None:
    assert trailers_out([(b"Grpc-Status", b"0"), (b"Connection", b"x")]) == [(b"grpc-status", b"0")]
    assert trailer_fields([(b"x-sum", b"1")]) == [(b"x-sum", b"1")]
    with pytest.raises(MalformedRequest, match="pseudo-header in trailers"):
        trailer_fields([(b":path", b"/")])
