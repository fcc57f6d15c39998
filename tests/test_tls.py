"""Server TLS contexts through real handshakes: the protocol profile (versions, ciphers, groups)
and reloads that replace the trusted client CAs and the profile."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import warnings
from pathlib import Path
from typing import Any

import pytest
import trustme

from usher import tls_profile
from usher.config import ListenerTls, PoolConfig, UpstreamTls
from usher.errors import ConfigError
from usher.tls import (
    ServerTls,
    UpstreamContext,
    check_upstream_tls,
    load_upstream_contexts,
    upstream_context,
)
from usher.tls_profile import GroupsUnreachable, _ssl_ctx_pointer, check_curves, set_groups


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


def _tls(
    tmp_path: Path, ca: str | None, key_type: trustme.KeyType = trustme.KeyType.ECDSA, **extra: Any
) -> ListenerTls:
    site = trustme.CA(key_type=key_type)
    cert = site.issue_cert("localhost", "api.example.com", key_type=key_type)
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


# --- The protocol profile: Mozilla intermediate by default, per-listener settings ------------

TLS12, TLS13 = ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3
CBC_SUITES = (
    "ECDHE-ECDSA-AES128-SHA256:ECDHE-RSA-AES128-SHA256:ECDHE-ECDSA-AES256-SHA384:"
    "ECDHE-RSA-AES256-SHA384:ECDHE-ECDSA-AES128-SHA:ECDHE-ECDSA-AES256-SHA"
)


def _client(
    version: ssl.TLSVersion | None = None,
    *,
    ciphers: str | None = None,
    curve: str | None = None,
) -> ssl.SSLContext:
    """A client that checks nothing, offering exactly what it is given."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    if version is not None:
        if version < TLS12:
            ctx.set_ciphers("DEFAULT:@SECLEVEL=0")  # OpenSSL 3 offers TLS 1.1 at level 0 only
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # TLS 1.0 and 1.1, on purpose
            ctx.minimum_version = ctx.maximum_version = version
    if ciphers is not None:
        ctx.set_ciphers(ciphers)
    if curve is not None:
        ctx.set_ecdh_curve(curve)  # the ssl module's own call: the client offers this group only
    return ctx


async def _negotiated(server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext) -> tuple[str, str]:
    """(version, cipher) the handshake settled on; raises when it fails."""

    async def handle(_r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        w.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=server_ctx)
    port = server.sockets[0].getsockname()[1]
    try:
        _, w = await asyncio.open_connection(
            "127.0.0.1", port, ssl=client_ctx, server_hostname="localhost"
        )
        cipher, version, _ = w.get_extra_info("cipher")
        w.close()
        return version, cipher
    finally:
        server.close()
        await server.wait_closed()


async def test_default_profile_speaks_1_2_and_1_3_but_not_1_1(tmp_path: Path) -> None:
    tls = ServerTls(_tls(tmp_path, None), "t")
    assert (await _negotiated(tls.context, _client(TLS12)))[0] == "TLSv1.2"
    assert (await _negotiated(tls.context, _client(TLS13)))[0] == "TLSv1.3"
    assert not await _handshake(tls.context, _client(ssl.TLSVersion.TLSv1_1))
    assert not await _handshake(tls.context, _client(ssl.TLSVersion.TLSv1))


async def test_default_profile_refuses_cbc_suites(tmp_path: Path) -> None:
    tls = ServerTls(_tls(tmp_path, None), "t")
    for name in ("localhost", "api.example.com"):  # the listening context and an SNI one
        assert not await _handshake(tls.context, _client(TLS12, ciphers=CBC_SUITES), name)
    for suite in ("ECDHE-ECDSA-AES128-GCM-SHA256", "ECDHE-ECDSA-CHACHA20-POLY1305"):
        assert await _negotiated(tls.context, _client(TLS12, ciphers=suite)) == ("TLSv1.2", suite)
    assert {c["name"] for c in tls.context.get_ciphers() if c["protocol"] == "TLSv1.2"} == {
        "ECDHE-ECDSA-AES128-GCM-SHA256",
        "ECDHE-RSA-AES128-GCM-SHA256",
        "ECDHE-ECDSA-AES256-GCM-SHA384",
        "ECDHE-RSA-AES256-GCM-SHA384",
        "ECDHE-ECDSA-CHACHA20-POLY1305",
        "ECDHE-RSA-CHACHA20-POLY1305",
    }


async def test_the_clients_cipher_order_wins(tmp_path: Path) -> None:
    # The server's list starts with AES128-GCM; a client preferring ChaCha20 gets ChaCha20.
    tls = ServerTls(_tls(tmp_path, None), "t")
    client = _client(TLS12, ciphers="ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-ECDSA-AES128-GCM-SHA256")
    assert (await _negotiated(tls.context, client))[1] == "ECDHE-ECDSA-CHACHA20-POLY1305"


@pytest.mark.parametrize("version", [TLS12, TLS13])
async def test_default_groups_are_x25519_p256_p384(tmp_path: Path, version: ssl.TLSVersion) -> None:
    # An RSA certificate: with TLS 1.2 an ECDSA P-256 one would need P-256 from every client.
    tls = ServerTls(_tls(tmp_path, None, trustme.KeyType.RSA), "t")
    for curve in ("X25519", "prime256v1", "secp384r1"):
        assert await _handshake(tls.context, _client(version, curve=curve)), curve
    for curve in ("secp521r1", "X448"):
        assert not await _handshake(tls.context, _client(version, curve=curve)), curve


async def test_min_version_1_3_refuses_1_2(tmp_path: Path) -> None:
    tls = ServerTls(_tls(tmp_path, None, min_version="1.3"), "t")
    assert not await _handshake(tls.context, _client(TLS12))
    assert await _handshake(tls.context, _client(TLS13))


async def test_configured_ciphers_and_curves_are_honoured(tmp_path: Path) -> None:
    tls = ServerTls(_tls(tmp_path, None, ciphers="ECDHE+CHACHA20", curves=["secp384r1"]), "t")
    aes = _client(TLS12, ciphers="ECDHE-ECDSA-AES128-GCM-SHA256")
    assert not await _handshake(tls.context, aes)
    chacha = _client(TLS12, ciphers="ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-ECDSA-AES128-GCM-SHA256")
    assert (await _negotiated(tls.context, chacha))[1] == "ECDHE-ECDSA-CHACHA20-POLY1305"
    assert not await _handshake(tls.context, _client(TLS13, curve="X25519"))
    assert await _handshake(tls.context, _client(TLS13, curve="secp384r1"))


async def test_reload_changes_the_protocol_for_new_connections(tmp_path: Path) -> None:
    before = _tls(tmp_path, None, trustme.KeyType.RSA)
    tls = ServerTls(before, "t")
    listening = tls.context
    assert await _handshake(listening, _client(TLS12))
    assert await _handshake(listening, _client(TLS12, curve="X25519"))
    tls.update(before.model_copy(update={"min_version": "1.3", "curves": ["prime256v1"]}), "t")
    assert tls.context is listening  # the listening socket keeps its context object
    for name in ("localhost", "api.example.com"):
        assert not await _handshake(listening, _client(TLS12), name)
        assert not await _handshake(listening, _client(TLS13, curve="X25519"), name)
        assert await _handshake(listening, _client(TLS13, curve="prime256v1"), name)
    tls.update(before, "t")
    assert await _handshake(listening, _client(TLS12, curve="X25519"))


async def test_upstream_contexts_refuse_backends_below_tls_1_2(tmp_path: Path) -> None:
    ca = trustme.CA()
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    upstream = upstream_context(UpstreamTls.model_validate({"ca": str(tmp_path / "ca.pem")}))
    backend = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ca.issue_cert("localhost").configure_cert(backend)
    backend.set_ciphers("DEFAULT:@SECLEVEL=0")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        backend.minimum_version = ssl.TLSVersion.TLSv1
        backend.maximum_version = ssl.TLSVersion.TLSv1_1
    assert not await _handshake(backend, upstream)
    backend.maximum_version = TLS12
    assert await _handshake(backend, upstream)


def test_set_groups_reaches_openssl() -> None:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    set_groups(ctx, ["X25519", "P-256"])
    with pytest.raises(ssl.SSLError):
        set_groups(ctx, ["no-such-group"])
    # A refusal leaves no OpenSSL error behind to surface in an unrelated later call.
    ctx.set_ciphers("ECDHE+AESGCM")


def test_a_context_pointer_that_does_not_check_out_is_not_used() -> None:
    class WrongLibrary:
        """Stands for a libssl that reads the pointer as some other context."""

        @staticmethod
        def SSL_CTX_get_options(_pointer: int) -> int:
            return 0

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    with pytest.raises(GroupsUnreachable, match="cannot reach"):
        _ssl_ctx_pointer(ctx, WrongLibrary())  # type: ignore[arg-type]


def test_curves_that_cannot_be_set_are_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    def unreachable() -> None:
        raise GroupsUnreachable("setting TLS curves needs CPython (or Python 3.14+)")

    monkeypatch.setattr(tls_profile, "_libssl", unreachable)
    monkeypatch.delattr(ssl.SSLContext, "set_groups", raising=False)
    assert check_curves(["X25519"]) == "setting TLS curves needs CPython (or Python 3.14+)"


def test_a_python_that_cannot_set_curves_is_a_config_error_even_by_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def unreachable() -> None:
        raise GroupsUnreachable("setting TLS curves needs CPython (or Python 3.14+)")

    monkeypatch.setattr(tls_profile, "_libssl", unreachable)
    monkeypatch.delattr(ssl.SSLContext, "set_groups", raising=False)
    with pytest.raises(ConfigError) as caught:
        ServerTls(_tls(tmp_path, None), "listeners[0].tls")
    (issue,) = caught.value.issues
    assert issue.path == "listeners[0].tls.curves"
    assert "needs CPython" in issue.message


def test_a_pools_upstream_context_is_built_once_and_renewed_when_replaced() -> None:
    cache = UpstreamContext(UpstreamTls.model_validate({"verify": False}))
    first = cache.get()
    assert first is not None and first.verify_mode == ssl.CERT_NONE
    assert cache.get() is first  # built once, on first use
    fresh = ssl.create_default_context()
    assert cache.use(fresh)  # there was one: connections made with it are not reused
    assert cache.get() is fresh
    cache.reset(None)  # the pool's tls went away
    assert cache.get() is None
    assert not cache.use(None)
    assert UpstreamContext(None).get() is None
