"""The downstream Protocol driven on a fake transport: refusals, lingering close, usher's own
answers when no backend is needed."""

from __future__ import annotations

import asyncio

from tests.http.fake_transport import connected_client, listener_with_backend


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
