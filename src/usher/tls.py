"""TLS termination: one server context per listener, picking a certificate by SNI.

A listener's `ServerTls` can take new certificates on reload without a new socket: the
listening socket keeps its context object, whose certificate and SNI table are replaced.
"""

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


class ServerTls:
    """The certificates of one https listener.

    The first certificate without `sni` is the default; the others answer for their names,
    exact names before `*.example.com` wildcards (one label, as browsers match them).
    """

    def __init__(self, tls: ListenerTls, path: str) -> None:
        self._exact: dict[str, ssl.SSLContext] = {}
        self._wildcard: list[tuple[str, ssl.SSLContext]] = []
        default_files, self._exact, self._wildcard = self._load(tls, path)
        self.context = _context(*default_files)
        self.context.sni_callback = self._choose

    def update(self, tls: ListenerTls, path: str) -> None:
        """Take new certificates (a reload); raises ConfigError and changes nothing if one fails."""
        default_files, exact, wildcard = self._load(tls, path)
        self.context.load_cert_chain(*default_files)
        self._exact, self._wildcard = exact, wildcard

    @staticmethod
    def _load(
        tls: ListenerTls, path: str
    ) -> tuple[tuple[str, str], dict[str, ssl.SSLContext], list[tuple[str, ssl.SSLContext]]]:
        issues: list[ConfigIssue] = []
        exact: dict[str, ssl.SSLContext] = {}
        wildcard: list[tuple[str, ssl.SSLContext]] = []
        default: tuple[str, str] | None = None
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
                default = (certificate.cert, certificate.key)
            for name in certificate.sni:
                if name.startswith("*."):
                    wildcard.append((name[1:], ctx))
                else:
                    exact.setdefault(name, ctx)
        if issues:
            raise ConfigError(issues)
        if default is None:
            first = tls.certificates[0]
            default = (first.cert, first.key)
        return default, exact, wildcard

    def _choose(self, sock: ssl.SSLObject, server_name: str | None, _ctx: ssl.SSLContext) -> None:
        if server_name is None:
            return
        name = server_name.lower()
        chosen = self._exact.get(name)
        if chosen is None:
            for suffix, candidate in self._wildcard:
                if name.endswith(suffix) and "." not in name[: -len(suffix)]:
                    chosen = candidate
                    break
        if chosen is not None:
            sock.context = chosen


def server_context(tls: ListenerTls, path: str) -> ssl.SSLContext:
    """The context of a listener's certificates (see `ServerTls`)."""
    return ServerTls(tls, path).context
