"""The codec's writers on bytes: framing, keep-alive, HTTP/1.0 and the no-body rules."""

from __future__ import annotations

import pytest

from usher.errors import ClientError
from usher.http.codec import (
    ClientWriter,
    ConnState,
    Data,
    EndOfMessage,
    InformationalResponse,
    LocalProtocolError,
    Request,
    RequestReader,
    Response,
    ResponseReader,
    ServerWriter,
)
from usher.http.framing import body_forbidden, chunked_twice, ends_chunked


def server(
    method: bytes = b"GET", version: bytes = b"1.1", keep_alive: bool = True
) -> ServerWriter:
    writer = ServerWriter()
    writer.begin(Request(method, b"/", version, [], keep_alive=keep_alive))
    return writer


def their(writer: ServerWriter | ClientWriter) -> ConnState | None:
    """The peer's state, read afresh (mypy would keep the narrowing of a property)."""
    return writer.their_state


def test_a_given_length_is_kept_in_place_and_counted() -> None:
    writer = server()
    head = writer.send(Response(200, b"", b"1.1", [(b"Content-Length", b"2"), (b"X", b"y")]))
    assert head == b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX: y\r\n\r\n"
    assert writer.body_allowed
    assert writer.send(Data(b"hi")) == b"hi"
    assert writer.send(EndOfMessage()) == b""
    assert writer.our_state is ConnState.DONE


def test_no_length_is_chunked_for_http11_with_trailers() -> None:
    writer = server()
    head = writer.send(Response(200, b"", b"1.1", [(b"X", b"y")]))
    assert head == b"HTTP/1.1 200 OK\r\nX: y\r\nTransfer-Encoding: chunked\r\n\r\n"
    assert writer.send(Data(b"abc")) == b"3\r\nabc\r\n"
    assert writer.send(Data(b"")) == b""  # an empty chunk would end the body
    assert writer.send(EndOfMessage([(b"T", b"1")])) == b"0\r\nT: 1\r\n\r\n"
    assert writer.our_state is ConnState.DONE


def test_no_length_is_close_delimited_for_http10() -> None:
    writer = server(version=b"1.0")
    head = writer.send(Response(200, b"", b"1.1", [(b"Transfer-Encoding", b"chunked")]))
    assert head == b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n"
    assert writer.send(Data(b"abc")) == b"abc"
    assert writer.send(EndOfMessage([(b"T", b"1")])) == b""  # trailers cannot go: dropped
    assert writer.our_state is ConnState.MUST_CLOSE


def test_http10_keep_alive_is_said() -> None:
    writer = server(version=b"1.0")
    head = writer.send(Response(204, b"", b"1.1", []))
    assert head == b"HTTP/1.1 204 No Content\r\nConnection: keep-alive\r\n\r\n"
    writer.send(EndOfMessage())
    assert writer.our_state is ConnState.DONE


def test_connection_close_given_or_asked_ends_the_connection() -> None:
    given = server()
    head = given.send(
        Response(200, b"", b"1.1", [(b"Connection", b"close"), (b"Content-Length", b"0")])
    )
    assert head == b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    given.send(EndOfMessage())
    assert given.our_state is ConnState.MUST_CLOSE
    with pytest.raises(LocalProtocolError):
        given.begin(Request(b"GET", b"/", b"1.1", []))
    asked = server(keep_alive=False)
    assert asked.send(Response(200, b"", b"1.1", [(b"Content-Length", b"0")])).endswith(
        b"Connection: close\r\n\r\n"
    )


@pytest.mark.parametrize(
    ("method", "status", "head"),
    [
        (b"HEAD", 200, b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n"),
        (b"GET", 304, b"HTTP/1.1 304 Not Modified\r\nContent-Length: 5\r\n\r\n"),
        (b"GET", 204, b"HTTP/1.1 204 No Content\r\n\r\n"),
    ],
)
def test_no_body_answers_say_a_length_but_carry_nothing(
    method: bytes, status: int, head: bytes
) -> None:
    writer = server(method)
    assert writer.send(Response(status, b"", b"1.1", [(b"Content-Length", b"5")])) == head
    assert not writer.body_allowed
    with pytest.raises(LocalProtocolError):
        writer.send(Data(b"x"))
    assert writer.send(EndOfMessage()) == b""
    assert writer.our_state is ConnState.DONE


def test_no_body_answers_without_length_get_no_framing() -> None:
    writer = server(b"HEAD")
    assert writer.send(Response(200, b"", b"1.1", [])) == b"HTTP/1.1 200 OK\r\n\r\n"


def test_interim_answers_leave_the_server_idle_and_skip_http10() -> None:
    writer = server()
    assert writer.send(InformationalResponse(100)) == b"HTTP/1.1 100 Continue\r\n\r\n"
    assert writer.our_state is ConnState.IDLE
    writer.send(Response(200, b"", b"1.1", [(b"Content-Length", b"0")]))
    assert server(version=b"1.0").send(InformationalResponse(100)) == b""
    with pytest.raises(LocalProtocolError):
        server().send(Response(100, b"", b"1.1", []))
    with pytest.raises(LocalProtocolError):
        server().send(InformationalResponse(101))


def test_switching_protocols_keeps_its_connection_header() -> None:
    writer = server()
    head = writer.send(
        Response(101, b"", b"1.1", [(b"Connection", b"upgrade"), (b"Upgrade", b"websocket")])
    )
    assert head == (
        b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n"
    )
    assert writer.our_state is ConnState.SWITCHED


@pytest.mark.parametrize(
    "headers",
    [
        [(b"Content-Length", b"1"), (b"Transfer-Encoding", b"chunked")],
        [(b"Content-Length", b"1"), (b"Content-Length", b"1")],
        [(b"Content-Length", b"+1")],
        [(b"Transfer-Encoding", b"gzip, chunked")],
        [(b"Transfer-Encoding", b"chunked"), (b"Transfer-Encoding", b"chunked")],
    ],
)
def test_framing_a_writer_will_not_write(headers: list[tuple[bytes, bytes]]) -> None:
    with pytest.raises(LocalProtocolError):
        server().send(Response(200, b"", b"1.1", headers))
    with pytest.raises(LocalProtocolError):
        ClientWriter().send(Request(b"POST", b"/", b"1.1", headers))


def test_the_body_must_match_its_length() -> None:
    writer = server()
    writer.send(Response(200, b"", b"1.1", [(b"Content-Length", b"3")]))
    with pytest.raises(LocalProtocolError):
        writer.send(Data(b"four"))
    writer.send(Data(b"ab"))
    with pytest.raises(LocalProtocolError):
        writer.send(EndOfMessage())


def test_events_out_of_order_are_refused() -> None:
    writer = server()
    with pytest.raises(LocalProtocolError):
        writer.send(Data(b"x"))
    writer.send(Response(200, b"", b"1.1", [(b"Content-Length", b"0")]))
    with pytest.raises(LocalProtocolError):
        writer.send(Response(200, b"", b"1.1", []))


def test_server_their_state_follows_the_reader() -> None:
    reader = RequestReader()
    writer = ServerWriter(reader)
    assert their(writer) is ConnState.IDLE
    reader.feed(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\n\r\nab")
    assert their(writer) is ConnState.SEND_BODY
    reader.feed(b"cd")
    assert their(writer) is ConnState.IDLE
    assert ServerWriter().their_state is None


def test_client_writer_frames_and_is_read_back() -> None:
    writer = ClientWriter()
    head = writer.send(
        Request(b"POST", b"/up", b"1.1", [(b"Host", b"a"), (b"Content-Length", b"2")])
    )
    body = writer.send(Data(b"hi")) + writer.send(EndOfMessage())
    reader = RequestReader()
    events = reader.feed(head + body)
    assert [type(e) for e in events] == [Request, Data, EndOfMessage]
    assert head == b"POST /up HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\n"
    assert writer.our_state is ConnState.DONE
    writer.start_next_cycle()
    chunked = writer.send(Request(b"PUT", b"/", b"1.1", [(b"Transfer-Encoding", b"chunked")]))
    assert chunked == b"PUT / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
    assert writer.send(Data(b"x")) + writer.send(EndOfMessage()) == b"1\r\nx\r\n0\r\n\r\n"


def test_client_request_without_framing_has_no_body() -> None:
    writer = ClientWriter()
    head = writer.send(Request(b"GET", b"/", b"1.1", [(b"Host", b"a"), (b"Connection", b"close")]))
    assert head == b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
    with pytest.raises(LocalProtocolError):
        writer.send(Data(b"x"))
    writer.send(EndOfMessage())
    assert writer.our_state is ConnState.MUST_CLOSE
    with pytest.raises(LocalProtocolError):
        writer.start_next_cycle()


def test_client_their_state_and_head_expectation_follow_the_reader() -> None:
    reader = ResponseReader()
    writer = ClientWriter(reader)
    writer.send(Request(b"HEAD", b"/", b"1.1", [(b"Host", b"a")]))
    writer.send(EndOfMessage())
    assert their(writer) is ConnState.IDLE
    events = reader.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n")
    assert [type(e) for e in events] == [Response, EndOfMessage]  # HEAD: no body expected
    assert their(writer) is ConnState.DONE


def test_host_may_be_left_optional_for_the_demo_origin() -> None:
    bare = b"GET / HTTP/1.1\r\n\r\n"
    with pytest.raises(ClientError):
        RequestReader().feed(bare)
    (request, _) = RequestReader(require_host=False).feed(bare)
    assert isinstance(request, Request) and request.host == b""


@pytest.mark.parametrize(
    ("status", "head", "forbidden"),
    [
        (100, False, True),
        (101, False, True),
        (200, False, False),
        (200, True, True),
        (204, False, True),
        (304, False, True),
        (404, True, True),
        (500, False, False),
    ],
)
def test_the_no_body_rule_is_one_function(status: int, head: bool, forbidden: bool) -> None:
    # Both the response reader and the server writer decide with it.
    assert body_forbidden(status, head=head) is forbidden


@pytest.mark.parametrize(
    ("codings", "chunked", "twice"),
    [
        ((), False, False),
        ((b"chunked",), True, False),
        ((b"gzip", b"chunked"), True, False),
        ((b"chunked", b"gzip"), False, False),
        ((b"chunked", b"chunked"), True, True),
    ],
)
def test_transfer_coding_rules_shared_by_both_readers(
    codings: tuple[bytes, ...], chunked: bool, twice: bool
) -> None:
    assert ends_chunked(codings) is chunked
    assert chunked_twice(codings) is twice
