"""A request that usher refuses sends nothing to a backend (issue 12, item 12): when its bad
bytes come in the same read as its head, the refusal is decided before the head is written,
also on a kept-alive backend connection that is ready at once."""

from __future__ import annotations

import asyncio

import pytest

from tests.conftest import pool_of, read_response, simple_config


def recording_backend(received: list[bytearray]):
    """Answers each bodiless request `200 ok` and keeps every byte each connection got."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen = bytearray()
        received.append(seen)
        pending = b""
        while data := await reader.read(65536):
            seen += data
            pending += data
            while b"\r\n\r\n" in pending:
                _, pending = pending.split(b"\r\n\r\n", 1)
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                await writer.drain()

    return serve


BAD = b"POST /refused HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"


@pytest.mark.parametrize(
    ("body", "status"),
    [
        (b"zz\r\nhello\r\n0\r\n\r\n", 400),  # a chunk size that is not hex
        (b"5\r\nhello\r\n0\r\nBad Trailer\r\n\r\n", 400),  # a trailer without a colon
        (b"5\r\nhello\r\n9\r\nover the \r\n0\r\n\r\n", 413),  # over max_body_size (10)
    ],
    ids=["bad-chunk", "bad-trailer", "too-large"],
)
async def test_a_request_refused_in_its_first_read_never_reaches_a_reused_connection(
    raw_backend, balancer, body, status
):
    received: list[bytearray] = []
    port = await raw_backend(recording_backend(received))
    config = simple_config({"web": pool_of(f"127.0.0.1:{port}")}, limits={"max_body_size": 10})
    lb = await balancer(config)
    first = b"GET /first HTTP/1.1\r\nHost: x\r\n\r\n"
    last = b"GET /last HTTP/1.1\r\nHost: x\r\n\r\n"

    reader, writer = await asyncio.open_connection("127.0.0.1", lb.port)
    writer.write(first)
    assert (await asyncio.wait_for(read_response(reader), 5)).status == 200
    writer.write(BAD + body)  # the backend connection is parked, ready for this one
    refused = await asyncio.wait_for(read_response(reader), 5)
    assert refused.status == status
    assert await asyncio.wait_for(reader.read(), 5) == b""  # and the connection closed
    writer.close()

    reader, writer = await asyncio.open_connection("127.0.0.1", lb.port)
    writer.write(last)
    assert (await asyncio.wait_for(read_response(reader), 5)).status == 200
    writer.close()

    # One backend connection, which carried the two good requests and not a byte of the bad.
    assert len(received) == 1
    forwarded = bytes(received[0])
    assert forwarded.count(b"HTTP/1.1\r\n") == 2, forwarded
    assert forwarded.startswith(b"GET /first HTTP/1.1\r\n")
    assert b"GET /last HTTP/1.1\r\n" in forwarded
    assert b"refused" not in forwarded and b"hello" not in forwarded
    assert lb.pools["web"].backends[0].failures_total == 0
