"""Hot reload under a steady request loop: good files, bad files and removed backends lose no
request; listeners that did not change keep their sockets and their open connections."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
import pytest
import yaml

from tests.conftest import pool_of, read_response, simple_config
from tests.l4.test_tcp import wait_for as wait_until
from usher.config import parse_config
from usher.errors import ConfigError
from usher.proxy_protocol import parse as parse_proxy
from usher.server import BindError


def cfg(d: dict[str, Any]):  # type: ignore[no-untyped-def]
    return parse_config(yaml.safe_dump(d))


async def request_loop(url: str, stop: asyncio.Event, results: list[int]) -> None:
    async with httpx.AsyncClient(timeout=5) as client:
        while not stop.is_set():
            try:
                results.append((await client.get(url)).status_code)
            except httpx.HTTPError:
                results.append(-1)
            await asyncio.sleep(0.002)


async def test_reloads_under_load_fail_no_request(backends, balancer, tmp_path):
    a, b, c = await backends(3)
    path = tmp_path / "usher.yaml"
    path.write_text(yaml.safe_dump(simple_config({"web": pool_of(a, b, c)})))
    lb = await balancer(path.read_text(), config_path=path)
    bind = f"127.0.0.1:{lb.port}"
    pool = lb.pools["web"]
    kept = pool.find(f"127.0.0.1:{a.port}")
    assert kept is not None
    stop = asyncio.Event()
    results: list[int] = []
    loop = asyncio.create_task(request_loop(lb.url("/"), stop, results))
    await asyncio.sleep(0.2)
    requests_before = kept.requests_total

    # A good file: new weights, same listener.
    heavier = simple_config({"web": pool_of(a, b, c)}, bind=bind)
    heavier["pools"]["web"]["backends"][0]["weight"] = 5
    path.write_text(yaml.safe_dump(heavier))
    report = await lb.balancer.reload()
    assert report.listeners_kept == ["web"]
    await asyncio.sleep(0.2)

    # A bad file: refused with its problems, nothing changes.
    path.write_text(f"listeners: [{{name: web, bind: {bind}, pool: web}}]\npools: {{web: {{}}}}\n")
    with pytest.raises(ConfigError, match=r"pools\.web\.backends"):
        await lb.balancer.reload()
    assert kept.weight == 5
    await asyncio.sleep(0.2)

    # A file that removes a backend: it drains, then leaves.
    fewer = simple_config({"web": pool_of(a, b)}, bind=bind)
    fewer["pools"]["web"]["backends"][0]["weight"] = 5
    path.write_text(yaml.safe_dump(fewer))
    report = await lb.balancer.reload()
    assert report.backends_draining == [f"web/127.0.0.1:{c.port}"]
    await asyncio.sleep(0.3)
    stop.set()
    await loop

    assert results and set(results) == {200}, f"{results.count(-1)} failed"
    assert pool.find(f"127.0.0.1:{c.port}") is None
    # The backend that stayed kept its live state across the reloads.
    assert pool.find(f"127.0.0.1:{a.port}") is kept
    assert kept.weight == 5 and kept.requests_total > requests_before


async def test_an_idle_keep_alive_connection_survives_a_reload(backends, balancer):
    a, b = await backends(2)
    lb = await balancer(simple_config({"web": pool_of(a)}))
    bind = f"127.0.0.1:{lb.port}"
    reader, writer = await asyncio.open_connection("127.0.0.1", lb.port)
    writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert b"A\n" in await asyncio.wait_for(reader.readuntil(b"A\n"), 5)
    await lb.balancer.reload(cfg(simple_config({"web": pool_of(b)}, bind=bind)))
    writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")  # same connection, new config
    assert b"B\n" in await asyncio.wait_for(reader.readuntil(b"B\n"), 5)
    writer.close()


async def test_reload_adds_and_removes_listeners_and_pools(backends, balancer):
    a, b = await backends(2)
    lb = await balancer(simple_config({"web": pool_of(a)}))
    bind = f"127.0.0.1:{lb.port}"
    new = {
        "listeners": [
            {"name": "web", "bind": bind, "pool": "web"},
            {"name": "api", "bind": "127.0.0.1:0", "pool": "api"},
        ],
        "pools": {"web": pool_of(a), "api": pool_of(b)},
    }
    report = await lb.balancer.reload(cfg(new))
    assert report.listeners_added == ["api"] and report.pools_added == ["api"]
    async with httpx.AsyncClient() as client:
        assert (await client.get(lb.url("/", "api"))).text == "B\n"
        assert (await client.get(lb.url("/", "web"))).text == "A\n"
    api_url = lb.url("/", "api")
    report = await lb.balancer.reload(cfg(simple_config({"web": pool_of(a)}, bind=bind)))
    assert report.listeners_removed == ["api"] and report.pools_removed == ["api"]
    with pytest.raises(httpx.ConnectError):
        async with httpx.AsyncClient() as client:
            await client.get(api_url)


async def test_a_new_listener_that_cannot_bind_changes_nothing(backends, balancer):
    a, b = await backends(2)
    lb = await balancer(simple_config({"web": pool_of(a)}))
    bind = f"127.0.0.1:{lb.port}"
    taken = f"127.0.0.1:{a.port}"  # the backend's own port is in use
    new = {
        "listeners": [
            {"name": "web", "bind": bind, "pool": "web"},
            {"name": "other", "bind": taken, "pool": "web"},
        ],
        "pools": {"web": pool_of(b)},
    }
    with pytest.raises(BindError, match=taken):
        await lb.balancer.reload(cfg(new))
    async with httpx.AsyncClient() as client:
        assert (await client.get(lb.url("/"))).text == "A\n"  # still the old pool
    assert list(lb.balancer.listeners) == ["web"]


async def test_runtime_changes_the_file_does_not_keep_are_reported(backends, balancer):
    a, b = await backends(2)
    lb = await balancer(simple_config({"web": pool_of(a)}))
    bind = f"127.0.0.1:{lb.port}"
    lb.balancer.add_backend("web", f"127.0.0.1:{b.port}")
    lb.balancer.update_backend("web", f"127.0.0.1:{a.port}", weight=3)
    report = await lb.balancer.reload(cfg(simple_config({"web": pool_of(a)}, bind=bind)))
    assert report.overwritten == [
        f"web/127.0.0.1:{b.port}: added at runtime, not in the file: removed",
        f"web/127.0.0.1:{a.port}: weight 3 at runtime, 1 in the file",
    ]
    started = time.monotonic()
    while (
        lb.pools["web"].find(f"127.0.0.1:{b.port}") is not None and time.monotonic() - started < 5
    ):
        await asyncio.sleep(0.02)
    assert lb.pools["web"].find(f"127.0.0.1:{b.port}") is None


async def test_an_admin_change_is_reported_until_the_restart_that_applies_it(backends, balancer):
    (a,) = await backends(1)
    config = simple_config({"web": pool_of(a)})
    config["admin"] = {"bind": "127.0.0.1:0"}
    lb = await balancer(yaml.safe_dump(config))
    changed = simple_config({"web": pool_of(a)}, bind=f"127.0.0.1:{lb.port}")
    changed["admin"] = {"bind": "127.0.0.1:0", "token": "new-token"}
    for _ in range(2):  # the running admin section is still the old one, so: said each time
        report = await lb.balancer.reload(cfg(changed))
        assert report.notes == ["admin settings change at the next restart"]
    assert lb.balancer.config.admin is not None
    assert lb.balancer.config.admin.token is None


async def test_a_reload_that_turns_tls_on_sends_nothing_more_in_the_clear(backends, balancer):
    # An idle plaintext connection parked before the reload must not carry the next request.
    (backend,) = await backends(1)  # plain HTTP: with tls on, it cannot answer
    config = {
        "listeners": [{"name": "web", "bind": "127.0.0.1:0", "pool": "p"}],
        "pools": {"p": {"backends": [{"address": f"127.0.0.1:{backend.port}"}]}},
    }
    b = await balancer(config)
    async with httpx.AsyncClient() as c:
        assert (await c.get(b.url("/"))).status_code == 200
        config["pools"]["p"]["tls"] = {"verify": True}
        await b.balancer.reload(cfg(config))
        statuses = [(await c.get(b.url("/"))).status_code for _ in range(3)]
    assert statuses == [502, 502, 502]


async def test_a_reload_that_changes_the_proxy_header_renews_busy_and_idle_connections(balancer):
    # Connections record the PROXY header they began with: "v1" or "v2".
    kinds: list[str] = []
    hold = asyncio.Event()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        buf = b""
        while (parsed := parse_proxy(buf)) is None:
            buf += await reader.read(4096)
        kinds.append("v1" if buf.startswith(b"PROXY ") else "v2")
        buf = buf[parsed[1] :]
        try:
            while True:
                while b"\r\n\r\n" not in buf:
                    more = await reader.read(4096)
                    if not more:
                        return
                    buf += more
                head, buf = buf.split(b"\r\n\r\n", 1)
                if b"/slow" in head:
                    await hold.wait()
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                await writer.drain()
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    pool = {"backends": [{"address": f"127.0.0.1:{port}"}], "send_proxy_protocol": "v1"}
    config = {
        "listeners": [{"name": "web", "bind": "127.0.0.1:0", "pool": "p"}],
        "pools": {"p": pool},
    }
    b = await balancer(config)
    reader, writer = await asyncio.open_connection("127.0.0.1", b.port)
    try:
        writer.write(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
        await wait_until(lambda: kinds == ["v1"])
        pool["send_proxy_protocol"] = "v2"
        await b.balancer.reload(cfg(config))
        hold.set()  # the busy connection finishes after the reload
        assert (await asyncio.wait_for(read_response(reader), 5)).status == 200
        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert (await asyncio.wait_for(read_response(reader), 5)).status == 200
        assert kinds == ["v1", "v2"], "a connection made with the old header was reused"
    finally:
        writer.close()
        server.close()


async def test_a_reload_keeps_rate_limit_buckets_it_does_not_change(backends, balancer):
    """Buckets outlive a reload that keeps their limiter (the listener's, and a route's by
    position); a limiter whose rate changed starts afresh."""
    (server,) = await backends(1)
    limited = {"match": {"path_prefix": "/r"}, "pool": "web", "limits": {"rate": "1/m", "burst": 1}}

    def config(rate: str, **extra: Any) -> dict[str, Any]:
        return simple_config(
            {"web": pool_of(server)},
            limits={"rate": rate, "burst": 2},
            routes=[limited, {"pool": "web"}],
            **extra,
        )

    lb = await balancer(config("1/m"))
    bind = f"127.0.0.1:{lb.port}"

    async def refused(path: str) -> bool:
        r, w = await asyncio.open_connection("127.0.0.1", lb.port)
        w.write(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        try:
            return (await asyncio.wait_for(read_response(r), 5)).status == 429
        finally:
            w.close()

    # The listener's 2 tokens go to the first two; the route's one to the first.
    assert [await refused("/r"), await refused("/r"), await refused("/")] == [False, True, True]
    await lb.balancer.reload(cfg(config("1/m", bind=bind)))  # nothing changed
    assert await refused("/")
    await lb.balancer.reload(cfg(config("2/m", bind=bind)))  # the listener's rate changed
    assert [await refused("/r"), await refused("/")] == [True, False]
