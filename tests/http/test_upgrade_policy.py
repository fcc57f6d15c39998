"""h2c upgrades are not forwarded unless the route allows them (issue 12, item 3): by default
the request reaches the backend as plain HTTP/1.1, body included; `upgrades` opts in."""

from __future__ import annotations

import asyncio
from textwrap import dedent

import pytest
from websockets.asyncio.client import connect as ws_connect

from tests.conftest import pool_of, read_request_head, read_response, simple_config
from usher.config import parse_config
from usher.errors import ConfigError

H2C_FIELDS = (
    b"Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n"
    b"HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n"
)


def h2c_backend(heads: list[bytes], bodies: list[bytes]):
    """A backend that switches to h2c whenever it is asked to (as hypercorn does), and
    otherwise answers in HTTP/1.1 with what it read."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            head = await read_request_head(reader)
            heads.append(head)
            lower = head.lower()
            if b"upgrade: h2c" in lower:
                writer.write(
                    b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n"
                )
                await writer.drain()
                bodies.append(await reader.read())  # the tunnel's bytes, to the end
                return
            length = 0
            for line in lower.split(b"\r\n"):
                if line.startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            body = await reader.readexactly(length)
            bodies.append(body)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % (len(body) + 6))
            writer.write(b"plain:" + body)
            await writer.drain()

    return serve


async def exchange(port: int, data: bytes) -> tuple[int, bytes, bytes]:
    """Send `data`, read one answer, then what else comes until the connection closes."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    response = await asyncio.wait_for(read_response(reader), 5)
    writer.write(b"GET /after HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    rest = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    return response.status, response.body, rest


async def test_h2c_upgrade_is_stripped_and_forwarded_as_plain_http(raw_backend, balancer):
    heads: list[bytes] = []
    bodies: list[bytes] = []
    port = await raw_backend(h2c_backend(heads, bodies))
    lb = await balancer(simple_config({"web": pool_of(f"127.0.0.1:{port}")}))
    status, body, rest = await exchange(
        lb.port, b"GET / HTTP/1.1\r\nHost: x\r\n" + H2C_FIELDS + b"\r\n"
    )
    assert (status, body) == (200, b"plain:")
    for field in (b"upgrade", b"http2-settings", b"connection"):
        assert field + b":" not in heads[0].lower()
    # Read as HTTP/1.1: the connection carries the next request, routed like any other.
    assert rest.startswith(b"HTTP/1.1 200 ") and heads[1].startswith(b"GET /after ")


async def test_h2c_upgrade_with_a_body_forwards_the_body(raw_backend, balancer):
    """curl --http2 -d: the body belongs to the request, not to a tunnel that never opens."""
    heads: list[bytes] = []
    bodies: list[bytes] = []
    port = await raw_backend(h2c_backend(heads, bodies))
    lb = await balancer(simple_config({"web": pool_of(f"127.0.0.1:{port}")}))
    request = b"POST /form HTTP/1.1\r\nHost: x\r\nContent-Length: 11\r\n" + H2C_FIELDS + b"\r\n"
    status, body, _ = await exchange(lb.port, request + b"hello=world")
    assert (status, body) == (200, b"plain:hello=world")
    assert bodies[0] == b"hello=world"
    assert b"upgrade" not in heads[0].lower()


async def test_h2c_upgrade_is_tunnelled_when_the_route_allows_it(raw_backend, balancer):
    heads: list[bytes] = []
    bodies: list[bytes] = []
    port = await raw_backend(h2c_backend(heads, bodies))
    routes = [{"pool": "web", "upgrades": ["*", "h2c"]}]
    lb = await balancer(simple_config({"web": pool_of(f"127.0.0.1:{port}")}, routes=routes))
    reader, writer = await asyncio.open_connection("127.0.0.1", lb.port)
    writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n" + H2C_FIELDS + b"\r\n")
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert head.startswith(b"HTTP/1.1 101 ")
    writer.write(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
    writer.write_eof()
    await asyncio.wait_for(reader.read(), 5)
    writer.close()
    lower = heads[0].lower()
    assert b"upgrade: h2c\r\n" in lower
    assert b"connection: upgrade, http2-settings\r\n" in lower
    assert b"http2-settings: aamaaabkaaraaaaaaaiaaaaa\r\n" in lower
    assert bodies == [b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"]


async def test_only_the_allowed_protocols_of_an_upgrade_are_forwarded(raw_backend, balancer):
    heads: list[bytes] = []
    port = await raw_backend(h2c_backend(heads, []))
    lb = await balancer(simple_config({"web": pool_of(f"127.0.0.1:{port}")}))
    fields = b"Connection: upgrade\r\nUpgrade: h2c, foo/2\r\n"
    # The backend answers foo's upgrade in HTTP/1.1 (as servers may), with its 200.
    status, _, _ = await exchange(lb.port, b"GET / HTTP/1.1\r\nHost: x\r\n" + fields + b"\r\n")
    assert status == 200
    assert b"\r\nUpgrade: foo/2\r\n" in heads[0]


async def test_websocket_still_upgrades_by_default_but_not_where_the_route_says_none(
    backends, raw_backend, balancer
):
    (server,) = await backends(1)
    heads: list[bytes] = []
    port = await raw_backend(h2c_backend(heads, []))
    routes = [
        {"match": {"path_prefix": "/plain"}, "pool": "raw", "upgrades": []},
        {"pool": "web"},
    ]
    pools = {"web": pool_of(server), "raw": pool_of(f"127.0.0.1:{port}")}
    lb = await balancer(simple_config(pools, routes=routes))
    async with ws_connect(f"ws://127.0.0.1:{lb.port}/ws") as ws:
        await ws.send("hi")
        assert await ws.recv() == "hi"
    fields = b"Connection: Upgrade\r\nUpgrade: websocket\r\n"
    status, _, _ = await exchange(lb.port, b"GET /plain HTTP/1.1\r\nHost: x\r\n" + fields + b"\r\n")
    assert status == 200
    assert b"upgrade" not in heads[0].lower()


@pytest.mark.parametrize("value", ['"web socket"', '"h2c\\r\\n"', '""', "[1]"])
def test_upgrades_must_be_protocol_names(value: str) -> None:
    text = f"""
        listeners:
          - name: web
            bind: 127.0.0.1:0
            routes: [{{pool: web, upgrades: [{value}]}}]
        pools: {{web: {{backends: [{{address: "127.0.0.1:9001"}}]}}}}
    """
    with pytest.raises(ConfigError) as caught:
        parse_config(dedent(text))
    (issue,) = caught.value.issues
    assert issue.path.endswith("routes[0].upgrades[0]")
    assert "upgrade protocol" in issue.message or "string" in issue.message


def test_a_declined_upgrade_is_read_on_as_http_1_1() -> None:
    """Sans-IO: the reader's filter declines h2c; the body, then a pipelined WebSocket
    upgrade (kept), come out as events of their own."""
    from usher.http.codec import Data, EndOfMessage, Request, RequestReader, Upgraded
    from usher.http.upgrades import DEFAULT_POLICY

    def policy(request: Request) -> bytes | None:
        assert request.upgrade is not None
        return DEFAULT_POLICY.forwarded(request.upgrade)

    reader = RequestReader(upgrade_filter=policy)
    events = reader.feed(
        b"POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n" + H2C_FIELDS + b"\r\n"
        b"5\r\nhello\r\n0\r\n\r\n"
        b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\nframe"
    )
    kinds = [type(event) for event in events]
    assert kinds == [Request, Data, EndOfMessage, Request, EndOfMessage, Upgraded]
    first, data, _, second, _, upgraded = events
    assert isinstance(first, Request) and first.upgrade is None
    assert isinstance(data, Data) and data.data == b"hello"
    assert isinstance(second, Request) and second.upgrade == b"websocket"
    assert isinstance(upgraded, Upgraded) and upgraded.tail == b"frame"
    assert reader.upgraded
