"""Server TLS contexts through real handshakes: a reload replaces the trusted client CAs."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from pathlib import Path
from typing import Any

import pytest
import trustme

from usher.config import ListenerTls, PoolConfig, UpstreamTls
from usher.errors import ConfigError
from usher.tls import ServerTls, check_upstream_tls, load_upstream_contexts, upstream_context


async def _handshake(
    server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext, name: str = "localhost"
) -> bool:
    """True when a client with `client_ctx` gets an answer from a server with `server_ctx`."""

    async def handle(_r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        w.write(b"hi")
        with contextlib.suppress(ConnectionError, ssl.SSLError):
            await w.drain()
        w.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=server_ctx)
    port = server.sockets[0].getsockname()[1]
    try:
        try:
            r, w = await asyncio.open_connection(
                "127.0.0.1", port, ssl=client_ctx, server_hostname=name
            )
        except (ssl.SSLError, ConnectionError):
            return False
        try:
            # TLS 1.3: a refused client certificate shows up on the first read.
            return await asyncio.wait_for(r.read(), 5) == b"hi"
        except (ssl.SSLError, ConnectionError):
            return False
        finally:
            w.close()
    finally:
        server.close()
        await server.wait_closed()


def _tls(tmp_path: Path, ca: str | None, **extra: Any) -> ListenerTls:
    site = trustme.CA()
    cert = site.issue_cert("localhost", "api.example.com")
    cert.cert_chain_pems[0].write_to_path(str(tmp_path / "s.pem"))
    cert.private_key_pem.write_to_path(str(tmp_path / "s.key"))
    files = {"cert": str(tmp_path / "s.pem"), "key": str(tmp_path / "s.key")}
    certs = [files, {**files, "sni": ["api.example.com"]}]
    return ListenerTls.model_validate(
        {"certificates": certs, **({"client_ca": ca} if ca else {}), **extra}
    )


async def test_reload_replaces_the_client_ca(tmp_path: Path) -> None:
    ca_a, ca_b = trustme.CA(), trustme.CA()
    ca_a.cert_pem.write_to_path(str(tmp_path / "a.pem"))
    ca_b.cert_pem.write_to_path(str(tmp_path / "b.pem"))
    with_a = _tls(tmp_path, str(tmp_path / "a.pem"))
    with_b = with_a.model_copy(update={"client_ca": str(tmp_path / "b.pem")})
    tls = ServerTls(with_a, "t")

    def client(ca: trustme.CA) -> ssl.SSLContext:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        ca.issue_cert("someone@example.com").configure_cert(ctx)
        return ctx

    of_a, of_b = client(ca_a), client(ca_b)
    for name in ("localhost", "api.example.com"):  # the default and an SNI certificate
        assert await _handshake(tls.context, of_a, name)
        assert not await _handshake(tls.context, of_b, name)
    tls.update(with_b, "t")
    for name in ("localhost", "api.example.com"):
        assert not await _handshake(tls.context, of_a, name), "the removed CA is still trusted"
        assert await _handshake(tls.context, of_b, name)


async def test_reload_without_client_ca_stops_asking(tmp_path: Path) -> None:
    ca = trustme.CA()
    ca.cert_pem.write_to_path(str(tmp_path / "a.pem"))
    required = _tls(tmp_path, str(tmp_path / "a.pem"))
    tls = ServerTls(required, "t")
    anonymous = ssl.create_default_context()
    anonymous.check_hostname = False
    anonymous.verify_mode = ssl.CERT_NONE
    assert not await _handshake(tls.context, anonymous)
    tls.update(required.model_copy(update={"client_ca": None}), "t")
    assert await _handshake(tls.context, anonymous)


def test_upstream_files_are_read_each_time(tmp_path: Path) -> None:
    # No cache on the config value: a rotated or deleted file is seen by the next load.
    ca_path = tmp_path / "ca.pem"
    trustme.CA().cert_pem.write_to_path(str(ca_path))
    tls = UpstreamTls.model_validate({"ca": str(ca_path)})
    first = upstream_context(tls)
    assert upstream_context(tls) is not first
    assert check_upstream_tls(tls, "pools.p.tls") == []
    ca_path.unlink()
    (issue,) = check_upstream_tls(tls, "pools.p.tls")
    assert issue.path == "pools.p.tls"
    pools = {
        "p": PoolConfig.model_validate(
            {"backends": [{"address": "127.0.0.1:1"}], "tls": {"ca": str(ca_path)}}
        )
    }
    with pytest.raises(ConfigError, match=r"pools\.p\.tls"):
        load_upstream_contexts(pools)
