"""Tests of the sans-IO HTTP/1.1 codec: framing, keep-alive, upgrades, limits and smuggling."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import pytest

from usher.errors import ClientError, UpstreamProtocolError
from usher.http.codec import (
    MAX_RESPONSE_HEAD,
    MAX_RESPONSE_HEADERS,
    Data,
    EndOfMessage,
    Event,
    HeadLimits,
    Request,
    RequestReader,
    Response,
    ResponseReader,
    Upgraded,
    encode_chunk,
    encode_last_chunk,
    encode_request_head,
    encode_response_head,
)

# --- Helpers -----------------------------------------------------------------------------------


def summary(events: Iterable[Event]) -> list[tuple[Any, ...]]:
    """Events as comparable tuples, with consecutive body pieces joined (their split is free)."""
    out: list[tuple[Any, ...]] = []
    for event in events:
        if isinstance(event, Data):
            if out and out[-1][0] == "data":
                out[-1] = ("data", out[-1][1] + event.data)
            else:
                out.append(("data", event.data))
        elif isinstance(event, Request):
            out.append(
                (
                    "request",
                    event.method,
                    event.target,
                    event.version,
                    tuple(event.headers),
                    event.host,
                    event.keep_alive,
                    event.chunked,
                    event.content_length,
                    event.upgrade,
                )
            )
        elif isinstance(event, Response):
            out.append(
                (
                    "response",
                    event.status,
                    event.reason,
                    event.version,
                    tuple(event.headers),
                    event.keep_alive,
                    event.chunked,
                    event.content_length,
                )
            )
        elif isinstance(event, EndOfMessage):
            out.append(("end", tuple(event.trailers or ())))
        elif isinstance(event, Upgraded):
            out.append(("upgraded", event.tail))
        else:  # pragma: no cover - a new event type needs a line here
            raise AssertionError(f"unknown event {event!r}")
    return out


def feed_pieces(reader: RequestReader | ResponseReader, pieces: Iterable[bytes]) -> list[Event]:
    events: list[Event] = []
    for piece in pieces:
        events += reader.feed(piece)
    return events


def bytewise(data: bytes) -> list[bytes]:
    return [data[i : i + 1] for i in range(len(data))]


def parse_requests(data: bytes, limits: HeadLimits | None = None) -> list[Event]:
    return RequestReader(limits).feed(data)


def parse_response(data: bytes, method: bytes = b"GET") -> tuple[ResponseReader, list[Event]]:
    reader = ResponseReader()
    reader.expect(method)
    return reader, reader.feed(data)


def rejected(data: bytes | Sequence[bytes], limits: HeadLimits | None = None) -> ClientError:
    """The error a request reader raises for `data` (one piece, or several in order)."""
    reader = RequestReader(limits)
    pieces = [data] if isinstance(data, bytes) else list(data)
    with pytest.raises(ClientError) as caught:
        feed_pieces(reader, pieces)
    return caught.value


def body_of(events: Iterable[Event]) -> bytes:
    return b"".join(e.data for e in events if isinstance(e, Data))


def kinds(events: Iterable[Event]) -> list[str]:
    return [type(e).__name__ for e in events]


# --- Requests: framing ---------------------------------------------------------------------------

CL_REQUEST = (
    b"POST /upload?x=1 HTTP/1.1\r\nHost: example.com\r\nContent-Length: 11\r\n\r\nhello world"
)
CHUNKED_REQUEST = (
    b"POST /upload HTTP/1.1\r\nHost: example.com\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nX-Checksum: abc\r\nX-Other: 2\r\n\r\n"
)
PIPELINED = (
    b"GET /a HTTP/1.1\r\nHost: h\r\n\r\n"
    b"POST /b HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\nxyz"
    b"GET /c HTTP/1.1\r\nHost: h\r\n\r\n"
)
HTTP10 = b"GET /old HTTP/1.0\r\nContent-Length: 2\r\n\r\nok"
# llhttp takes no tab after chunked, nor a trailing comma: the reader re-frames these.
CHUNKED_TAB_PIPELINED = (
    b"POST /t HTTP/1.1\r\nHost: h\r\nTransfer-Encoding:\tchunked\t\r\n\r\n"
    b"3\r\nabc\r\n0\r\nX-T: 1\r\n\r\n"
    b"POST /u HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked,\r\nConnection: close\r\n\r\n"
    b"2\r\nde\r\n0\r\n\r\n"
)

REQUEST_SAMPLES = {
    "content-length": CL_REQUEST,
    "chunked-trailers": CHUNKED_REQUEST,
    "pipelined": PIPELINED,
    "http-1.0": HTTP10,
    "chunked-tab-pipelined": CHUNKED_TAB_PIPELINED,
}


def test_chunked_with_a_tab_is_read_as_chunked() -> None:
    events = parse_requests(CHUNKED_TAB_PIPELINED)
    assert kinds(events) == ["Request", "Data", "EndOfMessage", "Request", "Data", "EndOfMessage"]
    first, second = events[0], events[3]
    assert isinstance(first, Request) and isinstance(second, Request)
    assert first.chunked and second.chunked and not second.keep_alive
    assert body_of(events[:3]) == b"abc" and body_of(events[3:]) == b"de"
    end = events[2]
    assert isinstance(end, EndOfMessage) and end.trailers == [(b"X-T", b"1")]


def test_request_with_content_length() -> None:
    events = parse_requests(CL_REQUEST)
    assert kinds(events)[0] == "Request" and kinds(events)[-1] == "EndOfMessage"
    request = events[0]
    assert isinstance(request, Request)
    assert (request.method, request.target, request.version) == (b"POST", b"/upload?x=1", b"1.1")
    assert request.host == b"example.com"
    assert request.content_length == 11
    assert not request.chunked
    assert request.has_body
    assert request.keep_alive
    assert request.headers == [(b"Host", b"example.com"), (b"Content-Length", b"11")]
    assert body_of(events) == b"hello world"
    end = events[-1]
    assert isinstance(end, EndOfMessage)
    assert not end.trailers


def test_request_without_body_has_no_data() -> None:
    events = parse_requests(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    assert kinds(events) == ["Request", "EndOfMessage"]
    request = events[0]
    assert isinstance(request, Request)
    assert not request.has_body
    assert request.content_length is None


def test_chunked_request_with_trailers() -> None:
    events = parse_requests(CHUNKED_REQUEST)
    request = events[0]
    assert isinstance(request, Request)
    assert request.chunked
    assert request.content_length is None
    assert request.has_body
    assert body_of(events) == b"hello world"
    end = events[-1]
    assert isinstance(end, EndOfMessage)
    assert end.trailers == [(b"X-Checksum", b"abc"), (b"X-Other", b"2")]


def test_chunked_request_without_trailers() -> None:
    events = parse_requests(
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
    )
    assert body_of(events) == b"abc"
    end = events[-1]
    assert isinstance(end, EndOfMessage)
    assert not end.trailers


@pytest.mark.parametrize("raw", REQUEST_SAMPLES.values(), ids=REQUEST_SAMPLES.keys())
def test_request_events_do_not_depend_on_how_bytes_arrive(raw: bytes) -> None:
    whole = summary(parse_requests(raw))
    assert summary(feed_pieces(RequestReader(), bytewise(raw))) == whole
    for cut in range(1, len(raw)):
        assert summary(feed_pieces(RequestReader(), [raw[:cut], raw[cut:]])) == whole, cut


def test_pipelined_requests_in_one_feed() -> None:
    reader = RequestReader()
    events = reader.feed(PIPELINED)
    assert kinds(events) == [
        "Request",
        "EndOfMessage",
        "Request",
        "Data",
        "EndOfMessage",
        "Request",
        "EndOfMessage",
    ]
    targets = [e.target for e in events if isinstance(e, Request)]
    assert targets == [b"/a", b"/b", b"/c"]
    assert body_of(events) == b"xyz"
    assert reader.idle


def test_reader_is_not_idle_in_the_middle_of_a_request() -> None:
    reader = RequestReader()
    assert reader.idle
    reader.feed(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\n\r\nab")
    assert not reader.idle
    reader.feed(b"cd")
    assert reader.idle


def test_second_request_on_a_keep_alive_connection() -> None:
    reader = RequestReader()
    first = reader.feed(b"GET /1 HTTP/1.1\r\nHost: a\r\n\r\n")
    second = reader.feed(b"GET /2 HTTP/1.1\r\nHost: a\r\n\r\n")
    assert [e.target for e in first + second if isinstance(e, Request)] == [b"/1", b"/2"]


@pytest.mark.parametrize(
    ("head", "keep_alive"),
    [
        (b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", True),
        (b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n", False),
        (b"GET / HTTP/1.1\r\nHost: a\r\nConnection: Close\r\n\r\n", False),
        (b"GET / HTTP/1.0\r\n\r\n", False),
        (b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n", True),
    ],
    ids=["1.1", "1.1-close", "1.1-Close", "1.0", "1.0-keep-alive"],
)
def test_keep_alive(head: bytes, keep_alive: bool) -> None:
    request = parse_requests(head)[0]
    assert isinstance(request, Request)
    assert request.keep_alive is keep_alive


def test_http_1_0_needs_no_host() -> None:
    request = parse_requests(b"GET / HTTP/1.0\r\n\r\n")[0]
    assert isinstance(request, Request)
    assert request.version == b"1.0"
    assert request.host == b""


def test_host_is_exposed_with_its_port() -> None:
    request = parse_requests(b"GET / HTTP/1.1\r\nhost: Example.com:8080\r\n\r\n")[0]
    assert isinstance(request, Request)
    assert request.host == b"Example.com:8080"


def test_header_value_excludes_surrounding_whitespace() -> None:
    # RFC 9112 5.1: OWS before and after a field value is not part of it (else a Host of
    # "example.com " would match no route, and a header rule "X-Canary: 1" would not hold).
    request = parse_requests(b"GET / HTTP/1.1\r\nHost: example.com \r\nX-A: \t b c \t\r\n\r\n")[0]
    assert isinstance(request, Request)
    assert request.headers == [(b"Host", b"example.com"), (b"X-A", b"b c")]
    assert request.host == b"example.com"


def test_tab_and_obs_text_in_header_values_are_accepted() -> None:
    request = parse_requests(b"GET / HTTP/1.1\r\nHost: a\r\nX-A: b\tc\r\nX-B: caf\xc3\xa9\r\n\r\n")[
        0
    ]
    assert isinstance(request, Request)
    assert request.headers[1:] == [(b"X-A", b"b\tc"), (b"X-B", b"caf\xc3\xa9")]


# --- Requests: upgrades ----------------------------------------------------------------------

UPGRADE_HEAD = (
    b"GET /chat HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
    b"Sec-WebSocket-Version: 13\r\n\r\n"
)


def test_upgrade_request_carries_the_tail() -> None:
    reader = RequestReader()
    events = reader.feed(UPGRADE_HEAD + b"\x81\x05hello")
    request = events[0]
    assert isinstance(request, Request)
    assert request.upgrade == b"websocket"
    assert isinstance(events[-1], Upgraded)
    assert events[-1].tail == b"\x81\x05hello"
    assert reader.upgraded


def test_upgrade_request_without_tail() -> None:
    reader = RequestReader()
    events = reader.feed(UPGRADE_HEAD)
    assert isinstance(events[-1], Upgraded)
    assert events[-1].tail == b""
    assert reader.upgraded


def test_upgrade_request_behind_a_pipelined_request() -> None:
    reader = RequestReader()
    events = reader.feed(b"GET /a HTTP/1.1\r\nHost: a\r\n\r\n" + UPGRADE_HEAD + b"TAIL")
    assert [e.target for e in events if isinstance(e, Request)] == [b"/a", b"/chat"]
    assert isinstance(events[-1], Upgraded)
    assert events[-1].tail == b"TAIL"


def test_upgrade_header_without_connection_upgrade_is_no_upgrade() -> None:
    reader = RequestReader()
    events = reader.feed(b"GET / HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\n\r\n")
    request = events[0]
    assert isinstance(request, Request)
    assert request.upgrade is None
    assert not any(isinstance(e, Upgraded) for e in events)
    assert not reader.upgraded


# --- Requests: smuggling and bad input -------------------------------------------------------


def post(headers: bytes, body: bytes = b"") -> bytes:
    return b"POST / HTTP/1.1\r\nHost: a\r\n" + headers + b"\r\n" + body


BAD_REQUESTS: list[tuple[str, bytes, int | set[int]]] = [
    (
        "cl-and-te",
        post(b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n", b"0\r\n\r\nGET /x"),
        400,
    ),
    (
        "te-and-cl",
        post(b"Transfer-Encoding: chunked\r\nContent-Length: 5\r\n", b"0\r\n\r\nGET /x"),
        400,
    ),
    ("two-different-cl", post(b"Content-Length: 3\r\nContent-Length: 4\r\n", b"abcd"), 400),
    ("two-equal-cl", post(b"Content-Length: 3\r\nContent-Length: 3\r\n", b"abc"), 400),
    ("cl-list", post(b"Content-Length: 3, 3\r\n", b"abc"), 400),
    ("negative-cl", post(b"Content-Length: -3\r\n", b"abc"), 400),
    ("plus-cl", post(b"Content-Length: +3\r\n", b"abc"), 400),
    ("space-separated-cl", post(b"Content-Length: 1 2\r\n", b"abc"), 400),
    ("hex-cl", post(b"Content-Length: 0x3\r\n", b"abc"), 400),
    ("xchunked", post(b"Transfer-Encoding: xchunked\r\n", b"0\r\n\r\n"), 400),
    ("chunked-identity", post(b"Transfer-Encoding: chunked, identity\r\n", b"0\r\n\r\n"), 400),
    ("te-not-chunked", post(b"Transfer-Encoding: gzip\r\n", b"0\r\n\r\n"), 400),
    ("gzip-chunked", post(b"Transfer-Encoding: gzip, chunked\r\n", b"0\r\n\r\n"), 501),
    (
        "gzip-then-chunked-headers",
        post(b"Transfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n", b"0\r\n\r\n"),
        501,
    ),
    (
        "chunked-twice-in-a-list",
        post(b"Transfer-Encoding: chunked, chunked\r\n", b"0\r\n\r\n"),
        400,
    ),
    ("te-empty", post(b"Transfer-Encoding: \r\n", b"0\r\n\r\n"), 400),
    ("te-only-commas", post(b"Transfer-Encoding: , ,\r\n", b"0\r\n\r\n"), 400),
    ("te-tab-then-cl", post(b"Transfer-Encoding: chunked\t\r\nContent-Length: 3\r\n", b"abc"), 400),
    ("chunked-with-parameter", post(b"Transfer-Encoding: chunked;q=1\r\n", b"0\r\n\r\n"), 400),
    ("te-space-before-colon", post(b"Transfer-Encoding : chunked\r\n", b"0\r\n\r\n"), 400),
    ("cl-space-before-colon", post(b"Content-Length : 3\r\n", b"abc"), 400),
    (
        "two-te-headers",
        post(b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n", b"0\r\n\r\n"),
        400,
    ),
    ("bare-lf", b"GET / HTTP/1.1\nHost: a\n\n", 400),
    ("bare-lf-in-headers", b"GET / HTTP/1.1\r\nHost: a\nX-A: b\r\n\r\n", 400),
    ("bare-cr-in-value", b"GET / HTTP/1.1\r\nHost: a\r\nX-A: b\rc\r\n\r\n", 400),
    ("nul-in-value", b"GET / HTTP/1.1\r\nHost: a\r\nX-A: b\x00c\r\n\r\n", 400),
    ("ctl-in-value", b"GET / HTTP/1.1\r\nHost: a\r\nX-A: b\x01c\r\n\r\n", 400),
    ("esc-in-value", b"GET / HTTP/1.1\r\nHost: a\r\nX-A: b\x1bc\r\n\r\n", 400),
    ("del-in-value", b"GET / HTTP/1.1\r\nHost: a\r\nX-A: b\x7fc\r\n\r\n", 400),
    ("space-in-name", b"GET / HTTP/1.1\r\nHost: a\r\nX A: b\r\n\r\n", 400),
    ("obs-fold-space", b"GET / HTTP/1.1\r\nHost: a\r\nX-A: b\r\n c\r\n\r\n", 400),
    ("obs-fold-tab", b"GET / HTTP/1.1\r\nHost: a\r\nX-A: b\r\n\tc\r\n\r\n", 400),
    ("space-before-first-header", b"GET / HTTP/1.1\r\n Host: a\r\n\r\n", 400),
    ("missing-host", b"GET / HTTP/1.1\r\n\r\n", 400),
    ("two-hosts", b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
    ("two-equal-hosts", b"GET / HTTP/1.1\r\nHost: a\r\nHost: a\r\n\r\n", 400),
    ("http-2.0", b"GET / HTTP/2.0\r\nHost: a\r\n\r\n", 505),
    ("http-0.9", b"GET / HTTP/0.9\r\nHost: a\r\n\r\n", 505),
    ("no-version", b"GET /\r\n\r\n", {400, 505}),
    ("http-3.0", b"GET / HTTP/3.0\r\nHost: a\r\n\r\n", {400, 505}),
    ("garbage-version", b"GET / HTTX/1.1\r\nHost: a\r\n\r\n", 400),
    ("connect", b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n", 405),
    ("bad-chunk-size", post(b"Transfer-Encoding: chunked\r\n", b"zz\r\nabc\r\n0\r\n\r\n"), 400),
    ("not-http", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", 400),
]


@pytest.mark.parametrize(
    ("raw", "status"),
    [(raw, status) for _, raw, status in BAD_REQUESTS],
    ids=[name for name, _, _ in BAD_REQUESTS],
)
def test_bad_request_is_refused(raw: bytes, status: int | set[int]) -> None:
    error = rejected(raw)
    expected = status if isinstance(status, set) else {status}
    assert error.status in expected, error


@pytest.mark.parametrize(
    ("raw", "status"),
    [(raw, status) for _, raw, status in BAD_REQUESTS],
    ids=[name for name, _, _ in BAD_REQUESTS],
)
def test_bad_request_is_refused_when_fed_byte_by_byte(raw: bytes, status: int | set[int]) -> None:
    error = rejected(bytewise(raw))
    expected = status if isinstance(status, set) else {status}
    assert error.status in expected, error


def test_smuggled_request_after_cl_te_is_never_parsed() -> None:
    reader = RequestReader()
    smuggle = post(
        b"Content-Length: 6\r\nTransfer-Encoding: chunked\r\n",
        b"0\r\n\r\nGET /admin HTTP/1.1\r\nHost: a\r\n\r\n",
    )
    events: list[Event] = []
    with pytest.raises(ClientError):
        for piece in bytewise(smuggle):
            events += reader.feed(piece)
    assert not any(isinstance(e, Request) for e in events)


def test_request_line_too_long() -> None:
    limits = HeadLimits(max_request_line=64)
    target = b"/" + b"a" * 100
    assert rejected(b"GET " + target + b" HTTP/1.1\r\nHost: a\r\n\r\n", limits).status == 414


def test_request_line_too_long_arriving_slowly() -> None:
    limits = HeadLimits(max_request_line=64)
    pieces = [b"GET /"] + [b"a" * 10] * 20  # never ends
    assert rejected(pieces, limits).status == 414


def test_request_line_within_limit_is_accepted() -> None:
    limits = HeadLimits(max_request_line=64)
    target = b"/" + b"a" * 40
    request = parse_requests(b"GET " + target + b" HTTP/1.1\r\nHost: a\r\n\r\n", limits)[0]
    assert isinstance(request, Request)
    assert request.target == target


def many_headers(count: int) -> bytes:
    """A request with `count` header fields, Host included."""
    extra = b"".join(b"X-H%d: v\r\n" % i for i in range(count - 1))
    return b"GET / HTTP/1.1\r\nHost: a\r\n" + extra + b"\r\n"


def test_too_many_headers() -> None:
    limits = HeadLimits(max_headers=10)
    assert rejected(many_headers(11), limits).status == 431


def test_as_many_headers_as_allowed() -> None:
    limits = HeadLimits(max_headers=10)
    request = parse_requests(many_headers(10), limits)[0]
    assert isinstance(request, Request)
    assert len(request.headers) == 10


def test_header_block_too_large_in_one_piece() -> None:
    limits = HeadLimits(max_header_size=1024)
    raw = b"GET / HTTP/1.1\r\nHost: a\r\nX-Big: " + b"b" * 2000 + b"\r\n\r\n"
    assert rejected(raw, limits).status == 431


def test_header_block_too_large_from_many_small_headers() -> None:
    limits = HeadLimits(max_header_size=1024, max_headers=1000)
    extra = b"".join(b"X-Header-%03d: %s\r\n" % (i, b"v" * 20) for i in range(60))
    raw = b"GET / HTTP/1.1\r\nHost: a\r\n" + extra + b"\r\n"
    assert rejected(raw, limits).status == 431


def test_header_block_too_large_in_complete_pieces() -> None:
    limits = HeadLimits(max_header_size=1024, max_headers=1000)
    pieces = [b"GET / HTTP/1.1\r\nHost: a\r\n"]
    pieces += [b"X-Header-%03d: %s\r\n" % (i, b"v" * 20) for i in range(60)]
    pieces.append(b"\r\n")
    assert rejected(pieces, limits).status == 431


def test_header_that_never_ends_is_refused_before_much_more_than_the_limit() -> None:
    limit = 1024
    reader = RequestReader(HeadLimits(max_header_size=limit))
    reader.feed(b"GET / HTTP/1.1\r\nHost: a\r\nX-Slow: ")
    fed = 0
    with pytest.raises(ClientError) as caught:
        while fed <= 10 * limit:
            reader.feed(b"s" * 50)
            fed += 50
    assert caught.value.status == 431
    assert fed <= limit + 50


def test_header_lines_that_never_end_the_head_are_refused() -> None:
    limit = 1024
    reader = RequestReader(HeadLimits(max_header_size=limit, max_headers=10_000))
    reader.feed(b"GET / HTTP/1.1\r\nHost: a\r\n")
    fed = 0
    with pytest.raises(ClientError) as caught:
        for i in range(1000):
            line = b"X-%04d: v\r\n" % i
            reader.feed(line)
            fed += len(line)
    assert caught.value.status == 431
    assert fed <= limit + 20


def test_never_ending_head_that_began_behind_a_pipelined_request_is_refused() -> None:
    # The second head starts in the same feed as a complete request: its bytes count too.
    limit = 1024
    reader = RequestReader(HeadLimits(max_header_size=limit))
    partial = b"GET /2 HTTP/1.1\r\nHost: a\r\nX-Slow: " + b"s" * 900
    reader.feed(b"GET /1 HTTP/1.1\r\nHost: a\r\n\r\n" + partial)
    fed = len(partial)
    with pytest.raises(ClientError) as caught:
        while fed <= 10 * limit:
            reader.feed(b"s" * 50)
            fed += 50
    assert caught.value.status == 431
    assert fed <= limit + 50


def test_never_ending_trailer_is_refused() -> None:
    # Trailers are a second header block: unbounded, they would grow in memory forever.
    limit = 1024
    reader = RequestReader(HeadLimits(max_header_size=limit))
    reader.feed(post(b"Transfer-Encoding: chunked\r\n", b"3\r\nabc\r\n0\r\nX-Trailer: "))
    fed = 0
    with pytest.raises(ClientError) as caught:
        while fed <= 100 * limit:
            reader.feed(b"t" * 100)
            fed += 100
    assert caught.value.status in (413, 431)
    assert fed <= limit + 100


def test_too_many_trailers() -> None:
    trailers = b"".join(b"X-T%d: v\r\n" % i for i in range(11))
    raw = post(b"Transfer-Encoding: chunked\r\n", b"0\r\n" + trailers + b"\r\n")
    assert rejected(raw, HeadLimits(max_headers=10)).status == 431


def test_head_limit_applies_to_each_request_not_the_connection() -> None:
    limits = HeadLimits(max_header_size=1024)
    reader = RequestReader(limits)
    head = b"GET / HTTP/1.1\r\nHost: a\r\nX-Pad: " + b"p" * 600 + b"\r\n\r\n"
    for _ in range(5):
        events = reader.feed(head)
        assert kinds(events) == ["Request", "EndOfMessage"]


def test_content_length_over_the_body_limit_is_refused_before_the_body() -> None:
    reader = RequestReader(HeadLimits(max_body_size=10))
    with pytest.raises(ClientError) as caught:
        reader.feed(post(b"Content-Length: 11\r\n"))
    assert caught.value.status == 413


def test_content_length_at_the_body_limit_is_accepted() -> None:
    events = parse_requests(
        post(b"Content-Length: 10\r\n", b"0123456789"), HeadLimits(max_body_size=10)
    )
    assert body_of(events) == b"0123456789"
    assert isinstance(events[-1], EndOfMessage)


def test_chunked_body_growing_past_the_limit_is_refused() -> None:
    reader = RequestReader(HeadLimits(max_body_size=10))
    events = reader.feed(post(b"Transfer-Encoding: chunked\r\n", b"6\r\nabcdef\r\n"))
    assert body_of(events) == b"abcdef"
    with pytest.raises(ClientError) as caught:
        reader.feed(b"6\r\nghijkl\r\n0\r\n\r\n")
    assert caught.value.status == 413


def test_chunked_body_at_the_limit_is_accepted() -> None:
    body = b"6\r\nabcdef\r\n4\r\nghij\r\n0\r\n\r\n"
    events = parse_requests(
        post(b"Transfer-Encoding: chunked\r\n", body), HeadLimits(max_body_size=10)
    )
    assert body_of(events) == b"abcdefghij"
    assert isinstance(events[-1], EndOfMessage)


def test_no_body_limit_by_default() -> None:
    body = b"x" * 100_000
    events = parse_requests(post(b"Content-Length: %d\r\n" % len(body), body))
    assert body_of(events) == body


# --- Responses -------------------------------------------------------------------------------


def test_response_with_content_length() -> None:
    reader, events = parse_response(
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Type: text/plain\r\n\r\nhello"
    )
    response = events[0]
    assert isinstance(response, Response)
    assert (response.status, response.reason, response.version) == (200, b"OK", b"1.1")
    assert response.content_length == 5
    assert not response.chunked
    assert not response.interim
    assert response.headers == [(b"Content-Length", b"5"), (b"Content-Type", b"text/plain")]
    assert body_of(events) == b"hello"
    assert isinstance(events[-1], EndOfMessage)
    assert reader.done
    assert reader.reusable
    assert reader.idle


def test_response_in_progress_is_not_done() -> None:
    reader, events = parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhel")
    assert body_of(events) == b"hel"
    assert not reader.done
    assert not reader.idle
    assert not reader.close_delimited
    events = reader.feed(b"lo")
    assert body_of(events) == b"lo"
    assert isinstance(events[-1], EndOfMessage)
    assert reader.done


def test_chunked_response_with_trailers() -> None:
    reader, events = parse_response(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5\r\nhello\r\n6\r\n world\r\n0\r\nX-Digest: sha\r\n\r\n"
    )
    response = events[0]
    assert isinstance(response, Response)
    assert response.chunked
    assert response.content_length is None
    assert body_of(events) == b"hello world"
    end = events[-1]
    assert isinstance(end, EndOfMessage)
    assert end.trailers == [(b"X-Digest", b"sha")]
    assert reader.done
    assert reader.reusable


def test_close_delimited_response_ends_at_eof() -> None:
    reader, events = parse_response(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nsome")
    assert body_of(events) == b"some"
    assert not any(isinstance(e, EndOfMessage) for e in events)
    assert reader.close_delimited
    assert not reader.done
    assert body_of(reader.feed(b" more")) == b" more"
    end = reader.eof()
    assert [type(e) for e in end] == [EndOfMessage]
    assert reader.done
    assert not reader.reusable


@pytest.mark.parametrize(
    "raw",
    [
        b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab",
        b"HTTP/1.1 200 OK\r\nContent-Le",
        b"",
    ],
    ids=["content-length", "chunked", "head", "nothing"],
)
def test_eof_before_the_response_ends_is_an_error(raw: bytes) -> None:
    reader, _ = parse_response(raw)
    with pytest.raises(UpstreamProtocolError):
        reader.eof()
    assert not reader.reusable


def test_eof_after_a_complete_response_is_quiet() -> None:
    reader, _ = parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    assert reader.eof() == []
    assert not reader.reusable


def test_head_response_ends_after_the_head_and_the_reader_is_reusable() -> None:
    reader, events = parse_response(
        b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n", method=b"HEAD"
    )
    assert kinds(events) == ["Response", "EndOfMessage"]
    response = events[0]
    assert isinstance(response, Response)
    assert response.content_length == 1234  # what a GET would have sent, passed on as is
    assert reader.done
    assert reader.reusable
    assert not reader.close_delimited

    reader.expect(b"GET")
    events = reader.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc")
    assert kinds(events) == ["Response", "Data", "EndOfMessage"]
    assert body_of(events) == b"abc"
    assert reader.done
    assert reader.reusable


def test_head_response_with_chunked_framing_has_no_body() -> None:
    reader, events = parse_response(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", method=b"HEAD"
    )
    assert kinds(events) == ["Response", "EndOfMessage"]
    assert reader.done
    assert reader.reusable


def test_head_response_without_length_is_not_close_delimited() -> None:
    reader, events = parse_response(b"HTTP/1.1 200 OK\r\n\r\n", method=b"HEAD")
    assert kinds(events) == ["Response", "EndOfMessage"]
    assert reader.done
    assert not reader.close_delimited


def test_head_response_followed_by_a_body_makes_the_connection_unusable() -> None:
    reader, events = parse_response(
        b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc", method=b"HEAD"
    )
    assert not any(isinstance(e, Data) for e in events)
    assert reader.done
    assert not reader.reusable


@pytest.mark.parametrize("status", [204, 304])
def test_no_body_statuses(status: int) -> None:
    reader, events = parse_response(b"HTTP/1.1 %d Whatever\r\nContent-Length: 10\r\n\r\n" % status)
    assert kinds(events) == ["Response", "EndOfMessage"]
    assert reader.done
    assert reader.reusable

    reader.expect(b"GET")
    events = reader.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi")
    assert body_of(events) == b"hi"


def test_interim_100_then_final_response() -> None:
    reader = ResponseReader()
    reader.expect(b"POST")
    events = reader.feed(b"HTTP/1.1 100 Continue\r\n\r\n")
    assert kinds(events) == ["Response"]
    interim = events[0]
    assert isinstance(interim, Response)
    assert interim.status == 100
    assert interim.interim
    assert not reader.done

    events = reader.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    assert kinds(events) == ["Response", "Data", "EndOfMessage"]
    final = events[0]
    assert isinstance(final, Response)
    assert not final.interim
    assert reader.done
    assert reader.reusable


def test_interim_and_final_response_in_one_feed() -> None:
    reader, events = parse_response(
        b"HTTP/1.1 100 Continue\r\n\r\n"
        b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\n"
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
    )
    assert kinds(events) == ["Response", "Response", "Response", "Data", "EndOfMessage"]
    assert [e.status for e in events if isinstance(e, Response)] == [100, 103, 200]
    assert reader.done


def test_eof_after_only_an_interim_response_is_an_error() -> None:
    reader, _ = parse_response(b"HTTP/1.1 100 Continue\r\n\r\n")
    with pytest.raises(UpstreamProtocolError):
        reader.eof()


def test_101_switching_protocols_gives_upgraded_with_tail() -> None:
    reader, events = parse_response(
        b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
        b"\x81\x02hi"
    )
    response = events[0]
    assert isinstance(response, Response)
    assert response.status == 101
    assert not response.interim
    assert isinstance(events[-1], Upgraded)
    assert events[-1].tail == b"\x81\x02hi"
    assert not reader.reusable


@pytest.mark.parametrize(
    "raw",
    [
        b"SSH-2.0-OpenSSH_9.6\r\n",
        b"HTTP/1.1 2x0 OK\r\n\r\n",
        b"HTTP/2.0 200 OK\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
        b"HTTP/1.1 200 OK\r\nX-A: b\x00c\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        b"\x00\x00\x00\x00",
    ],
    ids=[
        "ssh",
        "bad-status",
        "http-2",
        "cl-and-te",
        "two-cl",
        "nul-in-header",
        "bad-chunk",
        "binary",
    ],
)
def test_garbage_response_raises(raw: bytes) -> None:
    reader = ResponseReader()
    reader.expect(b"GET")
    with pytest.raises(UpstreamProtocolError):
        reader.feed(raw)


def test_response_head_too_large_raises() -> None:
    reader = ResponseReader()
    reader.expect(b"GET")
    reader.feed(b"HTTP/1.1 200 OK\r\nX-Big: ")
    with pytest.raises(UpstreamProtocolError):
        for _ in range(MAX_RESPONSE_HEAD // 1000 + 2):
            reader.feed(b"b" * 1000)


def test_too_many_response_headers_raises() -> None:
    headers = b"".join(b"X-%d: v\r\n" % i for i in range(MAX_RESPONSE_HEADERS + 1))
    reader = ResponseReader()
    reader.expect(b"GET")
    with pytest.raises(UpstreamProtocolError):
        reader.feed(b"HTTP/1.1 200 OK\r\n" + headers + b"Content-Length: 0\r\n\r\n")


@pytest.mark.parametrize(
    ("head", "reusable"),
    [
        (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n", True),
        (b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\n", False),
        (b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\n", False),
        (b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 2\r\n\r\n", True),
    ],
    ids=["1.1", "1.1-close", "1.0", "1.0-keep-alive"],
)
def test_reusable(head: bytes, reusable: bool) -> None:
    reader, events = parse_response(head + b"ok")
    assert isinstance(events[-1], EndOfMessage)
    assert reader.done
    assert reader.reusable is reusable
    response = events[0]
    assert isinstance(response, Response)
    assert response.keep_alive is reusable


def test_several_responses_on_one_connection() -> None:
    reader = ResponseReader()
    for i in range(3):
        reader.expect(b"GET")
        events = reader.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n%d" % i)
        assert body_of(events) == b"%d" % i
        assert reader.done
        assert reader.reusable


def test_unasked_bytes_after_a_response_make_the_connection_unusable() -> None:
    reader, _ = parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    assert reader.done
    assert reader.feed(b"HTTP/1.1 200 OK\r\n") == []
    assert not reader.reusable


RESPONSE_SAMPLES = {
    "content-length": (b"GET", b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"),
    "chunked-trailers": (
        b"GET",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\nX-T: 1\r\n\r\n",
    ),
    "interim": (
        b"POST",
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok",
    ),
    "head": (b"HEAD", b"HTTP/1.1 200 OK\r\nContent-Length: 99\r\n\r\n"),
    "no-content": (b"DELETE", b"HTTP/1.1 204 No Content\r\n\r\n"),
}


@pytest.mark.parametrize(("method", "raw"), RESPONSE_SAMPLES.values(), ids=RESPONSE_SAMPLES.keys())
def test_response_events_do_not_depend_on_how_bytes_arrive(method: bytes, raw: bytes) -> None:
    _, events = parse_response(raw, method)
    whole = summary(events)
    reader = ResponseReader()
    reader.expect(method)
    assert summary(feed_pieces(reader, bytewise(raw))) == whole
    assert reader.done


# --- Encoders ----------------------------------------------------------------------------------


def test_encode_request_head() -> None:
    head = encode_request_head(b"GET", b"/x?y=1", [(b"Host", b"a"), (b"Accept", b"*/*")])
    assert head == b"GET /x?y=1 HTTP/1.1\r\nHost: a\r\nAccept: */*\r\n\r\n"


def test_encode_response_head_fills_in_the_reason() -> None:
    assert encode_response_head(404, b"", []) == b"HTTP/1.1 404 Not Found\r\n\r\n"
    assert (
        encode_response_head(200, b"Fine", [(b"A", b"b")]) == b"HTTP/1.1 200 Fine\r\nA: b\r\n\r\n"
    )


def test_encode_chunks() -> None:
    assert encode_chunk(b"hello") == b"5\r\nhello\r\n"
    assert encode_chunk(b"x" * 255) == b"ff\r\n" + b"x" * 255 + b"\r\n"
    assert encode_last_chunk(None) == b"0\r\n\r\n"
    assert encode_last_chunk([]) == b"0\r\n\r\n"
    assert encode_last_chunk([(b"X-T", b"1")]) == b"0\r\nX-T: 1\r\n\r\n"


def test_encoded_chunked_request_round_trips() -> None:
    headers = [(b"Host", b"example.com"), (b"Transfer-Encoding", b"chunked"), (b"X-A", b"b")]
    raw = (
        encode_request_head(b"PUT", b"/things/1?v=2", headers)
        + encode_chunk(b"hello")
        + encode_chunk(b" ")
        + encode_chunk(b"world" * 100)
        + encode_last_chunk([(b"X-Checksum", b"42")])
    )
    events = parse_requests(raw)
    request = events[0]
    assert isinstance(request, Request)
    assert (request.method, request.target, request.version) == (b"PUT", b"/things/1?v=2", b"1.1")
    assert request.headers == headers
    assert request.chunked
    assert body_of(events) == b"hello " + b"world" * 100
    end = events[-1]
    assert isinstance(end, EndOfMessage)
    assert end.trailers == [(b"X-Checksum", b"42")]


def test_encoded_request_with_content_length_round_trips() -> None:
    headers = [(b"Host", b"a"), (b"Content-Length", b"4")]
    events = parse_requests(encode_request_head(b"POST", b"/", headers) + b"data")
    request = events[0]
    assert isinstance(request, Request)
    assert request.headers == headers
    assert body_of(events) == b"data"
    assert isinstance(events[-1], EndOfMessage)


@pytest.mark.parametrize(
    ("status", "reason", "expected_reason"),
    [
        (200, b"", b"OK"),
        (404, b"Nope", b"Nope"),
        (299, b"", b""),
        (503, b"", b"Service Unavailable"),
    ],
)
def test_encoded_response_round_trips(status: int, reason: bytes, expected_reason: bytes) -> None:
    headers = [(b"Content-Type", b"text/plain"), (b"Content-Length", b"2")]
    reader, events = parse_response(encode_response_head(status, reason, headers) + b"ok")
    response = events[0]
    assert isinstance(response, Response)
    assert (response.status, response.reason, response.headers) == (
        status,
        expected_reason,
        headers,
    )
    assert body_of(events) == b"ok"
    assert reader.done


def test_encoded_chunked_response_round_trips() -> None:
    raw = (
        encode_response_head(200, b"", [(b"Transfer-Encoding", b"chunked")])
        + encode_chunk(b"abc")
        + encode_last_chunk([(b"X-T", b"1"), (b"X-U", b"2")])
    )
    reader, events = parse_response(raw)
    assert body_of(events) == b"abc"
    end = events[-1]
    assert isinstance(end, EndOfMessage)
    assert end.trailers == [(b"X-T", b"1"), (b"X-U", b"2")]
    assert reader.done
    assert reader.reusable


def test_reprs() -> None:
    request = parse_requests(b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n")[0]
    assert repr(request) == "<Request GET /x>"
    assert repr(Data(b"abc")) == "<Data 3 bytes>"
    assert repr(EndOfMessage([(b"a", b"b")])) == "<EndOfMessage trailers=1>"
    assert repr(Upgraded(b"xy")) == "<Upgraded tail=2>"


@pytest.mark.parametrize("coding", [b"chunked\t", b"chunked,", b"chunked \t"])
def test_response_chunked_that_llhttp_does_not_read_as_chunked_is_refused(coding: bytes) -> None:
    reader = ResponseReader()
    reader.expect(b"GET")
    head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: " + coding + b"\r\n\r\n"
    assert kinds(reader.feed(head)) == ["Response"]
    with pytest.raises(UpstreamProtocolError):
        reader.feed(b"2\r\nhi\r\n0\r\n\r\n")
