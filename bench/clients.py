"""The two load clients wrk cannot be: WebSocket ping-pong and many idle keep-alive connections.

Both run on asyncio Protocols (uvloop when installed) with precomputed bytes, so the client
spends as little as it can per message; both are bounded in count and time.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import time
from collections.abc import Callable

WS_PAYLOAD = b"x" * 32
WS_MASK = b"\x11\x22\x33\x44"
# A masked text frame (clients must mask), built once: every message is the same bytes.
WS_FRAME = (
    bytes([0x81, 0x80 | len(WS_PAYLOAD)])
    + WS_MASK
    + bytes(b ^ WS_MASK[i % 4] for i, b in enumerate(WS_PAYLOAD))
)
WS_HANDSHAKE = (
    b"GET /ws HTTP/1.1\r\nHost: bench\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
)


class _WsPinger(asyncio.Protocol):
    """One WebSocket connection sending a message, waiting for its echo, and again."""

    def __init__(self, run: _WsRun) -> None:
        self.run = run
        self.buf = b""
        self.open = False
        self.sent_at = 0.0
        self.transport: asyncio.Transport | None = None
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.transport.write(WS_HANDSHAKE)  # type: ignore[union-attr]

    def data_received(self, data: bytes) -> None:
        buf = self.buf + data
        if not self.open:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                self.buf = buf
                return
            if not buf.startswith(b"HTTP/1.1 101"):
                self.ready.set_exception(RuntimeError(buf[: buf.find(b"\r\n")].decode()))
                return
            self.open = True
            buf = buf[end + 4 :]
            self.ready.set_result(None)
            self._send()
        while len(buf) >= 2:
            size = 2 + (buf[1] & 0x7F)  # the echo of a 32-byte message: no extended length
            if len(buf) < size:
                break
            buf = buf[size:]
            self.run.received(time.perf_counter() - self.sent_at)
            if self.run.going:
                self._send()
        self.buf = buf

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.ready.done():
            self.ready.set_exception(exc or RuntimeError("closed before the upgrade"))
        elif self.run.going:
            self.run.errors += 1

    def _send(self) -> None:
        self.sent_at = time.perf_counter()
        assert self.transport is not None
        self.transport.write(WS_FRAME)


class _WsRun:
    def __init__(self) -> None:
        self.going = True
        self.measuring = False
        self.count = 0
        self.errors = 0
        self.latencies: list[float] = []

    def received(self, seconds: float) -> None:
        if self.measuring:
            self.count += 1
            self.latencies.append(seconds)


async def websocket_pingpong(
    port: int,
    *,
    connections: int,
    warmup: float,
    duration: float,
    on_window: Callable[[bool], None],
) -> dict[str, float]:
    """Messages per second through `connections` WebSockets, each with one message in flight.
    `on_window(True)` is called when the measured window opens, `on_window(False)` when it
    closes (the caller samples the balancer's CPU there)."""
    loop = asyncio.get_running_loop()
    run = _WsRun()
    protocols: list[_WsPinger] = []
    try:
        for _ in range(connections):
            _, proto = await loop.create_connection(lambda: _WsPinger(run), "127.0.0.1", port)
            protocols.append(proto)
        await asyncio.wait_for(asyncio.gather(*(p.ready for p in protocols)), 10)
        await asyncio.sleep(warmup)
        on_window(True)
        run.measuring = True
        start = time.perf_counter()
        await asyncio.sleep(duration)
        run.measuring = False
        elapsed = time.perf_counter() - start
        on_window(False)
    finally:
        run.going = False
        for proto in protocols:
            if proto.transport is not None:
                proto.transport.close()
    lat = sorted(run.latencies) or [float("nan")]
    return {
        "requests": float(run.count),
        "seconds": elapsed,
        "rps": run.count / elapsed,
        "p50_ms": statistics.median(lat) * 1000,
        "p99_ms": lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1000,
        "errors": float(run.errors),
        "bytes_per_s": 0.0,
    }


class _IdleClient(asyncio.Protocol):
    """Sends one GET, reads its answer, then holds the connection open and quiet."""

    REQUEST = b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n"

    def __init__(self) -> None:
        self.buf = b""
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.transport: asyncio.BaseTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        transport.write(self.REQUEST)  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        if self.done.done():
            return
        self.buf += data
        end = self.buf.find(b"\r\n\r\n")
        if end < 0:
            return
        head = self.buf[:end].lower()
        at = head.find(b"content-length:")
        length = int(head[at + 15 :].split(b"\r\n", 1)[0]) if at >= 0 else 0
        if len(self.buf) - end - 4 >= length:
            if not head.startswith(b"http/1.1 2"):
                self.done.set_exception(RuntimeError(head.split(b"\r\n", 1)[0].decode()))
            else:
                self.done.set_result(None)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_exception(exc or RuntimeError("closed before the answer"))


async def idle_connections(
    port: int, count: int, measure: Callable[[], int], *, batch: int = 250, timeout: float = 60
) -> dict[str, float]:
    """Open `count` keep-alive connections with one GET each, keep them idle, and return the
    balancer's RSS (from `measure`, in KiB) before and after, and per connection."""
    loop = asyncio.get_running_loop()
    before = measure()
    clients: list[_IdleClient] = []
    errors = 0
    deadline = time.monotonic() + timeout
    try:
        for start in range(0, count, batch):
            if time.monotonic() > deadline:
                raise TimeoutError(f"only {len(clients)} of {count} connections in {timeout}s")
            opened = await asyncio.gather(
                *(
                    loop.create_connection(_IdleClient, "127.0.0.1", port)
                    for _ in range(min(batch, count - start))
                ),
                return_exceptions=True,
            )
            fresh = [item[1] for item in opened if not isinstance(item, BaseException)]
            errors += len(opened) - len(fresh)
            answers = await asyncio.wait_for(
                asyncio.gather(*(c.done for c in fresh), return_exceptions=True), timeout
            )
            errors += sum(1 for a in answers if isinstance(a, BaseException))
            clients.extend(fresh)
        await asyncio.sleep(1.0)  # let the balancer settle (timers armed, buffers released)
        alive = sum(1 for c in clients if c.transport is not None and not c.transport.is_closing())
        after = measure()
    finally:
        for c in clients:
            if c.transport is not None:
                c.transport.close()
    return {
        "connections": float(alive),
        "errors": float(errors + count - alive),
        "rss_before_kb": float(before),
        "rss_after_kb": float(after),
        "kb_per_connection": (after - before) / alive if alive else float("nan"),
    }


def raise_fd_limit(need: int) -> None:
    """Lift RLIMIT_NOFILE to at least `need` (the hard limit too, when allowed: root); the
    balancers inherit it."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard < need:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (need, need))
            return
        except (ValueError, OSError):
            raise SystemExit(
                f"the open-files limit is {hard}; {need} are needed for the memory scenario: "
                "raise it (ulimit -Hn, as root) or pass a smaller --idle-connections"
            ) from None
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def cpu_count() -> int:
    return len(os.sched_getaffinity(0))
