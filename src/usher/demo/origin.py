"""The demo and test backend: a small, fast HTTP/1.1 and WebSocket echo server.

`usher backend` and `usher demo` run it, and the integration tests proxy to it.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hashlib
import json
import math
import random
import socket
from collections import deque
from dataclasses import dataclass, field
from functools import cache
from http import HTTPStatus

from usher.errors import ClientError
from usher.http.codec import (
    CHUNKED,
    ConnState,
    Data,
    EndOfMessage,
    Event,
    Headers,
    InformationalResponse,
    Request,
    RequestReader,
    Response,
    ServerWriter,
    Upgraded,
)
from usher.http.framing import body_forbidden

_CHUNK = 64 * 1024
# 64 KiB is a multiple of 256, so consecutive blocks continue the pattern seamlessly.
_PATTERN = bytes(range(256)) * (_CHUNK // 256)
# Request body we hold (latency, pipelining) before we stop reading from the client.
_HIGH_WATER = 256 * 1024
# Paths answered at once, never delayed by `latency` nor failed by `fail_rate`.
_NO_DELAY = ("/health", "/load")
_WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
_DISCARD, _BUFFER, _STREAM = 0, 1, 2  # what happens to the request body as it arrives
_TEXT = b"text/plain; charset=utf-8"
_JSON = b"application/json"
_OCTETS = b"application/octet-stream"
_CONNECTION_CLOSE = (b"Connection", b"close")
# What a bad request that left no head is answered as: an HTTP/1.1 GET.
_NO_REQUEST = Request(b"GET", b"/", b"1.1", [])
_CONTINUE = InformationalResponse(100)
_END = EndOfMessage()


@dataclass
class BackendOptions:
    name: str = "backend"
    latency: float = 0.0  # seconds added before each response (not /health, /load)
    fail_rate: float = 0.0  # fraction of requests (not /health, /load) answered 500
    seed: int | None = None  # for fail_rate's random.Random
    capacity: int = 16  # requests in flight that /load reports as full (1.0)

    def __post_init__(self) -> None:
        if not (self.latency >= 0 and math.isfinite(self.latency)):
            raise ValueError(f"latency must be >= 0, not {self.latency}")
        if not 0 <= self.fail_rate <= 1:
            raise ValueError(f"fail_rate must be within [0, 1], not {self.fail_rate}")


def _keep_upgrade(request: Request) -> bytes | None:
    """Only a WebSocket upgrade to /ws is taken; other upgrades (h2c, ...) are declined by
    answering in HTTP/1.1."""
    upgrade = request.upgrade
    if upgrade is None or request.target.partition(b"?")[0] != b"/ws":
        return None
    return upgrade if b"websocket" in upgrade.lower() else None


@cache
def _reason(status: int) -> bytes:
    try:
        return HTTPStatus(status).phrase.encode()
    except ValueError:
        return b"Unknown"


def _framing(chunked: bool, length: int) -> tuple[bytes, bytes]:
    """The framing header to give the writer, which keeps it or frames the body otherwise."""
    return (b"Transfer-Encoding", CHUNKED) if chunked else (b"Content-Length", b"%d" % length)


def _unmask(data: bytes | bytearray, mask: bytes, offset: int) -> bytes:
    # XOR of two big integers runs in C: far faster than a Python loop over the bytes.
    n = len(data)
    if offset % 4:
        mask = mask[offset % 4 :] + mask[: offset % 4]
    key = (mask * (n // 4 + 1))[:n]
    return (int.from_bytes(data, "little") ^ int.from_bytes(key, "little")).to_bytes(n, "little")


def _frame_head(b0: int, length: int) -> bytes:
    if length < 126:
        return bytes((b0, length))
    if length < 1 << 16:
        return bytes((b0, 126)) + length.to_bytes(2, "big")
    return bytes((b0, 127)) + length.to_bytes(8, "big")


class BackendServer:
    """A running backend; `start_backend` makes one."""

    def __init__(self, options: BackendOptions) -> None:
        self.options = options
        self.healthy = True
        self.connections_total = 0
        self.requests_total = 0
        self.in_flight = 0  # requests being answered (the /load report counts them)
        self.host = ""
        self.port = 0
        self._server: asyncio.Server | None = None
        self._connections: set[_Connection] = set()
        self._rng = random.Random(options.seed)
        name = options.name.encode()
        self._x_backend = (b"X-Backend", name)
        self._hello = name + b"\n"

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def _fails(self) -> bool:
        rate = self.options.fail_rate
        return rate > 0 and self._rng.random() < rate

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for conn in list(self._connections):
            conn.transport.abort()
        # connection_lost runs from call_soon: let it release the sockets before we return.
        await asyncio.sleep(0)
        if self._server is not None:
            await self._server.wait_closed()


@dataclass(slots=True, eq=False)
class _Request:
    """One request, from its first byte until its answer is written."""

    target: bytearray = field(default_factory=bytearray)
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    method: bytes = b"GET"
    path: str = ""
    query: str = ""
    http10: bool = False
    head: Request = _NO_REQUEST  # what the writer is told it answers
    close: bool = False  # the answer ends the connection, whatever the request asked
    begun: bool = False  # the writer was told its answer is next
    headers_done: bool = False
    complete: bool = False
    chunked: bool = False
    length: int = 0
    expect: bool = False  # 100-continue still owed
    ws: bool = False  # a WebSocket upgrade to /ws
    mode: int = _DISCARD
    body: list[bytes] = field(default_factory=list)  # held until the answer starts
    buffered: int = 0
    error: int = 0

    def header(self, name: bytes) -> bytes | None:
        for key, value in self.headers:
            if key.lower() == name:
                return value
        return None


class _Connection(asyncio.Protocol):
    """One client connection. Requests queue in arrival order; only the head may write."""

    __slots__ = (
        "_advancing",
        "_broken",
        "_busy",
        "_counted",
        "_current",
        "_pumping",
        "_queue",
        "_read_paused",
        "_reader",
        "_remaining",
        "_timer",
        "_upgraded",
        "_write_paused",
        "_writer",
        "_ws_buf",
        "_ws_left",
        "_ws_mask",
        "_ws_open",
        "_ws_pos",
        "server",
        "transport",
    )
    transport: asyncio.Transport

    def __init__(self, server: BackendServer) -> None:
        self.server = server
        self._reader = RequestReader(upgrade_filter=_keep_upgrade, require_host=False)
        # Every answer goes through the codec's writer: framing and keep-alive are its call.
        self._writer = ServerWriter(self._reader)
        self._queue: deque[_Request] = deque()
        self._counted = False  # this connection's busy request counts in server.in_flight
        self._current: _Request | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._pumping: _Request | None = None
        self._busy = self._advancing = self._broken = False
        self._read_paused = self._write_paused = self._upgraded = self._ws_open = False
        self._remaining = self._ws_left = self._ws_pos = 0
        self._ws_mask = b""
        self._ws_buf = bytearray()

    # -- transport events

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, so no isinstance check.
        self.transport = transport  # type: ignore[assignment]
        self.server.connections_total += 1
        self.server._connections.add(self)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def connection_lost(self, exc: Exception | None) -> None:
        self.server._connections.discard(self)
        self._uncount()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._queue.clear()
        self._pumping = None
        self._ws_buf.clear()

    def pause_writing(self) -> None:
        self._write_paused = True
        self._update_reading()

    def resume_writing(self) -> None:
        self._write_paused = False
        if self._pumping is not None:
            self._pump()
        self._update_reading()

    def data_received(self, data: bytes) -> None:
        if self._upgraded:
            self._ws_data(data)
            return
        if self._broken:
            return
        reader = self._reader
        try:
            events = reader.feed(data)
        except ClientError:
            self._events(reader.parsed_before_error)  # what came before is still answered
            self._bad_request()
        else:
            self._events(events)
        self._update_reading()

    def _update_reading(self) -> None:
        # Stop reading whenever we would otherwise have to buffer without bound: the client
        # does not read, requests are pipelined behind a busy one, or a body waits (latency).
        if self.transport.is_closing():
            return
        cur = self._current
        pause = (
            self._write_paused
            or self._broken
            or len(self._queue) > 1
            or (cur is not None and cur.buffered > _HIGH_WATER)
            or (self._upgraded and not self._ws_open)
        )
        if pause != self._read_paused:
            self._read_paused = pause
            if pause:
                self.transport.pause_reading()
            else:
                self.transport.resume_reading()

    # -- codec events

    def _events(self, events: list[Event]) -> None:
        for event in events:
            kind = type(event)
            if kind is Request:
                assert isinstance(event, Request)
                self._on_request(event)
            elif kind is Data:
                assert isinstance(event, Data)
                self._on_body(event.data)
            elif kind is EndOfMessage:
                self._on_message_complete()  # trailers, if any, are ignored
            elif kind is Upgraded:
                assert isinstance(event, Upgraded)
                self._upgraded = True  # only a WebSocket upgrade to /ws is kept (_keep_upgrade)
                self._ws_data(event.tail)
                return

    def _on_request(self, request: Request) -> None:
        self.server.requests_total += 1
        self._current = req = _Request()
        self._queue.append(req)
        req.target = bytearray(request.target)
        req.headers = request.headers
        req.headers_done = True
        req.method = request.method
        req.http10 = request.version == b"1.0"
        req.head = request
        req.chunked = request.chunked
        req.length = request.content_length or 0
        path, _, query = request.target.partition(b"?")
        req.path, req.query = path.decode("latin-1"), query.decode("latin-1")
        expect = req.header(b"expect")
        req.expect = expect is not None and expect.lower() == b"100-continue"
        if req.path == "/echo":
            req.mode = _BUFFER
        elif req.path == "/ws" and req.header(b"upgrade") is not None:
            req.ws = request.upgrade is not None
            req.close = True  # anything but a 101 ends the connection
        self._advance()

    def _on_body(self, body: bytes) -> None:
        req = self._current
        assert req is not None
        if req.mode == _STREAM:
            self._send(body)
        elif req.mode == _BUFFER:
            req.body.append(body)
            req.buffered += len(body)

    def _on_message_complete(self) -> None:
        req = self._current
        assert req is not None
        req.complete = True
        if req.mode == _STREAM:
            self._end_body(req)
        else:
            self._advance()

    # -- answering requests, in order

    def _advance(self) -> None:
        # A loop rather than recursion: a burst of pipelined requests must not deepen the stack.
        if self._advancing:
            return
        self._advancing = True
        try:
            while self._queue and not self._busy and not self.transport.is_closing():
                req = self._queue[0]
                if not req.headers_done:
                    break
                if not req.begun:
                    req.begun = True
                    self._writer.begin(req.head)
                if req.expect and not req.complete:
                    req.expect = False
                    self._write(self._writer.send(_CONTINUE))
                if not (req.complete or req.mode == _BUFFER):
                    break  # the body is read (and ignored) before we answer
                self._busy = True
                self._counted = True
                self.server.in_flight += 1
                latency = self.server.options.latency
                if latency > 0 and not req.error and not req.path.startswith(_NO_DELAY):
                    loop = asyncio.get_running_loop()
                    self._timer = loop.call_later(latency, self._dispatch, req)
                else:
                    self._dispatch(req)
        finally:
            self._advancing = False

    def _uncount(self) -> None:
        if self._counted:
            self._counted = False
            self.server.in_flight -= 1

    def _finish(self, req: _Request) -> None:
        self._queue.popleft()
        self._busy = False
        self._uncount()
        if not req.complete:  # answered early (an injected failure): drop what is still to come
            req.mode = _DISCARD
            req.body.clear()
            req.buffered = 0
        if self._writer.our_state is ConnState.MUST_CLOSE:
            self.transport.close()
            return
        self._advance()
        self._update_reading()

    def _bad_request(self) -> None:
        self._broken = True
        req = self._current
        if req is not None and self._busy and self._queue and self._queue[0] is req:
            self.transport.close()  # broken inside a body we are already answering
            return
        if req is None or req.complete or req not in self._queue:
            req = _Request()
            self._queue.append(req)
        req.error = 400
        req.headers_done = req.complete = True
        req.close = True
        req.mode = _DISCARD
        self._advance()

    def _dispatch(self, req: _Request) -> None:
        self._timer = None
        path, server = req.path, self.server
        if req.error:
            self._respond(req, req.error, b"bad request\n")
        elif not path.startswith(_NO_DELAY) and server._fails():
            self._respond(req, 500, b"injected failure\n")
        elif path == "/":
            self._respond(req, 200, server._hello)
        elif path == "/health":
            ok = server.healthy
            self._respond(req, 200 if ok else 503, b"ok\n" if ok else b"unhealthy\n")
        elif path in ("/health/fail", "/health/ok"):
            if req.method != b"POST":
                self._respond(req, 405, b"use POST\n", extra=[(b"Allow", b"POST")])
                return
            server.healthy = path == "/health/ok"
            self._respond(req, 200, b"healthy\n" if server.healthy else b"unhealthy\n")
        elif path == "/echo":
            self._echo(req)
        elif path == "/headers":
            doc: dict[str, object] = {
                "method": req.method.decode(),
                "path": req.target.decode("latin-1"),
                "headers": [[k.decode("latin-1"), v.decode("latin-1")] for k, v in req.headers],
            }
            self._respond(req, 200, json.dumps(doc).encode(), _JSON)
        elif path == "/load":
            # An agent report for the `resource` algorithm: busy share of a nominal capacity.
            load = min(1.0, (server.in_flight - 1) / server.options.capacity)  # not this one
            self._respond(req, 200, json.dumps({"load": round(load, 3)}).encode(), _JSON)
        elif path == "/conn":
            peer = self.transport.get_extra_info("peername")
            host = f"[{peer[0]}]" if ":" in peer[0] else peer[0]
            doc = {
                "connections_total": server.connections_total,
                "requests_total": server.requests_total,
                "peer": f"{host}:{peer[1]}",
            }
            self._respond(req, 200, json.dumps(doc).encode(), _JSON)
        elif path == "/ws":
            self._websocket(req)
        elif path.startswith(("/bytes/", "/status/", "/sleep/")):
            self._with_argument(req, *path[1:].split("/", 1))
        else:
            self._respond(req, 404, b"not found\n")

    def _with_argument(self, req: _Request, kind: str, arg: str) -> None:
        try:
            value = float(arg) if kind == "sleep" else int(arg)
        except ValueError:
            value = -1
        if kind == "bytes" and value >= 0:
            self._bytes(req, int(value), "chunked=1" in req.query.split("&"))
        elif kind == "status" and 200 <= value <= 599:
            code = int(value)
            self._respond(req, code, b"%d %s\n" % (code, _reason(code)))
        elif kind == "sleep" and 0 <= value <= 3600:
            loop = asyncio.get_running_loop()
            self._timer = loop.call_later(value, self._respond, req, 200, b"slept\n")
        else:
            self._respond(req, 400, f"bad {kind} argument: {arg!r}\n".encode())

    def _write(self, data: bytes) -> None:
        if data:
            self.transport.write(data)

    def _head(self, req: _Request, status: int, headers: Headers) -> bytes:
        """The head of the answer to `req`; the writer adds the framing it lacks and says
        whether the connection stays open."""
        headers.append(self.server._x_backend)
        if req.close:
            headers.append(_CONNECTION_CLOSE)
        return self._writer.send(Response(status, _reason(status), b"1.1", headers))

    def _respond(
        self,
        req: _Request,
        status: int,
        body: bytes,
        ctype: bytes = _TEXT,
        extra: Headers | None = None,
    ) -> None:
        self._timer = None
        if body_forbidden(status, head=False):
            headers: Headers = []  # a 204 or 304 describes no content (the codec's rule)
        else:
            headers = [(b"Content-Type", ctype), (b"Content-Length", b"%d" % len(body))]
        if extra:
            headers += extra
        writer = self._writer
        head = self._head(req, status, headers)
        if body and writer.body_allowed:  # none after HEAD, 204 or 304
            head += writer.send(Data(body))
        self._write(head + writer.send(_END))  # one write: one segment for a small answer
        self._finish(req)

    def _echo(self, req: _Request) -> None:
        # The answer is framed as the request was, so each piece can be sent as it arrives
        # (to an HTTP/1.0 client, the writer ends a chunked one's body with the close).
        ctype = req.header(b"content-type") or _OCTETS
        headers = [(b"Content-Type", ctype), _framing(req.chunked, req.length)]
        self._write(self._head(req, 200, headers))
        req.mode = _STREAM
        body, req.body, req.buffered = req.body, [], 0
        for part in body:
            self._send(part)
        if req.complete:
            self._end_body(req)
        else:
            self._update_reading()  # reading may have paused while the body waited for us

    def _send(self, data: bytes) -> None:
        if data and self._writer.body_allowed:  # none after HEAD, 204 or 304
            self._write(self._writer.send(Data(data)))

    def _end_body(self, req: _Request) -> None:
        self._write(self._writer.send(_END))
        self._finish(req)

    def _bytes(self, req: _Request, n: int, chunked: bool) -> None:
        self._write(self._head(req, 200, [(b"Content-Type", _OCTETS), _framing(chunked, n)]))
        self._remaining = n if self._writer.body_allowed else 0
        self._pumping = req
        self._pump()

    def _pump(self) -> None:
        # Generate only while the transport accepts more; resume_writing calls us again.
        transport, writer = self.transport, self._writer
        while self._remaining and not self._write_paused and not transport.is_closing():
            n = min(self._remaining, _CHUNK)
            transport.write(writer.send(Data(_PATTERN if n == _CHUNK else _PATTERN[:n])))
            self._remaining -= n
        req = self._pumping
        if not self._remaining and req is not None:
            self._pumping = None
            self._end_body(req)

    # -- WebSocket (RFC 6455), server side: echo each frame as it comes, control frames answered

    def _websocket(self, req: _Request) -> None:
        if not req.ws or req.header(b"sec-websocket-version") != b"13":
            extra = [(b"Upgrade", b"websocket"), (b"Sec-WebSocket-Version", b"13")]
            self._respond(req, 426, b"websocket (version 13) required\n", extra=extra)
            return
        key = (req.header(b"sec-websocket-key") or b"").strip()
        try:
            valid = len(base64.b64decode(key, validate=True)) == 16
        except binascii.Error:
            valid = False
        if not valid or req.method != b"GET" or req.http10:
            self._respond(req, 400, b"bad websocket handshake\n")
            return
        accept = base64.b64encode(hashlib.sha1(key + _WS_GUID).digest())
        headers = [
            (b"Upgrade", b"websocket"),
            (b"Connection", b"Upgrade"),
            (b"Sec-WebSocket-Accept", accept),
        ]
        req.close = False  # the connection goes on, as a WebSocket
        self._write(self._head(req, 101, headers))  # the writer keeps a 101's Connection
        self._queue.popleft()
        self._busy = False
        self._ws_open = True
        self._ws_data(b"")  # bytes that came with the handshake, if they are here already
        self._update_reading()

    def _ws_data(self, data: bytes) -> None:
        buf = self._ws_buf
        buf += data
        if not self._ws_open:
            return
        transport = self.transport
        while buf and not transport.is_closing():
            if self._ws_left:  # inside a data frame: pass the payload on as it arrives
                n = min(len(buf), self._ws_left)
                transport.write(_unmask(buf[:n], self._ws_mask, self._ws_pos))
                del buf[:n]
                self._ws_pos += n
                self._ws_left -= n
                continue
            if len(buf) < 2:
                return
            b0, b1 = buf[0], buf[1]
            opcode, length, pos = b0 & 0x0F, b1 & 0x7F, 2
            # Clients must mask; no extension was agreed, so RSV bits must be clear.
            if not b1 & 0x80 or b0 & 0x70 or opcode not in (0, 1, 2, 8, 9, 10):
                self._ws_close(b"\x03\xea")  # 1002 protocol error
                return
            if length >= 126:
                pos = 4 if length == 126 else 10
                if len(buf) < pos:
                    return
                length = int.from_bytes(buf[2:pos], "big")
            if len(buf) < pos + 4:
                return
            mask = bytes(buf[pos : pos + 4])
            pos += 4
            if opcode < 8:
                del buf[:pos]
                transport.write(_frame_head(b0, length))
                self._ws_mask, self._ws_pos, self._ws_left = mask, 0, length
                continue
            if length > 125 or not b0 & 0x80:
                self._ws_close(b"\x03\xea")
                return
            if len(buf) < pos + length:
                return
            payload = _unmask(buf[pos : pos + length], mask, 0)
            del buf[: pos + length]
            if opcode == 9:
                transport.write(_frame_head(0x8A, length) + payload)
            elif opcode == 8:
                self._ws_close(payload[:2] if len(payload) != 1 else b"\x03\xea")

    def _ws_close(self, code: bytes) -> None:
        # After our close frame the server ends the TCP connection first (RFC 6455 §7.1.1).
        self.transport.write(_frame_head(0x88, len(code)) + code)
        self.transport.close()


async def start_backend(
    host: str = "127.0.0.1", port: int = 0, options: BackendOptions | None = None
) -> BackendServer:
    """Listen on host:port (0 picks a free port, see `.port`) and serve until `close()`."""
    backend = BackendServer(options or BackendOptions())
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: _Connection(backend), host, port, backlog=2048)
    backend._server = server
    backend.host = host
    backend.port = server.sockets[0].getsockname()[1]
    return backend


async def serve_backend_forever(
    host: str = "127.0.0.1", port: int = 0, options: BackendOptions | None = None
) -> None:
    """Run one backend until cancelled (the `usher backend` command)."""
    backend = await start_backend(host, port, options)
    try:
        await asyncio.get_running_loop().create_future()
    finally:
        await backend.close()
