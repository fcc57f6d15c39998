"""The probes of active health checks: each does one bounded check and never raises.

`probe_tcp` opens a connection, `probe_http` asks for a status (over TLS, after a PROXY
header, as the pool's connections are made), `probe_udp` waits for a reply to a datagram, and
`probe_agent` reads a backend's load report (`parse_load`). A failure comes back as a short,
stable detail for the admin API and the logs.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import re
import socket
import ssl
from typing import TYPE_CHECKING, Any

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
from usher.net import open_connection
from usher.tls import upstream_context

if TYPE_CHECKING:
    from usher.config import AgentOptions, HealthCheck, UpstreamTls

# How much of a response body an http check looks at for `expect_body`.
BODY_LIMIT = 64 * 1024
USER_AGENT = "usher-health"
_LOAD_KEYS = ("load", "cpu", "utilization")

Result = tuple[bool, str]


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


def tls_or_error(check: HealthCheck) -> ssl.SSLContext | str:
    try:
        return tls_context(check)
    except (OSError, ssl.SSLError) as exc:
        return f"tls setup failed: {_describe(exc, check.timeout)}"


def pool_tls_or_error(tls: UpstreamTls) -> ssl.SSLContext | str:
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
    transport, _ = await open_connection(
        loop, lambda: exchange, host, port, tls=ssl_context, server_name=name, preamble=preamble
    )
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
        made = tls_or_error(check)
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
