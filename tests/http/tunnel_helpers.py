"""What the tunnel tests share: usher's open descriptors and active-connection gauge, and a raw
WebSocket client that can end its connection in ways the `websockets` library does not."""

from __future__ import annotations

import asyncio
import base64
import gc
import os
import struct

from tests.conftest import RunningBalancer
from usher.metrics import render


def open_descriptors() -> int:
    """This process's open descriptors: usher, the demo backend and the clients all run in it."""
    return len(os.listdir("/proc/self/fd"))


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def active_connections(lb: RunningBalancer, listener: str = "web") -> float:
    """`usher_active_connections{listener}` as a scrape of /metrics shows it."""
    prefix = f'usher_active_connections{{listener="{listener}"}} '
    for line in render(lb.balancer.registry)[0].decode().splitlines():
        if line.startswith(prefix):
            return float(line[len(prefix) :])
    raise AssertionError(f"no {prefix.strip()} line in the metrics")


async def settled(
    lb: RunningBalancer, descriptors: int, timeout: float = 15.0
) -> tuple[int, float]:
    """Wait until the descriptor count is back to `descriptors` (or below: a socket of the
    test's own set-up may close meanwhile) and the active-connection gauge to 0 (closing takes
    a few loop turns); returns what they were at the end (a count under `descriptors` as `descriptors`)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        gc.collect()  # a transport dropped by a finished client task holds its socket until then
        count = open_descriptors()
        now = (count if count > descriptors else descriptors), active_connections(lb)
        if now == (descriptors, 0.0) or loop.time() > deadline:
            return now
        await asyncio.sleep(0.05)


def ws_frame(opcode: int, payload: bytes, *, rsv: int = 0) -> bytes:
    """One final, masked client frame (RFC 6455 §5.2); payloads under 126 bytes."""
    assert len(payload) < 126
    mask = os.urandom(4)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return struct.pack("!BB", 0x80 | rsv | opcode, 0x80 | len(payload)) + mask + masked


class RawWebSocket:
    """A client connection upgraded by hand: bytes in and out, no protocol machinery."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, port: int, path: str = "/ws") -> RawWebSocket:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        key = base64.b64encode(os.urandom(16))
        writer.write(
            b"GET %s HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
            b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: %s\r\n\r\n" % (path.encode(), key)
        )
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        assert head.startswith(b"HTTP/1.1 101 "), head
        return cls(reader, writer)

    async def echo(self, text: bytes) -> None:
        """Send a text frame and read the demo backend's unmasked echo of it."""
        self.writer.write(ws_frame(0x1, text))
        echoed = await asyncio.wait_for(self.reader.readexactly(2 + len(text)), 10)
        assert echoed == bytes([0x81, len(text)]) + text

    async def read_to_eof(self, timeout: float = 10.0) -> bytes:
        """Everything until usher closes its side (fails if it never does)."""
        return await asyncio.wait_for(self.reader.read(), timeout)

    def close(self) -> None:
        self.writer.close()
