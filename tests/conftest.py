"""Shared fixtures: demo backends, a balancer built from a config dict, raw HTTP helpers.

Every server binds 127.0.0.1 on an ephemeral port and is closed by the fixture that made it.
"""

from __future__ import annotations

import asyncio
import io
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any

import pytest
import uvloop
import yaml

from usher.config import parse_config
from usher.demo.origin import BackendOptions, BackendServer, start_backend
from usher.logs import AccessLog
from usher.server import Balancer

# `make test` runs the suite on several processes (pytest-xdist, `-n 3 --dist loadfile`: a
# file's tests share one process, so a module-scoped fixture starts its usher processes once),
# then the tests below alone, one at a time: they measure latency, rates or throughput against
# bounds that hold on a quiet machine, not next to other tests' usher processes.
SERIAL = {
    "tests/attacks/test_attacks.py": "a normal client's p99 during each attack",
    "tests/test_global_state.py::test_a_rate_limit_is_exact_whichever_workers_take_the_connections": (
        "two clients must send faster than the rate"
    ),
    "tests/test_cluster.py::test_a_limit_of_100_per_second_holds_over_both_nodes": "the same, two nodes",
    "tests/test_state_redis.py::test_two_nodes_share_one_bucket": "the same, at the store",
}


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        test = item.nodeid.partition("[")[0]  # every parameter
        if test in SERIAL or test.partition("::")[0] in SERIAL:
            item.add_marker(pytest.mark.serial)


def pytest_asyncio_loop_factories(config: Any, item: Any) -> Mapping[str, Callable[[], Any]]:
    # The data plane runs on uvloop in production; test it there.
    return {"uvloop": uvloop.new_event_loop}


class RunningBalancer:
    """A started balancer with its access log captured."""

    def __init__(self, balancer: Balancer, log: io.StringIO) -> None:
        self.balancer = balancer
        self.log = log

    @property
    def port(self) -> int:
        return next(iter(self.balancer.bound.values())).port

    def url(self, path: str = "/", listener: str | None = None) -> str:
        bound = (
            self.balancer.bound[listener] if listener else next(iter(self.balancer.bound.values()))
        )
        return bound.url + path

    @property
    def pools(self) -> dict[str, Any]:
        return self.balancer.pools


def pool_of(*servers: BackendServer | str, **options: Any) -> dict[str, Any]:
    """A pool config dict over the given backends (or "host:port" strings)."""
    backends = []
    for server in servers:
        address = server if isinstance(server, str) else f"127.0.0.1:{server.port}"
        backends.append({"address": address})
    return {"backends": backends, **options}


def simple_config(pools: dict[str, Any], **listener: Any) -> dict[str, Any]:
    """One http listener on an ephemeral port; routes default to everything -> the first pool."""
    spec: dict[str, Any] = {"name": "web", "bind": "127.0.0.1:0", "protocol": "http"}
    spec.update(listener)
    if "routes" not in spec and "pool" not in spec:
        spec["pool"] = next(iter(pools))
    return {"listeners": [spec], "pools": pools}


@pytest.fixture
async def backends() -> AsyncIterator[Callable[..., Awaitable[list[BackendServer]]]]:
    started: list[BackendServer] = []

    async def start(count: int = 3, **options: Any) -> list[BackendServer]:
        servers = []
        for _ in range(count):
            opts = BackendOptions(name="ABCDEFGH"[len(started) % 8], **options)
            server = await start_backend("127.0.0.1", 0, opts)
            started.append(server)
            servers.append(server)
        return servers

    yield start
    for server in started:
        await server.close()


@pytest.fixture
async def balancer() -> AsyncIterator[Callable[..., Awaitable[RunningBalancer]]]:
    started: list[Balancer] = []

    async def start(config: dict[str, Any] | str, **kwargs: Any) -> RunningBalancer:
        text = config if isinstance(config, str) else yaml.safe_dump(config)
        log = io.StringIO()
        kwargs.setdefault("access_log", AccessLog(enabled=True, stream=log))
        b = Balancer(parse_config(text, "test.yaml"), **kwargs)
        await b.start()
        started.append(b)
        return RunningBalancer(b, log)

    yield start
    for b in started:
        await b.stop(timeout=1.0)


class RawResponse:
    def __init__(self, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body

    def header(self, name: str) -> str | None:
        for n, v in self.headers:
            if n.lower() == name.lower():
                return v
        return None


async def read_response(reader: asyncio.StreamReader, *, head: bool = False) -> RawResponse:
    """Read one HTTP/1.1 response (Content-Length, chunked, or to the end of the connection)."""
    line = await reader.readline()
    if not line:
        raise ConnectionError("connection closed before a response")
    status = int(line.split()[1])
    headers: list[tuple[str, str]] = []
    while True:
        line = await reader.readline()
        if line in (b"\r\n", b""):
            break
        name, _, value = line.decode("latin-1").partition(":")
        headers.append((name.strip(), value.strip()))
    response = RawResponse(status, headers, b"")
    if head or status in (204, 304) or 100 <= status < 200:
        return response
    length = response.header("content-length")
    if length is not None:
        response.body = await reader.readexactly(int(length))
    elif (response.header("transfer-encoding") or "").lower().endswith("chunked"):
        body = bytearray()
        while True:
            size = int((await reader.readline()).split(b";")[0], 16)
            if size == 0:
                while (await reader.readline()) not in (b"\r\n", b""):
                    pass
                break
            body += await reader.readexactly(size)
            await reader.readexactly(2)
        response.body = bytes(body)
    else:
        response.body = await reader.read()
    return response


async def raw_exchange(
    port: int, data: bytes, *, responses: int = 1
) -> tuple[list[RawResponse], bool]:
    """Send raw bytes, read `responses` answers; returns them and whether the server then closed."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        out = [await asyncio.wait_for(read_response(reader), 10) for _ in range(responses)]
        try:
            closed = await asyncio.wait_for(reader.read(1), 2) == b""
        except TimeoutError:
            closed = False
        return out, closed
    finally:
        writer.close()


RawHandler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@pytest.fixture
async def raw_backend() -> AsyncIterator[Callable[[RawHandler], Awaitable[int]]]:
    """A backend that runs a given coroutine per connection (for misbehaving backends)."""
    servers: list[asyncio.Server] = []
    writers: list[asyncio.StreamWriter] = []

    async def start(handler: RawHandler) -> int:
        async def wrapped(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writers.append(writer)
            try:
                await handler(reader, writer)
            except (ConnectionError, asyncio.IncompleteReadError):
                pass
            finally:
                writer.close()

        server = await asyncio.start_server(wrapped, "127.0.0.1", 0)
        servers.append(server)
        return int(server.sockets[0].getsockname()[1])

    yield start
    for writer in writers:
        writer.close()
    for server in servers:
        server.close()
        await server.wait_closed()


async def read_request_head(reader: asyncio.StreamReader) -> bytes:
    return await reader.readuntil(b"\r\n\r\n")


def free_port() -> int:
    """A port nothing listens on (bound then released)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
