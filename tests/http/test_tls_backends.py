"""Re-encryption to backends (pool `tls`) and mTLS from clients (listener `tls.client_ca`)."""

from __future__ import annotations

import asyncio
import json
import ssl
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import trustme

from tests.conftest import RunningBalancer
from tests.tls_helpers import TlsServerFactory, server_context, write_ca
from usher.demo.origin import BackendServer

StartBalancer = Callable[..., Awaitable[RunningBalancer]]
StartBackends = Callable[..., Awaitable[list[BackendServer]]]


def http_to(port: int, tls: dict[str, Any] | None, **pool: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {"backends": [{"address": f"127.0.0.1:{port}"}], **pool}
    if tls is not None:
        spec["tls"] = tls
    return {
        "listeners": [{"name": "web", "bind": "127.0.0.1:0", "pool": "p"}],
        "pools": {"p": spec},
    }


async def test_good_backend_certificate_is_accepted(
    tls_server: TlsServerFactory, balancer: StartBalancer, tmp_path: Path
) -> None:
    ca = trustme.CA()
    port = await tls_server(server_context(ca, "backend.internal"), "secure")
    cafile = write_ca(ca, tmp_path / "ca.pem")
    b = await balancer(http_to(port, {"ca": cafile, "server_name": "backend.internal"}))
    async with httpx.AsyncClient() as client:
        for _ in range(3):  # the TLS connection is kept and reused
            response = await client.get(b.url("/"))
            assert response.status_code == 200 and response.text == "secure"


@pytest.mark.parametrize("case", ["unknown CA", "wrong name", "plain backend to verify"])
async def test_bad_backend_certificate_is_refused_with_502(
    tls_server: TlsServerFactory,
    balancer: StartBalancer,
    backends: StartBackends,
    tmp_path: Path,
    case: str,
) -> None:
    ca, other = trustme.CA(), trustme.CA()
    cafile = write_ca(ca, tmp_path / "ca.pem")
    if case == "unknown CA":
        port = await tls_server(server_context(other, "backend.internal"), "x")
    elif case == "wrong name":
        port = await tls_server(server_context(ca, "elsewhere.internal"), "x")
    else:
        port = (await backends(1))[0].port
    b = await balancer(http_to(port, {"ca": cafile, "server_name": "backend.internal"}))
    async with httpx.AsyncClient() as client:
        response = await client.get(b.url("/"))
    assert response.status_code == 502


async def test_verify_false_accepts_any_certificate(
    tls_server: TlsServerFactory, balancer: StartBalancer
) -> None:
    port = await tls_server(server_context(trustme.CA(), "whatever"), "lax")
    b = await balancer(http_to(port, {"verify": False}))
    async with httpx.AsyncClient() as client:
        assert (await client.get(b.url("/"))).text == "lax"


async def test_mtls_to_backend_presents_client_certificate(
    balancer: StartBalancer, tmp_path: Path
) -> None:
    ca = trustme.CA()
    ctx = server_context(ca, "backend.internal")
    ctx.verify_mode = ssl.CERT_REQUIRED
    ca.configure_trust(ctx)
    seen: list[Any] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen.append(writer.get_extra_info("peercert"))
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=ctx)
    port = server.sockets[0].getsockname()[1]
    client_cert = ca.issue_cert("usher.internal", common_name="usher")
    client_cert.cert_chain_pems[0].write_to_path(str(tmp_path / "c.pem"))
    client_cert.private_key_pem.write_to_path(str(tmp_path / "c.key"))
    tls = {
        "ca": write_ca(ca, tmp_path / "ca.pem"),
        "server_name": "backend.internal",
        "cert": str(tmp_path / "c.pem"),
        "key": str(tmp_path / "c.key"),
    }
    try:
        b = await balancer(http_to(port, tls))
        async with httpx.AsyncClient() as client:
            assert (await client.get(b.url("/"))).text == "ok"
        assert ("commonName", "usher") in [rdn[0] for rdn in seen[0]["subject"]]
    finally:
        server.close()
        await server.wait_closed()


async def test_tcp_pool_reencrypts(
    tls_server: TlsServerFactory, balancer: StartBalancer, tmp_path: Path
) -> None:
    ca = trustme.CA()
    port = await tls_server(server_context(ca, "backend.internal"), "tcp-tls")
    config = http_to(
        port, {"ca": write_ca(ca, tmp_path / "ca.pem"), "server_name": "backend.internal"}
    )
    config["listeners"][0]["protocol"] = "tcp"
    b = await balancer(config)
    reader, writer = await asyncio.open_connection("127.0.0.1", b.port)
    writer.write(b"GET / HTTP/1.1\r\n\r\n")  # plain in, TLS out
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert head.startswith(b"HTTP/1.1 200")
    assert await reader.readexactly(7) == b"tcp-tls"
    writer.close()


def test_missing_ca_file_is_a_config_error(tmp_path: Path) -> None:
    from usher.config import parse_config
    from usher.errors import ConfigError
    from usher.server import Balancer

    config = parse_config(json.dumps(http_to(1, {"ca": str(tmp_path / "nope.pem")})))
    with pytest.raises(ConfigError, match=r"pools\.p\.tls: cannot load the CA"):
        Balancer(config)


# mTLS from clients


def https_config(
    tmp_path: Path, ca: trustme.CA, client_ca: trustme.CA, port: int, auth: str
) -> dict[str, Any]:
    site = ca.issue_cert("localhost")
    site.cert_chain_pems[0].write_to_path(str(tmp_path / "site.pem"))
    site.private_key_pem.write_to_path(str(tmp_path / "site.key"))
    return {
        "listeners": [
            {
                "name": "web",
                "bind": "127.0.0.1:0",
                "protocol": "https",
                "pool": "p",
                "tls": {
                    "certificates": [
                        {"cert": str(tmp_path / "site.pem"), "key": str(tmp_path / "site.key")}
                    ],
                    "client_ca": write_ca(client_ca, tmp_path / "clients.pem"),
                    "client_auth": auth,
                },
            }
        ],
        "pools": {"p": {"backends": [{"address": f"127.0.0.1:{port}"}]}},
    }


def client_context(ca: trustme.CA, cert: trustme.LeafCert | None) -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ca.configure_trust(ctx)
    if cert is not None:
        cert.configure_cert(ctx)
    return ctx


async def get_headers(url: str, ctx: ssl.SSLContext, **headers: str) -> dict[str, str]:
    async with httpx.AsyncClient(verify=ctx) as client:
        response = await client.get(url, headers=headers)
    assert response.status_code == 200
    return {k.lower(): v for k, v in response.json()["headers"]}


async def test_client_certificate_subject_reaches_backend_and_cannot_be_forged(
    backends: StartBackends, balancer: StartBalancer, tmp_path: Path
) -> None:
    ca, clients = trustme.CA(), trustme.CA()
    (backend,) = await backends(1)
    b = await balancer(https_config(tmp_path, ca, clients, backend.port, "required"))
    url = b.url("/headers").replace("127.0.0.1", "localhost")
    alice = clients.issue_cert("alice@example.com", common_name="alice")
    seen = await get_headers(url, client_context(ca, alice), **{"X-Client-Cert-Subject": "CN=root"})
    subject = seen["x-client-cert-subject"]
    assert subject.startswith("CN=alice,") and "O=trustme" in subject
    assert "CN=root" not in json.dumps(seen)
    # Required: no certificate, no connection.
    with pytest.raises((httpx.ConnectError, httpx.ReadError, httpx.RemoteProtocolError)):
        await get_headers(url, client_context(ca, None))
    # A certificate from another CA is refused too.
    mallory = trustme.CA().issue_cert("mallory@example.com", common_name="mallory")
    with pytest.raises((httpx.ConnectError, httpx.ReadError, httpx.RemoteProtocolError)):
        await get_headers(url, client_context(ca, mallory))


async def test_optional_client_auth_lets_clients_without_certificate_in(
    backends: StartBackends, balancer: StartBalancer, tmp_path: Path
) -> None:
    ca, clients = trustme.CA(), trustme.CA()
    (backend,) = await backends(1)
    b = await balancer(https_config(tmp_path, ca, clients, backend.port, "optional"))
    url = b.url("/headers").replace("127.0.0.1", "localhost")
    seen = await get_headers(url, client_context(ca, None), **{"X-Client-Cert-Subject": "CN=root"})
    assert "x-client-cert-subject" not in seen  # stripped, and none to give
    bob = clients.issue_cert("bob@example.com", common_name="bob")
    seen = await get_headers(url, client_context(ca, bob))
    assert seen["x-client-cert-subject"].startswith("CN=bob,")


async def test_http_health_checks_of_a_tls_pool_use_its_tls(
    tls_server: TlsServerFactory, tmp_path: Path
) -> None:
    from usher.clock import MonotonicClock
    from usher.config import PoolConfig
    from usher.health import HealthChecker
    from usher.pool import Pool

    ca = trustme.CA()
    good = await tls_server(server_context(ca, "backend.internal"), "ok")
    bad = await tls_server(server_context(trustme.CA(), "backend.internal"), "ok")
    config = PoolConfig.model_validate(
        {
            "backends": [{"address": f"127.0.0.1:{good}"}, {"address": f"127.0.0.1:{bad}"}],
            "tls": {"ca": write_ca(ca, tmp_path / "ca.pem"), "server_name": "backend.internal"},
            "health_check": {
                "type": "http",
                "path": "/",
                "interval": "50ms",
                "jitter": 0,
                "unhealthy_threshold": 1,
                "timeout": "1s",
            },
        }
    )
    pool = Pool("p", config, MonotonicClock())
    checker = HealthChecker(pool, pool.clock)
    checker.start()
    try:
        for _ in range(200):
            if pool.backends[0].last_check and pool.backends[1].last_check:
                break
            await asyncio.sleep(0.02)
        assert pool.backends[0].last_check is not None and pool.backends[0].last_check[0]
        assert pool.backends[1].last_check is not None and not pool.backends[1].last_check[0]
        assert "certificate" in pool.backends[1].last_check[2]
    finally:
        await checker.stop()


def test_missing_client_ca_is_a_config_error(tmp_path: Path) -> None:
    from usher.config import parse_config
    from usher.errors import ConfigError
    from usher.server import Balancer

    ca = trustme.CA()
    config = https_config(tmp_path, ca, ca, 1, "required")
    config["listeners"][0]["tls"]["client_ca"] = str(tmp_path / "missing.pem")
    with pytest.raises(ConfigError, match=r"listeners\[0\]\.tls\.client_ca: cannot load"):
        Balancer(parse_config(json.dumps(config)))


async def test_a_reload_rereads_a_rotated_ca_file(
    tls_server: TlsServerFactory, balancer: StartBalancer, tmp_path: Path
) -> None:
    # docs/tls.md: the files are loaded at start and on reload, even when their paths stay.
    from usher.config import parse_config
    from usher.errors import ConfigError

    ca, old = trustme.CA(), trustme.CA()
    port = await tls_server(server_context(ca, "backend.internal"), "secure")
    cafile = write_ca(old, tmp_path / "ca.pem")  # not yet the backend's CA
    config = http_to(port, {"ca": cafile, "server_name": "backend.internal"})
    b = await balancer(config)
    async with httpx.AsyncClient() as client:
        assert (await client.get(b.url("/"))).status_code == 502
        write_ca(ca, tmp_path / "ca.pem")  # rotated in place, then a reload
        await b.balancer.reload(parse_config(json.dumps(config)))
        assert (await client.get(b.url("/"))).status_code == 200
        (tmp_path / "ca.pem").unlink()  # a file that cannot be read fails the reload
        with pytest.raises(ConfigError, match=r"pools\.p\.tls: cannot load the CA"):
            await b.balancer.reload(parse_config(json.dumps(config)))
        assert (await client.get(b.url("/"))).status_code == 200  # nothing changed


@pytest.mark.parametrize("asks_for_certificates", [True, False])
async def test_no_spelling_of_the_cert_header_gets_through(
    backends: StartBackends, balancer: StartBalancer, tmp_path: Path, asks_for_certificates: bool
) -> None:
    # CGI/WSGI/PHP backends read X_Client_Cert_Subject as HTTP_X_CLIENT_CERT_SUBJECT too; and
    # a listener that does not ask for certificates must not let a client set the header.
    ca, clients = trustme.CA(), trustme.CA()
    (backend,) = await backends(1)
    config = https_config(tmp_path, ca, clients, backend.port, "optional")
    if not asks_for_certificates:
        del config["listeners"][0]["tls"]["client_ca"]
        del config["listeners"][0]["tls"]["client_auth"]
    b = await balancer(config)
    url = b.url("/headers").replace("127.0.0.1", "localhost")
    for name in ("X_Client_Cert_Subject", "x-client_cert-SUBJECT", "X-Client-Cert-Subject"):
        seen = await get_headers(url, client_context(ca, None), **{name: "CN=root"})
        assert "CN=root" not in json.dumps(seen), name
    seen = await get_headers(url, client_context(ca, None), **{"X-Client-Cert": "kept"})
    assert seen["x-client-cert"] == "kept"  # other names are not touched
