"""Active health checks: a sans-IO verdict per backend, the probes, and the tasks that run them.

`HealthState` turns check results into healthy/unhealthy transitions (thresholds, hysteresis,
the next delay); it does no I/O and reads no clock. The probes (`probe_tcp`, `probe_http`,
`probe_udp`, `probe_agent`) each do one bounded check and never raise. `HealthChecker` runs one
task per backend of a pool and tells the pool when a verdict changes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import random
import re
import socket
import ssl
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from usher.clock import Clock
from usher.config import HostPort, parse_status_ranges
from usher.errors import UpstreamProtocolError
from usher.http.codec import (
    ClientWriter,
    Data,
    EndOfMessage,
    Event,
    Headers,
    Request,
    Response,
    ResponseReader,
    Upgraded,
)
from usher.l4.accept import connect
from usher.proxy_protocol import encode_v1, encode_v2_local
from usher.tls import upstream_context

if TYPE_CHECKING:
    from usher.config import AgentOptions, HealthCheck, PoolConfig, UpstreamTls
    from usher.pool import Backend

__all__ = [
    "AGENT_JITTER",
    "BODY_LIMIT",
    "USER_AGENT",
    "CheckResult",
    "CheckedPool",
    "HealthChecker",
    "HealthState",
    "OnResult",
    "Transition",
    "parse_load",
    "probe_agent",
    "probe_http",
    "probe_tcp",
    "probe_udp",
    "tls_context",
]

log = logging.getLogger("usher.health")

# How much of a response body an http check looks at for `expect_body`.
BODY_LIMIT = 64 * 1024
USER_AGENT = "usher-health"
# Spread of agent polls that are not a health check (agent options have no jitter of their own).
AGENT_JITTER = 0.1
# However the jitter falls, checks never run back to back.
MIN_DELAY = 0.001
_LOAD_KEYS = ("load", "cpu", "utilization")

Result = tuple[bool, str]
OnResult = Callable[["Backend", bool, str, float], None]


# --- The state machine -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Transition:
    """A change of verdict, reported once: the backend is now `healthy` (or not) because..."""

    healthy: bool
    reason: str


@dataclass(frozen=True, slots=True)
class CheckResult:
    """The latest check of a backend, as the admin API shows it (`at` on the injected clock)."""

    ok: bool
    at: float
    detail: str


def _plural(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


class HealthState:
    """The active-check verdict on one backend, from results fed to it (sans-IO).

    A backend starts healthy: a fresh backend takes traffic until checks say otherwise, so a
    start or reload does not wait `healthy_threshold` intervals before serving (nginx and
    HAProxy behave alike once their first check has run; passive health covers the meantime).
    It turns unhealthy after `unhealthy_threshold` failures in a row and healthy again after
    `healthy_threshold` passes in a row; a result of the other kind resets the count, so a
    flapping backend stays where it is.
    """

    __slots__ = ("check", "failures", "healthy", "last", "passes")

    def __init__(self, check: HealthCheck, *, healthy: bool = True) -> None:
        self.check = check
        self.healthy = healthy
        self.passes = 0  # consecutive
        self.failures = 0  # consecutive
        self.last: CheckResult | None = None

    def record(self, ok: bool, detail: str, *, at: float = 0.0) -> Transition | None:
        """Take one result; returns the transition it causes, if any (once per change)."""
        self.last = CheckResult(ok, at, detail)
        if ok:
            self.failures = 0
            self.passes += 1
            threshold = self.check.healthy_threshold
            if not self.healthy and self.passes >= threshold:
                self.healthy = True
                return Transition(True, f"healthy after {_plural(threshold, 'passed check')}")
        else:
            self.passes = 0
            self.failures += 1
            threshold = self.check.unhealthy_threshold
            if self.healthy and self.failures >= threshold:
                self.healthy = False
                reason = f"unhealthy after {_plural(threshold, 'failed check')}: {detail}"
                return Transition(False, reason)
        return None

    def next_delay(self, rng: random.Random) -> float:
        """Seconds until the next check: `interval` (`unhealthy_interval` while down), ±jitter."""
        check = self.check
        base = check.interval
        if not self.healthy and check.unhealthy_interval is not None:
            base = check.unhealthy_interval
        return _jittered(base, check.jitter, rng)

    def __repr__(self) -> str:
        verdict = "healthy" if self.healthy else "unhealthy"
        return f"<HealthState {verdict} passes={self.passes} failures={self.failures}>"


def _jittered(base: float, jitter: float, rng: random.Random) -> float:
    if jitter <= 0:
        return base
    return max(MIN_DELAY, base * (1.0 + rng.uniform(-jitter, jitter)))


# --- Probes ------------------------------------------------------------------------------------


def _seconds(value: float) -> str:
    if value < 1:
        return f"{value * 1000:g}ms"
    return f"{value:g}s"


def _describe(exc: BaseException, timeout: float) -> str:
    """A short, stable detail for the admin API and the logs."""
    if isinstance(exc, TimeoutError):
        return f"timed out after {_seconds(timeout)}"
    if isinstance(exc, ConnectionRefusedError):
        return "connect refused"
    if isinstance(exc, ssl.SSLCertVerificationError):
        message = exc.verify_message or exc.reason or ""
        return f"certificate verify failed: {message}" if message else "certificate verify failed"
    if isinstance(exc, ssl.SSLError):
        return f"tls error: {exc.reason or exc}"
    if isinstance(exc, ConnectionResetError):
        return "connection reset"
    if isinstance(exc, UpstreamProtocolError):
        return str(exc)  # "invalid response: ..." from the codec's reader
    if isinstance(exc, OSError) and exc.strerror:
        text = exc.strerror[:1].lower() + exc.strerror[1:]
        return f"cannot resolve host: {text}" if isinstance(exc, socket.gaierror) else text
    return str(exc) or type(exc).__name__


def _tls_or_error(check: HealthCheck) -> ssl.SSLContext | str:
    try:
        return tls_context(check)
    except (OSError, ssl.SSLError) as exc:
        return f"tls setup failed: {_describe(exc, check.timeout)}"


def _pool_tls_or_error(tls: UpstreamTls) -> ssl.SSLContext | str:
    try:
        return upstream_context(tls)
    except (OSError, ssl.SSLError) as exc:
        return f"tls setup failed: {exc}"


def tls_context(check: HealthCheck) -> ssl.SSLContext:
    """The client context of an https check (reads the CA file: build it once, not per check)."""
    ctx = ssl.create_default_context(cafile=check.tls_ca)
    if not check.tls_verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx


async def probe_tcp(host: str, port: int, check: HealthCheck) -> Result:
    """Passes when a TCP connection to host:port (or `check.port`) opens."""
    port = check.port or port
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(check.timeout):
            transport, _ = await loop.create_connection(asyncio.Protocol, host, port)
    except Exception as exc:
        return False, _describe(exc, check.timeout)
    transport.close()
    return True, "ok"


class _HttpExchange(asyncio.Protocol):
    """Writes one request and reads the response with the codec, up to `BODY_LIMIT` of body."""

    def __init__(self, method: bytes, path: bytes, headers: Headers, done: asyncio.Future[None]):
        self.done = done
        self.reader = ResponseReader()
        writer = ClientWriter(self.reader)  # tells the reader a HEAD answer has no body
        self.request = writer.send(Request(method, path, b"1.1", headers))
        self.request += writer.send(EndOfMessage())
        self.status: int | None = None
        self.body = bytearray()
        self.complete = False
        self.error: BaseException | None = None

    def _finish(self, error: BaseException | None = None) -> None:
        if not self.done.done():
            self.error = error
            self.done.set_result(None)

    # transport events

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport.write(self.request)  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        if self.done.done():
            return
        try:
            self._events(self.reader.feed(data))
        except UpstreamProtocolError as exc:
            self._finish(exc)

    def eof_received(self) -> bool:
        if not self.done.done():
            # eof() ends a body that runs to the close; cut short, it raises, and
            # connection_lost ends the exchange with what came.
            with contextlib.suppress(UpstreamProtocolError):
                self._events(self.reader.eof())
        return False  # close our side too; connection_lost ends the exchange

    def connection_lost(self, exc: Exception | None) -> None:
        self._finish(exc)

    def _events(self, events: list[Event]) -> None:
        for event in events:
            if self.done.done():
                return
            kind = type(event)
            if kind is Response:
                assert isinstance(event, Response)
                if not event.interim:  # an interim 1xx answer: the real one follows
                    self.status = event.status
            elif kind is Data and self.status is not None:
                assert isinstance(event, Data)
                room = BODY_LIMIT - len(self.body)
                self.body += event.data[:room]
                if len(self.body) >= BODY_LIMIT:
                    self._finish()
            elif kind is EndOfMessage or kind is Upgraded:
                self.complete = True
                self._finish()


async def _http_request(
    host: str,
    port: int,
    method: str,
    path: str,
    host_header: str,
    *,
    ssl_context: ssl.SSLContext | None = None,
    server_hostname: str | None = None,
    preamble: bytes | None = None,
) -> tuple[int, bytes]:
    """(status, first `BODY_LIMIT` bytes of the body) of one request; raises on failure.
    `preamble` (a PROXY header) is sent first, in the clear."""
    headers = [
        (b"Host", host_header.encode("latin-1")),
        (b"User-Agent", USER_AGENT.encode("latin-1")),
        (b"Accept", b"*/*"),
        (b"Connection", b"close"),
    ]
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()
    exchange = _HttpExchange(method.encode("latin-1"), path.encode("latin-1"), headers, done)
    name = (server_hostname or host) if ssl_context is not None else None
    if preamble is None:
        transport, _ = await loop.create_connection(
            lambda: exchange, host, port, ssl=ssl_context, server_hostname=name
        )
    else:
        sock = await connect(loop, host, port)
        try:
            await loop.sock_sendall(sock, preamble)
            transport, _ = await loop.create_connection(
                lambda: exchange, sock=sock, ssl=ssl_context, server_hostname=name
            )
        except BaseException:
            sock.close()
            raise
    try:
        await done
    finally:
        # We have what we need (or gave up): no graceful TLS shutdown to wait for.
        transport.abort()
    if exchange.status is None:
        if exchange.error is not None:
            raise exchange.error
        raise ConnectionError("connection closed before a response")
    # Without a length the body ends with the connection: what came is all there is.
    return exchange.status, bytes(exchange.body)


def _host_header(host: str, port: int) -> str:
    return str(HostPort(host, port))


async def probe_http(
    host: str,
    port: int,
    check: HealthCheck,
    *,
    ssl_context: ssl.SSLContext | None = None,
    preamble: bytes | None = None,
) -> Result:
    """Passes when `check.method check.path` answers a status in `expect_status` (and a body
    containing `expect_body`, when set). Over TLS when `check.tls`; pass `ssl_context` (see
    `tls_context`) to avoid building one per check."""
    port = check.port or port
    if check.tls and ssl_context is None:
        made = _tls_or_error(check)
        if isinstance(made, str):
            return False, made
        ssl_context = made
    try:
        async with asyncio.timeout(check.timeout):
            status, body = await _http_request(
                host,
                port,
                check.method,
                check.path,
                check.host or _host_header(host, port),
                ssl_context=ssl_context if check.tls else None,
                server_hostname=check.tls_server_name or host,
                preamble=preamble,
            )
    except Exception as exc:
        return False, _describe(exc, check.timeout)
    if not any(low <= status <= high for low, high in parse_status_ranges(check.expect_status)):
        return False, f"status {status} (expected {check.expect_status})"
    if check.expect_body is not None and check.expect_body.encode() not in body:
        return False, f"body lacks {check.expect_body!r}"
    return True, f"status {status}"


class _UdpExchange(asyncio.DatagramProtocol):
    def __init__(self, payload: bytes, done: asyncio.Future[None]) -> None:
        self.payload = payload
        self.done = done
        self.reply: bytes | None = None
        self.error: BaseException | None = None

    def _finish(self, reply: bytes | None, error: BaseException | None) -> None:
        if not self.done.done():
            self.reply, self.error = reply, error
            self.done.set_result(None)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport.sendto(self.payload)  # type: ignore[attr-defined]

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self._finish(data, None)

    def error_received(self, exc: Exception) -> None:
        # On a connected socket, an ICMP port unreachable comes back as ConnectionRefusedError.
        self._finish(None, exc)

    def connection_lost(self, exc: Exception | None) -> None:
        self._finish(None, exc or ConnectionError("closed before a reply"))


async def probe_udp(host: str, port: int, check: HealthCheck) -> Result:
    """Passes when a datagram of `check.send` gets a reply (matching `check.expect`, if set)."""
    port = check.port or port
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()
    exchange = _UdpExchange(check.send.encode(), done)
    transport: asyncio.BaseTransport | None = None
    try:
        async with asyncio.timeout(check.timeout):
            transport, _ = await loop.create_datagram_endpoint(
                lambda: exchange, remote_addr=(host, port)
            )
            await done
    except Exception as exc:
        return False, _describe(exc, check.timeout)
    finally:
        if transport is not None:
            transport.close()
    if exchange.reply is None:
        error = exchange.error
        if isinstance(error, ConnectionRefusedError):
            return False, "port unreachable"
        return False, _describe(error or ConnectionError("no reply"), check.timeout)
    if check.expect is not None:
        text = exchange.reply.decode("latin-1")
        if re.search(check.expect, text) is None:
            return False, f"reply {text[:60]!r} does not match {check.expect!r}"
    return True, "ok"


def _scaled(value: float, percent: bool) -> float:
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"load {value!r} is out of range")
    if percent or value > 1:
        if value > 100:
            raise ValueError(f"load {value!r} is out of range (0..1 or 0%..100%)")
        return value / 100
    return value


def parse_load(body: bytes | str) -> float:
    """A backend's load report as a fraction 0..1.

    Accepted: a number (`0.42`), a percentage (`42%`), or a JSON object with a number under
    `load`, `cpu` or `utilization` (the first present). Numbers above 1 (up to 100) are read
    as percentages. Anything else raises ValueError.
    """
    text = body.decode("utf-8", "replace") if isinstance(body, bytes) else body
    text = text.strip()
    if text.endswith("%"):
        try:
            return _scaled(float(text[:-1].strip()), True)
        except ValueError as exc:
            raise ValueError(f"not a load report: {text[:40]!r} ({exc})") from None
    try:
        return _scaled(float(text), False)
    except ValueError:
        pass
    try:
        doc = json.loads(text)
    except ValueError:
        raise ValueError(f"not a load report: {text[:40]!r}") from None
    if isinstance(doc, dict):
        for key in _LOAD_KEYS:
            value = doc.get(key)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError(f"not a load report: {key} is {value!r}, not a number")
            return _scaled(float(value), False)
    raise ValueError(f"not a load report: {text[:40]!r} (no {', '.join(_LOAD_KEYS)})")


async def probe_agent(host: str, port: int, agent: AgentOptions) -> tuple[bool, str, float | None]:
    """GET the backend's load report: (ok, detail, load). Passes on a 2xx answer that parses."""
    port = agent.port or port
    try:
        async with asyncio.timeout(agent.timeout):
            status, body = await _http_request(
                host, port, "GET", agent.path, _host_header(host, port)
            )
    except Exception as exc:
        return False, _describe(exc, agent.timeout), None
    if not 200 <= status <= 299:
        return False, f"status {status} (expected 2xx)", None
    try:
        load = parse_load(body)
    except ValueError as exc:
        return False, str(exc), None
    return True, f"load {load:g}", load


# --- The checker -------------------------------------------------------------------------------


class CheckedPool(Protocol):
    """What the checker needs of a pool (`usher.pool.Pool` is one)."""

    @property
    def name(self) -> str: ...

    @property
    def config(self) -> PoolConfig: ...

    @property
    def backends(self) -> Sequence[Backend]: ...

    def set_healthy(self, backend: Backend, healthy: bool, reason: str) -> None: ...


Sleep = Callable[[float], Awaitable[None]]


class HealthChecker:
    """Runs a pool's active checks: one task per backend, so a slow one delays no other.

    Each task loops: probe, record, apply, sleep. A change of verdict goes to
    `pool.set_healthy(backend, healthy, reason)`; every result to `on_result(backend, ok,
    detail, at)` and `backend.last_check`. When the pool has `agent` options, each backend's
    load report is polled every `agent.interval` into `backend.load` (None while it cannot be
    had); with `health_check.type: agent` that same poll is the health check (one request per
    interval, on the agent's interval and timeout, with the check's thresholds).
    """

    def __init__(
        self,
        pool: CheckedPool,
        clock: Clock,
        *,
        rng: random.Random | None = None,
        on_result: OnResult | None = None,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self.pool = pool
        self.clock = clock
        self.rng = rng or random.Random()
        self.on_result = on_result
        self._sleep = sleep
        config = pool.config
        self.agent: AgentOptions | None = config.agent
        check = config.health_check
        if check is not None and check.type == "agent" and self.agent is not None:
            check = check.model_copy(
                update={"interval": self.agent.interval, "timeout": self.agent.timeout}
            )
        self.check: HealthCheck | None = check
        self.states: dict[Backend, HealthState] = {}
        self._tasks: dict[Backend, list[asyncio.Task[None]]] = {}
        self._stopping: set[asyncio.Task[None]] = set()
        # Built once: it reads the CA file. A CA that cannot be loaded fails every check.
        # A backend that expects PROXY headers gets one on http checks too: a LOCAL one (v2) or
        # UNKNOWN (v1), which say "the balancer's own connection" (HAProxy's check-send-proxy).
        self._proxy_header: bytes | None = None
        if config.send_proxy_protocol == "v2":
            self._proxy_header = encode_v2_local()
        elif config.send_proxy_protocol == "v1":
            self._proxy_header = encode_v1(None, None)
        self._ssl: ssl.SSLContext | str | None = None
        if check is not None and check.type == "http" and check.tls:
            self._ssl = _tls_or_error(check)
        elif (
            check is not None
            and check.type == "http"
            and config.tls is not None
            and "tls" not in check.model_fields_set
        ):
            # A pool that re-encrypts is checked the way it is used: over the same TLS.
            self._ssl = _pool_tls_or_error(config.tls)
            self.check = check.model_copy(
                update={
                    "tls": True,
                    "tls_server_name": check.tls_server_name or config.tls.server_name,
                }
            )

    @property
    def enabled(self) -> bool:
        return self.check is not None or self.agent is not None

    @property
    def tasks(self) -> list[asyncio.Task[None]]:
        """Every task still running (or being cancelled)."""
        running = [t for tasks in self._tasks.values() for t in tasks]
        return running + [t for t in self._stopping if not t.done()]

    def state_of(self, backend: Backend) -> HealthState | None:
        return self.states.get(backend)

    def start(self) -> None:
        """Start checking every backend of the pool (needs a running event loop)."""
        for backend in list(self.pool.backends):
            self.add_backend(backend)

    async def stop(self) -> None:
        """Cancel every task and wait until they are gone."""
        for backend in list(self._tasks):
            self.remove_backend(backend)
        pending = list(self._stopping)
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)

    def add_backend(self, backend: Backend) -> None:
        """Start checking `backend` (nothing when it is checked already, or nothing is on)."""
        if backend in self._tasks or not self.enabled:
            return
        tasks: list[asyncio.Task[None]] = []
        name = f"{self.pool.name} {backend.label}"
        check = self.check
        if check is not None:
            state = HealthState(check, healthy=backend.healthy)
            self.states[backend] = state
            tasks.append(
                asyncio.create_task(self._check_loop(backend, state), name=f"health {name}")
            )
        if self.agent is not None and (check is None or check.type != "agent"):
            tasks.append(asyncio.create_task(self._agent_loop(backend), name=f"agent {name}"))
        self._tasks[backend] = tasks

    def remove_backend(self, backend: Backend) -> None:
        """Stop checking `backend`; `stop()` waits for its tasks if they are not gone yet."""
        self.states.pop(backend, None)
        for task in self._tasks.pop(backend, []):
            task.cancel()
            self._stopping.add(task)
            task.add_done_callback(self._stopping.discard)

    # the tasks

    async def _probe(self, backend: Backend) -> Result:
        check = self.check
        assert check is not None
        host, port = backend.host, backend.port
        if check.type == "http":
            if isinstance(self._ssl, str):
                return False, self._ssl
            return await probe_http(
                host, port, check, ssl_context=self._ssl, preamble=self._proxy_header
            )
        if check.type == "udp":
            return await probe_udp(host, port, check)
        if check.type == "agent" and self.agent is not None:
            ok, detail, load = await probe_agent(host, port, self.agent)
            backend.load = load
            return ok, detail
        return await probe_tcp(host, port, check)

    async def _check_loop(self, backend: Backend, state: HealthState) -> None:
        check = state.check
        # Spread the first round too, so backends started together are not checked together.
        await self._sleep(self.rng.uniform(0, check.interval * check.jitter))
        while True:
            started = time.perf_counter()
            ok, detail = await self._probe(backend)
            backend.check_rtt = time.perf_counter() - started if ok else None
            self._record(backend, state, ok, detail)
            await self._sleep(state.next_delay(self.rng))

    def _record(self, backend: Backend, state: HealthState, ok: bool, detail: str) -> None:
        now = self.clock.now()
        backend.last_check = (ok, now, detail)
        transition = state.record(ok, detail, at=now)
        # A failing hook must not end the checks of this backend.
        if self.on_result is not None:
            try:
                self.on_result(backend, ok, detail, now)
            except Exception:
                log.exception("health check hook failed for %s", backend.label)
        if transition is not None:
            try:
                self.pool.set_healthy(backend, transition.healthy, transition.reason)
            except Exception:
                log.exception("cannot apply health of %s", backend.label)

    async def _agent_loop(self, backend: Backend) -> None:
        agent = self.agent
        assert agent is not None
        await self._sleep(self.rng.uniform(0, agent.interval * AGENT_JITTER))
        reachable = True
        while True:
            ok, detail, load = await probe_agent(backend.host, backend.port, agent)
            backend.load = load
            if ok != reachable:
                reachable = ok
                if ok:
                    log.info("load report of %s is back: %s", backend.label, detail)
                else:
                    log.warning("no load report from %s: %s", backend.label, detail)
            await self._sleep(_jittered(agent.interval, AGENT_JITTER, self.rng))

    def __repr__(self) -> str:
        kind = self.check.type if self.check is not None else "agent only"
        return f"<HealthChecker {self.pool.name} [{kind}, {len(self._tasks)} backends]>"
