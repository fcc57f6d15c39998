"""Downstream HTTP/2 end to end, on real sockets: curl (h2c with prior knowledge, h2 by ALPN)
and a raw `h2` client, to HTTP/1.1 backends. Each stream is one request with everything an
HTTP/1.1 request gets (route, filters, limits, rewrites, log line); flow control both ways;
resets, GOAWAY on stop, bad frames."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import trustme
from h2.errors import ErrorCodes

from tests.conftest import RawHandler, RunningBalancer, pool_of, simple_config
from tests.http.h2_client import H2Client
from tests.recording_backend import RecordingBackend
from usher.demo.origin import BackendServer
from usher.http.h2_downstream import PREFACE, takes_prior_knowledge

StartBalancer = Callable[..., Awaitable[RunningBalancer]]
StartBackends = Callable[..., Awaitable[list[BackendServer]]]
RawBackend = Callable[[RawHandler], Awaitable[int]]


def h2c_config(*servers: BackendServer | str, **listener: Any) -> dict[str, Any]:
    return simple_config({"web": pool_of(*servers)}, http2=True, **listener)


async def curl(*args: str) -> tuple[int, bytes, str]:
    proc = await asyncio.create_subprocess_exec(
        "curl", "-sS", "-v", *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(proc.communicate(), 20)
    return proc.returncode or 0, out, err.decode("latin-1")


async def h2c_client(
    backends: StartBackends, balancer: StartBalancer
) -> tuple[RunningBalancer, H2Client]:
    """One demo backend behind an h2c listener, and a raw client connected to it."""
    (server,) = await backends(1)
    running = await balancer(h2c_config(server))
    return running, await H2Client.open(running.port)


def log_lines(running: RunningBalancer) -> list[str]:
    return [line for line in running.log.getvalue().splitlines() if line]


async def test_curl_h2c_prior_knowledge_get_and_post(
    backends: StartBackends, balancer: StartBalancer
) -> None:
    (server,) = await backends(1)
    running = await balancer(h2c_config(server))
    code, out, err = await curl("--http2-prior-knowledge", running.url("/"))
    assert code == 0 and out == b"A\n"
    assert "< HTTP/2 200" in err
    code, out, err = await curl("--http2-prior-knowledge", "-d", "hello h2", running.url("/echo"))
    assert code == 0 and out == b"hello h2"
    lines = log_lines(running)
    assert len(lines) == 2
    assert '"GET /" 200' in lines[0] and '"POST /echo" 200' in lines[1]


async def test_h2c_is_off_by_default_on_http(
    backends: StartBackends, balancer: StartBalancer
) -> None:
    (server,) = await backends(1)
    running = await balancer(simple_config({"web": pool_of(server)}))
    code, _, err = await curl("--http2-prior-knowledge", running.url("/"))
    assert "< HTTP/2" not in err  # the preface is no HTTP/1.1 request: refused, not served
    code, out, _ = await curl(running.url("/"))
    assert code == 0 and out == b"A\n"


def _tls(tmp_path: Path) -> tuple[trustme.CA, dict[str, Any]]:
    ca = trustme.CA()
    cert = ca.issue_cert("www.example.test")
    cert.cert_chain_pems[0].write_to_path(tmp_path / "c.pem")
    cert.private_key_pem.write_to_path(tmp_path / "c.key")
    ca.cert_pem.write_to_path(tmp_path / "ca.pem")
    return ca, {"certificates": [{"cert": str(tmp_path / "c.pem"), "key": str(tmp_path / "c.key")}]}


def _alpn_client(ca: trustme.CA, protocols: list[str]) -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ca.configure_trust(ctx)
    ctx.set_alpn_protocols(protocols)
    return ctx


async def test_https_offers_h2_by_alpn_by_default_and_http11_still_works(
    backends: StartBackends, balancer: StartBalancer, tmp_path: Path
) -> None:
    (server,) = await backends(1)
    _, tls = _tls(tmp_path)
    running = await balancer(simple_config({"web": pool_of(server)}, protocol="https", tls=tls))
    url = f"https://www.example.test:{running.port}/"
    resolve = f"www.example.test:{running.port}:127.0.0.1"
    cacert = str(tmp_path / "ca.pem")
    code, out, err = await curl("--http2", "--cacert", cacert, "--resolve", resolve, url)
    assert code == 0 and out == b"A\n"
    assert "ALPN: server accepted h2" in err and "< HTTP/2 200" in err
    code, out, err = await curl("--http1.1", "--cacert", cacert, "--resolve", resolve, url)
    assert code == 0 and out == b"A\n" and "< HTTP/1.1 200" in err


async def test_https_with_http2_false_offers_only_http11(
    backends: StartBackends, balancer: StartBalancer, tmp_path: Path
) -> None:
    (server,) = await backends(1)
    ca, tls = _tls(tmp_path)
    running = await balancer(
        simple_config({"web": pool_of(server)}, protocol="https", tls=tls, http2=False)
    )
    ctx = _alpn_client(ca, ["h2", "http/1.1"])
    _, writer = await asyncio.open_connection(
        "127.0.0.1", running.port, ssl=ctx, server_hostname="www.example.test"
    )
    ssl_object = writer.get_extra_info("ssl_object")
    assert ssl_object.selected_alpn_protocol() == "http/1.1"
    writer.close()


async def test_raw_h2_over_tls_streams_multiplexed_to_http11_backends(
    backends: StartBackends, balancer: StartBalancer, tmp_path: Path
) -> None:
    servers = await backends(3)
    ca, tls = _tls(tmp_path)
    running = await balancer(simple_config({"web": pool_of(*servers)}, protocol="https", tls=tls))
    client = await H2Client.open(running.port, ssl_context=_alpn_client(ca, ["h2"]))
    try:
        sids = [client.request(f"/sleep/0.05?n={i}") for i in range(30)]
        answers = [await client.response(sid) for sid in sids]
    finally:
        await client.close()
    assert [a.status for a in answers] == [200] * 30, bytes(answers[0].body)
    names = {a.header(b"x-backend") for a in answers}
    assert names == {b"A", b"B", b"C"}  # balanced per stream, not per connection
    assert len(log_lines(running)) == 30


async def test_many_concurrent_streams_are_answered_concurrently(
    backends: StartBackends, balancer: StartBalancer
) -> None:
    _running, client = await h2c_client(backends, balancer)
    try:
        loop = asyncio.get_running_loop()
        start = loop.time()
        sids = [client.request("/sleep/0.3") for _ in range(50)]
        answers = [await client.response(sid) for sid in sids]
        elapsed = loop.time() - start
    finally:
        await client.close()
    assert all(a.status == 200 for a in answers)
    assert elapsed < 3.0  # 50 x 300 ms one after another would be 15 s


async def test_post_without_length_goes_chunked_with_trailers(balancer: StartBalancer) -> None:
    backend = RecordingBackend()
    port = await backend.start()
    try:
        running = await balancer(h2c_config(f"127.0.0.1:{port}"))
        client = await H2Client.open(running.port)
        sid = client.request("/up", method="POST", end=False)
        client.h2.send_data(sid, b"part one,")
        client.h2.send_data(sid, b"part two")
        client.h2.send_headers(sid, [(b"x-sum", b"17")], end_stream=True)
        client.flush()
        answer = await client.response(sid)
        await client.close()
    finally:
        await backend.close()
    assert answer.status == 200 and bytes(answer.body) == b"ok"
    sent = backend.received
    head, _, body = sent.partition(b"\r\n\r\n")
    assert head.startswith(b"POST /up HTTP/1.1\r\n")
    assert b"\r\nhost: www.example.test" in head.lower()
    assert b"transfer-encoding: chunked" in head.lower()
    assert body == b"9\r\npart one,\r\n8\r\npart two\r\n0\r\nx-sum: 17\r\n\r\n"


async def test_split_cookie_crumbs_reach_the_backend_as_one_cookie(
    balancer: StartBalancer,
) -> None:
    backend = RecordingBackend()
    port = await backend.start()
    try:
        running = await balancer(h2c_config(f"127.0.0.1:{port}"))
        client = await H2Client.open(running.port)
        # The client's h2 splits the field into one crumb per pair (RFC 9113 §8.2.3).
        cookies = [(b"cookie", b"a=1; b=2"), (b"x-after", b"1"), (b"cookie", b"c=3")]
        answer = await client.response(client.request("/", headers=cookies))
        await client.close()
    finally:
        await backend.close()
    assert answer.status == 200
    head = backend.received.partition(b"\r\n\r\n")[0].lower()
    assert head.count(b"\r\ncookie:") == 1
    assert b"\r\ncookie: a=1; b=2; c=3\r\n" in head
    assert b"\r\nx-after: 1\r\n" in head


async def test_response_trailers_and_hop_by_hop_headers(
    balancer: StartBalancer, raw_backend: RawBackend
) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nKeep-Alive: timeout=5\r\n"
            b"Connection: keep-alive\r\nTrailer: grpc-status\r\n\r\n"
            b"5\r\nhello\r\n0\r\ngrpc-status: 0\r\n\r\n"
        )
        await writer.drain()
        await reader.read()

    port = await raw_backend(handler)
    running = await balancer(h2c_config(f"127.0.0.1:{port}"))
    client = await H2Client.open(running.port)
    try:
        answer = await client.get("/")
    finally:
        await client.close()
    assert answer.status == 200 and bytes(answer.body) == b"hello"
    assert answer.trailers == [(b"grpc-status", b"0")]
    names = {name for name, _ in answer.headers}
    assert not names & {b"transfer-encoding", b"keep-alive", b"connection"}


async def test_route_rewrite_and_rate_limit_apply_per_stream(
    backends: StartBackends, balancer: StartBalancer
) -> None:
    a, b = await backends(2)
    routes = [
        {
            "match": {"path_prefix": "/headers"},
            "pool": "api",
            "request_headers": {"set": {"X-Env": "h2"}},
            "response_headers": {"set": {"X-Served": "usher"}},
        },
        {"pool": "web"},
    ]
    config = simple_config(
        {"web": pool_of(a), "api": pool_of(b)},
        http2=True,
        routes=routes,
        limits={"rate": "1/m", "burst": 3},
    )
    running = await balancer(config)
    client = await H2Client.open(running.port)
    try:
        api = await client.get("/headers")
        web = await client.get("/")
        third = await client.get("/")
        limited = await client.get("/")
    finally:
        await client.close()
    assert api.header(b"x-backend") == b"B" and api.header(b"x-served") == b"usher"
    assert b'["X-Env", "h2"]' in bytes(api.body)
    assert web.header(b"x-backend") == b"A" and web.header(b"x-served") is None
    assert third.status == 200 and limited.status == 429
    assert len(log_lines(running)) == 4


async def test_large_download_follows_the_clients_window(
    backends: StartBackends, balancer: StartBalancer
) -> None:
    (server,) = await backends(1)
    running = await balancer(h2c_config(server))
    size = 8 * 1024 * 1024
    client = await H2Client.open(running.port, auto_ack=False)
    try:
        sid = client.request(f"/bytes/{size}")
        answer = client.answers[sid]
        await asyncio.sleep(0.5)
        # Without WINDOW_UPDATE the server sends no more than the initial windows allow.
        assert len(answer.body) <= 65_535
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 30
        while not answer.done.is_set() and loop.time() < deadline:
            client.acknowledge(sid)
            client.h2.increment_flow_control_window(0x100000)  # the connection's window
            client.flush()
            await asyncio.sleep(0.005)
    finally:
        await client.close()
    assert answer.done.is_set() and answer.status == 200
    assert len(answer.body) == size


async def test_client_reset_cancels_the_exchange_and_frees_the_backend(
    balancer: StartBalancer, raw_backend: RawBackend
) -> None:
    closed = asyncio.Event()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\nfirst bytes")
        await writer.drain()
        await reader.read()  # until usher closes the connection
        closed.set()

    port = await raw_backend(handler)
    running = await balancer(h2c_config(f"127.0.0.1:{port}"))
    client = await H2Client.open(running.port)
    try:
        sid = client.request("/slow")
        for _ in range(200):
            if client.answers[sid].body:
                break
            await asyncio.sleep(0.01)
        client.reset(sid)
        await asyncio.wait_for(closed.wait(), 5)
        assert client.answers[sid].reset is None  # it was the client's reset, not ours
        assert client.goaway is None  # the connection goes on
    finally:
        await client.close()
    await asyncio.sleep(0.05)
    assert '"GET /slow" 499' in running.log.getvalue()


async def test_goaway_on_stop_lets_the_open_stream_finish(
    backends: StartBackends, balancer: StartBalancer
) -> None:
    running, client = await h2c_client(backends, balancer)
    try:
        first = client.request("/sleep/0.3")
        await asyncio.sleep(0.1)
        stop = asyncio.create_task(running.balancer.stop(timeout=5))
        await asyncio.sleep(0.05)
        assert client.goaway is not None
        assert client.goaway.error_code == ErrorCodes.NO_ERROR
        assert client.goaway.last_stream_id == first
        answer = await client.response(first)
        assert answer.reset is None and answer.status == 200
        await client.wait_closed(5)
        await stop
    finally:
        await client.close()


async def test_bad_frames_get_a_goaway_naming_the_error_and_others_are_unharmed(
    backends: StartBackends, balancer: StartBalancer
) -> None:
    running, bad = await h2c_client(backends, balancer)
    good = await H2Client.open(running.port)
    try:
        # A DATA frame on stream 0 is a connection error (RFC 9113 §6.1).
        bad.send_raw(b"\x00\x00\x01\x00\x00\x00\x00\x00\x00x")
        await bad.wait_closed(5)
        assert bad.goaway is not None and bad.goaway.error_code == ErrorCodes.PROTOCOL_ERROR
        answer = await good.get("/")
        assert answer.status == 200
    finally:
        await bad.close()
        await good.close()


async def test_a_malformed_request_resets_only_its_stream(
    backends: StartBackends, balancer: StartBalancer
) -> None:
    _running, client = await h2c_client(backends, balancer)
    try:
        bad = client.request("/a b")  # a space in :path would split the request line
        answer = await client.response(bad)
        assert answer.reset == ErrorCodes.PROTOCOL_ERROR
        assert (await client.get("/")).status == 200
    finally:
        await client.close()


def test_the_h2c_preface_is_told_from_http11_methods() -> None:
    assert takes_prior_knowledge(PREFACE)
    assert takes_prior_knowledge(PREFACE[:5])  # the rest may come in the next read
    for first in (b"PUT / HTTP/1.1\r\n", b"POST /", b"PATCH /", b"PROPFIND /", b"PR"):
        assert not takes_prior_knowledge(first)


async def test_head_and_bodiless_statuses_end_the_stream_without_data(
    backends: StartBackends, balancer: StartBalancer
) -> None:
    running, client = await h2c_client(backends, balancer)
    try:
        head = await client.get("/", method="HEAD")
        no_content = await client.get("/status/204")
        big_head = await client.get(f"/bytes/{1 << 20}", method="HEAD")
    finally:
        await client.close()
    assert head.status == 200 and head.body == b"" and head.reset is None
    assert no_content.status == 204 and no_content.body == b""
    assert big_head.header(b"content-length") == b"%d" % (1 << 20) and big_head.body == b""
    assert '"HEAD /" 200' in running.log.getvalue()


async def test_an_upload_is_held_back_while_the_backend_does_not_read(
    balancer: StartBalancer, raw_backend: RawBackend
) -> None:
    go = asyncio.Event()
    got = 0

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal got
        head = await reader.readuntil(b"\r\n\r\n")
        length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
        await go.wait()  # not a byte of the body is read before
        while got < length:
            data = await reader.read(1 << 20)
            if not data:
                return
            got += len(data)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\ndone")
        await writer.drain()
        await reader.read()

    port = await raw_backend(handler)
    running = await balancer(h2c_config(f"127.0.0.1:{port}"))
    client = await H2Client.open(running.port)
    size = 16 * 1024 * 1024
    chunk = b"x" * 16384
    try:
        sid = client.request(
            "/up", method="POST", end=False, headers=[(b"content-length", b"%d" % size)]
        )
        sent = 0
        stalled_at = None
        while sent < size:
            if client.h2.local_flow_control_window(sid) >= len(chunk):
                client.h2.send_data(sid, chunk)
                client.flush()
                sent += len(chunk)
                continue
            client.window_updated.clear()
            try:
                await asyncio.wait_for(client.window_updated.wait(), 0.5)
            except TimeoutError:
                assert stalled_at is None, "the window stayed shut after the backend read"
                stalled_at = sent  # half a second without window: usher holds the body back
                go.set()
        client.h2.end_stream(sid)
        client.flush()
        answer = await client.response(sid, timeout=30)
    finally:
        await client.close()
    # The window stayed shut while the backend read nothing: usher held at most its buffers
    # and the kernel's, far less than the body.
    assert stalled_at is not None and stalled_at < size // 2
    assert answer.status == 200 and bytes(answer.body) == b"done"
    assert got == size


async def test_a_connection_outlives_the_header_timeout_and_closes_when_idle(
    backends: StartBackends, balancer: StartBalancer
) -> None:
    (server,) = await backends(1)
    running = await balancer(h2c_config(server, timeouts={"header": "300ms", "idle": "800ms"}))
    client = await H2Client.open(running.port)
    try:
        assert (await client.get("/")).status == 200
        await asyncio.sleep(0.5)  # past the header timeout, within the idle one
        assert (await client.get("/")).status == 200
        assert client.goaway is None
        await client.wait_closed(5)  # no stream for longer than the idle timeout
        assert client.goaway is not None and client.goaway.error_code == ErrorCodes.NO_ERROR
    finally:
        await client.close()
