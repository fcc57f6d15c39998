"""Security at the edge through real sockets: rate and connection limits, IP lists, trusted
proxies, request IDs, hidden backend headers, slow bodies, keep-alive caps and filter rules."""

from __future__ import annotations

import asyncio
import json

import pytest

from tests.conftest import pool_of, raw_exchange, read_request_head, read_response, simple_config
from usher.clock import ManualClock


def get(path: str = "/", *headers: str) -> bytes:
    extra = "".join(f"{h}\r\n" for h in headers)
    return f"GET {path} HTTP/1.1\r\nHost: x\r\n{extra}\r\n".encode()


def last(path: str = "/", *headers: str) -> bytes:
    """A request that closes the connection after its answer."""
    return get(path, "Connection: close", *headers)


def rejected(lb, reason: str) -> int:
    return lb.balancer.metrics.rejected_total.get(("web", reason), 0)


async def statuses(port: int, count: int, *headers: str) -> list[int]:
    """`count` requests on one keep-alive connection; their statuses."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    out = []
    try:
        for _ in range(count):
            writer.write(get("/", *headers))
            out.append((await asyncio.wait_for(read_response(reader), 5)).status)
    finally:
        writer.close()
    return out


# --- Rate limits -------------------------------------------------------------------------------


async def test_listener_rate_limit_answers_429_with_retry_after(backends, balancer):
    (server,) = await backends(1)
    clock = ManualClock()
    lb = await balancer(
        simple_config({"web": pool_of(server)}, limits={"rate": "2/s", "burst": 3}), clock=clock
    )
    assert await statuses(lb.port, 5) == [200, 200, 200, 429, 429]
    (answer,), _ = await raw_exchange(lb.port, last())
    assert answer.status == 429
    assert answer.header("Retry-After") == "1"  # half a second to a token, rounded up
    assert rejected(lb, "rate_limited") == 3
    assert server.requests_total == 3
    clock.advance(1.0)  # two tokens back
    assert await statuses(lb.port, 3) == [200, 200, 429]


async def test_retry_after_is_rounded_up_to_whole_seconds(backends, balancer):
    (server,) = await backends(1)
    lb = await balancer(
        simple_config({"web": pool_of(server)}, limits={"rate": "6/m", "burst": 1}),
        clock=ManualClock(),
    )
    assert await statuses(lb.port, 1) == [200]
    (answer,), _ = await raw_exchange(lb.port, last())
    assert (answer.status, answer.header("Retry-After")) == (429, "10")


async def test_route_rate_limit_keyed_on_a_header(backends, balancer):
    (server,) = await backends(1)
    routes = [
        {
            "match": {"path_prefix": "/api"},
            "pool": "web",
            "prefix_rewrite": "/",
            "limits": {"rate": "1/s", "key": "header:X-Api-Key"},
        },
        {"pool": "web"},
    ]
    lb = await balancer(simple_config({"web": pool_of(server)}, routes=routes), clock=ManualClock())

    async def one(path: str, *headers: str) -> int:
        (answer,), _ = await raw_exchange(lb.port, last(path, *headers))
        return answer.status

    assert await one("/api", "X-Api-Key: a") == 200
    assert await one("/api", "X-Api-Key: a") == 429
    assert await one("/api", "X-Api-Key: b") == 200  # another key, another bucket
    assert await one("/api") == 200  # no key: the client address has a bucket of its own
    assert await one("/api") == 429
    assert await one("/") == 200  # other routes are not limited
    assert await one("/") == 200


async def test_cookie_key_and_route_key(backends, balancer):
    (server,) = await backends(1)
    routes = [
        {
            "match": {"path_prefix": "/c"},
            "pool": "web",
            "prefix_rewrite": "/",
            "limits": {"rate": "1/s", "key": "cookie:sid"},
        },
        {
            "match": {"path_prefix": "/r"},
            "pool": "web",
            "prefix_rewrite": "/",
            "limits": {"rate": "1/s", "key": "route"},
        },
    ]
    lb = await balancer(simple_config({"web": pool_of(server)}, routes=routes), clock=ManualClock())

    async def one(path: str, *headers: str) -> int:
        (answer,), _ = await raw_exchange(lb.port, last(path, *headers))
        return answer.status

    assert await one("/c", "Cookie: a=1; sid=x") == 200
    assert await one("/c", "Cookie: sid=x") == 429
    assert await one("/c", "Cookie: sid=y") == 200
    assert await one("/r", "Cookie: sid=z") == 200
    assert await one("/r", "Cookie: sid=w") == 429  # one bucket for the whole route


async def test_each_worker_enforces_its_share(backends, balancer):
    (server,) = await backends(1)
    lb = await balancer(
        simple_config({"web": pool_of(server)}, limits={"rate": "4/s", "burst": 4}),
        clock=ManualClock(),
        workers=2,
    )
    assert await statuses(lb.port, 3) == [200, 200, 429]


# --- Connection limits -------------------------------------------------------------------------


async def test_connections_per_ip_over_the_cap_get_503_at_once(backends, balancer):
    (server,) = await backends(1)
    lb = await balancer(simple_config({"web": pool_of(server)}, limits={"connections_per_ip": 2}))
    held = [await asyncio.open_connection("127.0.0.1", lb.port) for _ in range(2)]
    await asyncio.sleep(0.05)
    reader, writer = await asyncio.open_connection("127.0.0.1", lb.port)
    answer = await asyncio.wait_for(read_response(reader), 5)  # before sending anything
    assert answer.status == 503 and answer.header("Connection") == "close"
    assert await asyncio.wait_for(reader.read(), 5) == b""
    writer.close()
    assert rejected(lb, "connections_per_ip") == 1
    # The held connections are unharmed.
    for r, w in held:
        w.write(get())
        assert (await asyncio.wait_for(read_response(r), 5)).status == 200
    held[0][1].close()
    await asyncio.sleep(0.1)
    assert (await statuses(lb.port, 1)) == [200]  # a slot was freed
    for _, w in held:
        w.close()


async def test_max_connections_per_listener(backends, balancer):
    (server,) = await backends(1)
    lb = await balancer(simple_config({"web": pool_of(server)}, limits={"max_connections": 1}))
    r1, w1 = await asyncio.open_connection("127.0.0.1", lb.port)
    await asyncio.sleep(0.05)
    (answer,), closed = await raw_exchange(lb.port, last())
    assert answer.status == 503 and closed
    assert rejected(lb, "max_connections") == 1
    w1.write(get())
    assert (await read_response(r1)).status == 200
    w1.close()


# --- IP lists and trusted proxies ---------------------------------------------------------------


async def test_denied_address_gets_403_at_accept(backends, balancer):
    (server,) = await backends(1)
    lb = await balancer(simple_config({"web": pool_of(server)}, limits={"deny": ["127.0.0.0/8"]}))
    (answer,), closed = await raw_exchange(lb.port, last())
    assert answer.status == 403 and closed
    assert server.requests_total == 0
    assert rejected(lb, "ip_denied") == 1
    assert '"- -" 403' in lb.log.getvalue()  # logged, as nginx logs a refused connection


async def test_allow_list_lets_listed_networks_in(backends, balancer):
    (server,) = await backends(1)
    lb = await balancer(
        simple_config({"web": pool_of(server)}, limits={"allow": ["127.0.0.1", "::1"]})
    )
    assert await statuses(lb.port, 1) == [200]


async def test_route_ip_lists(backends, balancer):
    (server,) = await backends(1)
    routes = [
        {"match": {"path_prefix": "/admin"}, "pool": "web", "limits": {"allow": ["10.0.0.0/8"]}},
        {"pool": "web"},
    ]
    lb = await balancer(simple_config({"web": pool_of(server)}, routes=routes))
    (answer,), _ = await raw_exchange(lb.port, last("/admin"))
    assert answer.status == 403
    (answer,), _ = await raw_exchange(lb.port, last("/"))
    assert answer.status == 200


async def test_x_forwarded_for_only_from_trusted_proxies(raw_backend, balancer):
    seen: list[bytes] = []

    async def echo(reader, writer):
        seen.append(await read_request_head(reader))
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
        await writer.drain()

    port = await raw_backend(echo)
    spoof = "X-Forwarded-For: 10.6.6.6, 192.0.2.1"
    # Not trusted: the header is not believed (the deny list would have refused 192.0.2.1).
    lb = await balancer(
        simple_config({"web": pool_of(f"127.0.0.1:{port}")}, limits={"deny": ["192.0.2.0/24"]})
    )
    (answer,), _ = await raw_exchange(lb.port, last("/", spoof))
    assert answer.status == 200
    assert b"X-Real-IP: 127.0.0.1\r\n" in seen[-1]
    # Trusted: the rightmost untrusted hop is the client, for the IP lists and X-Real-IP.
    lb = await balancer(
        simple_config(
            {"web": pool_of(f"127.0.0.1:{port}")},
            limits={"deny": ["192.0.2.0/24"]},
            trusted_proxies=["127.0.0.0/8"],
        )
    )
    (answer,), _ = await raw_exchange(lb.port, last("/", spoof))
    assert answer.status == 403
    (answer,), _ = await raw_exchange(lb.port, last("/", "X-Forwarded-For: 198.51.100.7"))
    assert answer.status == 200
    assert b"X-Real-IP: 198.51.100.7\r\n" in seen[-1]
    assert b"X-Forwarded-For: 198.51.100.7, 127.0.0.1\r\n" in seen[-1]
    assert "198.51.100.7" in lb.log.getvalue()


async def test_rate_limit_keys_on_the_forwarded_client(backends, balancer):
    (server,) = await backends(1)
    lb = await balancer(
        simple_config(
            {"web": pool_of(server)},
            limits={"rate": "1/s"},
            trusted_proxies=["127.0.0.1"],
        ),
        clock=ManualClock(),
    )
    assert await statuses(lb.port, 2, "X-Forwarded-For: 1.1.1.1") == [200, 429]
    assert await statuses(lb.port, 1, "X-Forwarded-For: 2.2.2.2") == [200]


# --- Hiding the backends ------------------------------------------------------------------------


async def chatty(reader, writer):
    await read_request_head(reader)
    writer.write(
        b"HTTP/1.1 200 OK\r\nServer: Apache/2.4.1 (Ubuntu)\r\nX-Powered-By: PHP/5.6\r\n"
        b"X-Other: kept\r\nContent-Length: 2\r\n\r\nok"
    )
    await writer.drain()


async def test_server_and_x_powered_by_are_stripped(raw_backend, balancer):
    port = await raw_backend(chatty)
    lb = await balancer(simple_config({"web": pool_of(f"127.0.0.1:{port}")}))
    (answer,), _ = await raw_exchange(lb.port, last())
    assert answer.header("Server") is None and answer.header("X-Powered-By") is None
    assert answer.header("X-Other") == "kept"


async def test_strip_list_can_keep_them(raw_backend, balancer):
    port = await raw_backend(chatty)
    lb = await balancer(
        simple_config({"web": pool_of(f"127.0.0.1:{port}")}, strip_response_headers=[])
    )
    (answer,), _ = await raw_exchange(lb.port, last())
    assert answer.header("Server") == "Apache/2.4.1 (Ubuntu)"


async def test_error_pages_name_no_backend(balancer):
    from tests.conftest import free_port

    dead = free_port()
    lb = await balancer(simple_config({"web": pool_of(f"127.0.0.1:{dead}")}))
    (answer,), _ = await raw_exchange(lb.port, last())
    assert answer.status == 502
    text = answer.body.decode() + json.dumps(answer.headers)
    assert str(dead) not in text and "127.0.0.1" not in text and "Traceback" not in text


async def test_request_id_is_made_passed_returned_and_logged(backends, balancer):
    (server,) = await backends(1)
    lb = await balancer(simple_config({"web": pool_of(server)}, request_id=True))
    (answer,), _ = await raw_exchange(lb.port, last("/headers"))
    rid = answer.header("X-Request-ID")
    assert rid is not None and len(rid) == 32
    sent = dict((k.lower(), v) for k, v in json.loads(answer.body)["headers"])
    assert sent["x-request-id"] == rid
    assert f"id={rid}" in lb.log.getvalue()
    # A sane one from the client is kept; a bad one is replaced.
    (answer,), _ = await raw_exchange(lb.port, last("/headers", "X-Request-ID: abc-123"))
    assert answer.header("X-Request-ID") == "abc-123"
    (answer,), _ = await raw_exchange(lb.port, last("/headers", "X-Request-ID: a b<script>"))
    assert answer.header("X-Request-ID") != "a b<script>"
    sent = [v for k, v in json.loads(answer.body)["headers"] if k.lower() == "x-request-id"]
    assert sent == [answer.header("X-Request-ID")]


async def test_request_id_survives_a_connection_header_naming_it(raw_backend, balancer):
    """`Connection: close, X-Request-ID` drops the client's copy of a hop-by-hop header, never
    the ID usher adds: the backend sees the ID the client and the access log get."""
    heads: list[bytes] = []

    async def backend(reader, writer):
        heads.append(await read_request_head(reader))
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
        await writer.drain()

    port = await raw_backend(backend)
    lb = await balancer(simple_config({"web": pool_of(f"127.0.0.1:{port}")}, request_id=True))
    for extra in ("", "X-Request-ID: abc-123\r\n"):
        reader, writer = await asyncio.open_connection("127.0.0.1", lb.port)
        writer.write(
            f"GET / HTTP/1.1\r\nHost: x\r\n{extra}Connection: close, X-Request-ID\r\n\r\n".encode()
        )
        try:
            answer = await asyncio.wait_for(read_response(reader), 5)
        finally:
            writer.close()
        rid = answer.header("X-Request-ID")
        assert rid is not None
        sent = [
            line for line in heads[-1].lower().split(b"\r\n") if line.startswith(b"x-request-id")
        ]
        assert sent == [f"x-request-id: {rid}".lower().encode()], heads[-1]


async def test_request_id_on_refusals_too(backends, balancer):
    (server,) = await backends(1)
    lb = await balancer(
        simple_config({"web": pool_of(server)}, request_id="X-Trace", limits={"rate": "1/s"}),
        clock=ManualClock(),
    )
    await statuses(lb.port, 1)
    (answer,), _ = await raw_exchange(lb.port, last())
    assert answer.status == 429 and answer.header("X-Trace")


# --- Slow and abusive clients ------------------------------------------------------------------


async def test_max_requests_per_connection_closes_after_the_last(backends, balancer):
    (server,) = await backends(1)
    lb = await balancer(
        simple_config({"web": pool_of(server)}, limits={"max_requests_per_connection": 3})
    )
    reader, writer = await asyncio.open_connection("127.0.0.1", lb.port)
    answers = []
    for _ in range(3):
        writer.write(get())
        answers.append(await read_response(reader))
    assert [a.header("Connection") for a in answers] == [None, None, "close"]
    assert await asyncio.wait_for(reader.read(), 5) == b""
    writer.close()


async def test_pipelined_requests_over_the_cap_are_refused(backends, balancer):
    (server,) = await backends(1)
    lb = await balancer(simple_config({"web": pool_of(server)}, limits={"max_pipelined": 3}))
    answers, closed = await raw_exchange(lb.port, get() * 10, responses=4)
    assert [a.status for a in answers] == [200, 200, 200, 429]
    assert closed
    assert server.requests_total == 3
    assert rejected(lb, "pipelined") == 1


async def test_body_below_the_rate_floor_gets_408(raw_backend, balancer):
    async def patient(reader, writer):
        await read_request_head(reader)
        await reader.read()

    port = await raw_backend(patient)
    lb = await balancer(
        simple_config(
            {"web": pool_of(f"127.0.0.1:{port}")},
            limits={"min_body_rate": "1KiB/s", "body_rate_window": "200ms"},
        )
    )
    reader, writer = await asyncio.open_connection("127.0.0.1", lb.port)
    writer.write(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n")
    loop = asyncio.get_running_loop()
    start = loop.time()
    answer = None
    for _ in range(50):  # a byte every 50 ms: far below 1 KiB/s
        writer.write(b"x")
        try:
            answer = await asyncio.wait_for(read_response(reader), 0.05)
            break
        except TimeoutError:
            continue
    assert answer is not None and answer.status == 408
    assert loop.time() - start < 1.5
    writer.close()


async def test_body_above_the_rate_floor_passes(backends, balancer):
    (server,) = await backends(1)
    lb = await balancer(
        simple_config(
            {"web": pool_of(server)},
            limits={"min_body_rate": "1KiB/s", "body_rate_window": "200ms"},
        )
    )
    reader, writer = await asyncio.open_connection("127.0.0.1", lb.port)
    writer.write(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n\r\n")
    for _ in range(10):
        writer.write(b"y" * 500)
        await asyncio.sleep(0.05)  # 10 KiB/s
    answer = await asyncio.wait_for(read_response(reader), 5)
    assert answer.status == 200 and answer.body == b"y" * 5000
    writer.close()


async def test_the_rate_floor_does_not_count_waiting_for_the_backends_100(raw_backend, balancer):
    """A client honouring Expect: 100-continue sends nothing until the backend says 100
    Continue: that wait is not a slow body."""

    async def slow_continue(reader, writer):
        await read_request_head(reader)
        await asyncio.sleep(0.6)  # three windows of the floor
        writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        await writer.drain()
        await reader.readexactly(10)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()

    port = await raw_backend(slow_continue)
    lb = await balancer(
        simple_config(
            {"web": pool_of(f"127.0.0.1:{port}")},
            limits={"min_body_rate": "1KiB/s", "body_rate_window": "200ms"},
        )
    )
    reader, writer = await asyncio.open_connection("127.0.0.1", lb.port)
    try:
        writer.write(
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\nExpect: 100-continue\r\n\r\n"
        )
        first = await asyncio.wait_for(read_response(reader), 5)
        assert first.status == 100
        writer.write(b"0123456789")
        final = await asyncio.wait_for(read_response(reader), 5)
    finally:
        writer.close()
    assert final.status == 200 and final.body == b"ok"


# --- Filter rules ------------------------------------------------------------------------------


FILTERS = [
    {"name": "no-admin", "on": "path", "regex": "^/admin"},
    {"name": "sqli", "on": "query", "regex": "(?i)union\\s+select"},
    {"name": "curl", "on": "header:User-Agent", "contains": "curl", "action": "tag"},
    {"name": "script", "on": "body", "contains": "<script"},
]


async def filtered(backends, balancer, **route):
    (server,) = await backends(1)
    routes = [{"pool": "web", "filters": FILTERS, **route}]
    lb = await balancer(simple_config({"web": pool_of(server)}, routes=routes))
    return server, lb


async def test_filters_deny_on_path_and_query(backends, balancer):
    server, lb = await filtered(backends, balancer)
    for target in ("/admin/users", "/search?q=1%20UNION%20SELECT%20pw", "/x?a=union%09select"):
        (answer,), _ = await raw_exchange(lb.port, last(target))
        assert answer.status == 403, target
    (answer,), _ = await raw_exchange(lb.port, last("/?q=union"))
    assert answer.status == 200
    assert server.requests_total == 1
    assert rejected(lb, "filtered") == 3


async def test_filters_tag_for_the_backend(backends, balancer):
    _, lb = await filtered(backends, balancer)
    (answer,), _ = await raw_exchange(lb.port, last("/headers", "User-Agent: curl/8.0"))
    sent = dict((k.lower(), v) for k, v in json.loads(answer.body)["headers"])
    assert sent["x-usher-filter"] == "curl"


def post(body: bytes, path: str = "/echo") -> bytes:
    return b"POST %s HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: %d\r\n\r\n%s" % (
        path.encode(),
        len(body),
        body,
    )


async def test_body_rule_denies_and_nothing_reaches_the_backend(backends, balancer):
    server, lb = await filtered(backends, balancer)
    (answer,), _ = await raw_exchange(lb.port, post(b"hello <script>alert(1)</script>"))
    assert answer.status == 403
    assert server.requests_total == 0
    (answer,), _ = await raw_exchange(lb.port, post(b"harmless"))
    assert answer.status == 200 and answer.body == b"harmless"


async def test_body_rule_reads_only_up_to_its_limit(backends, balancer):
    _, lb = await filtered(backends, balancer, filter_body_limit=1024)
    late = b"a" * 2000 + b"<script>"  # past the inspected part: passes, in full
    (answer,), _ = await raw_exchange(lb.port, post(late))
    assert answer.status == 200 and answer.body == late
    early = b"<script>" + b"a" * 200_000  # denied before the whole body is read
    (answer,), closed = await raw_exchange(lb.port, post(early))
    assert answer.status == 403 and closed


async def test_chunked_body_is_inspected_decoded(backends, balancer):
    _, lb = await filtered(backends, balancer)
    raw = (
        b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"4\r\n<scr\r\n4\r\nipt>\r\n0\r\n\r\n"
    )
    (answer,), _ = await raw_exchange(lb.port, raw)
    assert answer.status == 403


@pytest.mark.parametrize("size", [10, 300_000])
async def test_bodies_pass_through_body_rules_intact(backends, balancer, size):
    _, lb = await filtered(backends, balancer, filter_body_limit="256KiB")
    body = bytes(range(256)) * (size // 256) + b"z" * (size % 256)
    (answer,), _ = await raw_exchange(lb.port, post(body))
    assert answer.status == 200 and answer.body == body


async def test_body_rules_with_expect_100_continue_get_usher_s_100(raw_backend, balancer):
    """The body rules read the body before a backend is chosen: usher itself says 100 Continue
    (no backend could), and the backend gets the request without the Expect."""
    heads: list[bytes] = []

    async def backend(reader, writer):
        heads.append(await read_request_head(reader))
        body = await reader.readexactly(10)
        # A 100 nobody asked it for: the client already had usher's, and gets no second one.
        writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n" + body)
        await writer.drain()

    port = await raw_backend(backend)
    routes = [{"pool": "web", "filters": FILTERS}]
    lb = await balancer(simple_config({"web": pool_of(f"127.0.0.1:{port}")}, routes=routes))

    async def send(body: bytes) -> tuple[int, int]:
        reader, writer = await asyncio.open_connection("127.0.0.1", lb.port)
        try:
            writer.write(
                b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\nExpect: 100-continue\r\n\r\n"
            )
            first = await asyncio.wait_for(read_response(reader), 3)
            writer.write(body)  # only after the 100, as a client honouring Expect does
            final = await asyncio.wait_for(read_response(reader), 3)
            return first.status, final.status
        finally:
            writer.close()

    assert await send(b"0123456789") == (100, 200)
    assert b"expect" not in heads[0].lower()
    assert await send(b"<script>xx") == (100, 403)
    assert len(heads) == 1
