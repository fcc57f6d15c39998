"""Bad input from clients, through real sockets: the right status, the connection closed,
nothing reaching the backend, and the balancer still serving others afterwards."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from tests.conftest import pool_of, raw_exchange, simple_config

CASES = [
    ("garbage", b"HELLO\r\n\r\n", 400),
    (
        "cl_and_te",
        b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        400,
    ),
    (
        "te_and_cl",
        b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n0\r\n\r\n",
        400,
    ),
    (
        "two_content_lengths",
        b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nContent-Length: 5\r\n\r\nabcde",
        400,
    ),
    (
        "negative_content_length",
        b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n",
        400,
    ),
    (
        "obfuscated_te",
        b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: xchunked\r\n\r\n",
        400,
    ),
    (
        "te_space_before_colon",
        b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding : chunked\r\n\r\n",
        400,
    ),
    ("bare_lf", b"GET / HTTP/1.1\nHost: x\n\n", 400),
    ("nul_in_header", b"GET / HTTP/1.1\r\nHost: x\r\nX-A: a\x00b\r\n\r\n", 400),
    ("obs_fold", b"GET / HTTP/1.1\r\nHost: x\r\nX-A: a\r\n b\r\n\r\n", 400),
    ("no_host", b"GET / HTTP/1.1\r\n\r\n", 400),
    ("two_hosts", b"GET / HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n", 400),
    ("http_2_0", b"GET / HTTP/2.0\r\nHost: x\r\n\r\n", 505),
    ("connect", b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n", 405),
    ("long_uri", b"GET /" + b"a" * 2000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414),
    (
        "too_many_headers",
        b"GET / HTTP/1.1\r\nHost: x\r\n"
        + b"".join(b"X-%d: y\r\n" % i for i in range(30))
        + b"\r\n",
        431,
    ),
    (
        "header_block_too_big",
        b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"b" * 5000 + b"\r\n\r\n",
        431,
    ),
    ("body_over_limit", b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n\r\n", 413),
    (
        "chunked_body_over_limit",
        b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        + b"800\r\n"
        + b"z" * 2048
        + b"\r\n"
        + b"800\r\n"
        + b"z" * 2048
        + b"\r\n0\r\n\r\n",
        413,
    ),
]

LIMITS = {
    "max_request_line": "1KiB",
    "max_headers": 20,
    "max_header_size": "4KiB",
    "max_body_size": "3KiB",
}


@pytest.mark.parametrize(("data", "status"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
async def test_bad_request_is_refused_and_closed(backends, balancer, data, status):
    (server,) = await backends(1)
    lb = await balancer(simple_config({"web": pool_of(server)}, limits=LIMITS))
    (response,), closed = await raw_exchange(lb.port, data)
    assert response.status == status
    assert response.header("connection") == "close"
    assert response.body.startswith(str(status).encode())
    assert closed
    # The balancer keeps serving everyone else.
    async with httpx.AsyncClient() as client:
        assert (await client.get(lb.url("/"))).status_code == 200


async def test_smuggled_request_never_reaches_the_backend(backends, balancer):
    (server,) = await backends(1)
    lb = await balancer(simple_config({"web": pool_of(server)}))
    smuggle = (
        b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 44\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"0\r\n\r\nGET /admin HTTP/1.1\r\nHost: x\r\n\r\n"
    )
    (response,), closed = await raw_exchange(lb.port, smuggle)
    assert response.status == 400 and closed
    assert server.requests_total == 0


async def test_slow_request_head_gets_408(backends, balancer):
    (server,) = await backends(1)
    lb = await balancer(simple_config({"web": pool_of(server)}, timeouts={"header": "300ms"}))
    reader, writer = await asyncio.open_connection("127.0.0.1", lb.port)
    writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n")  # never finished
    data = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    assert data.startswith(b"HTTP/1.1 408 ")


async def test_quiet_keep_alive_connection_is_closed_silently(backends, balancer):
    (server,) = await backends(1)
    lb = await balancer(simple_config({"web": pool_of(server)}, timeouts={"idle": "300ms"}))
    reader, writer = await asyncio.open_connection("127.0.0.1", lb.port)
    writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    first = await asyncio.wait_for(reader.readuntil(b"A\n"), 5)
    rest = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    assert first.startswith(b"HTTP/1.1 200 ")
    assert rest == b""  # closed with no 408: there was no request to answer


async def test_slow_request_body_gets_408(raw_backend, balancer):
    async def patient(reader, writer):
        await reader.read()  # reads whatever comes, never answers

    port = await raw_backend(patient)
    lb = await balancer(
        simple_config({"web": pool_of(f"127.0.0.1:{port}")}, timeouts={"body": "300ms"})
    )
    reader, writer = await asyncio.open_connection("127.0.0.1", lb.port)
    writer.write(b"PUT /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc")
    data = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    assert data.startswith(b"HTTP/1.1 408 ")


async def test_good_request_ahead_of_a_bad_one_is_answered_first(backends, balancer):
    (server,) = await backends(1)
    lb = await balancer(simple_config({"web": pool_of(server)}))
    data = (
        b"GET /status/201 HTTP/1.1\r\nHost: x\r\n\r\nGET / HTTP/1.1\r\nHost: x\r\nX-A: \x01\r\n\r\n"
    )
    (first, second), closed = await raw_exchange(lb.port, data, responses=2)
    assert first.status == 201
    assert second.status == 400
    assert closed
