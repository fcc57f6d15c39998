"""Listeners: what usher accepts clients on, their TLS, and the rules tying their keys to the
protocol."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Annotated, Any, Final, Literal

from pydantic import BaseModel, Field, PlainValidator, WithJsonSchema

from usher.config.addresses import Address
from usher.config.base import _get, _items, _Model, _Problem
from usher.config.defaults import (
    DEFAULT_CLIENT_CERT_HEADER,
    DEFAULT_ENCODED_SLASHES,
    DEFAULT_MAX_SESSIONS,
    DEFAULT_PROTOCOL,
    DEFAULT_STRIP_RESPONSE_HEADERS,
)
from usher.config.dns import DnsSettings
from usher.config.hooks import _HOOKS_DESCRIPTION, _HookEntry
from usher.config.limits import ListenerLimits, ListenerTimeouts
from usher.config.routes import Route
from usher.config.validators import (
    _CipherString,
    _Curves,
    _header_name,
    _HeaderName,
    _ServerName,
    _tls_version,
    _TlsVersion,
)
from usher.config.values import Cidr, MaxAge
from usher.tls_profile import DEFAULT_CURVES, INTERMEDIATE_CIPHERS

L4_PROTOCOLS: Final = frozenset({"tcp", "udp", "tls_passthrough"})


class TlsCertificate(_Model):
    """A certificate and its private key, served to clients asking for one of its names."""

    cert: str = Field(min_length=1, description="Path of the PEM certificate (chain) file.")
    key: str = Field(min_length=1, description="Path of the PEM private key file.")
    sni: list[_ServerName] = Field(
        default=[],
        description="Server names this certificate answers to; `*.example.com` wildcards "
        "allowed. Empty: only used as the default certificate.",
    )


class ListenerTls(_Model):
    """TLS termination settings of an `https` listener."""

    certificates: list[TlsCertificate] = Field(
        min_length=1,
        description="Certificates to serve; the first one without `sni` (or else the first "
        "one) is the default, for clients that send no or an unknown server name.",
    )

    client_ca: str | None = Field(
        default=None,
        description="mTLS from clients: PEM file of the CAs whose client certificates are "
        "accepted. null: no client certificates asked for.",
    )
    client_auth: Literal["required", "optional"] = Field(
        default="required",
        description="With `client_ca`: `required` refuses a client without a valid "
        "certificate at the handshake; `optional` asks for one and lets clients without one in.",
    )
    client_cert_header: _HeaderName = Field(
        default=DEFAULT_CLIENT_CERT_HEADER,
        description="With `client_ca`: the header that carries the verified client "
        "certificate's subject (RFC 4514) to the backends. Usher removes any such header sent by "
        "the client, so it cannot be forged.",
    )
    min_version: _TlsVersion = Field(
        default="1.2",
        description='Oldest TLS version accepted: `"1.2"` or `"1.3"` (quoted or not).',
    )
    ciphers: _CipherString | None = Field(
        default=None,
        description="OpenSSL cipher string for TLS 1.2 (TLS 1.3 suites are OpenSSL's, all "
        "AEAD); every name must be known to OpenSSL. null: Mozilla's intermediate profile, "
        f"`{INTERMEDIATE_CIPHERS}` (ECDHE with AES-GCM or ChaCha20-Poly1305: no CBC, no DHE). "
        "The client's order of preference wins.",
    )
    curves: _Curves = Field(
        default=list(DEFAULT_CURVES),
        min_length=1,
        description="Key-exchange groups accepted, for TLS 1.2 and 1.3, as OpenSSL names "
        "them (X25519, prime256v1 or P-256, secp384r1 or P-384, X448, secp521r1, ffdhe2048...).",
    )
    hsts: MaxAge | None = Field(
        default=None,
        description="Add `Strict-Transport-Security: max-age=N` (N: this in whole seconds, e.g. "
        "`1y`) to every response of this listener, replacing a backend's own. null: none.",
    )

    @classmethod
    def _rules(cls, data: Mapping[str, Any]) -> list[_Problem]:
        version = _tls_version(_get(data, "min_version"))
        if _get(data, "ciphers") is not None and version == "1.3":
            return [(("ciphers",), 'sets TLS 1.2 suites: not with min_version "1.3"')]
        return []

    def default_certificate(self) -> TlsCertificate:
        """The certificate for clients whose server name matches no `sni` list."""
        return next((cert for cert in self.certificates if not cert.sni), self.certificates[0])


def _request_id(value: object) -> bool | str:
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        return _header_name(value)
    raise ValueError(f"must be true, false or a header name, not {value!r}")


RequestIdSetting = Annotated[
    bool | str,
    PlainValidator(_request_id),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "boolean"},
                {"type": "string", "pattern": r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$"},
            ],
            "description": "true (X-Request-ID), false, or the header name to use.",
        }
    ),
]


class Listener(_Model):
    """An address usher accepts clients on, and how their requests are routed."""

    name: str = Field(min_length=1, description="Unique name, used in logs and metrics.")
    bind: Address = Field(description="Address to listen on; port 0 picks a free port.")
    protocol: Literal["http", "https", "tcp", "udp", "tls_passthrough", "dns"] = Field(
        default=DEFAULT_PROTOCOL,
        description="`https` terminates TLS and needs `tls`; `tcp` and `udp` relay bytes or "
        "datagrams to `pool`; `tls_passthrough` routes TLS connections on their SNI "
        "(`routes` with `match: {sni: ...}`) without decrypting them; `dns` answers DNS "
        "queries (UDP and TCP on the same address) from the pools' healthy backends, per `dns`.",
    )
    tls: ListenerTls | None = Field(default=None, description="TLS settings; `https` only.")
    http2: bool | None = Field(
        default=None,
        description="Serve HTTP/2 to clients: on `https` ALPN offers `h2` and `http/1.1` "
        "(the default there); on `http`, `true` also accepts h2c with prior knowledge (off "
        "by default). Each stream is one request to an HTTP/1.1 backend (docs/http2.md).",
    )
    routes: list[Route] = Field(
        default=[], description="Routes tried in order; the first that matches wins."
    )
    pool: str | None = Field(
        default=None, description="Shorthand for one route sending everything to this pool."
    )
    limits: ListenerLimits = Field(
        default=ListenerLimits(), description="Limits on clients: sizes, rates, connections."
    )
    trusted_proxies: list[Cidr] = Field(
        default=[],
        description="Peers whose X-Forwarded-For is believed: the client address is then its "
        "rightmost hop outside these networks (for limits, IP lists, logs and X-Real-IP). "
        "Anyone else's X-Forwarded-For is never used.",
    )
    request_id: RequestIdSetting = Field(
        default=False,
        description="`true` or a header name: each request carries an ID in that header "
        "(X-Request-ID for `true`), kept from the client when sane or made up, sent to the "
        "backend, returned to the client and written in the access log.",
    )
    strip_response_headers: list[_HeaderName] = Field(
        default=list(DEFAULT_STRIP_RESPONSE_HEADERS),
        description="Backend response headers never passed to clients. By default Server and "
        "X-Powered-By are removed (they name the backend's software); `[]` passes them on.",
    )
    encoded_slashes: Literal["refuse", "decode", "keep"] = Field(
        default=DEFAULT_ENCODED_SLASHES,
        description="What a `%2F` in a request path becomes: `refuse` answers 400; `decode` "
        "makes it a `/` before the path is normalised (as nginx does); `keep` leaves it "
        "encoded, part of its segment, for backends that read it as data (Apache's "
        "`AllowEncodedSlashes NoDecode`). See docs/security.md.",
    )
    timeouts: ListenerTimeouts = Field(
        default=ListenerTimeouts(), description="Client-side timeouts."
    )
    accept_proxy_protocol: bool = Field(
        default=False,
        description="Clients (a load balancer in front) open each connection with a PROXY "
        "protocol v1 or v2 header; its source address is then the client's for logs, "
        "X-Forwarded-For, hashing and persistence. Not for `udp`.",
    )
    zero_copy: bool = Field(
        default=False,
        description="`tcp`/`tls_passthrough` on Linux: relay with splice(2) through a pipe, "
        "the bytes never copied into usher. Not with a pool that has `tls`.",
    )
    max_sessions: int = Field(
        default=DEFAULT_MAX_SESSIONS,
        gt=0,
        description="`udp`: most client sessions at once; datagrams of new clients beyond "
        "are dropped (and counted in usher_rejected_total{reason=max_sessions}). With "
        "`--workers N` each worker allows max_sessions/N (rounded up).",
    )
    dns: DnsSettings | None = Field(
        default=None, description="`dns` only: the zones served and their records."
    )
    hooks: list[_HookEntry] = Field(
        default=[],
        description=_HOOKS_DESCRIPTION + " `http` and `https` only; before each route's hooks.",
    )

    @property
    def serves_http2(self) -> bool:
        """`http2` as set, or its default: on for `https`, off for `http`."""
        if self.http2 is None:
            return self.protocol == "https"
        return self.http2 and self.protocol in ("http", "https")

    def effective_routes(self) -> list[Route]:
        """The routes to try in order, with the `pool` shorthand spelled out."""
        if self.pool is not None:
            return [Route(pool=self.pool)]
        return list(self.routes)

    @classmethod
    def _rules(cls, data: Mapping[str, Any]) -> list[_Problem]:
        problems: list[_Problem] = []
        protocol = _get(data, "protocol") or DEFAULT_PROTOCOL
        has_tls = _get(data, "tls") is not None
        if protocol == "https" and not has_tls:
            problems.append((("tls",), "required for protocol https"))
        elif (protocol == "http" and has_tls) or (protocol in L4_PROTOCOLS and has_tls):
            problems.append((("tls",), "only allowed with protocol https"))
        has_routes = bool(_get(data, "routes"))
        has_pool = _get(data, "pool") is not None
        if protocol == "dns":
            problems += _dns_listener_rules(data, has_routes or has_pool)
        elif _get(data, "dns") is not None:
            problems.append((("dns",), "only for protocol dns"))
        if protocol != "dns" and has_routes == has_pool:
            problems.append(((), "a listener needs exactly one of routes, pool"))
        if protocol in ("tcp", "udp") and has_routes:
            problems.append((("routes",), f"protocol {protocol} takes one `pool`, not routes"))
        problems += _route_rules(data, protocol)
        if _get(data, "zero_copy") and protocol not in ("tcp", "tls_passthrough"):
            problems.append((("zero_copy",), "only for protocol tcp or tls_passthrough"))
        elif _get(data, "zero_copy") and not hasattr(os, "splice"):
            problems.append((("zero_copy",), "needs os.splice (Linux, Python 3.10+)"))
        if _get(data, "http2") and protocol not in ("http", "https"):
            problems.append((("http2",), "only for protocol http or https"))
        if _get(data, "accept_proxy_protocol") and protocol == "udp":
            problems.append((("accept_proxy_protocol",), "not for protocol udp"))
        sessions = _get(data, "max_sessions")
        if sessions is not None and sessions != DEFAULT_MAX_SESSIONS and protocol != "udp":
            problems.append((("max_sessions",), "only for protocol udp"))
        if protocol in L4_PROTOCOLS or protocol == "dns":
            problems += _layer4_limit_rules(data, protocol)
            problems += _no_hooks(data)
        return problems


def _no_hooks(data: Mapping[str, Any]) -> list[_Problem]:
    """Hooks see HTTP requests: a listener that relays bytes or answers DNS has none."""
    places: list[tuple[tuple[str | int, ...], object]] = [(("hooks",), _get(data, "hooks"))]
    places += [(("routes", i, "hooks"), _get(r, "hooks")) for i, r in _items(_get(data, "routes"))]
    return [(loc, "hooks run on http and https listeners only") for loc, hooks in places if hooks]


def _dns_listener_rules(data: Mapping[str, Any], has_pool: bool) -> list[_Problem]:
    problems: list[_Problem] = []
    if _get(data, "dns") is None:
        problems.append((("dns",), "required for protocol dns (zones and records)"))
    if has_pool:
        problems.append(((), "protocol dns takes `dns.records`, not pool or routes"))
    for key in ("accept_proxy_protocol", "zero_copy"):
        if _get(data, key):
            problems.append(((key,), "not for protocol dns"))
    return problems


# What layer-4 listeners can enforce: IP lists for all three, connection limits for the two
# that have connections. The rest needs HTTP requests to work on.
_L4_LIMITS: Final = frozenset({"allow", "deny", "max_connections", "connections_per_ip"})
_L7_LISTENER_KEYS: Final = (
    "trusted_proxies",
    "request_id",
    "strip_response_headers",
    "encoded_slashes",
)


def _layer4_limit_rules(data: Mapping[str, Any], protocol: str) -> list[_Problem]:
    problems: list[_Problem] = []

    def is_set(model: type[BaseModel], key: str, value: Any) -> bool:
        # A value equal to the default is not a setting (a dumped config writes them all).
        field = model.model_fields.get(key)
        default = None if field is None else field.get_default(call_default_factory=True)
        if isinstance(default, tuple):
            default = list(default)
        return value is not None and value != default

    limits = _get(data, "limits")
    if isinstance(limits, Mapping):
        for key, value in limits.items():
            if not is_set(ListenerLimits, key, value):
                continue
            if key not in _L4_LIMITS:
                problems.append(
                    (("limits", key), f"works on HTTP requests: not for protocol {protocol}")
                )
            elif protocol == "udp" and key in ("max_connections", "connections_per_ip"):
                problems.append((("limits", key), "udp has no connections: use max_sessions"))
            elif protocol == "dns" and key in ("max_connections", "connections_per_ip"):
                problems.append((("limits", key), "not for protocol dns (use dns.rate_limit)"))
    for key in _L7_LISTENER_KEYS:
        if is_set(Listener, key, _get(data, key)):
            problems.append(((key,), f"works on HTTP requests: not for protocol {protocol}"))
    return problems


def _route_rules(data: Mapping[str, Any], protocol: str) -> list[_Problem]:
    """tls_passthrough routes send to a pool on `match.sni` alone; http routes never see SNI."""
    problems: list[_Problem] = []
    for index, route in _items(_get(data, "routes")):
        match = _get(route, "match")
        if protocol != "tls_passthrough":
            if _get(match, "sni") is not None:
                problems.append(
                    (("routes", index, "match", "sni"), "only for protocol tls_passthrough")
                )
            continue
        for key in ("split", "redirect", "request_headers", "response_headers", "prefix_rewrite"):
            if _get(route, key) is not None:
                problems.append(
                    (("routes", index, key), "not for tls_passthrough (routes send to a pool)")
                )
        if isinstance(match, Mapping):
            for key, value in match.items():
                if key != "sni" and value not in (None, {}, []):
                    problems.append(
                        (
                            ("routes", index, "match", key),
                            "tls_passthrough routes match on sni only (the rest is encrypted)",
                        )
                    )
    return problems
