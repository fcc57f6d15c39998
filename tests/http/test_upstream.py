"""Backend connections kept for reuse: flow control must not outlive the exchange that set it.

An answer's last bytes can come while the client's side is full: reading the backend is paused
then, the exchange ends, and its connection is parked before the client's resume_writing that
would have undone the pause. (Under load this hung the next request on that connection until its
read timeout.) Likewise a request's last bytes can still sit in our send buffer when a backend
that answered early completes. These tests park a connection in each state and check that the
next request through it flows.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket

import httpx

from tests.conftest import pool_of, simple_config
from usher.http.upstream import UpstreamConnection
from usher.pool import Backend


async def parked_connection(lb, server) -> tuple[UpstreamConnection, Backend]:
    async with httpx.AsyncClient() as client:
        assert (await client.get(lb.url("/"))).status_code == 200
    (backend,) = lb.pools["web"].backends
    conn = backend.connections.take()
    assert conn is not None and conn.transport is not None
    return conn, backend


async def test_a_connection_parked_with_reading_paused_reads_again(backends, balancer):
    (server,) = await backends(1)
    lb = await balancer(simple_config({"web": pool_of(server)}))
    conn, backend = await parked_connection(lb, server)
    conn.transport.pause_reading()  # as a slow client's pause_writing does
    backend.connections.release(conn, asyncio.get_running_loop())
    assert conn.transport.is_reading()
    # The next request goes over that same connection and its answer flows.
    async with httpx.AsyncClient(timeout=5) as client:
        response = await client.get(lb.url("/bytes/300000"))
    assert response.status_code == 200 and len(response.content) == 300000
    assert server.connections_total == 1


async def test_a_reused_connection_still_sending_holds_back_the_next_body(backends, balancer):
    (server,) = await backends(1)
    lb = await balancer(simple_config({"web": pool_of(server)}))
    conn, backend = await parked_connection(lb, server)
    conn.pause_writing()  # its send buffer was over the mark when the last exchange ended
    backend.connections.release(conn, asyncio.get_running_loop())
    assert conn.write_paused

    body = b"x" * 100_000
    reader, writer = await asyncio.open_connection("127.0.0.1", lb.port)
    writer.write(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(body))
    writer.write(body[:10])
    await writer.drain()
    await asyncio.sleep(0.1)
    # The new exchange took the connection and stopped reading its client.
    (client,) = lb.balancer.listeners["web"].connections
    assert client.reading_blocked
    conn.resume_writing()  # the buffer drained
    assert not client.reading_blocked
    writer.write(body[10:])
    line = await asyncio.wait_for(reader.readline(), 5)
    assert b" 200 " in line
    await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert await asyncio.wait_for(reader.readexactly(len(body)), 5) == body
    writer.close()


class StalledClient:
    """A client that asks for an answer and does not read it: a small receive buffer, so the
    kernel takes little and the rest waits in the balancer."""

    def __init__(self, port: int) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        self.sock.connect(("127.0.0.1", port))

    def close(self) -> None:
        self.sock.close()


async def stall_until(lb, request: bytes, state) -> tuple[StalledClient, object] | None:
    """Find an answer size for which a stalled client's connection ends up in `state`.

    Where an answer ends relative to what the kernel buffers hold depends on the machine, so
    the size is searched for: `state(conn)` (None: the connection is gone) says "found",
    "smaller" (the answer still waits for the client) or "larger" (it all went into the
    kernel). Returns the client, with its connection in that state, or None if no size gave it.
    """
    listener = lb.balancer.listeners["web"]
    low, high = 0, 64 * 1024 * 1024
    for _ in range(24):
        size = (low + high) // 2
        client = StalledClient(lb.port)
        client.sock.sendall(request % size)
        await asyncio.sleep(0.25)
        port = client.sock.getsockname()[1]
        mine = [
            c for c in listener.connections if c.transport.get_extra_info("peername")[1] == port
        ]
        conn = mine[0] if mine else None
        verdict = state(conn)
        if verdict == "found":
            return client, conn
        client.close()
        await asyncio.sleep(0.05)
        if verdict == "smaller":
            high = size
        else:
            low = size
    return None


async def test_a_closed_connection_with_unsent_bytes_ends_by_the_send_timeout(backends, balancer):
    # Connection: close, and the client stops reading: what is still buffered when the answer
    # ends would keep the socket open for as long as the client likes, past every timeout.
    (server,) = await backends(1)
    lb = await balancer(simple_config({"web": pool_of(server)}, timeouts={"send": "500ms"}))
    listener = lb.balancer.listeners["web"]

    def state(conn) -> str:
        if conn is None:
            return "larger"  # closed, and the kernel took all of it
        if not conn.closed:
            return "smaller"
        return "found" if conn.transport.get_write_buffer_size() else "larger"

    request = b"GET /bytes/%d HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    found = await stall_until(lb, request, state)
    assert found is not None, "no answer size left bytes unsent at the close"
    client, conn = found
    try:
        deadline = asyncio.get_running_loop().time() + 3.0
        while conn in listener.connections and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.05)
        assert conn not in listener.connections, "the stalled connection is still open"
    finally:
        client.close()


async def test_no_read_timeout_while_a_pipelining_client_is_full(backends, balancer):
    # A request attached to a backend while its client is still full (the answer before it
    # filled the buffers) must not start the backend's read timeout: we are the ones not
    # reading. It used to end in a 504 and a failure counted against a healthy backend.
    (server,) = await backends(1)
    pool = pool_of(server, timeouts={"read": "400ms"})
    lb = await balancer(simple_config({"web": pool}, timeouts={"send": "10s"}))

    def state(conn) -> str:
        exchange = conn.exchange
        if exchange is None:
            return "larger"  # both answered
        if exchange.request.target != b"/status/201":
            return "smaller"  # the first answer is still coming
        return "found" if conn.write_paused else "larger"

    request = (
        b"GET /bytes/%d HTTP/1.1\r\nHost: x\r\n\r\nGET /status/201 HTTP/1.1\r\nHost: x\r\n\r\n"
    )
    found = await stall_until(lb, request, state)
    assert found is not None, "no answer size left the client full for the next request"
    client, conn = found
    try:
        await asyncio.sleep(1.0)  # well past the pool's read timeout
        (backend,) = lb.pools["web"].backends
        assert backend.failures_total == 0
        assert " 504 " not in lb.log.getvalue()
        assert conn.exchange is not None and not conn.closed
    finally:
        client.close()


async def test_a_backend_connection_closed_with_unsent_body_ends_by_the_send_timeout(
    raw_backend, balancer
):
    # The backend answers before reading the body, then neither reads nor closes. We close our
    # side with body bytes still buffered for it: that close must not wait for ever.
    sockets: list[socket.socket] = []
    done = asyncio.Event()

    async def answers_early(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        sockets.append(writer.get_extra_info("socket"))
        await reader.readuntil(b"\r\n\r\n")
        await asyncio.sleep(0.3)  # the body fills every buffer on the way meanwhile
        writer.write(b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 0\r\n\r\n")
        await done.wait()

    port = await raw_backend(answers_early)
    pool = pool_of(f"127.0.0.1:{port}", timeouts={"send": "500ms"})
    lb = await balancer(simple_config({"web": pool}))
    reader, writer = await asyncio.open_connection("127.0.0.1", lb.port)

    async def upload() -> None:
        writer.write(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % (64 << 20))
        block = b"x" * (64 * 1024)
        with contextlib.suppress(ConnectionError):
            for _ in range(1024):
                writer.write(block)
                await writer.drain()

    uploading = asyncio.create_task(upload())
    try:
        line = await asyncio.wait_for(reader.readline(), 5)
        assert b" 413 " in line
        (backend_sock,) = sockets
        state = 1  # TCP_ESTABLISHED
        deadline = asyncio.get_running_loop().time() + 3.0
        while state == 1 and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.05)
            state = backend_sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 1)[0]
        assert state != 1, "the balancer still holds the backend connection open"
    finally:
        done.set()
        uploading.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await uploading
        writer.close()


async def test_a_client_that_stops_reading_is_reset_by_the_send_timeout(backends, balancer):
    (server,) = await backends(1)
    lb = await balancer(simple_config({"web": pool_of(server)}, timeouts={"send": "500ms"}))
    listener = lb.balancer.listeners["web"]
    client = StalledClient(lb.port)
    try:
        client.sock.sendall(b"GET /bytes/%d HTTP/1.1\r\nHost: x\r\n\r\n" % (256 << 20))
        await asyncio.sleep(0.2)
        assert len(listener.connections) == 1
        deadline = asyncio.get_running_loop().time() + 3.0
        while listener.connections and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.05)
        assert not listener.connections, "a client that reads nothing kept its connection"
        # What the kernel still held for it is dropped too: the client sees a reset.
        client.sock.settimeout(2.0)
        received = 0
        reset = False
        try:
            while chunk := client.sock.recv(1 << 20):
                received += len(chunk)
        except ConnectionResetError:
            reset = True
        assert reset and received < 256 << 20
    finally:
        client.close()
