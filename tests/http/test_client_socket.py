"""The socket side of a client connection on a fake transport and a ManualClock: the send
deadline, the lingering close, reading paused for several reasons at once."""

from __future__ import annotations

from tests.http.fake_transport import connected_client, listener_with_backend
from usher.clock import ManualClock
from usher.http.client_socket import LINGER
from usher.http.flow import BLOCK_PIPELINE, BLOCK_UPSTREAM_FULL


async def test_a_client_that_stops_reading_is_reset_after_the_send_timeout() -> None:
    clock = ManualClock()
    listener, _ = listener_with_backend(clock, timeouts={"send": "5s"})
    client, transport = connected_client(listener)
    client.pause_writing()  # its buffer is full: it is not reading
    clock.advance(4.9)
    assert not transport.aborted
    client.resume_writing()  # it read some: the wait is over
    clock.advance(10.0)
    assert not transport.aborted
    client.pause_writing()
    clock.advance(5.0)
    assert transport.aborted and client.closed


async def test_a_close_mid_request_lingers_and_then_closes() -> None:
    clock = ManualClock()
    listener, _ = listener_with_backend(clock)
    client, transport = connected_client(listener)
    client.data_received(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\nab")
    client.close()  # the client may still be sending its body
    assert transport.eof_written and not transport.closed
    client.data_received(b"more body")  # read and dropped
    assert client.refused
    # The linger is a loop timer (not a deadline on the clock): it ends in real time.
    # (uvloop's time() is the start of the loop's iteration: on a busy machine the timer's
    # own reading may be later, so the bound is loose.)
    assert client._closing is not None
    assert 0 < client._closing.when() - client.loop.time() <= LINGER + 1.0


async def test_reading_resumes_only_once_every_reason_is_gone() -> None:
    listener, _ = listener_with_backend()
    client, transport = connected_client(listener)
    client.block(BLOCK_PIPELINE)
    client.block(BLOCK_UPSTREAM_FULL)
    assert not transport.reading and client.reading_blocked
    client.unblock(BLOCK_PIPELINE)
    assert not transport.reading
    client.unblock(BLOCK_UPSTREAM_FULL)
    assert transport.reading and not client.reading_blocked
