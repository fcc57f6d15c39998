"""Answers from a backend that usher must not relay: a status outside 100-599 and a 101
nobody asked for become a 502, and the backend connection is closed (issue 12, items 7, 10)."""

from __future__ import annotations

import asyncio

import pytest

from tests.conftest import pool_of, raw_exchange, read_request_head, simple_config


@pytest.mark.parametrize("status", [b"099", b"000", b"600", b"999", b"1000"])
async def test_a_status_outside_100_to_599_is_answered_502(raw_backend, balancer, status):
    async def odd_status(reader, writer):
        await read_request_head(reader)
        writer.write(b"HTTP/1.1 " + status + b" Odd\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()
        await reader.read()

    port = await raw_backend(odd_status)
    lb = await balancer(simple_config({"web": pool_of(f"127.0.0.1:{port}")}))
    request = b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    (response,), closed = await raw_exchange(lb.port, request)
    assert response.status == 502 and closed
    assert b"HTTP/1.1 " + status not in response.body


def switching_backend(upgrade: bytes | None, seen: list[bytes]):
    """A backend that answers every request 101 (with `upgrade` as its Upgrade header), then
    sends bytes of its own and records what reaches it afterwards."""

    async def switch(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request_head(reader)
        fields = b"Connection: Upgrade\r\nUpgrade: %s\r\n" % upgrade if upgrade else b""
        writer.write(b"HTTP/1.1 101 Switching Protocols\r\n" + fields + b"\r\n")
        await writer.drain()
        await asyncio.sleep(0.1)
        writer.write(b"SMUGGLED FROM THE BACKEND")
        await writer.drain()
        seen.append(await reader.read())  # until usher closes the connection

    return switch


@pytest.mark.parametrize(
    ("request_fields", "answer"),
    [
        (b"", b"websocket"),  # no upgrade asked for
        (b"", None),
        (b"Connection: Upgrade\r\nUpgrade: websocket\r\n", b"h2c"),  # another protocol
        (b"Connection: Upgrade\r\nUpgrade: websocket\r\n", None),  # a 101 naming none
    ],
    ids=["unasked", "unasked-bare", "other-protocol", "no-upgrade-header"],
)
async def test_a_101_nobody_asked_for_is_a_502_and_never_tunnels(
    raw_backend, balancer, request_fields, answer
):
    seen: list[bytes] = []
    port = await raw_backend(switching_backend(answer, seen))
    lb = await balancer(simple_config({"web": pool_of(f"127.0.0.1:{port}")}))
    reader, writer = await asyncio.open_connection("127.0.0.1", lb.port)
    writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n" + request_fields + b"\r\n")
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert head.startswith(b"HTTP/1.1 502 "), head
    # Raw bytes in a tunnel; here a request of its own (routed, answered) or nothing at all.
    writer.write(b"GET /admin HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    rest = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    # An upgrade request's connection closes after its answer; after a plain one, the next
    # request goes its own way (to the same backend: a 502 again).
    connections = 1 if request_fields else 2
    assert rest.count(b"HTTP/1.1 ") == connections - 1
    assert rest.count(b"HTTP/1.1 502 ") == connections - 1
    for _ in range(100):
        if len(seen) == connections:
            break
        await asyncio.sleep(0.05)
    # Each backend connection was closed by usher, and nothing more came to it.
    assert seen == [b""] * connections
    assert b"SMUGGLED" not in head + rest
    assert lb.log.getvalue().count(" 101 ") == 0
