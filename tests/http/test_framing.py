"""The framing usher writes toward backends and clients, through real sockets, asserting the
exact bytes that arrive (issue 12: items 2, 4, 9, 13, 14 and 17)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import requests
import trustme

from tests.conftest import (
    RawResponse,
    pool_of,
    raw_exchange,
    read_request_head,
    read_response,
    simple_config,
)
from tests.http.test_tls_backends import client_context, https_config
from tests.recording_backend import RecordingBackend, forwarded
from usher.http.codec import MAX_RESPONSE_HEAD


@pytest.fixture
async def recorder() -> AsyncIterator[RecordingBackend]:
    backend = RecordingBackend()
    await backend.start()
    yield backend
    await backend.close()


async def recorded_balancer(balancer: Any, recorder: RecordingBackend, **listener: Any) -> Any:
    # A short read timeout: a request whose end never reaches the backend fails in seconds.
    pool = pool_of(f"127.0.0.1:{recorder.port}", timeouts={"read": "2s"})
    return await balancer(simple_config({"web": pool}, **listener))


def not_ejected(lb: Any) -> bool:
    backend = lb.pools["web"].backends[0]
    return bool(backend.failures_total == 0)


async def send(port: int, data: bytes) -> RawResponse:
    """One write, one answer (without waiting to see whether the connection stays open)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        return await asyncio.wait_for(read_response(reader), 10)
    finally:
        writer.close()


async def exchange_in_writes(port: int, *writes: bytes) -> tuple[int, bytes]:
    """Send each piece in its own write (a pause between, so they arrive as separate reads);
    returns the status and body of the answer."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        for i, piece in enumerate(writes):
            if i:
                await asyncio.sleep(0.05)
            writer.write(piece)
            await writer.drain()
        response = await asyncio.wait_for(read_response(reader), 10)
        return response.status, response.body
    finally:
        writer.close()


CHUNKED_HEAD = b"POST /x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
EMPTY_CHUNKED_FORWARDED = forwarded(b"POST /x", [(b"Host", b"x")], chunked=True, body=b"0\r\n\r\n")


# --- Item 2: a body (or its end) in the same read as the head ---------------------------------


async def test_empty_chunked_body_in_the_same_write_as_the_head(balancer, recorder):
    lb = await recorded_balancer(balancer, recorder)
    response = await send(lb.port, CHUNKED_HEAD + b"0\r\n\r\n")
    assert response.status == 200 and response.body == b"ok"
    assert recorder.received == EMPTY_CHUNKED_FORWARDED
    assert not_ejected(lb)


async def test_empty_chunked_body_in_a_second_write_like_node(balancer, recorder):
    # Node's http client: `req.end()` with no body writes the head, then the last chunk.
    lb = await recorded_balancer(balancer, recorder)
    status, body = await exchange_in_writes(lb.port, CHUNKED_HEAD, b"0\r\n\r\n")
    assert (status, body) == (200, b"ok")
    assert recorder.received == EMPTY_CHUNKED_FORWARDED
    assert not_ejected(lb)


async def test_empty_chunked_body_from_requests_with_an_empty_generator(balancer, recorder):
    lb = await recorded_balancer(balancer, recorder)

    def post() -> requests.Response:
        with requests.Session() as session:
            return session.post(lb.url("/x"), data=iter([]), timeout=10)

    response = await asyncio.to_thread(post)
    assert response.status_code == 200
    received = recorder.received
    assert received.startswith(b"POST /x HTTP/1.1\r\n")
    assert received.endswith(b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n")
    assert not_ejected(lb)


async def test_trailers_in_the_same_write_as_the_head(balancer, recorder):
    lb = await recorded_balancer(balancer, recorder)
    body = b"0\r\nX-Checksum: 42\r\n\r\n"
    response = await send(lb.port, CHUNKED_HEAD + body)
    assert response.status == 200
    assert recorder.received == forwarded(b"POST /x", [(b"Host", b"x")], chunked=True, body=body)


async def test_content_length_body_in_the_same_write_as_the_head(balancer, recorder):
    lb = await recorded_balancer(balancer, recorder)
    head = b"POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\n"
    response = await send(lb.port, head + b"abc")
    assert response.status == 200
    expected = forwarded(b"POST /x", [(b"Host", b"x"), (b"Content-Length", b"3")], body=b"abc")
    assert recorder.received == expected


async def test_empty_chunked_body_with_a_404_in_the_same_write(balancer, recorder):
    pool = pool_of(f"127.0.0.1:{recorder.port}")
    routes = [{"match": {"path_prefix": "/app"}, "pool": "web"}]
    lb = await balancer(simple_config({"web": pool}, routes=routes))
    data = CHUNKED_HEAD + b"0\r\n\r\n" + b"GET /app HTTP/1.1\r\nHost: x\r\n\r\n"
    responses, _ = await raw_exchange(lb.port, data, responses=1)
    assert responses[0].status == 404
    assert recorder.received == b""


# --- Item 4: usher's own framing headers --------------------------------------------------------


@pytest.mark.parametrize(
    "spelling", [b"CHUNKED", b",chunked", b"chunked ", b" , chunked", b", Chunked"]
)
async def test_backend_sees_exactly_transfer_encoding_chunked(balancer, recorder, spelling):
    await assert_forwarded_as_plain_chunked(balancer, recorder, b" " + spelling)


async def assert_forwarded_as_plain_chunked(balancer, recorder, value: bytes) -> None:
    """A request whose Transfer-Encoding header is `value` gets its answer, and the backend
    receives exactly `Transfer-Encoding: chunked` and the body."""
    lb = await recorded_balancer(balancer, recorder)
    head = b"POST /x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding:" + value + b"\r\n\r\n"
    response = await send(lb.port, head + b"3\r\nabc\r\n0\r\n\r\n")
    assert response.status == 200
    expected = forwarded(b"POST /x", [(b"Host", b"x")], chunked=True, body=b"3\r\nabc\r\n0\r\n\r\n")
    assert recorder.received == expected


@pytest.mark.parametrize("spelling", [b"010", b"0000000010"])
async def test_backend_sees_the_content_length_usher_parsed(balancer, recorder, spelling):
    lb = await recorded_balancer(balancer, recorder)
    head = b"POST /x HTTP/1.1\r\nHost: x\r\ncontent-length: " + spelling + b"\r\n\r\n"
    response = await send(lb.port, head + b"0123456789")
    assert response.status == 200
    expected = forwarded(
        b"POST /x", [(b"Host", b"x"), (b"Content-Length", b"10")], body=b"0123456789"
    )
    assert recorder.received == expected


@pytest.mark.parametrize("codings", [b"gzip, chunked", b"identity, chunked", b"gzip,chunked"])
async def test_other_request_transfer_codings_are_501_and_reach_no_backend(
    balancer, recorder, codings
):
    lb = await recorded_balancer(balancer, recorder)
    head = b"POST /x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: " + codings + b"\r\n\r\n"
    (response,), closed = await raw_exchange(lb.port, head + b"0\r\n\r\n")
    assert response.status == 501 and closed
    assert recorder.received == b""


# --- Item 9: request trailers -------------------------------------------------------------------

# (A Content-Length trailer is refused with 400 by llhttp itself.)
REFUSED_TRAILERS = (
    b"X-Forwarded-For: 6.6.6.6\r\nX-Forwarded-Host: evil\r\nX-Forwarded-Proto: https\r\n"
    b"X-Forwarded-Prefix: /admin\r\nX-Real-IP: 6.6.6.6\r\nX_Real_IP: 6.6.6.6\r\n"
    b"Forwarded: for=6.6.6.6\r\nVia: 1.1 evil\r\nHost: internal\r\n"
    b"TE: trailers\r\nTrailer: X-A\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n"
    b"Keep-Alive: 1\r\nUpgrade: h2c\r\nProxy-Authorization: x\r\nAuthorization: Basic eA==\r\n"
)


async def test_request_trailers_usher_controls_are_dropped(balancer, recorder):
    lb = await recorded_balancer(
        balancer,
        recorder,
        request_id=True,
        routes=[{"pool": "web", "request_headers": {"set": {"X-Tenant": "blue"}}}],
    )
    trailers = b"X-Checksum: abc\r\n" + REFUSED_TRAILERS + b"X-Request-ID: forged\r\n"
    trailers += b"X-Tenant: red\r\nx_tenant: red\r\nX-Other: 2\r\n"
    response = await send(lb.port, CHUNKED_HEAD + b"0\r\n" + trailers + b"\r\n")
    assert response.status == 200
    received = recorder.received
    head, _, body = received.partition(b"\r\n\r\n")
    assert b"\r\nX-Tenant: blue\r\n" in head + b"\r\n" and b"forged" not in head
    assert body == b"0\r\nX-Checksum: abc\r\nX-Other: 2\r\n\r\n"


async def test_request_trailer_cannot_set_the_client_cert_header(
    balancer, recorder, tmp_path: Path
):
    ca, clients = trustme.CA(), trustme.CA()
    lb = await balancer(https_config(tmp_path, ca, clients, recorder.port, "optional"))
    alice = clients.issue_cert("alice@example.com", common_name="alice")
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", lb.port, ssl=client_context(ca, alice), server_hostname="localhost"
    )
    trailers = b"X-Client-Cert-Subject: CN=root\r\nX_Client_Cert_Subject: CN=root\r\nX-A: 1\r\n"
    writer.write(CHUNKED_HEAD + b"0\r\n" + trailers + b"\r\n")
    response = await asyncio.wait_for(read_response(reader), 10)
    writer.close()
    assert response.status == 200
    head, _, body = recorder.received.partition(b"\r\n\r\n")
    assert b"X-Client-Cert-Subject: CN=alice" in head
    assert body == b"0\r\nX-A: 1\r\n\r\n"


# --- Item 13: optional whitespace around chunked ------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [b"\tchunked\t", b"chunked\t", b"chunked \t", b"\t chunked\t\t", b"CHUNKED\t", b" chunked,"],
)
async def test_tabs_around_chunked_are_accepted(balancer, recorder, value):
    await assert_forwarded_as_plain_chunked(balancer, recorder, value)


async def test_tab_after_chunked_then_a_pipelined_request_in_pieces(balancer, recorder):
    # The head in small pieces, then the body and the next request: the body comes in a
    # later read than the head (chunk sizes are usher's own, so the body is one piece).
    lb = await recorded_balancer(balancer, recorder)
    head = b"POST /x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\t\r\n\r\n"
    pieces = [head[i : i + 7] for i in range(0, len(head), 7)]
    pieces.append(b"3\r\nabc\r\n0\r\n\r\nGET /y HTTP/1.1\r\nHost: x\r\n\r\n")
    reader, writer = await asyncio.open_connection("127.0.0.1", lb.port)
    try:
        for piece in pieces:
            writer.write(piece)
            await writer.drain()
            await asyncio.sleep(0.005)  # separate reads, most of the time
        statuses = [(await asyncio.wait_for(read_response(reader), 10)).status for _ in range(2)]
    finally:
        writer.close()
    assert statuses == [200, 200]
    first = forwarded(b"POST /x", [(b"Host", b"x")], chunked=True, body=b"3\r\nabc\r\n0\r\n\r\n")
    assert recorder.received == first + forwarded(b"GET /y", [(b"Host", b"x")])


# --- Item 14: the response head limit -----------------------------------------------------------


def response_head_of(size: int) -> bytes:
    """A response head of `size` bytes (status line, headers, blank line)."""
    start = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n"
    filler = size - len(start) - len(b"X-Fill: \r\n\r\n")
    return start + b"X-Fill: " + b"f" * filler + b"\r\n\r\n"


@pytest.mark.parametrize("piece", [1 << 20, 4096])
@pytest.mark.parametrize(
    ("size", "status"), [(MAX_RESPONSE_HEAD, 200), (MAX_RESPONSE_HEAD + 1, 502)]
)
async def test_response_head_limit_is_64_kib(raw_backend, balancer, piece, size, status):
    assert MAX_RESPONSE_HEAD == 64 * 1024  # what docs/http-proxy.md says
    response = response_head_of(size) + b"ok"

    async def answer(reader, writer):
        await read_request_head(reader)
        for i in range(0, len(response), piece):
            writer.write(response[i : i + piece])
            await writer.drain()
        await reader.read()

    port = await raw_backend(answer)
    lb = await balancer(simple_config({"web": pool_of(f"127.0.0.1:{port}")}))
    got = await send(lb.port, b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert got.status == status


# --- Item 17: response transfer codings reach the client ----------------------------------------


async def backend_answering(raw_backend: Any, response: bytes, *, close: bool) -> int:
    async def answer(reader, writer):
        await read_request_head(reader)
        writer.write(response)
        await writer.drain()
        if close:
            writer.close()
        else:
            await reader.read()

    return int(await raw_backend(answer))


async def test_chunked_then_gzip_is_relayed_close_delimited(raw_backend, balancer):
    body = b"\x1f\x8b raw gzip of a chunked body"
    head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip\r\n\r\n"
    port = await backend_answering(raw_backend, head + body, close=True)
    lb = await balancer(simple_config({"web": pool_of(f"127.0.0.1:{port}")}))
    reader, writer = await asyncio.open_connection("127.0.0.1", lb.port)
    writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    data = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    got_head, _, got_body = data.partition(b"\r\n\r\n")
    assert b"\r\nTransfer-Encoding: chunked, gzip\r\n" in got_head + b"\r\n"
    assert b"\r\nConnection: close" in got_head
    assert got_body == body  # as the backend sent it, ended by the close


@pytest.mark.parametrize(
    ("sent", "relayed"),
    [(b"gzip, chunked", b"gzip, chunked"), (b"GZIP ,Chunked", b"gzip, chunked")],
)
async def test_codings_before_chunked_are_relayed_rechunked(raw_backend, balancer, sent, relayed):
    head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: " + sent + b"\r\n\r\n"
    port = await backend_answering(raw_backend, head + b"2\r\nhi\r\n0\r\n\r\n", close=False)
    lb = await balancer(simple_config({"web": pool_of(f"127.0.0.1:{port}")}))
    reader, writer = await asyncio.open_connection("127.0.0.1", lb.port)
    writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    got = await asyncio.wait_for(read_response(reader), 10)
    writer.close()
    assert got.header("transfer-encoding") == relayed.decode()
    assert got.header("connection") is None  # kept alive
    assert got.body == b"hi"


async def test_gzip_alone_is_relayed_with_chunked_added(raw_backend, balancer):
    head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n"
    port = await backend_answering(raw_backend, head + b"\x1f\x8bzz", close=True)
    lb = await balancer(simple_config({"web": pool_of(f"127.0.0.1:{port}")}))
    reader, writer = await asyncio.open_connection("127.0.0.1", lb.port)
    writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    got = await asyncio.wait_for(read_response(reader), 10)
    writer.close()
    assert got.header("transfer-encoding") == "gzip, chunked"
    assert got.body == b"\x1f\x8bzz"


async def test_transfer_coding_for_an_http_1_0_client_is_502(raw_backend, balancer):
    head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"
    port = await backend_answering(raw_backend, head + b"2\r\nhi\r\n0\r\n\r\n", close=False)
    lb = await balancer(simple_config({"web": pool_of(f"127.0.0.1:{port}")}))
    got = await send(lb.port, b"GET / HTTP/1.0\r\n\r\n")
    assert got.status == 502
    assert not_ejected(lb)
