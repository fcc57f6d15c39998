"""tcp listeners through real sockets: echo, half-close, large transfers on both relay paths,
backend failures before and during a connection, PROXY protocol in and out."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import socket
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from tests.conftest import RunningBalancer
from usher.l4.relay import StreamRelay
from usher.proxy_protocol import parse

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
StartBackend = Callable[[Handler], Awaitable[int]]
StartBalancer = Callable[..., Awaitable[RunningBalancer]]

RELAYS = [pytest.param(False, id="plain"), pytest.param(True, id="splice")]


async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while data := await reader.read(65536):
        writer.write(data)
        await writer.drain()


async def digest_then_close(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Hash everything until the client's EOF (half-close), then answer the size and hash."""
    h = hashlib.sha256()
    n = 0
    while data := await reader.read(1 << 20):
        h.update(data)
        n += len(data)
    writer.write(f"{n} {h.hexdigest()}".encode())
    await writer.drain()


def tcp_config(*ports: int, zero_copy: bool = False, **pool: Any) -> dict[str, Any]:
    return {
        "listeners": [
            {
                "name": "db",
                "bind": "127.0.0.1:0",
                "protocol": "tcp",
                "pool": "p",
                "zero_copy": zero_copy,
            }
        ],
        "pools": {"p": {"backends": [{"address": f"127.0.0.1:{p}"} for p in ports], **pool}},
    }


async def wait_for(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        assert loop.time() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


@pytest.mark.parametrize("zero_copy", RELAYS)
async def test_echo_and_half_close(
    raw_backend: StartBackend, balancer: StartBalancer, zero_copy: bool
) -> None:
    port = await raw_backend(echo)
    b = await balancer(tcp_config(port, zero_copy=zero_copy))
    reader, writer = await asyncio.open_connection("127.0.0.1", b.port)
    writer.write(b"hello")
    assert await asyncio.wait_for(reader.readexactly(5), 5) == b"hello"
    (session,) = b.balancer.listeners["db"].connections
    assert type(session.relay).__name__ == ("SpliceRelay" if zero_copy else "StreamRelay")
    writer.write(b" world")
    writer.write_eof()  # half-close: the echo still comes back, then the backend's EOF
    assert await asyncio.wait_for(reader.read(), 5) == b" world"
    writer.close()
    await wait_for(lambda: not b.balancer.listeners["db"].connections)
    line = b.log.getvalue().strip().splitlines()[-1]
    assert " TCP db ok in=11B out=11B " in line
    metrics = b.balancer.metrics
    assert metrics.connections_total[("db", "p", f"127.0.0.1:{port}", "ok")] == 1
    assert metrics.bytes_total[("db", "in")] == 11
    assert metrics.bytes_total[("db", "out")] == 11


@pytest.mark.parametrize("zero_copy", RELAYS)
@pytest.mark.timeout(90)
async def test_large_transfer_checksummed(
    raw_backend: StartBackend, balancer: StartBalancer, zero_copy: bool
) -> None:
    port = await raw_backend(digest_then_close)
    b = await balancer(tcp_config(port, zero_copy=zero_copy))
    reader, writer = await asyncio.open_connection("127.0.0.1", b.port)
    chunk = os.urandom(1 << 20)
    expected = hashlib.sha256()
    total = 256 << 20
    for i in range(total >> 20):
        piece = chunk[i:] + chunk[:i]  # every MiB different, so reordering would show
        expected.update(piece)
        writer.write(piece)
        await writer.drain()  # back-pressure through usher bounds our own buffer
    writer.write_eof()
    answer = await asyncio.wait_for(reader.read(), 60)
    assert answer.decode() == f"{total} {expected.hexdigest()}"
    writer.close()


@pytest.mark.parametrize("zero_copy", RELAYS)
@pytest.mark.timeout(60)
async def test_large_download_with_slow_reader(
    raw_backend: StartBackend, balancer: StartBalancer, zero_copy: bool
) -> None:
    """The backend sends 32 MiB to a client that reads slowly: usher must not buffer it all."""
    total = 32 << 20
    block = os.urandom(1 << 16)

    async def source(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for _ in range(total // len(block)):
            writer.write(block)
            await writer.drain()

    port = await raw_backend(source)
    b = await balancer(tcp_config(port, zero_copy=zero_copy))
    reader, writer = await asyncio.open_connection("127.0.0.1", b.port, limit=1 << 16)
    await asyncio.sleep(0.5)  # not reading: the backend must be held back, not usher's memory
    sessions = list(b.balancer.listeners["db"].connections)
    assert len(sessions) == 1
    assert sessions[0].record.bytes_out < 16 << 20
    h = hashlib.sha256()
    got = 0
    while data := await asyncio.wait_for(reader.read(1 << 20), 20):
        h.update(data)
        got += len(data)
    assert got == total
    assert h.hexdigest() == hashlib.sha256(block * (total // len(block))).hexdigest()
    writer.close()


async def test_retries_next_backend_and_ejects_dead_one(
    raw_backend: StartBackend, balancer: StartBalancer, unused_tcp_port: int
) -> None:
    port = await raw_backend(echo)
    b = await balancer(tcp_config(unused_tcp_port, port))
    for _ in range(3):
        reader, writer = await asyncio.open_connection("127.0.0.1", b.port)
        writer.write(b"x")
        assert await asyncio.wait_for(reader.readexactly(1), 5) == b"x"
        writer.close()
    dead = b.pools["p"].backends[0]
    assert dead.failures_total == 1  # tried once, then ejected by passive health
    assert not dead.ready(b.pools["p"].clock.now())


async def test_all_backends_down_closes_client(
    balancer: StartBalancer, unused_tcp_port_factory: Callable[[], int]
) -> None:
    b = await balancer(tcp_config(unused_tcp_port_factory(), unused_tcp_port_factory()))
    reader, writer = await asyncio.open_connection("127.0.0.1", b.port)
    assert await asyncio.wait_for(reader.read(), 5) == b""
    writer.close()
    await wait_for(lambda: "connect_failed" in b.log.getvalue())


@pytest.mark.parametrize("zero_copy", RELAYS)
async def test_backend_dies_during_connection(
    raw_backend: StartBackend, balancer: StartBalancer, zero_copy: bool
) -> None:
    async def die_after_hello(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readexactly(5)
        writer.write(b"bye")
        await writer.drain()
        writer.transport.abort()  # a reset, not a clean close

    port = await raw_backend(die_after_hello)
    b = await balancer(tcp_config(port, zero_copy=zero_copy))
    reader, writer = await asyncio.open_connection("127.0.0.1", b.port)
    writer.write(b"hello")
    got = b""
    try:
        while data := await asyncio.wait_for(reader.read(100), 5):
            got += data
    except ConnectionResetError:
        pass
    assert got in (b"", b"bye")
    writer.close()
    await wait_for(lambda: not b.balancer.listeners["db"].connections)


async def test_idle_timeout_closes(raw_backend: StartBackend, balancer: StartBalancer) -> None:
    port = await raw_backend(echo)
    b = await balancer(tcp_config(port, timeouts={"tunnel": "200ms"}))
    reader, writer = await asyncio.open_connection("127.0.0.1", b.port)
    writer.write(b"a")
    assert await reader.readexactly(1) == b"a"
    assert await asyncio.wait_for(reader.read(), 5) == b""
    writer.close()
    await wait_for(lambda: "idle_timeout" in b.log.getvalue())


async def test_least_connections_counts_open_connections(
    raw_backend: StartBackend, balancer: StartBalancer
) -> None:
    ports = [await raw_backend(echo) for _ in range(2)]
    b = await balancer(tcp_config(*ports, algorithm="least_connections"))
    clients = []
    for _ in range(4):
        reader, writer = await asyncio.open_connection("127.0.0.1", b.port)
        writer.write(b"x")
        await reader.readexactly(1)
        clients.append(writer)
    assert [be.active for be in b.pools["p"].backends] == [2, 2]
    for writer in clients:
        writer.close()
    await wait_for(lambda: all(be.active == 0 for be in b.pools["p"].backends))


@pytest.mark.parametrize("version", ["v1", "v2"])
@pytest.mark.parametrize("zero_copy", RELAYS)
async def test_proxy_protocol_in_and_out(
    raw_backend: StartBackend, balancer: StartBalancer, version: str, zero_copy: bool
) -> None:
    """A PROXY header from the client sets the client address; the backend gets one too."""
    seen: list[bytes] = []

    async def record(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        data = b""
        while b"payload" not in data:
            more = await reader.read(4096)
            if not more:
                break
            data += more
        seen.append(data)
        writer.write(b"ok")
        await writer.drain()

    port = await raw_backend(record)
    config = tcp_config(port, zero_copy=zero_copy, send_proxy_protocol=version)
    config["listeners"][0]["accept_proxy_protocol"] = True
    b = await balancer(config)
    reader, writer = await asyncio.open_connection("127.0.0.1", b.port)
    writer.write(b"PROXY TCP4 203.0.113.7 198.51.100.1 40000 5432\r\npayload")
    assert await asyncio.wait_for(reader.readexactly(2), 5) == b"ok"
    writer.close()
    parsed = parse(seen[0])
    assert parsed is not None
    header, consumed = parsed
    assert header.version == int(version[1])
    assert header.source == ("203.0.113.7", 40000)
    assert header.destination == ("198.51.100.1", 5432)
    assert seen[0][consumed:] == b"payload"
    await wait_for(lambda: "203.0.113.7:40000" in b.log.getvalue())


async def test_bad_proxy_header_is_closed_and_logged(
    raw_backend: StartBackend, balancer: StartBalancer
) -> None:
    port = await raw_backend(echo)
    config = tcp_config(port)
    config["listeners"][0]["accept_proxy_protocol"] = True
    b = await balancer(config)
    reader, writer = await asyncio.open_connection("127.0.0.1", b.port)
    writer.write(b"GET / HTTP/1.1\r\n\r\n")
    with contextlib.suppress(
        ConnectionResetError
    ):  # closed with our bytes unread: the kernel may send a reset
        assert await asyncio.wait_for(reader.read(), 5) == b""
    writer.close()
    await wait_for(lambda: "bad_proxy_header" in b.log.getvalue())
    assert b.balancer.metrics.rejected_total[("db", "bad_proxy_header")] == 1


async def test_source_ip_hashing_uses_proxied_address(
    raw_backend: StartBackend, balancer: StartBalancer
) -> None:
    names: list[int] = []

    def named(i: int) -> Handler:
        async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.read(1)
            names.append(i)
            writer.write(b"k")
            await writer.drain()

        return handler

    ports = [await raw_backend(named(i)) for i in range(3)]
    config = tcp_config(*ports, algorithm="ip_hash")
    config["listeners"][0]["accept_proxy_protocol"] = True
    config["listeners"][0]["protocol"] = "tcp"
    b = await balancer(config)
    for ip in ("10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.4"):
        for _ in range(3):
            reader, writer = await asyncio.open_connection("127.0.0.1", b.port)
            writer.write(f"PROXY TCP4 {ip} 10.9.9.9 1234 80\r\nx".encode())
            await asyncio.wait_for(reader.readexactly(1), 5)
            writer.close()
    groups = [names[i : i + 3] for i in range(0, len(names), 3)]
    assert all(len(set(g)) == 1 for g in groups), groups  # one backend per client address
    assert len({g[0] for g in groups}) > 1  # and not one backend for everybody


def test_config_names_what_cannot_work_at_layer_4() -> None:
    from usher.config import parse_config
    from usher.errors import ConfigError

    config = tcp_config(1, zero_copy=True, algorithm="consistent_hash", hash={"key": "path"})
    config["pools"]["p"]["sticky"] = {"type": "cookie"}
    config["pools"]["p"]["tls"] = {}
    with pytest.raises(ConfigError) as info:
        parse_config(json.dumps(config))
    text = str(info.value)
    assert "pools.p.hash.key: only source_ip can be hashed at layer 4" in text
    assert "pools.p.sticky.type: only source_ip persistence works at layer 4" in text
    assert "pools.p.tls: zero_copy cannot encrypt" in text


async def _source(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Sends 64 MiB, far more than the socket buffers between it and a client that never reads."""
    block = os.urandom(1 << 20)
    for _ in range(64):
        writer.write(block)
        await writer.drain()


async def test_idle_timeout_with_a_client_that_never_reads(
    raw_backend: StartBackend, balancer: StartBalancer
) -> None:
    # A graceful close waits for the write buffer to drain, which a zero window never does.
    port = await raw_backend(_source)
    b = await balancer(tcp_config(port, timeouts={"tunnel": "300ms"}))
    client = socket.socket()
    client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    client.setblocking(False)
    try:
        await asyncio.get_running_loop().sock_connect(client, ("127.0.0.1", b.port))
        await wait_for(lambda: "idle_timeout" in b.log.getvalue())
        assert not b.balancer.listeners["db"].connections
        assert b.pools["p"].backends[0].active == 0
    finally:
        client.close()


class _StuckTransport(asyncio.Transport):
    """A transport whose peer never reads: close() never completes, abort() does."""

    def __init__(self, protocol: asyncio.Protocol) -> None:
        super().__init__()
        self.protocol = protocol
        self.closing = False
        self.aborted = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        pass

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True  # waits for a drain that never comes

    def abort(self) -> None:
        self.closing = self.aborted = True
        self.protocol.connection_lost(None)

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        pass

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default


async def test_backend_gone_and_a_client_that_never_reads() -> None:
    # What is buffered for the client once the backend has gone gets `linger` seconds.
    loop = asyncio.get_running_loop()
    results: list[str] = []
    relay = StreamRelay(loop, 60.0, lambda _c, _n: None, results.append, linger=0.1)
    client, backend = _StuckTransport(relay.client), _StuckTransport(relay.backend)
    relay.client.connection_made(client)
    relay.backend.connection_made(backend)
    relay.start(b"")
    relay.backend.data_received(b"answer")
    relay.backend.connection_lost(ConnectionResetError())  # the backend is gone
    assert client.closing and not client.aborted and not results
    await wait_for(lambda: results == ["backend_reset"], timeout=2)
    assert client.aborted


async def test_running_out_of_descriptors_is_not_the_backends_fault(
    raw_backend: StartBackend, balancer: StartBalancer, monkeypatch: pytest.MonkeyPatch
) -> None:
    import errno

    from usher.l4 import tcp

    port = await raw_backend(echo)
    b = await balancer(tcp_config(port, passive_health={"max_fails": 1}))

    async def no_descriptor(*_args: Any) -> Any:
        raise OSError(errno.EMFILE, "Too many open files")

    monkeypatch.setattr(tcp, "connect", no_descriptor)
    reader, _writer = await asyncio.open_connection("127.0.0.1", b.port)
    assert await asyncio.wait_for(reader.read(), 5) == b""  # refused
    _writer.close()
    pool = b.pools["p"]
    assert b.balancer.metrics.rejected_total[("db", "out_of_files")] == 1
    assert all(x.failures_total == 0 and x.active == 0 for x in pool.backends)
    assert "out_of_files" in b.log.getvalue()


async def test_client_eof_towards_a_tls_backend_ends_after_the_send_timeout(
    balancer: StartBalancer, tmp_path: Any
) -> None:
    # The EOF cannot be passed on over TLS; the backend waiting for it must not hold the
    # connection for timeouts.tunnel (1h by default), only for timeouts.send without traffic.
    import trustme

    from tests.tls_helpers import server_context, write_ca

    ca = trustme.CA()
    waited: list[bytes] = []

    async def until_eof(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        waited.append(await reader.read())
        writer.close()

    server = await asyncio.start_server(
        until_eof, "127.0.0.1", 0, ssl=server_context(ca, "backend.internal")
    )
    port = server.sockets[0].getsockname()[1]
    tls = {"ca": write_ca(ca, tmp_path / "ca.pem"), "server_name": "backend.internal"}
    b = await balancer(tcp_config(port, tls=tls, timeouts={"send": "300ms"}))
    reader, writer = await asyncio.open_connection("127.0.0.1", b.port)
    try:
        writer.write(b"hello")
        await writer.drain()
        writer.write_eof()
        assert await asyncio.wait_for(reader.read(), 5) == b""  # not an hour
        await wait_for(lambda: not b.balancer.listeners["db"].connections)
        assert b.pools["p"].backends[0].active == 0
    finally:
        writer.close()
        server.close()


async def test_a_client_socket_that_cannot_be_attached_is_closed(
    raw_backend: StartBackend, balancer: StartBalancer, monkeypatch: pytest.MonkeyPatch
) -> None:
    import errno

    port = await raw_backend(echo)
    b = await balancer(tcp_config(port))

    def refuse(_relay: StreamRelay) -> asyncio.Protocol:
        raise OSError(errno.EBADF, "cannot attach")

    monkeypatch.setattr(StreamRelay, "client_side", refuse)
    before = len(os.listdir("/proc/self/fd"))
    reader, writer = await asyncio.open_connection("127.0.0.1", b.port)
    try:
        assert await asyncio.wait_for(reader.read(), 5) == b""  # closed, not left open
        await wait_for(lambda: not b.balancer.listeners["db"].connections)
    finally:
        writer.close()
        await writer.wait_closed()
    await wait_for(lambda: len(os.listdir("/proc/self/fd")) <= before)
    assert b.pools["p"].backends[0].active == 0
