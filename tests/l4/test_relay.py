"""The stream relay's back-pressure, on real sockets: what a full side holds back stays held."""

from __future__ import annotations

import asyncio
import contextlib
import socket

from usher.l4.relay import StreamRelay

KIB = 1024


async def test_a_backend_that_speaks_first_is_held_back_by_a_full_client():
    # The backend's first bytes wait for the client's transport; when start() hands them over
    # they fill the client, and the backend must then stay paused (it was resumed after the
    # client's pause_writing, and read on without bound).
    loop = asyncio.get_running_loop()
    relay = StreamRelay(loop, 60.0, lambda *_: None, lambda *_: None)
    backend_ours, backend_far = socket.socketpair()
    client_ours, client_far = socket.socketpair()
    client_ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 * KIB)
    client_far.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * KIB)
    for sock in (backend_far, client_far):
        sock.setblocking(False)
    chatter = b"x" * (8 * 1024 * KIB)

    async def backend_speaks() -> None:
        await loop.sock_sendall(backend_far, chatter)

    sender = asyncio.create_task(backend_speaks())
    try:
        backend_transport, _ = await loop.connect_accepted_socket(relay.backend_side, backend_ours)
        while not relay.backend.pending:
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.1)  # more than one read's worth waits at the backend
        client_transport, _ = await loop.connect_accepted_socket(relay.client_side, client_ours)
        relay.start(b"")
        await asyncio.sleep(0.3)
        # The client reads nothing: we hold at most about what start() handed over.
        assert client_transport.get_write_buffer_size() < 1024 * KIB
        assert not backend_transport.is_reading()
    finally:
        sender.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sender
        relay.abort()
        backend_far.close()
        client_far.close()
