"""The exchange driven on fake transports: a request forwarded to a kept-alive backend
connection, its answer relayed, pipelined requests in turn, a client gone mid-body, and no
reference cycle left behind by a finished exchange."""

from __future__ import annotations

import gc
from typing import Any

from tests.http.fake_transport import connected_client, idle_upstream, listener_with_backend
from usher.clock import ManualClock

ANSWER = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi"


async def test_a_get_is_forwarded_and_its_answer_relayed() -> None:
    listener, pool = listener_with_backend()
    backend = pool.backends[0]
    conn, upstream = idle_upstream(backend)
    client, downstream = connected_client(listener)

    client.data_received(b"GET /a?b=1 HTTP/1.1\r\nHost: example.com\r\n\r\n")
    head = upstream.take()
    assert head.startswith(b"GET /a?b=1 HTTP/1.1\r\n")
    assert b"X-Forwarded-For: 192.0.2.7\r\n" in head
    assert backend.active == 1 and client.exchange is not None

    conn.data_received(ANSWER)
    answer = downstream.take()
    assert answer.startswith(b"HTTP/1.1 200 OK\r\n") and answer.endswith(b"\r\n\r\nhi")
    assert client.exchange is None and not downstream.closed  # kept alive for the next
    assert backend.active == 0 and backend.idle == [conn]  # and the backend's connection too
    assert listener.metrics.requests_total == {("web", "web", backend.label, 200): 1}


async def test_pipelined_requests_are_forwarded_one_at_a_time_in_order() -> None:
    listener, pool = listener_with_backend()
    conn, upstream = idle_upstream(pool.backends[0])
    client, downstream = connected_client(listener)

    client.data_received(b"GET /1 HTTP/1.1\r\nHost: a\r\n\r\nGET /2 HTTP/1.1\r\nHost: a\r\n\r\n")
    assert upstream.take().startswith(b"GET /1 ")
    assert not downstream.reading  # the second waits its turn: the client is not read on

    conn.data_received(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n1")
    assert upstream.take().startswith(b"GET /2 ")  # the same kept-alive connection, reused
    conn.data_received(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n2")
    answers = downstream.take()
    assert answers.count(b"HTTP/1.1 200 OK") == 2 and answers.endswith(b"\r\n\r\n2")
    assert answers.index(b"\r\n\r\n1") < answers.index(b"\r\n\r\n2")
    assert downstream.reading and client.exchange is None


async def test_a_client_gone_mid_body_ends_the_exchange_without_blaming_the_backend() -> None:
    listener, pool = listener_with_backend()
    backend = pool.backends[0]
    _, upstream = idle_upstream(backend)
    client, _ = connected_client(listener)

    client.data_received(b"POST /up HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\n12345")
    assert upstream.take().endswith(b"\r\n\r\n12345")
    client.connection_lost(None)
    assert upstream.closed  # half a body: the backend connection cannot be reused
    assert backend.active == 0 and backend.failures_total == 0 and backend.idle == []
    assert listener.metrics.requests_total == {("web", "web", backend.label, 499): 1}


async def test_a_backend_read_timeout_is_driven_by_a_manual_clock() -> None:
    clock = ManualClock()
    listener, pool = listener_with_backend(clock)
    backend = pool.backends[0]
    conn, upstream = idle_upstream(backend)
    client, downstream = connected_client(listener)
    client.data_received(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    assert upstream.take().startswith(b"GET / ")
    read = pool.config.timeouts.read
    clock.advance(read - 0.5)
    conn.data_received(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nh")  # the limit restarts
    clock.advance(read - 0.5)
    assert not upstream.aborted
    clock.advance(0.5)
    assert upstream.aborted  # cut: too slow
    assert downstream.take().startswith(b"HTTP/1.1 200 OK\r\n") and downstream.closed
    assert backend.idle == []


async def test_a_kept_alive_backend_connection_keeps_one_timer_across_requests() -> None:
    # In use, the read limit; parked, the idle limit: one deadline on the connection, so a
    # request re-arms the pending timer instead of making one.
    clock = ManualClock()
    listener, pool = listener_with_backend(clock)
    conn, _ = idle_upstream(pool.backends[0])
    client, downstream = connected_client(listener)
    made = clock.scheduled
    for _ in range(5):
        client.data_received(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        conn.data_received(ANSWER)
        clock.advance(0.001)
    assert downstream.take().count(b"HTTP/1.1 200 OK") == 5
    assert pool.backends[0].idle == [conn]
    assert clock.scheduled == made  # every deadline moved later: no new timer
    assert clock.pending() == 2  # the client's keep-alive wait, the connection's idle limit


def _garbage_after(requests: list[bytes], **options: Any) -> list[str]:
    """The type names of what `requests` (each answered by the backend, when forwarded) left
    for the cyclic collector: with it off, everything a request leaves in a reference cycle
    stays until `gc.collect()`, which DEBUG_SAVEALL keeps in `gc.garbage` to be seen."""
    listener, pool = listener_with_backend(**options)
    conn, upstream = idle_upstream(pool.backends[0])
    client, downstream = connected_client(listener)

    def serve(request: bytes) -> bytes:
        client.data_received(request)
        if upstream.take():
            conn.data_received(ANSWER)
        return downstream.take()

    for request in requests:  # caches, lazily made objects: made before the count
        serve(request)
    gc.collect()
    gc.disable()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        answers = [serve(request) for request in requests * 50]
        assert all(a.startswith(b"HTTP/1.1 ") for a in answers) and not downstream.closed
        gc.collect()
        return [type(o).__name__ for o in gc.garbage]
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()


async def test_a_finished_exchange_leaves_no_reference_cycle() -> None:
    # Refcounting frees each exchange and its owners when it ends: none waits for the cyclic
    # collector, whose passes over that garbage would cost every request.
    get = b"GET /a HTTP/1.1\r\nHost: a\r\n\r\n"
    assert _garbage_after([get]) == []


async def test_nor_with_the_features_of_the_benchmark_nor_an_answer_of_usher() -> None:
    features: dict[str, Any] = {
        "pool_options": {
            "algorithm": "least_connections",
            "sticky": {"type": "cookie", "cookie": "SRV"},
        },
        "limits": {"rate": "1000000/s"},
        "routes": [
            {
                "match": {"path_prefix": "/a"},
                "pool": "web",
                "request_headers": {"set": {"X-Request": "set"}, "remove": ["X-Gone"]},
                "response_headers": {"set": {"X-Bench": "features"}},
            }
        ],
    }
    get = b"GET /a HTTP/1.1\r\nHost: a\r\nX-Gone: 1\r\n\r\n"
    unrouted = b"GET /nowhere HTTP/1.1\r\nHost: a\r\n\r\n"  # usher's own 404
    assert _garbage_after([get, unrouted], **features) == []
