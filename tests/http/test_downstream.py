"""The downstream Protocol driven on a fake transport: refusals, lingering close, usher's own
answers when no backend is needed."""

from __future__ import annotations

import asyncio

from tests.http.fake_transport import connected_client, listener_with_backend
from usher.clock import ManualClock


async def test_bytes_that_are_no_request_are_refused_with_400_and_a_lingering_close() -> None:
    listener, _ = listener_with_backend()
    client, transport = connected_client(listener)
    client.data_received(b"NOT HTTP AT ALL\r\n\r\n")
    answer = transport.take()
    assert answer.startswith(b"HTTP/1.1 400 Bad Request\r\n")
    assert b"Connection: close\r\n" in answer
    # Closed as nginx's lingering close: our FIN first, the client's late bytes dropped.
    assert transport.eof_written and client.closed
    client.data_received(b"more")
    assert transport.take() == b""
    assert listener.metrics.rejected_total == {("web", "bad_request"): 1}


async def test_a_refused_request_after_a_good_one_waits_for_its_turn() -> None:
    listener, pool = listener_with_backend()
    pool.backends[0].state = "disabled"  # the good one is answered 503 by usher itself
    client, transport = connected_client(listener)
    client.data_received(b"GET / HTTP/1.1\r\nHost: a\r\n\r\nBAD\x00\r\n\r\n")
    answers = transport.take()
    assert answers.startswith(b"HTTP/1.1 503 ")
    assert answers.index(b"HTTP/1.1 503 ") < answers.index(b"HTTP/1.1 400 ")
    assert client.closed


async def test_a_quiet_keep_alive_connection_closes_at_its_idle_timeout() -> None:
    listener, pool = listener_with_backend(timeouts={"idle": "10ms"})
    pool.backends[0].state = "disabled"
    client, transport = connected_client(listener)
    client.data_received(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    assert transport.take().startswith(b"HTTP/1.1 503 ")
    assert not client.closed
    await asyncio.sleep(0.1)
    assert client.closed and transport.closed and not transport.eof_written


async def test_a_read_timeout_is_driven_by_a_manual_clock_without_sleeping() -> None:
    # Deadlines run on the balancer's injected clock: a ManualClock wakes them as it advances.
    clock = ManualClock(1000.0)
    listener, _ = listener_with_backend(clock, timeouts={"header": "30s"})
    client, transport = connected_client(listener)
    client.data_received(b"GET / HTTP/1.1\r\nHost: a\r\n")  # the head never ends
    clock.advance(29.9)
    assert transport.take() == b"" and not client.closed
    clock.advance(0.1)
    answer = transport.take()
    assert answer.startswith(b"HTTP/1.1 408 Request Timeout\r\n")
    assert b"the request head was not received in time" in answer
    assert client.closed
    assert clock.pending() == 0  # nothing left to wake once the connection is gone


async def test_a_keep_alive_wait_ends_on_the_manual_clock_not_on_real_time() -> None:
    clock = ManualClock()
    listener, pool = listener_with_backend(clock, timeouts={"idle": "10ms"})
    pool.backends[0].state = "disabled"
    client, transport = connected_client(listener)
    client.data_received(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    assert transport.take().startswith(b"HTTP/1.1 503 ")
    await asyncio.sleep(0.05)  # real time passing is not the clock's time
    assert not client.closed
    clock.advance(0.01)
    assert client.closed and transport.closed
    assert client.inbox is None  # a drained connection holds no queue


async def test_a_connection_that_never_stops_reading_makes_no_send_deadline() -> None:
    clock = ManualClock()
    listener, pool = listener_with_backend(clock)
    pool.backends[0].state = "disabled"
    client, _ = connected_client(listener)
    client.data_received(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    assert client._send_wait is None  # made only when the client first stops taking our bytes
    client.pause_writing()
    assert client._send_wait is not None and client._send_wait.armed
    client.resume_writing()
    assert not client._send_wait.armed
