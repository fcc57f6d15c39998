"""tls_passthrough through real sockets: routing on SNI to backends that present different
certificates, the client verifying end to end; bad first flights closed with a log line."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import trustme

from tests.conftest import RunningBalancer
from tests.l4.test_tcp import wait_for
from tests.tls_helpers import TlsServerFactory, server_context
from usher.clock import ManualClock
from usher.config import PoolConfig
from usher.config import Route as RouteConfig
from usher.l4.tcp import SniRouter
from usher.pool import Pool

StartBalancer = Callable[..., Awaitable[RunningBalancer]]


def passthrough_config(
    routes: list[dict[str, Any]], pools: dict[str, int], **listener: Any
) -> dict[str, Any]:
    return {
        "listeners": [
            {
                "name": "tls",
                "bind": "127.0.0.1:0",
                "protocol": "tls_passthrough",
                "routes": routes,
                **listener,
            }
        ],
        "pools": {
            name: {"backends": [{"address": f"127.0.0.1:{port}"}]} for name, port in pools.items()
        },
    }


async def fetch(port: int, ctx: ssl.SSLContext, server_name: str) -> tuple[str, str]:
    """GET / over TLS to usher with this SNI; the answer's body and the peer's certificate CN."""
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", port, ssl=ctx, server_hostname=server_name
    )
    try:
        cert = writer.get_extra_info("peercert")
        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        length = int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0])
        body = await reader.readexactly(length)
        names = [v for k, v in cert["subjectAltName"]]
        return body.decode(), names[0]
    finally:
        writer.close()


@pytest.mark.parametrize("zero_copy", [False, True], ids=["plain", "splice"])
async def test_routes_on_sni_and_client_verifies_end_to_end(
    tls_server: TlsServerFactory, balancer: StartBalancer, zero_copy: bool
) -> None:
    ca = trustme.CA()
    api = await tls_server(server_context(ca, "api.example.com"), "api")
    shop = await tls_server(server_context(ca, "*.shop.example.com"), "shop")
    fallback = await tls_server(server_context(ca, "default.example.com"), "default")
    routes = [
        {"match": {"sni": "api.example.com"}, "pool": "api"},
        {"match": {"sni": "*.shop.example.com"}, "pool": "shop"},
        {"pool": "fallback"},
    ]
    b = await balancer(
        passthrough_config(
            routes, {"api": api, "shop": shop, "fallback": fallback}, zero_copy=zero_copy
        )
    )
    client = ssl.create_default_context()
    ca.configure_trust(client)
    # The certificate the client verifies is the backend's own: usher never decrypted.
    assert await fetch(b.port, client, "api.example.com") == ("api", "api.example.com")
    assert await fetch(b.port, client, "eu.shop.example.com") == ("shop", "*.shop.example.com")
    assert await fetch(b.port, client, "default.example.com") == (
        "default",
        "default.example.com",
    )
    # One label only: a.b.shop.example.com is not covered by the wildcard route; it goes to
    # the default pool (whose certificate does not name it: the client is told not to check).
    lax = ssl.create_default_context()
    ca.configure_trust(lax)
    lax.check_hostname = False
    assert await fetch(b.port, lax, "a.b.shop.example.com") == ("default", "default.example.com")
    await wait_for(lambda: b.log.getvalue().count("sni=") >= 4)
    lines = b.log.getvalue().splitlines()
    (deep,) = [line for line in lines if "sni=a.b.shop.example.com" in line]
    assert "pool=fallback" in deep
    assert any("sni=eu.shop.example.com" in line and "pool=shop" in line for line in lines)


async def test_no_default_route_closes(
    tls_server: TlsServerFactory, balancer: StartBalancer
) -> None:
    ca = trustme.CA()
    api = await tls_server(server_context(ca, "api.example.com"), "api")
    b = await balancer(
        passthrough_config([{"match": {"sni": "api.example.com"}, "pool": "api"}], {"api": api})
    )
    client = ssl.create_default_context()
    ca.configure_trust(client)
    with pytest.raises((ssl.SSLError, ConnectionError)):
        await fetch(b.port, client, "other.example.com")
    await wait_for(lambda: "no_route" in b.log.getvalue())


@pytest.mark.parametrize(
    ("first", "result"),
    [
        (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", "not_tls"),
        (b"\x16\x03\x01\x00\x04\x02\x00\x00\x00", "bad_client_hello"),
    ],
)
async def test_bad_first_flight_is_closed_with_a_log_line(
    tls_server: TlsServerFactory,
    balancer: StartBalancer,
    first: bytes,
    result: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    ca = trustme.CA()
    api = await tls_server(server_context(ca, "api.example.com"), "api")
    b = await balancer(passthrough_config([{"pool": "api"}], {"api": api}))
    reader, writer = await asyncio.open_connection("127.0.0.1", b.port)
    writer.write(first)
    with contextlib.suppress(ConnectionResetError):
        assert await asyncio.wait_for(reader.read(), 5) == b""
    writer.close()
    await wait_for(lambda: f" {result} " in b.log.getvalue())
    assert any("closing connection from 127.0.0.1" in r.message for r in caplog.records)


async def test_first_flight_timeout(tls_server: TlsServerFactory, balancer: StartBalancer) -> None:
    ca = trustme.CA()
    api = await tls_server(server_context(ca, "api.example.com"), "api")
    b = await balancer(
        passthrough_config([{"pool": "api"}], {"api": api}, timeouts={"header": "200ms"})
    )
    reader, writer = await asyncio.open_connection("127.0.0.1", b.port)
    writer.write(b"\x16\x03\x01")  # a start, and then nothing
    assert await asyncio.wait_for(reader.read(), 5) == b""
    writer.close()
    await wait_for(lambda: "first_flight_timeout" in b.log.getvalue())


def test_config_rejects_http_matches_on_passthrough(tmp_path: Path) -> None:
    from usher.config import parse_config
    from usher.errors import ConfigError

    config = passthrough_config(
        [{"match": {"sni": "a.example.com", "path_prefix": "/x"}, "pool": "a"}], {"a": 1}
    )
    import json

    with pytest.raises(ConfigError, match=r"routes\[0\]\.match\.path_prefix: tls_passthrough"):
        parse_config(json.dumps(config))


def _router(*routes: dict[str, Any]) -> tuple[SniRouter, dict[str, Pool]]:
    configs = [RouteConfig.model_validate(r) for r in routes]
    pools = {
        str(r["pool"]): Pool(
            str(r["pool"]),
            PoolConfig.model_validate({"backends": [{"address": "127.0.0.1:1"}]}),
            ManualClock(),
        )
        for r in routes
    }
    return SniRouter(configs, [pools[str(r["pool"])] for r in routes]), pools


def test_sni_router_exact_wildcard_and_default() -> None:
    router, pools = _router(
        {"match": {"sni": "*.shop.example.com"}, "pool": "shop"},
        {"match": {"sni": "api.example.com"}, "pool": "api"},
        {"match": {"sni": "eu.shop.example.com"}, "pool": "eu"},
        {"pool": "fallback"},
        {"pool": "second_default"},
    )
    assert router.route("api.example.com") is pools["api"]
    assert router.route("API.Example.COM") is pools["api"]  # names are case-insensitive
    # An exact name wins over a wildcard written before it.
    assert router.route("eu.shop.example.com") is pools["eu"]
    assert router.route("us.shop.example.com") is pools["shop"]
    # One label only: deeper names, and the bare suffix, are not covered.
    assert router.route("a.b.shop.example.com") is pools["fallback"]
    assert router.route("shop.example.com") is pools["fallback"]
    assert router.route("xshop.example.com") is pools["fallback"]
    # No SNI and unknown names take the first route without match.
    assert router.route(None) is pools["fallback"]
    assert router.route("other.example.com") is pools["fallback"]


def test_sni_router_without_default_routes_nothing_else() -> None:
    router, pools = _router({"match": {"sni": "*.example.com"}, "pool": "any"})
    assert router.route("a.example.com") is pools["any"]
    assert router.route("a.b.example.com") is None
    assert router.route("example.com") is None
    assert router.route(None) is None
