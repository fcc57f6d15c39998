"""Active health checks: the state machine on plain values, the probes through real sockets on
127.0.0.1, and the checker end to end against demo backends."""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import pytest
import trustme

from tests.conftest import free_port, raw_exchange, read_request_head
from usher.clock import ManualClock, MonotonicClock
from usher.config import HealthCheck, HostPort, PoolConfig
from usher.demo.origin import BackendServer
from usher.health import (
    CheckResult,
    HealthChecker,
    HealthState,
    Transition,
    parse_load,
    probe_agent,
    probe_http,
    probe_tcp,
    probe_udp,
)
from usher.pool import Backend, Pool

WAIT = 5.0  # bound of every wait for something that should take well under a second


def check(**fields: Any) -> HealthCheck:
    return HealthCheck.model_validate(fields)


def pool_config(*addresses: str | int, **fields: Any) -> PoolConfig:
    backends = [{"address": a if isinstance(a, str) else f"127.0.0.1:{a}"} for a in addresses]
    return PoolConfig.model_validate({"backends": backends, **fields})


async def until(predicate: Callable[[], bool], timeout: float = WAIT) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.005)


async def set_health(server: BackendServer, ok: bool) -> None:
    path = "/health/ok" if ok else "/health/fail"
    request = f"POST {path} HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    (response,), _ = await raw_exchange(server.port, request.encode())
    assert response.status == 200


# --- HealthState -------------------------------------------------------------------------------


def test_starts_healthy_and_turns_unhealthy_after_three_failures():
    state = HealthState(check(healthy_threshold=2, unhealthy_threshold=3))
    assert state.healthy
    assert state.record(False, "connect refused") is None
    assert state.record(False, "connect refused") is None
    assert state.record(False, "connect refused") == Transition(
        False, "unhealthy after 3 failed checks: connect refused"
    )
    assert not state.healthy
    assert state.record(False, "connect refused") is None  # already down: no second transition


def test_comes_back_after_two_passes():
    state = HealthState(check(healthy_threshold=2, unhealthy_threshold=3), healthy=False)
    assert state.record(True, "ok") is None
    assert state.record(True, "ok") == Transition(True, "healthy after 2 passed checks")
    assert state.healthy
    assert state.record(True, "ok") is None


def test_alternating_results_never_flip():
    for start in (True, False):
        state = HealthState(check(healthy_threshold=2, unhealthy_threshold=2), healthy=start)
        for i in range(200):
            assert state.record(i % 2 == 0, "x") is None
            assert state.healthy is start


def test_one_transition_per_change_with_its_reason():
    state = HealthState(check(healthy_threshold=2, unhealthy_threshold=3))
    results = [True, False, False, True, False, False, False, False, False]  # down at index 6
    results += [True, False, True, True, True, True]  # up at index 12
    results += [False] * 3 + [True] * 2 + [False] * 3  # down, up, down
    transitions = [
        (i, t) for i, ok in enumerate(results) if (t := state.record(ok, f"r{i}")) is not None
    ]
    assert transitions == [
        (6, Transition(False, "unhealthy after 3 failed checks: r6")),
        (12, Transition(True, "healthy after 2 passed checks")),
        (17, Transition(False, "unhealthy after 3 failed checks: r17")),
        (19, Transition(True, "healthy after 2 passed checks")),
        (22, Transition(False, "unhealthy after 3 failed checks: r22")),
    ]


def test_thresholds_of_one_and_the_singular():
    state = HealthState(check(healthy_threshold=1, unhealthy_threshold=1))
    assert state.record(False, "status 503 (expected 200-399)") == Transition(
        False, "unhealthy after 1 failed check: status 503 (expected 200-399)"
    )
    assert state.record(True, "status 200") == Transition(True, "healthy after 1 passed check")


def test_last_result_carries_the_callers_time():
    state = HealthState(check())
    assert state.last is None
    state.record(True, "ok", at=12.5)
    state.record(False, "timed out after 2s", at=17.5)
    assert state.last == CheckResult(False, 17.5, "timed out after 2s")
    assert (state.passes, state.failures) == (0, 1)


def test_next_delay_stays_within_the_jitter():
    rng = random.Random(7)
    state = HealthState(check(interval="5s", jitter="10%"))
    delays = [state.next_delay(rng) for _ in range(2000)]
    assert all(4.5 <= d <= 5.5 for d in delays)
    assert min(delays) < 4.6 and max(delays) > 5.4  # spread over the whole range
    assert HealthState(check(interval="5s", jitter=0)).next_delay(rng) == 5.0


def test_next_delay_uses_unhealthy_interval_while_down():
    rng = random.Random(1)
    state = HealthState(
        check(interval="5s", unhealthy_interval="1s", jitter="10%", unhealthy_threshold=1)
    )
    assert 4.5 <= state.next_delay(rng) <= 5.5
    state.record(False, "connect refused")
    delays = [state.next_delay(rng) for _ in range(500)]
    assert all(0.9 <= d <= 1.1 for d in delays)
    state.record(True, "ok")
    state.record(True, "ok")
    assert 4.5 <= state.next_delay(rng) <= 5.5
    # Without unhealthy_interval a backend that is down is checked as often as any other.
    down = HealthState(check(interval="5s", jitter=0), healthy=False)
    assert down.next_delay(rng) == 5.0


# --- tcp ---------------------------------------------------------------------------------------


@pytest.fixture
def full_backlog() -> Iterator[int]:
    """A port that listens but whose accept queue is full: a new connect hangs (SYN dropped)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers = []
    try:
        for _ in range(3):
            filler = socket.socket()
            fillers.append(filler)
            filler.setblocking(False)
            filler.connect_ex(("127.0.0.1", port))
        yield port
    finally:
        for filler in fillers:
            filler.close()
        listener.close()


async def test_tcp_ok(backends):
    (server,) = await backends(1)
    assert await probe_tcp("127.0.0.1", server.port, check(timeout="1s")) == (True, "ok")


async def test_tcp_refused():
    assert await probe_tcp("127.0.0.1", free_port(), check(timeout="1s")) == (
        False,
        "connect refused",
    )


async def test_tcp_timeout(full_backlog):
    result = await asyncio.wait_for(
        probe_tcp("127.0.0.1", full_backlog, check(timeout="200ms")), WAIT
    )
    assert result == (False, "timed out after 200ms")


async def test_tcp_check_port_overrides_the_backends(backends):
    (server,) = await backends(1)
    assert await probe_tcp("127.0.0.1", free_port(), check(port=server.port)) == (True, "ok")


# --- http --------------------------------------------------------------------------------------


def http_check(**fields: Any) -> HealthCheck:
    return check(**{"type": "http", "timeout": "1s", **fields})


async def test_http_health_passes_then_fails_with_the_status(backends):
    (server,) = await backends(1)
    assert await probe_http("127.0.0.1", server.port, http_check()) == (True, "status 200")
    await set_health(server, False)
    assert await probe_http("127.0.0.1", server.port, http_check()) == (
        False,
        "status 503 (expected 200-399)",
    )


async def test_http_expect_status_ranges(backends):
    (server,) = await backends(1)
    await set_health(server, False)
    assert await probe_http("127.0.0.1", server.port, http_check(expect_status="500-599")) == (
        True,
        "status 503",
    )
    assert await probe_http("127.0.0.1", server.port, http_check(expect_status="200,204")) == (
        False,
        "status 503 (expected 200,204)",
    )
    assert (await probe_http("127.0.0.1", server.port, http_check(expect_status="200,503")))[0]
    missing = http_check(path="/nope", expect_status="404")
    assert await probe_http("127.0.0.1", server.port, missing) == (True, "status 404")


async def test_http_expect_body(backends):
    (server,) = await backends(1)
    assert (await probe_http("127.0.0.1", server.port, http_check(expect_body="ok")))[0]
    assert await probe_http("127.0.0.1", server.port, http_check(expect_body="ready")) == (
        False,
        "body lacks 'ready'",
    )
    await set_health(server, False)  # the status is checked first
    assert await probe_http("127.0.0.1", server.port, http_check(expect_body="ok")) == (
        False,
        "status 503 (expected 200-399)",
    )


async def test_http_sends_one_well_formed_request(raw_backend):
    heads: list[bytes] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        heads.append(await read_request_head(reader))
        writer.write(b"HTTP/1.1 204 No Content\r\n\r\n")
        await writer.drain()
        await reader.read()

    port = await raw_backend(handler)
    assert await probe_http("127.0.0.1", port, http_check()) == (True, "status 204")
    custom = http_check(method="HEAD", path="/ready?deep=1", host="svc.internal")
    assert await probe_http("127.0.0.1", port, custom) == (True, "status 204")
    assert heads == [
        f"GET /health HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUser-Agent: usher-health\r\n"
        "Accept: */*\r\nConnection: close\r\n\r\n".encode(),
        b"HEAD /ready?deep=1 HTTP/1.1\r\nHost: svc.internal\r\nUser-Agent: usher-health\r\n"
        b"Accept: */*\r\nConnection: close\r\n\r\n",
    ]


@pytest.mark.parametrize(
    ("response", "expected"),
    [
        # A body that ends with the connection.
        (b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nall ok here", (True, "status 200")),
        # Chunked, with the word split over two chunks.
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nal\xc3\r\n"
            b"6\r\nl ok h\r\n0\r\n\r\n",
            (True, "status 200"),
        ),
        # An interim answer first.
        (
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\n ok ",
            (True, "status 200"),
        ),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nnope", (False, "body lacks 'ok'")),
        (b"", (False, "connection closed before a response")),
        (b"HTTP/1.1 200 OK\r\nContent-Le", (False, "connection closed before a response")),
    ],
)
async def test_http_reads_the_body_as_framed(raw_backend, response, expected):
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request_head(reader)
        writer.write(response)
        await writer.drain()

    port = await raw_backend(handler)
    assert await probe_http("127.0.0.1", port, http_check(expect_body="ok")) == expected


async def test_http_garbage_fails(raw_backend):
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request_head(reader)
        writer.write(b"SSH-2.0-OpenSSH_9.6\r\n")
        await reader.read()

    port = await raw_backend(handler)
    ok, detail = await probe_http("127.0.0.1", port, http_check())
    assert not ok and detail.startswith("invalid response"), detail


async def test_http_a_big_body_is_looked_at_up_to_64k(raw_backend):
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request_head(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10000000\r\n\r\n")
        writer.write(b"x" * 60_000 + b"ok")
        with contextlib.suppress(ConnectionError):
            while True:  # a body far larger than we read, sent until we hang up
                writer.write(b"y" * 65536)
                await writer.drain()

    port = await raw_backend(handler)
    assert await probe_http("127.0.0.1", port, http_check(expect_body="ok")) == (
        True,
        "status 200",
    )


async def test_http_a_hanging_backend_times_out(raw_backend):
    async def hang(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # never answers; returns when the probe hangs up

    port = await raw_backend(hang)
    result = await asyncio.wait_for(
        probe_http("127.0.0.1", port, http_check(timeout="200ms")), WAIT
    )
    assert result == (False, "timed out after 200ms")


async def test_http_refused():
    assert await probe_http("127.0.0.1", free_port(), http_check()) == (False, "connect refused")


# --- https -------------------------------------------------------------------------------------


@pytest.fixture
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
async def tls_server(ca, tmp_path) -> AsyncIterator[Callable[..., Awaitable[int]]]:
    """An HTTPS server answering 200 "ok" with a certificate from `ca` for the given names."""
    servers: list[asyncio.Server] = []

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await read_request_head(reader)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: close\r\n\r\nok\n")
            await writer.drain()
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    async def hang(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError):
            await reader.read()
        writer.close()

    async def start(*names: str, handshake: bool = True) -> int:
        ctx = None
        if handshake:
            ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            ca.issue_cert(*names).configure_cert(ctx)
        server = await asyncio.start_server(answer if handshake else hang, "127.0.0.1", 0, ssl=ctx)
        servers.append(server)
        return int(server.sockets[0].getsockname()[1])

    yield start
    for server in servers:
        server.close()
        await server.wait_closed()


@pytest.fixture
def ca_file(ca, tmp_path) -> str:
    path = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(path)
    return str(path)


@pytest.fixture
def other_ca_file(tmp_path) -> str:
    path = tmp_path / "other-ca.pem"
    trustme.CA().cert_pem.write_to_path(path)
    return str(path)


async def test_https_verified(tls_server, ca_file):
    port = await tls_server("127.0.0.1", "backend.test")
    by_ip = http_check(tls=True, tls_ca=ca_file, expect_body="ok")
    assert await probe_http("127.0.0.1", port, by_ip) == (True, "status 200")
    by_name = http_check(tls=True, tls_ca=ca_file, tls_server_name="backend.test")
    assert await probe_http("127.0.0.1", port, by_name) == (True, "status 200")


async def test_https_wrong_ca_fails_verification(tls_server, other_ca_file):
    port = await tls_server("127.0.0.1")
    ok, detail = await probe_http("127.0.0.1", port, http_check(tls=True, tls_ca=other_ca_file))
    assert not ok
    assert detail.startswith("certificate verify failed"), detail


async def test_https_wrong_name_fails_verification(tls_server, ca_file):
    port = await tls_server("backend.test")
    wrong = http_check(tls=True, tls_ca=ca_file, tls_server_name="other.test")
    ok, detail = await probe_http("127.0.0.1", port, wrong)
    assert not ok
    assert detail.startswith("certificate verify failed"), detail


async def test_https_without_verification(tls_server, other_ca_file):
    port = await tls_server("backend.test")
    unverified = http_check(tls=True, tls_ca=other_ca_file, tls_verify=False)
    assert await probe_http("127.0.0.1", port, unverified) == (True, "status 200")


async def test_https_handshake_that_never_ends_times_out(tls_server, ca_file):
    port = await tls_server(handshake=False)
    result = await asyncio.wait_for(
        probe_http("127.0.0.1", port, http_check(tls=True, tls_ca=ca_file, timeout="200ms")),
        WAIT,
    )
    assert result == (False, "timed out after 200ms")


async def test_https_unreadable_ca_fails_every_check(tls_server, tmp_path, checkers):
    port = await tls_server("127.0.0.1")
    missing = str(tmp_path / "missing.pem")
    detail = "tls setup failed: no such file or directory"
    assert await probe_http("127.0.0.1", port, http_check(tls=True, tls_ca=missing)) == (
        False,
        detail,
    )
    pool = StandInPool(pool_config(port, health_check=fast_http(tls=True, tls_ca=missing)))
    checkers(pool).start()
    await until(lambda: bool(pool.calls))
    assert pool.calls == [(pool.backends[0], False, f"unhealthy after 3 failed checks: {detail}")]


# --- udp ---------------------------------------------------------------------------------------


class _Responder(asyncio.DatagramProtocol):
    def __init__(self, reply: bytes | None) -> None:
        self.reply = reply
        self.received: list[bytes] = []

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.received.append(data)
        if self.reply is not None:
            self.transport.sendto(self.reply, addr)


@pytest.fixture
async def udp_server() -> AsyncIterator[Callable[[bytes | None], Awaitable[_Responder]]]:
    transports: list[asyncio.BaseTransport] = []

    async def start(reply: bytes | None) -> _Responder:
        loop = asyncio.get_running_loop()
        transport, protocol = await loop.create_datagram_endpoint(
            lambda: _Responder(reply), local_addr=("127.0.0.1", 0)
        )
        transports.append(transport)
        protocol.port = transport.get_extra_info("sockname")[1]  # type: ignore[attr-defined]
        return protocol

    yield start
    for transport in transports:
        transport.close()
    await asyncio.sleep(0)


def udp_check(**fields: Any) -> HealthCheck:
    return check(**{"type": "udp", "timeout": "200ms", **fields})


async def test_udp_reply_matching(udp_server):
    server = await udp_server(b"pong")
    assert await probe_udp("127.0.0.1", server.port, udp_check(expect="^pong$")) == (True, "ok")
    assert await probe_udp("127.0.0.1", server.port, udp_check()) == (True, "ok")  # any reply
    assert server.received == [b"ping", b"ping"]


async def test_udp_reply_not_matching(udp_server):
    server = await udp_server(b"busy")
    assert await probe_udp(
        "127.0.0.1", server.port, udp_check(send="status?", expect="^(pong|ok)")
    ) == (False, "reply 'busy' does not match '^(pong|ok)'")
    assert server.received == [b"status?"]


async def test_udp_no_reply_times_out(udp_server):
    server = await udp_server(None)
    result = await asyncio.wait_for(probe_udp("127.0.0.1", server.port, udp_check()), WAIT)
    assert result == (False, "timed out after 200ms")


async def test_udp_nothing_listening():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ok, detail = await asyncio.wait_for(probe_udp("127.0.0.1", port, udp_check()), WAIT)
    # Linux reports the ICMP port unreachable at once; elsewhere it may just time out.
    assert not ok and detail in ("port unreachable", "timed out after 200ms")


# --- agent -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "load"),
    [
        ("0.42", 0.42),
        ("42%", 0.42),
        (" 42 % \n", 0.42),
        ('{"cpu": 0.42}', 0.42),
        ('{"load": 42}', 0.42),
        ('{"utilization": 0.5, "other": "x"}', 0.5),
        ('{"load": 0.1, "cpu": 0.9}', 0.1),
        (b"0.25\n", 0.25),
        ("0", 0.0),
        ("1", 1.0),
        ("100%", 1.0),
        ("75", 0.75),
    ],
)
def test_parse_load(body, load):
    assert parse_load(body) == pytest.approx(load)


@pytest.mark.parametrize(
    "body",
    ["", "busy", "-0.1", "101", "150%", "nan", "inf", "%", '{"load": "high"}',
     '{"load": true}', '{"memory": 0.3}', "[0.4]", b"\xff\xfe"],
)  # fmt: skip
def test_parse_load_rejects_garbage(body):
    with pytest.raises(ValueError):
        parse_load(body)


def agent_handler(body: bytes, status: int = 200, seen: list[bytes] | None = None) -> Any:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await read_request_head(reader)
        if seen is not None:
            seen.append(head)
        writer.write(
            b"HTTP/1.1 %d X\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s"
            % (status, len(body), body)
        )
        await writer.drain()

    return handler


async def test_agent_probe(raw_backend):
    agent = pool_config(1, agent={"path": "/load", "timeout": "1s"}).agent
    assert agent is not None
    seen: list[bytes] = []
    port = await raw_backend(agent_handler(b"42%", seen=seen))
    assert await probe_agent("127.0.0.1", port, agent) == (True, "load 0.42", 0.42)
    assert seen[0].startswith(b"GET /load HTTP/1.1\r\n")
    port = await raw_backend(agent_handler(b"overloaded", 503))
    assert await probe_agent("127.0.0.1", port, agent) == (False, "status 503 (expected 2xx)", None)
    port = await raw_backend(agent_handler(b"fine thanks"))
    ok, detail, load = await probe_agent("127.0.0.1", port, agent)
    assert (ok, load) == (False, None) and detail.startswith("not a load report"), detail
    assert (await probe_agent("127.0.0.1", free_port(), agent))[:2] == (False, "connect refused")


async def test_agent_probe_reads_the_demo_backends_load_report(backends):
    (server,) = await backends(1)
    agent = pool_config(server.port, agent={"timeout": "1s"}).agent
    assert agent is not None
    assert await probe_agent("127.0.0.1", server.port, agent) == (True, "load 0", 0.0)


async def test_agent_port_overrides_the_backends(raw_backend):
    port = await raw_backend(agent_handler(b'{"cpu": 0.5}'))
    agent = pool_config(1, agent={"port": port}).agent
    assert agent is not None
    assert await probe_agent("127.0.0.1", free_port(), agent) == (True, "load 0.5", 0.5)


# --- HealthChecker -----------------------------------------------------------------------------


class StandInPool:
    """Just what the checker uses of a pool."""

    def __init__(self, config: PoolConfig) -> None:
        self.name = "test"
        self.config = config
        self.backends = [Backend(b.address) for b in config.backends]
        self.calls: list[tuple[Backend, bool, str]] = []

    def set_healthy(self, backend: Backend, healthy: bool, reason: str) -> None:
        self.calls.append((backend, healthy, reason))
        backend.healthy = healthy


class WatchedPool:
    """A real pool seen through a wrapper that records each set_healthy before passing it on
    (the methods of a compiled Pool cannot be replaced on the instance)."""

    def __init__(self, pool: Pool, events: list[tuple[Any, ...]]) -> None:
        self._pool = pool
        self._events = events

    def __getattr__(self, name: str) -> Any:
        return getattr(self._pool, name)

    def set_healthy(self, backend: Backend, healthy: bool, reason: str) -> None:
        self._events.append(("set", backend.port, healthy, reason))
        self._pool.set_healthy(backend, healthy, reason)


class Recorder:
    """Every result and every set_healthy of a checker, in order: give the checker
    `recorder.pool`."""

    def __init__(self, pool: Pool | None = None) -> None:
        self.events: list[tuple[Any, ...]] = []
        self.pool = WatchedPool(pool, self.events) if pool is not None else None

    def on_result(self, backend: Backend, ok: bool, detail: str, at: float) -> None:
        self.events.append(("result", backend.port, ok, detail))

    def results(self, port: int) -> list[tuple[bool, str]]:
        return [(e[2], e[3]) for e in self.events if e[0] == "result" and e[1] == port]

    def sets(self, port: int) -> list[tuple[bool, str]]:
        return [(e[2], e[3]) for e in self.events if e[0] == "set" and e[1] == port]

    def run_before_set(self, port: int, healthy: bool) -> list[bool]:
        """The results of `port` in a row of one kind just before it was set `healthy`."""
        index = self.events.index(next(e for e in self.events if e[:3] == ("set", port, healthy)))
        before = [e[2] for e in self.events[:index] if e[0] == "result" and e[1] == port]
        run: list[bool] = []
        for ok in reversed(before):
            if ok == healthy:
                run.append(ok)
            else:
                break
        return run


def fast_http(**fields: Any) -> dict[str, Any]:
    base = {"type": "http", "interval": "50ms", "timeout": "200ms", "jitter": 0}
    return {**base, **fields}


@pytest.fixture
async def checkers() -> AsyncIterator[Callable[..., HealthChecker]]:
    made: list[HealthChecker] = []

    def make(pool: Any, **kwargs: Any) -> HealthChecker:
        checker = HealthChecker(pool, kwargs.pop("clock", MonotonicClock()), **kwargs)
        made.append(checker)
        return checker

    yield make
    for checker in made:
        await checker.stop()
    assert all(not checker.tasks for checker in made)


async def test_checker_with_a_stand_in_pool(checkers):
    pool = StandInPool(
        pool_config(free_port(), health_check={"interval": "20ms", "timeout": "1s", "jitter": 0})
    )
    seen: list[tuple[bool, str, float]] = []
    checker = checkers(
        pool, clock=ManualClock(100.0), on_result=lambda b, ok, d, at: seen.append((ok, d, at))
    )
    checker.start()
    await until(lambda: bool(pool.calls))
    (backend,) = pool.backends
    assert pool.calls == [(backend, False, "unhealthy after 3 failed checks: connect refused")]
    assert seen[:3] == [(False, "connect refused", 100.0)] * 3
    assert backend.last_check == (False, 100.0, "connect refused")
    state = checker.state_of(backend)
    assert state is not None and not state.healthy


async def test_checker_marks_a_failing_backend_down_then_up(backends, checkers):
    a, b = await backends(2)
    pool = Pool("web", pool_config(a.port, b.port, health_check=fast_http()), MonotonicClock())
    recorder = Recorder(pool)
    checker = checkers(recorder.pool, on_result=recorder.on_result)
    checker.start()
    assert len(checker.tasks) == 2
    await until(lambda: len(recorder.results(a.port)) >= 2)

    await set_health(a, False)
    await until(lambda: bool(recorder.sets(a.port)))
    assert recorder.sets(a.port) == [
        (False, "unhealthy after 3 failed checks: status 503 (expected 200-399)")
    ]
    assert recorder.run_before_set(a.port, False) == [False] * 3
    backend_a = pool.backends[0]
    assert not backend_a.healthy and not backend_a.ready(pool.clock.now())
    assert backend_a.last_check is not None and backend_a.last_check[0] is False

    await set_health(a, True)
    await until(lambda: len(recorder.sets(a.port)) == 2)
    assert recorder.sets(a.port)[1] == (True, "healthy after 2 passed checks")
    assert recorder.run_before_set(a.port, True) == [True] * 2
    assert backend_a.healthy
    assert recorder.sets(b.port) == []
    assert all(ok for ok, _ in recorder.results(b.port))


async def test_a_hanging_backend_does_not_delay_the_others(backends, raw_backend, checkers):
    async def hang(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()

    slow = await raw_backend(hang)
    (fast,) = await backends(1)
    config = pool_config(slow, fast.port, health_check=fast_http(timeout="3s"))
    pool = Pool("web", config, MonotonicClock())
    recorder = Recorder(pool)
    checker = checkers(recorder.pool, on_result=recorder.on_result)
    checker.start()
    await set_health(fast, False)
    await until(lambda: bool(recorder.sets(fast.port)), timeout=2.5)
    await set_health(fast, True)
    await until(lambda: len(recorder.sets(fast.port)) == 2, timeout=2.5)
    # All of that happened while the first check of the hanging backend was still waiting.
    assert recorder.results(slow) == []
    await checker.stop()  # cancels the hanging check: nothing left behind
    assert checker.tasks == []
    assert recorder.results(slow) == []


async def test_stop_leaves_no_tasks(backends, raw_backend, checkers):
    async def hang(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()

    (server,) = await backends(1)
    slow = await raw_backend(hang)
    config = pool_config(server.port, slow, health_check=fast_http(timeout="3s"))
    recorder = Recorder()
    checker = checkers(Pool("web", config, MonotonicClock()), on_result=recorder.on_result)
    checker.start()
    checker.start()  # idempotent
    assert len(checker.tasks) == 2
    await until(lambda: len(recorder.results(server.port)) >= 2)
    tasks = checker.tasks
    await asyncio.wait_for(checker.stop(), WAIT)
    assert checker.tasks == []
    assert all(task.done() for task in tasks)
    assert not [t for t in asyncio.all_tasks() if t.get_name().startswith("health ")]


async def test_no_health_check_and_no_agent_starts_nothing(backends, checkers):
    (server,) = await backends(1)
    checker = checkers(Pool("web", pool_config(server.port), MonotonicClock()))
    checker.start()
    assert not checker.enabled and checker.tasks == []


async def test_add_and_remove_backend_at_runtime(backends, checkers):
    a, b = await backends(2)
    pool = StandInPool(pool_config(a.port, health_check=fast_http()))
    recorder = Recorder()
    checker = checkers(pool, on_result=recorder.on_result)
    checker.start()
    added = Backend(HostPort("127.0.0.1", b.port))
    checker.add_backend(added)
    checker.add_backend(added)  # once is enough
    assert len(checker.tasks) == 2
    await until(lambda: len(recorder.results(b.port)) >= 2)
    checker.remove_backend(added)
    assert checker.state_of(added) is None
    count = len(recorder.results(b.port))
    checked = len(recorder.results(a.port))
    await until(lambda: len(recorder.results(a.port)) >= checked + 3)
    assert len(recorder.results(b.port)) == count  # no check of a removed backend
    assert len(checker.tasks) == 1


async def test_a_failing_hook_does_not_stop_the_checks(checkers, caplog):
    pool = StandInPool(
        pool_config(free_port(), health_check={"interval": "10ms", "timeout": "1s", "jitter": 0})
    )
    results: list[bool] = []

    def hook(backend: Backend, ok: bool, detail: str, at: float) -> None:
        results.append(ok)
        raise RuntimeError("metrics are down")

    checker = checkers(pool, on_result=hook)
    with caplog.at_level("ERROR", logger="usher.health"):
        checker.start()
        await until(lambda: bool(pool.calls))
    assert len(results) == 3
    assert "health check hook failed" in caplog.text


async def test_checker_sleeps_the_states_delays(checkers):
    """The sleep is injectable (virtual time): it is asked for interval, then the unhealthy one."""
    config = pool_config(
        free_port(),
        health_check={"interval": "10s", "unhealthy_interval": "1s", "timeout": "1s", "jitter": 0},
    )
    pool = StandInPool(config)
    delays: list[float] = []

    async def sleep(seconds: float) -> None:
        delays.append(seconds)
        await asyncio.sleep(0)

    checker = checkers(pool, sleep=sleep)
    checker.start()
    await until(lambda: len(delays) >= 6)
    await checker.stop()
    assert delays[:6] == [0.0, 10.0, 10.0, 1.0, 1.0, 1.0]


async def test_agent_polls_set_the_load(raw_backend, checkers):
    port = await raw_backend(agent_handler(b'{"load": 0.42}'))
    config = pool_config(port, agent={"interval": "20ms", "timeout": "1s"})
    pool = Pool("web", config, MonotonicClock())
    checker = checkers(pool)
    checker.start()
    assert [t.get_name() for t in checker.tasks] == [f"agent web 127.0.0.1:{port}"]
    await until(lambda: pool.backends[0].load is not None)
    assert pool.backends[0].load == pytest.approx(0.42)


async def test_agent_health_check_is_one_request_per_interval(raw_backend, checkers):
    seen: list[bytes] = []
    reply = {"status": 200}

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await agent_handler(b"30%", reply["status"], seen)(reader, writer)

    port = await raw_backend(handler)
    config = pool_config(
        port,
        agent={"path": "/load", "interval": "20ms", "timeout": "1s"},
        health_check={"type": "agent", "jitter": 0},
    )
    pool = Pool("web", config, MonotonicClock())
    recorder = Recorder(pool)
    checker = checkers(recorder.pool, on_result=recorder.on_result)
    checker.start()
    assert len(checker.tasks) == 1  # the poll is the check
    await until(lambda: len(recorder.results(port)) >= 3)
    assert pool.backends[0].load == pytest.approx(0.3)
    reply["status"] = 503
    await until(lambda: bool(recorder.sets(port)))
    assert recorder.sets(port) == [
        (False, "unhealthy after 3 failed checks: status 503 (expected 2xx)")
    ]
    assert pool.backends[0].load is None
    await checker.stop()
    # One request per check (the last may have been cut off by stop() before it was answered).
    assert len(seen) - len(recorder.results(port)) in (0, 1)
    assert all(head.startswith(b"GET /load ") for head in seen)
