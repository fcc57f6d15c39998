"""A fake asyncio transport and a listener with one fake backend, to drive the downstream
Protocol and the exchange without sockets (as uvicorn's tests drive its protocols)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from usher.clock import Clock, MonotonicClock
from usher.config import parse_config
from usher.http.downstream import ClientConnection
from usher.http.listener import HttpListener
from usher.http.upstream import UpstreamConnection
from usher.logs import AccessLog
from usher.pool import Backend, Pool
from usher.routing import Router


class FakeTransport:
    """Records what is written and what the protocol asks of it (pause, resume, close)."""

    def __init__(self, peer: tuple[str, int] = ("192.0.2.7", 50000)) -> None:
        self.written = bytearray()
        self.extra: dict[str, Any] = {"peername": peer, "sockname": ("127.0.0.1", 8080)}
        self.reading = True
        self.closed = False
        self.aborted = False
        self.eof_written = False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self.extra.get(name, default)

    def write(self, data: bytes) -> None:
        assert not self.closed, "written after close"
        self.written += data

    def writelines(self, chunks: Any) -> None:
        for chunk in chunks:
            self.write(chunk)

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def is_reading(self) -> bool:
        return self.reading

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        self.eof_written = True

    def get_write_buffer_size(self) -> int:
        return 0

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def abort(self) -> None:
        self.closed = self.aborted = True

    def take(self) -> bytes:
        """What was written since the last take."""
        data = bytes(self.written)
        self.written.clear()
        return data


def listener_with_backend(
    clock: Clock | None = None,
    pool_options: dict[str, Any] | None = None,
    **listener_options: Any,
) -> tuple[HttpListener, Pool]:
    """An http listener routing everything to a pool of one backend, with no access log, on
    `clock` (a ManualClock drives its timeouts without sleeping; default: the real one);
    `routes` in the listener's options instead of its `pool`, when given."""
    target = {} if "routes" in listener_options else {"pool": "web"}
    pool = {"backends": [{"address": "127.0.0.1:9001"}], **(pool_options or {})}
    config = parse_config(
        json.dumps(
            {
                "listeners": [
                    {"name": "web", "bind": "127.0.0.1:8080", **target, **listener_options}
                ],
                "pools": {"web": pool},
            }
        )
    )
    clock = clock if clock is not None else MonotonicClock()
    pools = {name: Pool(name, pc, clock) for name, pc in config.pools.items()}
    lc = config.listeners[0]
    listener = HttpListener(
        lc, Router(lc.effective_routes(), pools), clock=clock, access_log=AccessLog(enabled=False)
    )
    return listener, pools["web"]


def connected_client(listener: HttpListener) -> tuple[ClientConnection, FakeTransport]:
    client = listener()
    transport = FakeTransport()
    client.connection_made(transport)  # type: ignore[arg-type]
    return client, transport


def idle_upstream(backend: Backend) -> tuple[UpstreamConnection, FakeTransport]:
    """A kept-alive backend connection parked on `backend`, for the next request to take."""
    conn = UpstreamConnection(backend)
    transport = FakeTransport(("127.0.0.1", 9001))
    conn.connection_made(transport)  # type: ignore[arg-type]
    backend.connections.park(conn, asyncio.get_running_loop())
    return conn, transport
