"""TLS termination: one server context per listener, picking a certificate by SNI."""

from __future__ import annotations

import ssl
from typing import TYPE_CHECKING

from usher.errors import ConfigError, ConfigIssue

if TYPE_CHECKING:
    from usher.config import ListenerTls


def _context(cert: str, key: str) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_alpn_protocols(["http/1.1"])
    ctx.load_cert_chain(cert, key)
    return ctx


def server_context(tls: ListenerTls, path: str) -> ssl.SSLContext:
    """The context for a listener; `path` (e.g. `listeners[0].tls`) names it in errors.

    The first certificate without `sni` is the default; the others answer for their names,
    exact names before `*.example.com` wildcards.
    """
    issues: list[ConfigIssue] = []
    exact: dict[str, ssl.SSLContext] = {}
    wildcard: list[tuple[str, ssl.SSLContext]] = []
    default: ssl.SSLContext | None = None
    for i, certificate in enumerate(tls.certificates):
        try:
            ctx = _context(certificate.cert, certificate.key)
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
        if not certificate.sni and default is None:
            default = ctx
        for name in certificate.sni:
            if name.startswith("*."):
                wildcard.append((name[1:], ctx))
            else:
                exact.setdefault(name, ctx)
    if issues:
        raise ConfigError(issues)
    if default is None:
        first = tls.certificates[0]
        default = _context(first.cert, first.key)

    def choose(sock: ssl.SSLObject, server_name: str | None, _ctx: ssl.SSLContext) -> None:
        if server_name is None:
            return
        name = server_name.lower()
        chosen = exact.get(name)
        if chosen is None:
            for suffix, candidate in wildcard:
                # A wildcard covers one label: *.example.com matches a.example.com only.
                if name.endswith(suffix) and "." not in name[: -len(suffix)]:
                    chosen = candidate
                    break
        if chosen is not None:
            sock.context = chosen

    default.sni_callback = choose
    return default
