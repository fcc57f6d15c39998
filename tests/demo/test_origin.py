"""The demo/test backend, through real sockets on 127.0.0.1."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import connect as ws_connect

from usher.demo.origin import BackendOptions, BackendServer, serve_backend_forever, start_backend

MiB = 1024 * 1024
Make = Callable[..., Awaitable[BackendServer]]


@pytest.fixture
async def make_backend() -> AsyncIterator[Make]:
    servers: list[BackendServer] = []

    async def make(**options: Any) -> BackendServer:
        server = await start_backend(options=BackendOptions(**options))
        servers.append(server)
        return server

    yield make
    for server in servers:
        await server.close()


@pytest.fixture
async def backend(make_backend: Make) -> BackendServer:
    return await make_backend(name="A")


@pytest.fixture
async def client(backend: BackendServer) -> AsyncIterator[httpx.AsyncClient]:
    base = f"http://127.0.0.1:{backend.port}"
    async with httpx.AsyncClient(base_url=base, trust_env=False) as c:
        yield c


def pattern(n: int) -> bytes:
    return (bytes(range(256)) * (n // 256 + 1))[:n]


def pattern_digest(n: int) -> str:
    digest = hashlib.sha256()
    block = pattern(MiB)
    while n:
        take = min(n, MiB)
        digest.update(block[:take])
        n -= take
    return digest.hexdigest()


async def open_raw(server: BackendServer) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", server.port)


async def read_response(
    reader: asyncio.StreamReader, *, head_only: bool = False
) -> tuple[int, dict[str, str], bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        if line:
            name, value = line.split(":", 1)
            headers[name.lower()] = value.strip()
    if head_only or status in (101, 204, 304) or 100 <= status < 200:
        return status, headers, b""
    if "content-length" in headers:
        return status, headers, await reader.readexactly(int(headers["content-length"]))
    if headers.get("transfer-encoding") == "chunked":
        body = bytearray()
        while size := int((await reader.readuntil(b"\r\n")).strip(), 16):
            body += await reader.readexactly(size)
            assert await reader.readexactly(2) == b"\r\n"
        assert await reader.readexactly(2) == b"\r\n"
        return status, headers, bytes(body)
    return status, headers, await reader.read()  # delimited by the close


async def close_raw(writer: asyncio.StreamWriter) -> None:
    writer.close()
    await writer.wait_closed()


# -- plain endpoints


async def test_root_names_the_backend(client: httpx.AsyncClient) -> None:
    r = await client.get("/")
    assert r.status_code == 200
    assert r.text == "A\n"
    assert r.headers["x-backend"] == "A"
    assert r.headers["content-type"].startswith("text/plain")


async def test_unknown_path_is_404_and_still_names_the_backend(client: httpx.AsyncClient) -> None:
    r = await client.get("/nope")
    assert r.status_code == 404
    assert r.headers["x-backend"] == "A"


async def test_health_can_be_flipped(client: httpx.AsyncClient, backend: BackendServer) -> None:
    r = await client.get("/health")
    assert (r.status_code, r.text) == (200, "ok\n")
    assert (await client.post("/health/fail")).status_code == 200
    assert backend.healthy is False
    r = await client.get("/health")
    assert (r.status_code, r.text) == (503, "unhealthy\n")
    assert (await client.get("/health/ok")).status_code == 405  # a GET must not change state
    assert (await client.post("/health/ok")).status_code == 200
    assert (await client.get("/health")).status_code == 200
    backend.healthy = False
    assert (await client.get("/health")).status_code == 503


async def test_headers_are_echoed_in_order(client: httpx.AsyncClient) -> None:
    r = await client.get("/headers?x=1", headers=[("X-Zeta", "1"), ("X-Alpha", "é".encode())])
    assert r.headers["content-type"] == "application/json"
    doc = r.json()
    assert doc["method"] == "GET"
    assert doc["path"] == "/headers?x=1"
    names = [name.lower() for name, _ in doc["headers"]]
    assert names.index("x-zeta") < names.index("x-alpha")
    assert ["X-Alpha", "é".encode().decode("latin-1")] in doc["headers"]


async def test_status_endpoint(client: httpx.AsyncClient) -> None:
    r = await client.get("/status/418")
    assert r.status_code == 418
    assert r.text == "418 I'm a Teapot\n" or r.text.startswith("418 ")
    r = await client.get("/status/204")
    assert (r.status_code, r.content) == (204, b"")
    assert "content-length" not in r.headers
    assert (await client.get("/status/503")).status_code == 503
    assert (await client.get("/status/999")).status_code == 400
    assert (await client.get("/status/abc")).status_code == 400


async def test_sleep_waits(client: httpx.AsyncClient) -> None:
    start = time.monotonic()
    r = await client.get("/sleep/0.05")
    assert r.status_code == 200
    assert time.monotonic() - start >= 0.05
    assert (await client.get("/sleep/-1")).status_code == 400
    assert (await client.get("/sleep/nan")).status_code == 400


async def test_conn_reports_counters_and_peer(
    client: httpx.AsyncClient, backend: BackendServer
) -> None:
    await client.get("/")
    doc = (await client.get("/conn")).json()
    assert doc["connections_total"] == 1
    assert doc["requests_total"] == 2
    host, port = doc["peer"].rsplit(":", 1)
    assert host == "127.0.0.1" and int(port) > 0
    assert backend.requests_total == 2


async def test_head_sends_headers_without_body(
    client: httpx.AsyncClient, backend: BackendServer
) -> None:
    r = await client.head("/")
    assert (r.status_code, r.headers["content-length"], r.content) == (200, "2", b"")
    r = await client.head("/bytes/1000")
    assert (r.headers["content-length"], r.content) == ("1000", b"")
    # Had a body been sent, it would have been read as the next response.
    assert (await client.get("/")).text == "A\n"
    assert backend.connections_total == 1


async def test_head_on_raw_socket_has_no_body(backend: BackendServer) -> None:
    reader, writer = await open_raw(backend)
    writer.write(b"HEAD /bytes/5 HTTP/1.1\r\nHost: x\r\n\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n")
    status, headers, _ = await read_response(reader, head_only=True)
    assert (status, headers["content-length"]) == (200, "5")
    assert (await read_response(reader))[2] == b"A\n"
    await close_raw(writer)


# -- connections


async def test_keep_alive_reuses_the_connection(
    client: httpx.AsyncClient, backend: BackendServer
) -> None:
    assert (await client.get("/")).status_code == 200
    assert (await client.get("/headers")).status_code == 200
    assert backend.connections_total == 1
    assert backend.requests_total == 2


async def test_pipelined_requests_are_answered_in_order(backend: BackendServer) -> None:
    reader, writer = await open_raw(backend)
    # The first answer is delayed, so a server answering out of order would be caught.
    writer.write(b"GET /sleep/0.05 HTTP/1.1\r\nHost: x\r\n\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert (await read_response(reader))[2] == b"slept\n"
    assert (await read_response(reader))[2] == b"A\n"
    writer.write(b"".join(b"GET /status/%d HTTP/1.1\r\n\r\n" % (200 + i) for i in range(50)))
    statuses = [(await read_response(reader))[0] for _ in range(50)]
    assert statuses == [200 + i for i in range(50)]
    assert backend.connections_total == 1
    await close_raw(writer)


async def test_pipelined_bodies_under_latency(make_backend: Make) -> None:
    server = await make_backend(latency=0.01)
    reader, writer = await open_raw(server)
    writer.write(
        b"POST /echo HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc"
        b"GET / HTTP/1.1\r\n\r\n"
        b"PUT /echo HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nde\r\n0\r\n\r\n"
        b"POST /status/201 HTTP/1.1\r\nContent-Length: 2\r\n\r\nxy"
    )
    answers = [await read_response(reader) for _ in range(4)]
    assert [(status, body) for status, _, body in answers] == [
        (200, b"abc"),
        (200, b"backend\n"),
        (200, b"de"),
        (201, b"201 Created\n"),
    ]
    await close_raw(writer)


async def test_request_split_across_packets(backend: BackendServer) -> None:
    reader, writer = await open_raw(backend)
    for byte in b"POST /echo?x=1 HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nok":
        writer.write(bytes([byte]))
        await writer.drain()
        await asyncio.sleep(0)
    assert (await read_response(reader))[2] == b"ok"
    await close_raw(writer)


async def test_http10_closes_after_the_response(backend: BackendServer) -> None:
    reader, writer = await open_raw(backend)
    writer.write(b"GET / HTTP/1.0\r\n\r\n")
    status, headers, body = await read_response(reader)
    assert (status, body, headers["connection"]) == (200, b"A\n", "close")
    assert await reader.read() == b""
    await close_raw(writer)


async def test_http10_keep_alive_is_honoured(backend: BackendServer) -> None:
    reader, writer = await open_raw(backend)
    for _ in range(2):
        writer.write(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        status, headers, body = await read_response(reader)
        assert (status, body, headers["connection"]) == (200, b"A\n", "keep-alive")
    assert backend.connections_total == 1
    await close_raw(writer)


async def test_malformed_request_gets_400_and_close(backend: BackendServer) -> None:
    reader, writer = await open_raw(backend)
    writer.write(b"GET / HTTP/1.1\r\n\r\nNOT HTTP AT ALL\r\n\r\n")
    assert (await read_response(reader))[0] == 200  # what came before is still answered
    status, headers, _ = await read_response(reader)
    assert (status, headers["connection"]) == (400, "close")
    assert await reader.read() == b""
    await close_raw(writer)


async def test_close_ends_open_connections(make_backend: Make) -> None:
    server = await make_backend()
    reader, writer = await open_raw(server)
    writer.write(b"GET / HTTP/1.1\r\n\r\n")
    await read_response(reader)
    await server.close()
    assert await reader.read() == b""
    await close_raw(writer)
    with pytest.raises(OSError):
        await asyncio.open_connection("127.0.0.1", server.port)


async def test_serve_backend_forever_runs_until_cancelled() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    task = asyncio.create_task(serve_backend_forever("127.0.0.1", port, BackendOptions(name="F")))
    for _ in range(100):
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            break
        except OSError:
            await asyncio.sleep(0.01)
    writer.write(b"GET / HTTP/1.1\r\n\r\n")
    assert (await read_response(reader))[2] == b"F\n"
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await reader.read() == b""
    await close_raw(writer)


# -- faults


async def test_fail_rate_one_always_fails_but_not_health(make_backend: Make) -> None:
    server = await make_backend(name="B", fail_rate=1.0)
    async with httpx.AsyncClient(base_url=f"http://{server.address}", trust_env=False) as c:
        for _ in range(3):
            r = await c.get("/")
            assert (r.status_code, r.text, r.headers["x-backend"]) == (
                500,
                "injected failure\n",
                "B",
            )
        assert (await c.get("/health")).status_code == 200


async def test_fail_rate_is_reproducible_with_a_seed(make_backend: Make) -> None:
    runs = []
    for _ in range(2):
        server = await make_backend(fail_rate=0.5, seed=7)
        async with httpx.AsyncClient(base_url=f"http://{server.address}", trust_env=False) as c:
            runs.append([(await c.get("/")).status_code for _ in range(20)])
    assert runs[0] == runs[1]
    assert set(runs[0]) == {200, 500}


async def test_latency_delays_responses(make_backend: Make) -> None:
    server = await make_backend(latency=0.05)
    async with httpx.AsyncClient(base_url=f"http://{server.address}", trust_env=False) as c:
        start = time.monotonic()
        assert (await c.get("/")).status_code == 200
        assert time.monotonic() - start >= 0.05
        assert (await c.get("/health")).status_code == 200


def test_options_are_validated() -> None:
    with pytest.raises(ValueError):
        BackendOptions(fail_rate=1.5)
    with pytest.raises(ValueError):
        BackendOptions(latency=-1)


# -- bodies


async def test_echo_with_content_length(client: httpx.AsyncClient) -> None:
    r = await client.post("/echo", content=b"hello", headers={"Content-Type": "x/y"})
    assert (r.status_code, r.content) == (200, b"hello")
    assert r.headers["content-length"] == "5"
    assert r.headers["content-type"] == "x/y"
    r = await client.post("/echo")
    assert (r.status_code, r.content, r.headers["content-length"]) == (200, b"", "0")


async def test_echo_chunked_is_answered_chunked(client: httpx.AsyncClient) -> None:
    async def parts() -> AsyncIterator[bytes]:
        for part in (b"one ", b"two ", b"three"):
            yield part

    r = await client.post("/echo", content=parts())
    assert r.status_code == 200
    assert r.headers["transfer-encoding"] == "chunked"
    assert r.content == b"one two three"


async def test_echo_with_latency_buffers_then_streams(make_backend: Make) -> None:
    server = await make_backend(latency=0.02)
    body = os.urandom(1 * MiB)
    async with httpx.AsyncClient(base_url=f"http://{server.address}", trust_env=False) as c:
        r = await c.post("/echo", content=body)
    assert r.content == body


async def test_expect_100_continue(backend: BackendServer) -> None:
    reader, writer = await open_raw(backend)
    writer.write(b"POST /echo HTTP/1.1\r\nContent-Length: 3\r\nExpect: 100-continue\r\n\r\n")
    assert await reader.readuntil(b"\r\n\r\n") == b"HTTP/1.1 100 Continue\r\n\r\n"
    writer.write(b"abc")
    assert (await read_response(reader))[2] == b"abc"
    await close_raw(writer)


async def test_http10_gets_no_100_continue(backend: BackendServer) -> None:
    # The codec's writer sends no 1xx to an HTTP/1.0 client (RFC 9110 §15.2).
    reader, writer = await open_raw(backend)
    writer.write(b"POST /echo HTTP/1.0\r\nContent-Length: 3\r\nExpect: 100-continue\r\n\r\n")
    writer.write(b"abc")
    status, headers, body = await read_response(reader)
    assert (status, body, headers["connection"]) == (200, b"abc", "close")
    await close_raw(writer)


async def test_chunked_bytes_to_http10_run_to_the_close(backend: BackendServer) -> None:
    reader, writer = await open_raw(backend)
    writer.write(b"GET /bytes/10?chunked=1 HTTP/1.0\r\n\r\n")
    status, headers, body = await read_response(reader)
    assert "transfer-encoding" not in headers and "content-length" not in headers
    assert (status, body, headers["connection"]) == (200, bytes(range(10)), "close")
    await close_raw(writer)


async def test_no_body_statuses_describe_no_content(backend: BackendServer) -> None:
    reader, writer = await open_raw(backend)
    writer.write(
        b"GET /status/304 HTTP/1.1\r\n\r\nGET /status/204 HTTP/1.1\r\n\r\nGET / HTTP/1.1\r\n\r\n"
    )
    for status in (304, 204):
        answer = await read_response(reader)
        assert answer[0] == status
        assert "content-length" not in answer[1] and "content-type" not in answer[1]
    assert (await read_response(reader))[2] == b"A\n"  # nothing came between
    await close_raw(writer)


@pytest.mark.parametrize("chunked", [False, True])
async def test_large_echo_is_streamed(backend: BackendServer, chunked: bool) -> None:
    # The client must read while it writes: the echo comes back before the upload ends, and
    # a server that buffered the whole body would never answer a client waiting for it.
    size = 64 * MiB
    block = os.urandom(MiB)
    sent = hashlib.sha256()
    reader, writer = await open_raw(backend)
    framing = b"Transfer-Encoding: chunked" if chunked else b"Content-Length: %d" % size
    writer.write(b"POST /echo HTTP/1.1\r\nHost: x\r\n%s\r\n\r\n" % framing)

    async def upload() -> None:
        for _ in range(size // MiB):
            sent.update(block)
            writer.write(b"%x\r\n%s\r\n" % (MiB, block) if chunked else block)
            await writer.drain()
        if chunked:
            writer.write(b"0\r\n\r\n")

    uploading = asyncio.create_task(upload())
    status, headers, _ = await read_response(reader, head_only=True)
    received = hashlib.sha256()
    total = 0
    if chunked:
        assert headers["transfer-encoding"] == "chunked"
        while n := int((await reader.readuntil(b"\r\n")).strip(), 16):
            received.update(await reader.readexactly(n))
            total += n
            assert await reader.readexactly(2) == b"\r\n"
        await reader.readexactly(2)
    else:
        assert headers["content-length"] == str(size)
        while total < size:
            data = await reader.read(MiB)
            received.update(data)
            total += len(data)
    await uploading
    assert status == 200 and total == size
    assert received.hexdigest() == sent.hexdigest()
    await close_raw(writer)


@pytest.mark.parametrize("chunked", [False, True])
async def test_bytes_are_the_pattern(client: httpx.AsyncClient, chunked: bool) -> None:
    n = 5 * MiB + 123
    digest = hashlib.sha256()
    url = f"/bytes/{n}" + ("?chunked=1" if chunked else "")
    async with client.stream("GET", url) as r:
        assert r.status_code == 200
        if chunked:
            assert r.headers["transfer-encoding"] == "chunked"
        else:
            assert r.headers["content-length"] == str(n)
        async for data in r.aiter_raw():
            digest.update(data)
    assert digest.hexdigest() == pattern_digest(n)
    assert (await client.get("/bytes/0")).content == b""
    assert (await client.get("/bytes/-5")).status_code == 400


async def test_bytes_respect_back_pressure(backend: BackendServer) -> None:
    reader, writer = await open_raw(backend)
    writer.write(b"GET /bytes/%d HTTP/1.1\r\n\r\n" % (1 << 30))
    await read_response(reader, head_only=True)
    assert len(await reader.readexactly(MiB)) == MiB
    await asyncio.sleep(0.05)  # a server ignoring back-pressure would write GiBs meanwhile
    (conn,) = backend._connections
    assert conn.transport.get_write_buffer_size() <= 256 * 1024
    assert conn._remaining > (1 << 30) - 64 * MiB
    await close_raw(writer)


# -- WebSocket


async def test_websocket_echo(backend: BackendServer) -> None:
    async with ws_connect(f"ws://{backend.address}/ws", proxy=None) as ws:
        assert ws.response is not None and ws.response.headers["X-Backend"] == "A"
        await ws.send("hello")
        assert await ws.recv() == "hello"
        await ws.send(b"\x00\x01\xff")
        assert await ws.recv() == b"\x00\x01\xff"
        big = os.urandom(200 * 1024)
        await ws.send(big)
        assert await ws.recv() == big
        await ws.send(["frag", "mented"])  # a fragmented message
        assert await ws.recv() == "fragmented"
        pong = await ws.ping(b"are you there")
        await asyncio.wait_for(pong, 5)
    assert ws.close_code == 1000


async def test_websocket_bytes_in_the_handshake_packet(backend: BackendServer) -> None:
    reader, writer = await open_raw(backend)
    key = base64.b64encode(os.urandom(16))
    mask = b"\x01\x02\x03\x04"
    payload = bytes(b ^ mask[i % 4] for i, b in enumerate(b"hi"))
    writer.write(
        b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: " + key + b"\r\n\r\n"
        b"\x81\x82" + mask + payload + b"\x88\x80" + mask
    )
    status, headers, _ = await read_response(reader)
    expected = base64.b64encode(
        hashlib.sha1(key + b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11").digest()
    )
    assert (status, headers["sec-websocket-accept"]) == (101, expected.decode())
    assert await reader.readexactly(4) == b"\x81\x02hi"
    assert await reader.readexactly(2) == b"\x88\x00"
    assert await reader.read() == b""
    await close_raw(writer)


async def test_websocket_injected_failure_closes(make_backend: Make) -> None:
    server = await make_backend(fail_rate=1.0)
    reader, writer = await open_raw(server)
    key = base64.b64encode(os.urandom(16))
    writer.write(
        b"GET /ws HTTP/1.1\r\nUpgrade: websocket\r\nConnection: upgrade\r\n"
        b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: " + key + b"\r\n\r\n\x81\x80abcd"
    )
    assert (await read_response(reader))[0] == 500
    assert await reader.read() == b""
    await close_raw(writer)


async def test_websocket_handshake_errors(client: httpx.AsyncClient) -> None:
    assert (await client.get("/ws")).status_code == 426
    bad = {"Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Version": "13"}
    r = await client.get("/ws", headers={**bad, "Sec-WebSocket-Key": "short"})
    assert r.status_code == 400


async def test_websocket_unmasked_frame_is_a_protocol_error(backend: BackendServer) -> None:
    reader, writer = await open_raw(backend)
    key = base64.b64encode(os.urandom(16))
    writer.write(
        b"GET /ws HTTP/1.1\r\nUpgrade: websocket\r\nConnection: upgrade\r\n"
        b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: " + key + b"\r\n\r\n"
    )
    assert (await read_response(reader))[0] == 101
    writer.write(b"\x81\x02hi")
    assert await reader.readexactly(4) == b"\x88\x02\x03\xea"  # close 1002
    assert await reader.read() == b""
    await close_raw(writer)


async def test_json_helpers_round_trip(client: httpx.AsyncClient) -> None:
    # /headers must stay valid JSON whatever bytes a header carries.
    r = await client.get("/headers", headers={"X-Raw": b"\xff\xfe"})
    assert json.loads(r.content)["headers"][-1] == ["X-Raw", "\xff\xfe"]


async def test_load_reports_requests_in_flight() -> None:
    server = await start_backend(options=BackendOptions(latency=0.3, capacity=4))
    try:
        async with httpx.AsyncClient() as client:
            url = f"http://127.0.0.1:{server.port}"
            assert (await client.get(url + "/load")).json() == {"load": 0.0}
            slow = [asyncio.create_task(client.get(url + "/")) for _ in range(2)]
            await asyncio.sleep(0.1)
            assert (await client.get(url + "/load")).json() == {"load": 0.5}
            await asyncio.gather(*slow)
            assert (await client.get(url + "/load")).json() == {"load": 0.0}
    finally:
        await server.close()
