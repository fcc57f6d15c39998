"""TLS termination: one server context per listener, picking a certificate by SNI.

A listener's `ServerTls` can take new certificates and client CAs on reload without a new
socket: the listening socket keeps its context object, but every handshake is switched by the
SNI callback (which runs with or without a server name) to a context built fresh by the latest
load. A fresh context is needed because `load_verify_locations` only adds to a context's trust
store: reloading into the old one would keep trusting a removed client CA.
"""

from __future__ import annotations

import ssl
from collections.abc import Mapping
from typing import TYPE_CHECKING

from usher.errors import ConfigError, ConfigIssue
from usher.tls_profile import GroupsUnreachable, set_server_protocol

if TYPE_CHECKING:
    from usher.config import ListenerTls, PoolConfig, UpstreamTls


def alpn_protocols(http2: bool) -> list[str]:
    """What ALPN offers a client, in our order of preference: h2 first when it is served."""
    return ["h2", "http/1.1"] if http2 else ["http/1.1"]


def _context(cert: str, key: str, tls: ListenerTls, path: str, http2: bool) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    _set_protocol(ctx, tls, path)
    ctx.set_alpn_protocols(alpn_protocols(http2))
    ctx.load_cert_chain(cert, key)
    if tls.client_ca is not None:
        # The handshake verifies against the trust store of the context SNI picked.
        ctx.load_verify_locations(cafile=tls.client_ca)
    ctx.verify_mode = _verify_mode(tls)
    return ctx


def _set_protocol(ctx: ssl.SSLContext, tls: ListenerTls, path: str) -> None:
    try:
        set_server_protocol(
            ctx, min_version=tls.min_version, ciphers=tls.ciphers, curves=tls.curves
        )
    except GroupsUnreachable as exc:  # the default curves too: say so rather than crash
        raise ConfigError([ConfigIssue(f"{path}.curves", str(exc))]) from None


def _verify_mode(tls: ListenerTls) -> ssl.VerifyMode:
    if tls.client_ca is None:
        return ssl.CERT_NONE
    return ssl.CERT_REQUIRED if tls.client_auth == "required" else ssl.CERT_OPTIONAL


class ServerTls:
    """The certificates of one https listener.

    The first certificate without `sni` is the default; the others answer for their names,
    exact names before `*.example.com` wildcards (one label, as browsers match them).
    """

    def __init__(self, tls: ListenerTls, path: str, *, http2: bool = False) -> None:
        self._default, self._exact, self._wildcard = self._load(tls, path, http2)
        # The listening context trusts no client CA of its own: each handshake is moved to a
        # context of the latest load. What stays with the connection is what OpenSSL copies
        # when the connection is created: the verify mode, and the versions, ciphers and
        # groups (the SNI switch keeps the connection's), so these are set here too.
        first = tls.certificates[0]
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        _set_protocol(self.context, tls, path)
        # ALPN is chosen after the SNI switch, from the context switched to: set on both.
        self.context.set_alpn_protocols(alpn_protocols(http2))
        self.context.load_cert_chain(first.cert, first.key)
        self.context.verify_mode = _verify_mode(tls)
        self.context.sni_callback = self._choose

    def update(self, tls: ListenerTls, path: str, *, http2: bool = False) -> None:
        """Take new certificates and settings (a reload) for the connections accepted from now
        on; raises ConfigError and changes nothing if a file fails to load."""
        default, exact, wildcard = self._load(tls, path, http2)
        _set_protocol(self.context, tls, path)
        self.context.verify_mode = _verify_mode(tls)
        self._default, self._exact, self._wildcard = default, exact, wildcard

    @staticmethod
    def _load(
        tls: ListenerTls, path: str, http2: bool
    ) -> tuple[ssl.SSLContext, dict[str, ssl.SSLContext], list[tuple[str, ssl.SSLContext]]]:
        issues: list[ConfigIssue] = []
        if tls.client_ca is not None:
            try:
                ssl.create_default_context(cafile=tls.client_ca)
            except (OSError, ssl.SSLError) as exc:
                reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
                issues.append(
                    ConfigIssue(f"{path}.client_ca", f"cannot load {tls.client_ca}: {reason}")
                )
                raise ConfigError(issues) from None
        exact: dict[str, ssl.SSLContext] = {}
        wildcard: list[tuple[str, ssl.SSLContext]] = []
        default: ssl.SSLContext | None = None
        first: ssl.SSLContext | None = None
        for i, certificate in enumerate(tls.certificates):
            try:
                ctx = _context(certificate.cert, certificate.key, tls, path, http2)
            except (OSError, ssl.SSLError) as exc:
                reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
                issues.append(
                    ConfigIssue(
                        f"{path}.certificates[{i}]",
                        f"cannot load certificate {certificate.cert} "
                        f"with key {certificate.key}: {reason}",
                    )
                )
                continue
            first = first or ctx
            if not certificate.sni and default is None:
                default = ctx
            for name in certificate.sni:
                if name.startswith("*."):
                    wildcard.append((name[1:], ctx))
                else:
                    exact.setdefault(name, ctx)
        if issues:
            raise ConfigError(issues)
        default = default or first
        assert default is not None  # validation requires at least one certificate
        return default, exact, wildcard

    def _choose(self, sock: ssl.SSLObject, server_name: str | None, _ctx: ssl.SSLContext) -> None:
        chosen = None
        if server_name is not None:
            name = server_name.lower()
            chosen = self._exact.get(name)
            if chosen is None:
                for suffix, candidate in self._wildcard:
                    if name.endswith(suffix) and "." not in name[: -len(suffix)]:
                        chosen = candidate
                        break
        # Always switch, even to the default: the listening context is never reloaded.
        sock.context = chosen if chosen is not None else self._default


def server_context(tls: ListenerTls, path: str) -> ssl.SSLContext:
    """The context of a listener's certificates (see `ServerTls`)."""
    return ServerTls(tls, path).context


class UpstreamContext:
    """A pool's client context for TLS to its backends: handed over when the files are read
    (at start and on each reload, `use`), else built from the pool's `tls` on first use."""

    __slots__ = ("_context", "tls")

    def __init__(self, tls: UpstreamTls | None) -> None:
        self.tls = tls
        self._context: ssl.SSLContext | None = None

    def get(self) -> ssl.SSLContext | None:
        """The context; None without `tls`. Raises OSError or ssl.SSLError when it has to be
        built and its files are bad."""
        if self.tls is None:
            return None
        if self._context is None:
            self._context = upstream_context(self.tls)
        return self._context

    def reset(self, tls: UpstreamTls | None) -> None:
        """New TLS settings: the next use builds the context afresh."""
        self.tls = tls
        self._context = None

    def use(self, context: ssl.SSLContext | None) -> bool:
        """Take `context` from now on; returns whether there was one before (connections
        made with it must not be reused)."""
        previous, self._context = self._context, context
        return previous is not None


def upstream_context(tls: UpstreamTls) -> ssl.SSLContext:
    """A new client context for re-encrypting to a pool's backends. It reads the files: the
    balancer builds one per pool at start and on each reload (`load_upstream_contexts`), so
    rotated files are picked up by a reload. Raises OSError or ssl.SSLError when a file is bad."""
    ctx = ssl.create_default_context(cafile=tls.ca)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if not tls.verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if tls.cert is not None and tls.key is not None:
        ctx.load_cert_chain(tls.cert, tls.key)
    return ctx


def check_upstream_tls(tls: UpstreamTls, path: str) -> list[ConfigIssue]:
    """Problems loading a pool's `tls` files, for the config check before anything starts."""
    try:
        upstream_context(tls)
    except (OSError, ssl.SSLError) as exc:
        return [_upstream_issue(exc, path)]
    return []


def load_upstream_contexts(pools: Mapping[str, PoolConfig]) -> dict[str, ssl.SSLContext]:
    """The client context of every pool with `tls`, by pool name, read from the files now.
    Raises ConfigError naming each pool whose files cannot be loaded."""
    contexts: dict[str, ssl.SSLContext] = {}
    issues: list[ConfigIssue] = []
    for name, pool in pools.items():
        if pool.tls is None:
            continue
        try:
            contexts[name] = upstream_context(pool.tls)
        except (OSError, ssl.SSLError) as exc:
            issues.append(_upstream_issue(exc, f"pools.{name}.tls"))
    if issues:
        raise ConfigError(issues)
    return contexts


def _upstream_issue(exc: OSError | ssl.SSLError, path: str) -> ConfigIssue:
    reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
    return ConfigIssue(path, f"cannot load the CA or client certificate: {reason}")


def upstream_server_name(tls: UpstreamTls, host: str) -> str:
    """The name to send as SNI and verify: the configured one, else the backend's host."""
    return tls.server_name or host


def client_subject(peercert: object) -> str | None:
    """The subject of a verified client certificate as an RFC 4514 string (most specific
    first, as OpenSSL's -nameopt RFC2253 prints it), from `SSLObject.getpeercert()`."""
    if not isinstance(peercert, dict) or not peercert.get("subject"):
        return None
    parts: list[str] = []
    for rdn in reversed(peercert["subject"]):
        parts.append("+".join(f"{_SHORT.get(key, key)}={_escape_dn(value)}" for key, value in rdn))
    return ",".join(parts)


_SHORT = {
    "commonName": "CN",
    "countryName": "C",
    "localityName": "L",
    "stateOrProvinceName": "ST",
    "organizationName": "O",
    "organizationalUnitName": "OU",
    "streetAddress": "STREET",
    "domainComponent": "DC",
    "userId": "UID",
}


def _escape_dn(value: str) -> str:
    out = "".join("\\" + c if c in ',+"\\<>;=' else c for c in value)
    if out.startswith((" ", "#")):
        out = "\\" + out
    if out.endswith(" "):
        out = out[:-1] + "\\ "
    # Control characters would end a header line: hex-escape them as RFC 4514 allows.
    return "".join(f"\\{ord(c):02x}" if ord(c) < 0x20 or ord(c) == 0x7F else c for c in out)
