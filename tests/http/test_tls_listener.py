"""An https listener's TLS settings end to end: HSTS on its answers, and its versions and
ciphers changed by a reload for the connections that come after it."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import trustme
import yaml

from tests.conftest import RawResponse, RunningBalancer, pool_of, read_response, simple_config
from usher.config import parse_config
from usher.demo.origin import BackendServer

StartBalancer = Callable[..., Awaitable[RunningBalancer]]
StartBackends = Callable[..., Awaitable[list[BackendServer]]]
RawBackend = Callable[..., Awaitable[int]]

YEAR = 365 * 86400


def _certificate(tmp_path: Path) -> tuple[trustme.CA, dict[str, Any]]:
    ca = trustme.CA()
    cert = ca.issue_cert("www.example.test")
    cert.cert_chain_pems[0].write_to_path(tmp_path / "c.pem")
    cert.private_key_pem.write_to_path(tmp_path / "c.key")
    return ca, {"certificates": [{"cert": str(tmp_path / "c.pem"), "key": str(tmp_path / "c.key")}]}


def _client(ca: trustme.CA, version: ssl.TLSVersion | None = None) -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ca.configure_trust(ctx)
    if version is not None:
        ctx.minimum_version = ctx.maximum_version = version
    return ctx


async def _get(port: int, ctx: ssl.SSLContext, path: str = "/") -> RawResponse:
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", port, ssl=ctx, server_hostname="www.example.test"
    )
    try:
        writer.write(f"GET {path} HTTP/1.1\r\nHost: www.example.test\r\n\r\n".encode())
        return await read_response(reader)
    finally:
        writer.close()


async def test_hsts_is_added_to_every_answer_when_set(
    backends: StartBackends, balancer: StartBalancer, tmp_path: Path
) -> None:
    (server,) = await backends(1)
    ca, tls = _certificate(tmp_path)
    routes = [
        {"match": {"path_prefix": "/old"}, "redirect": {"to": "/new"}},
        {"match": {"path_prefix": "/"}, "pool": "web"},
    ]
    https = {**tls, "hsts": "1y"}
    lb = await balancer(
        simple_config({"web": pool_of(server)}, protocol="https", tls=https, routes=routes)
    )
    client = _client(ca)
    proxied = await _get(lb.port, client)
    assert proxied.status == 200
    assert proxied.header("Strict-Transport-Security") == f"max-age={YEAR}"
    redirected = await _get(lb.port, client, "/old")
    assert redirected.status == 302
    assert redirected.header("Strict-Transport-Security") == f"max-age={YEAR}"
    refused = await _get(lb.port, client, "/" + "x" * 10_000)  # request line too long
    assert refused.status == 414
    assert refused.header("Strict-Transport-Security") == f"max-age={YEAR}"


async def test_no_hsts_by_default(
    backends: StartBackends, balancer: StartBalancer, tmp_path: Path
) -> None:
    (server,) = await backends(1)
    ca, tls = _certificate(tmp_path)
    lb = await balancer(simple_config({"web": pool_of(server)}, protocol="https", tls=tls))
    response = await _get(lb.port, _client(ca))
    assert response.status == 200
    assert response.header("Strict-Transport-Security") is None


async def test_hsts_replaces_the_backends_own(
    raw_backend: RawBackend, balancer: StartBalancer, tmp_path: Path
) -> None:
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(
            b"HTTP/1.1 200 OK\r\nStrict-Transport-Security: max-age=5; includeSubDomains\r\n"
            b"Content-Length: 2\r\n\r\nok"
        )
        await writer.drain()

    port = await raw_backend(answer)
    ca, tls = _certificate(tmp_path)
    lb = await balancer(
        simple_config(
            {"web": pool_of(f"127.0.0.1:{port}")}, protocol="https", tls={**tls, "hsts": "180d"}
        )
    )
    response = await _get(lb.port, _client(ca))
    values = [v for n, v in response.headers if n.lower() == "strict-transport-security"]
    assert values == [f"max-age={180 * 86400}"]


async def test_a_reload_changes_tls_settings_for_new_connections(
    backends: StartBackends, balancer: StartBalancer, tmp_path: Path
) -> None:
    (server,) = await backends(1)
    ca, tls = _certificate(tmp_path)
    config = simple_config({"web": pool_of(server)}, protocol="https", tls=tls)
    lb = await balancer(config)
    tls12, tls13 = ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3
    assert (await _get(lb.port, _client(ca, tls12))).header("Strict-Transport-Security") is None
    # A connection opened before the reload keeps going on TLS 1.2.
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", lb.port, ssl=_client(ca, tls12), server_hostname="www.example.test"
    )
    config["listeners"][0].update(bind=f"127.0.0.1:{lb.port}")
    config["listeners"][0]["tls"] = {**tls, "min_version": "1.3", "hsts": "1h"}
    report = await lb.balancer.reload(parse_config(yaml.safe_dump(config)))
    assert report.listeners_kept == ["web"]
    try:
        await _get(lb.port, _client(ca, tls12))
    except (ssl.SSLError, ConnectionError):
        pass
    else:
        raise AssertionError("TLS 1.2 still accepted after min_version 1.3")
    after = await _get(lb.port, _client(ca, tls13))
    assert (after.status, after.header("Strict-Transport-Security")) == (200, "max-age=3600")
    writer.write(b"GET / HTTP/1.1\r\nHost: www.example.test\r\n\r\n")
    kept = await read_response(reader)
    writer.close()
    assert kept.status == 200
    assert writer.get_extra_info("ssl_object").version() == "TLSv1.2"
