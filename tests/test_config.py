"""Tests of the config loader: good files, value types, and every kind of bad file."""

from __future__ import annotations

import ast
import importlib
import ipaddress
import json
import pkgutil
import re
import subprocess
import sys
from importlib.resources import files
from pathlib import Path
from textwrap import dedent, indent
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from usher.balancing import registered_names
from usher.config import (
    DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_KEEPALIVE_TIMEOUT,
    DEFAULT_MAX_BODY_SIZE,
    DEFAULT_MAX_HEADER_SIZE,
    DEFAULT_TUNNEL_TIMEOUT,
    BackendConfig,
    Config,
    HostPort,
    ListenerTls,
    Route,
    TlsCertificate,
    addresses,
    config_schema,
    load_config,
    parse_address,
    parse_config,
    parse_duration,
    parse_size,
)
from usher.errors import ConfigError, ConfigIssue

CONFIGS = Path(__file__).parent / "configs"
ROOT = Path(__file__).parent.parent


def problems(text: str) -> list[tuple[str, str]]:
    """(path, message) of every issue in a config given as YAML text."""
    return [(issue.path, issue.message) for issue in issues(text)]


def issues(text: str) -> list[ConfigIssue]:
    with pytest.raises(ConfigError) as caught:
        parse_config(dedent(text))
    return caught.value.issues


# --- Good files --------------------------------------------------------------------------------


def test_sample_config_loads() -> None:
    config = load_config(str(files("usher") / "sample.yaml"))
    (web,) = config.listeners
    assert (web.name, str(web.bind), web.protocol) == ("web", "127.0.0.1:8080", "http")
    api_route, default_route = web.routes
    assert api_route.match is not None and api_route.match.path_prefix == "/api"
    assert api_route.pool == "api"
    assert api_route.request_headers is not None
    assert api_route.request_headers.set == {"X-Usher-Route": "api"}
    assert default_route.match is None and default_route.pool == "web"
    assert default_route.response_headers is not None
    assert default_route.response_headers.set == {"X-Served-By": "usher"}
    pool = config.pools["web"]
    assert pool.algorithm == "round_robin"
    assert [str(b.address) for b in pool.backends] == [
        "127.0.0.1:9001",
        "127.0.0.1:9002",
        "127.0.0.1:9003",
    ]
    assert pool.timeouts.connect == 2.0
    api = config.pools["api"]
    assert [(b.address.port, b.weight, b.backup) for b in api.backends] == [
        (9001, 2, False),
        (9002, 1, False),
        (9003, 1, True),
    ]


def test_minimal_config_gets_the_defaults() -> None:
    config = load_config(CONFIGS / "minimal.yaml")
    (listener,) = config.listeners
    assert listener.bind == HostPort("127.0.0.1", 0)
    assert listener.protocol == "http" and listener.tls is None
    assert listener.routes == []
    assert listener.effective_routes() == [Route(pool="web")]
    assert listener.limits.max_body_size == DEFAULT_MAX_BODY_SIZE == 1024**3
    assert listener.limits.max_header_size == DEFAULT_MAX_HEADER_SIZE == 32 * 1024
    assert listener.limits.max_request_line == 8 * 1024
    assert listener.limits.max_headers == 100
    assert listener.timeouts.idle == DEFAULT_KEEPALIVE_TIMEOUT == 75.0
    assert (listener.timeouts.header, listener.timeouts.body, listener.timeouts.send) == (
        10.0,
        60.0,
        60.0,
    )
    pool = config.pools["web"]
    assert pool.algorithm == "round_robin"
    assert pool.backends == [BackendConfig(address=HostPort("127.0.0.1", 9001))]
    assert pool.backends[0].weight == 1 and not pool.backends[0].backup
    assert (pool.passive_health.max_fails, pool.passive_health.fail_timeout) == (1, 10.0)
    timeouts = pool.timeouts
    assert timeouts.connect == DEFAULT_CONNECT_TIMEOUT == 5.0
    assert (timeouts.read, timeouts.send, timeouts.idle) == (60.0, 60.0, 60.0)
    assert timeouts.tunnel == DEFAULT_TUNNEL_TIMEOUT == 3600.0
    assert pool.retries.attempts == 2
    assert pool.max_idle_connections == 32


def test_full_config_reads_every_key() -> None:
    config = load_config(CONFIGS / "full.yaml")
    public, plain, db, dns, edge, gslb = config.listeners
    assert public.accept_proxy_protocol and not plain.accept_proxy_protocol
    assert public.tls is not None and public.tls.client_ca == "clients-ca.pem"
    assert (public.tls.client_auth, public.tls.client_cert_header) == ("optional", "X-Client-DN")
    assert (public.tls.min_version, public.tls.ciphers) == ("1.2", "ECDHE+AESGCM:ECDHE+CHACHA20")
    assert (public.tls.curves, public.tls.hsts) == (["X25519", "P-256"], 365 * 86400)
    assert (db.protocol, dns.protocol, edge.protocol) == ("tcp", "udp", "tls_passthrough")
    assert dns.max_sessions == 500 and edge.zero_copy and not db.zero_copy
    assert edge.routes[0].match is not None and edge.routes[0].match.sni == "*.example.com"
    assert gslb.protocol == "dns" and gslb.dns is not None and gslb.dns.rate_limit is not None
    assert (gslb.dns.rate_limit.burst, gslb.dns.records[0].ttl) == (100.0, 5.0)
    assert gslb.dns.records[2].geo[0].clients == ["10.1.0.0/16"]
    db_pool = config.pools["db"]
    assert db_pool.send_proxy_protocol == "v2"
    assert db_pool.tls is not None and not db_pool.tls.verify
    assert (db_pool.tls.server_name, db_pool.tls.cert) == ("db.internal", "usher.pem")
    assert public.bind == HostPort("::1", 8443) and str(public.bind) == "[::1]:8443"
    assert public.protocol == "https" and public.tls is not None
    first, second = public.tls.certificates
    assert first.sni == ["api.example.com", "*.api.example.com"]
    assert public.tls.default_certificate() == second
    api, beta, old, rest = public.routes
    assert api.match is not None
    assert api.match.host == "api.example.com"
    assert api.match.path_regex == "^/api/v[0-9]+/"
    assert api.match.methods == ["GET", "POST"]
    assert api.match.headers == {"X-Canary": "1"}
    assert api.match.query == {"v": "2"}
    assert api.request_headers is not None and api.request_headers.remove == ["X-Debug"]
    assert beta.split is not None
    assert [(t.pool, t.weight) for t in beta.split] == [("web", 90), ("api", 10)]
    assert old.redirect is not None
    assert (old.redirect.to, old.redirect.status) == ("https://example.com/new", 301)
    assert rest.match is None and rest.pool == "web"
    assert public.limits.max_body_size == 10 * 1024**2
    assert public.limits.max_header_size == 16 * 1024
    assert public.limits.max_request_line == 4 * 1024
    assert public.limits.max_headers == 50
    timeouts = public.timeouts
    assert (timeouts.header, timeouts.body, timeouts.idle, timeouts.send) == (5, 30, 120, 0.25)
    assert plain.limits.max_body_size is None
    assert plain.effective_routes() == [Route(pool="web")]

    web = config.pools["web"]
    assert web.algorithm == "weighted_round_robin"
    assert [(str(b.address), b.weight, b.backup) for b in web.backends] == [
        ("10.0.0.1:80", 3, False),
        ("backend.internal:8080", 1, False),
        ("10.0.0.3:80", 1, True),
    ]
    assert (web.passive_health.max_fails, web.passive_health.fail_timeout) == (0, 30.0)
    assert web.timeouts.model_dump() == {
        "connect": 1.0,
        "read": 30.0,
        "send": 20.0,
        "idle": 90.0,
        "tunnel": 5400.0,
    }
    assert web.retries.attempts == 0 and web.max_idle_connections == 0
    assert config.pools["api"].backends[0].address == HostPort("2001:db8::1", 443)


def test_full_config_really_has_every_key() -> None:
    text = (CONFIGS / "full.yaml").read_text()
    schema = config_schema()
    models = {"Config": schema, **schema["$defs"]}
    assert len(models) == 36
    missing = [
        f"{name}.{key}"
        for name, model in models.items()
        for key in model["properties"]
        if not re.search(rf"(^|[\s{{,]){key}:", text, re.M)
    ]
    assert missing == []


def test_json_is_valid_yaml() -> None:
    text = json.dumps(
        {
            "listeners": [{"name": "web", "bind": "127.0.0.1:0", "pool": "web"}],
            "pools": {"web": {"backends": [{"address": "127.0.0.1:9001", "weight": 2}]}},
        }
    )
    assert parse_config(text).pools["web"].backends[0].weight == 2


@pytest.mark.parametrize("algorithm", registered_names())
def test_every_registered_algorithm_is_accepted(algorithm: str) -> None:
    agent = ", agent: {}" if algorithm == "resource" else ""  # resource needs load reports
    text = f"""
        listeners: [{{name: web, bind: "127.0.0.1:0", pool: web}}]
        pools: {{web: {{algorithm: {algorithm}, backends: [{{address: "127.0.0.1:9001"}}]{agent}}}}}
    """
    assert parse_config(dedent(text)).pools["web"].algorithm == algorithm


# --- Value types -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("250ms", 0.25),
        ("5s", 5.0),
        ("1.5s", 1.5),
        ("0s", 0.0),
        ("2m", 120.0),
        ("1h", 3600.0),
        ("1m30s", 90.0),
        ("1h30m", 5400.0),
        (" 5s ", 5.0),
        ("10", 10.0),
        (3, 3.0),
        (0.5, 0.5),
        (0, 0.0),
    ],
)
def test_parse_duration(text: object, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)
    assert isinstance(parse_duration(text), float)


@pytest.mark.parametrize(
    "text", ["abc", "", "-1s", "5 s", "5sec", "1d", "s", "1.s", "5S", -1, -0.5, True, None, []]
)
def test_parse_duration_rejects(text: object) -> None:
    with pytest.raises(ValueError, match=r"invalid duration .* \(use e\.g\. 250ms, 5s, 2m\)"):
        parse_duration(text)


def test_parse_duration_message() -> None:
    with pytest.raises(ValueError) as caught:
        parse_duration("abc")
    assert str(caught.value) == "invalid duration 'abc' (use e.g. 250ms, 5s, 2m)"


def test_parse_duration_rejects_infinity() -> None:
    with pytest.raises(ValueError):
        parse_duration(float("inf"))


@pytest.mark.parametrize(
    ("text", "size"),
    [
        (512, 512),
        (0, 0),
        ("512", 512),
        ("512b", 512),
        ("64KiB", 64 * 1024),
        ("10MiB", 10 * 1024**2),
        ("1GiB", 1024**3),
        ("10KB", 10_000),
        ("10MB", 10_000_000),
        ("1GB", 1_000_000_000),
        ("16k", 16 * 1024),
        ("10m", 10 * 1024**2),
        ("1g", 1024**3),
        ("16K", 16 * 1024),
        ("64kib", 64 * 1024),
        ("10 MiB", 10 * 1024**2),
        (1024.0, 1024),
    ],
)
def test_parse_size(text: object, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["abc", "", "-1", -1, "1.5MiB", "10XB", "MiB", 1.5, True, None])
def test_parse_size_rejects(text: object) -> None:
    with pytest.raises(ValueError, match=r"invalid size .* \(use e\.g\. 512, 64KiB, 10MiB\)"):
        parse_size(text)


@pytest.mark.parametrize(
    ("text", "host", "port", "shown"),
    [
        ("127.0.0.1:8080", "127.0.0.1", 8080, "127.0.0.1:8080"),
        ("localhost:80", "localhost", 80, "localhost:80"),
        ("LocalHost:80", "localhost", 80, "localhost:80"),
        ("backend_1.internal:9000", "backend_1.internal", 9000, "backend_1.internal:9000"),
        ("[::1]:80", "::1", 80, "[::1]:80"),
        ("[0:0::1]:80", "::1", 80, "[::1]:80"),
        ("[2001:db8::1]:443", "2001:db8::1", 443, "[2001:db8::1]:443"),
        ("127.0.0.1:0", "127.0.0.1", 0, "127.0.0.1:0"),
        ("0.0.0.0:65535", "0.0.0.0", 65535, "0.0.0.0:65535"),
    ],
)
def test_parse_address(text: str, host: str, port: int, shown: str) -> None:
    address = parse_address(text)
    assert address == HostPort(host, port)
    assert str(address) == shown


@pytest.mark.parametrize(
    "text",
    [
        "x",
        "localhost",
        ":80",
        "host:",
        "::1:80",
        "[::1]",
        "[nope]:80",
        "1.2.3.999:80",
        "-bad:80",
        "host name:80",
        "host:http",
        "host:123456",
        8080,
        None,
    ],
)
def test_parse_address_rejects(text: object) -> None:
    with pytest.raises(ValueError) as caught:
        parse_address(text)
    assert str(caught.value) == (
        f"invalid address {text!r} (expected host:port, [v6]:port for IPv6)"
    )


def test_parse_address_port_range() -> None:
    with pytest.raises(ValueError) as caught:
        parse_address("127.0.0.1:65536")
    assert str(caught.value) == "invalid address '127.0.0.1:65536' (port must be 0..65535)"
    assert parse_address("127.0.0.1:0").port == 0
    with pytest.raises(ValueError) as caught:
        parse_address("127.0.0.1:0", allow_port_zero=False)
    assert str(caught.value) == "invalid address '127.0.0.1:0' (port must be 1..65535)"


# --- Bad files: each kind, with its exact path and message ------------------------------------

GOOD_POOLS = """
pools:
  web:
    backends: [{address: "127.0.0.1:9001"}]
  api:
    backends: [{address: "127.0.0.1:9002"}]
"""


def listener(body: str) -> str:
    """A config with one listener made of `body` (YAML) and two good pools."""
    head = "listeners:\n  - name: web\n    bind: 127.0.0.1:0\n"
    return head + indent(dedent(body).strip(), "    ") + "\n" + GOOD_POOLS


def pool(body: str) -> str:
    """A config with a pool `p` made of `body` (YAML) and a listener sending to it."""
    head = "listeners:\n  - {name: web, bind: 127.0.0.1:0, pool: p}\npools:\n  p:\n"
    return head + indent(dedent(body).strip(), "    ") + "\n"


HTTPS = "protocol: https\ntls:\n  certificates: [{cert: a.pem, key: a.key}]"

BAD_FILES = {
    "unknown key": (
        pool("backends: [{address: 127.0.0.1:9001, wieght: 2}]"),
        "pools.p.backends[0].wieght",
        "unknown key (did you mean 'weight'?)",
    ),
    "unknown top-level key": (
        listener("pool: web") + "discovery: {dns: web.internal}\n",
        "discovery",
        "unknown key",
    ),
    "discovery not a list": (
        pool("backends: [{address: 127.0.0.1:9001}]\ndiscovery: {dns: api.internal}"),
        "pools.p.discovery",
        "must be a list, not a mapping",
    ),
    "discovery bad type": (
        pool("discovery: [{type: consul, name: x}]"),
        "pools.p.discovery[0]",
        "type: unknown 'consul' (one of: dns, etcd, file)",
    ),
    "discovery no type": (pool("discovery: [{name: x}]"), "pools.p.discovery[0]", "type: required"),
    "discovery dns no name": (
        pool("discovery: [{type: dns, port: 80}]"),
        "pools.p.discovery[0].name",
        "required",
    ),
    "discovery dns A without port": (
        pool("discovery: [{type: dns, name: api.internal}]"),
        "pools.p.discovery[0].port",
        "required for an A/AAAA name (SRV names start with _)",
    ),
    "discovery dns SRV with port": (
        pool("discovery: [{type: dns, name: _http._tcp.api, port: 80}]"),
        "pools.p.discovery[0].port",
        "an SRV name (starting with _) gives its own ports",
    ),
    "discovery dns bad name": (
        pool("discovery: [{type: dns, name: 'bad name!', port: 80}]"),
        "pools.p.discovery[0].name",
        "invalid DNS name 'bad name!' (expected e.g. www.example.com)",
    ),
    "discovery resolver by name": (
        pool("discovery: [{type: dns, name: api.internal, port: 80, resolver: dns.google:53}]"),
        "pools.p.discovery[0].resolver",
        "invalid resolver 'dns.google:53' (expected ip:port or [v6]:port, e.g. 127.0.0.1:5353)",
    ),
    "discovery zero interval": (
        pool("discovery: [{type: file, path: a.yaml, interval: 0s}]"),
        "pools.p.discovery[0].interval",
        "must be > 0",
    ),
    "discovery etcd no prefix": (
        pool("discovery: [{type: etcd}]"),
        "pools.p.discovery[0].prefix",
        "required",
    ),
    "discovery file no path": (
        pool("backends: [{address: 127.0.0.1:9001}]\ndiscovery: [{type: file}]"),
        "pools.p.discovery[0].path",
        "required",
    ),
    "no backends, no discovery": (
        pool("discovery: []"),
        "pools.p.backends",
        "required (or a discovery source)",
    ),
    "wrong type": (
        pool("backends: [{address: 127.0.0.1:9001, weight: heavy}]"),
        "pools.p.backends[0].weight",
        "must be an integer, not 'heavy'",
    ),
    "list instead of mapping": (
        pool("backends: [{address: 127.0.0.1:9001}]\ntimeouts: [1s]"),
        "pools.p.timeouts",
        "must be a mapping, not a list",
    ),
    "mapping instead of list": (
        pool("backends: {address: 127.0.0.1:9001}"),
        "pools.p.backends",
        "must be a list, not a mapping",
    ),
    "bool that is not": (
        pool("backends: [{address: 127.0.0.1:9001, backup: maybe}]"),
        "pools.p.backends[0].backup",
        "must be true or false, not 'maybe'",
    ),
    "weight 0": (
        pool("backends: [{address: 127.0.0.1:9001, weight: 0}]"),
        "pools.p.backends[0].weight",
        "must be > 0",
    ),
    "negative max_fails": (
        pool("backends: [{address: 127.0.0.1:9001}]\npassive_health: {max_fails: -1}"),
        "pools.p.passive_health.max_fails",
        "must be >= 0",
    ),
    "negative retries": (
        pool("backends: [{address: 127.0.0.1:9001}]\nretries: {attempts: -1}"),
        "pools.p.retries.attempts",
        "must be >= 0",
    ),
    "missing backends": (
        pool("algorithm: round_robin"),
        "pools.p.backends",
        "required (or a discovery source)",
    ),
    "empty backends": (
        pool("backends: []"),
        "pools.p.backends",
        "needs at least 1 item (or a discovery source)",
    ),
    "backend port 0": (
        pool("backends: [{address: '127.0.0.1:0'}]"),
        "pools.p.backends[0].address",
        "invalid address '127.0.0.1:0' (port must be 1..65535)",
    ),
    "bad backend address": (
        pool("backends: [{address: 'localhost'}]"),
        "pools.p.backends[0].address",
        "invalid address 'localhost' (expected host:port, [v6]:port for IPv6)",
    ),
    "duplicate backend address": (
        pool(
            "backends: [{address: 127.0.0.1:9001}, {address: 'LOCALHOST:1'}, "
            "{address: 127.0.0.1:9001}]"
        ),
        "pools.p.backends[2].address",
        "duplicate backend 127.0.0.1:9001 (also backends[0])",
    ),
    "duplicate IPv6 backend, written two ways": (
        pool("backends: [{address: '[::1]:80'}, {address: '[0::1]:80'}]"),
        "pools.p.backends[1].address",
        "duplicate backend [::1]:80 (also backends[0])",
    ),
    "unknown algorithm": (
        pool("algorithm: fastest\nbackends: [{address: 127.0.0.1:9001}]"),
        "pools.p.algorithm",
        f"unknown algorithm 'fastest' (known: {', '.join(registered_names())})",
    ),
    "bad duration": (
        pool("backends: [{address: 127.0.0.1:9001}]\ntimeouts: {connect: soon}"),
        "pools.p.timeouts.connect",
        "invalid duration 'soon' (use e.g. 250ms, 5s, 2m)",
    ),
    "zero timeout": (
        pool("backends: [{address: 127.0.0.1:9001}]\ntimeouts: {read: 0s}"),
        "pools.p.timeouts.read",
        "must be > 0",
    ),
    "bad pool name": (
        pool("backends: [{address: 127.0.0.1:9001}]").replace("p: {name: web", "q: {name: web")
        + "  web site:\n    backends: [{address: 127.0.0.1:9002}]\n",
        'pools["web site"]',
        "invalid pool name 'web site' (letters, digits and _.- only)",
    ),
    "unknown pool in route": (
        listener("routes:\n  - {match: {path_prefix: /api}, pool: api}\n  - pool: apii"),
        "listeners[0].routes[1].pool",
        "unknown pool 'apii' (known: api, web)",
    ),
    "unknown pool in split": (
        listener("routes:\n  - split: [{pool: web, weight: 9}, {pool: nxt, weight: 1}]"),
        "listeners[0].routes[0].split[1].pool",
        "unknown pool 'nxt' (known: api, web)",
    ),
    "unknown pool in listener shorthand": (
        listener("pool: wbe"),
        "listeners[0].pool",
        "unknown pool 'wbe' (known: api, web)",
    ),
    "pool but no pools": (
        "listeners: [{name: web, bind: '127.0.0.1:0', pool: web}]\n",
        "listeners[0].pool",
        "unknown pool 'web' (no pools are defined)",
    ),
    "split weight 0": (
        listener("routes:\n  - split: [{pool: web, weight: 0}]"),
        "listeners[0].routes[0].split[0].weight",
        "must be > 0",
    ),
    "empty split": (
        listener("routes:\n  - split: []"),
        "listeners[0].routes[0].split",
        "needs at least 1 item",
    ),
    "duplicate listener names": (
        "listeners:\n"
        "  - {name: web, bind: '127.0.0.1:0', pool: web}\n"
        "  - {name: web, bind: '127.0.0.1:0', pool: web}\n" + GOOD_POOLS,
        "listeners[1].name",
        "duplicate listener name 'web' (also listeners[0])",
    ),
    "duplicate binds": (
        "listeners:\n"
        "  - {name: a, bind: '127.0.0.1:8080', pool: web}\n"
        "  - {name: b, bind: '127.0.0.1:8081', pool: web}\n"
        "  - {name: c, bind: 'LOCALHOST:8080', pool: web}\n"
        "  - {name: d, bind: '127.0.0.1:8080', pool: web}\n" + GOOD_POOLS,
        "listeners[3].bind",
        "127.0.0.1:8080 is already bound by listeners[0]",
    ),
    "bad bind": (
        listener("pool: web").replace("127.0.0.1:0", "8080"),
        "listeners[0].bind",
        "invalid address 8080 (expected host:port, [v6]:port for IPv6)",
    ),
    "empty listener name": (
        listener("pool: web").replace("name: web", "name: ''"),
        "listeners[0].name",
        "must not be empty",
    ),
    "unknown protocol": (
        listener("protocol: sctp\npool: web"),
        "listeners[0].protocol",
        "must be one of: http, https, tcp, udp, tls_passthrough, dns",
    ),
    "https without tls": (
        listener("protocol: https\npool: web"),
        "listeners[0].tls",
        "required for protocol https",
    ),
    "tls on http": (
        listener("tls: {certificates: [{cert: a.pem, key: a.key}]}\npool: web"),
        "listeners[0].tls",
        "only allowed with protocol https",
    ),
    "tls without certificates": (
        listener("protocol: https\ntls: {certificates: []}\npool: web"),
        "listeners[0].tls.certificates",
        "needs at least 1 item",
    ),
    "bad sni": (
        listener(
            "protocol: https\ntls: {certificates: [{cert: a.pem, key: a.key, sni: [a..b]}]}\n"
            "pool: web"
        ),
        "listeners[0].tls.certificates[0].sni[0]",
        "invalid host name 'a..b' (expected e.g. example.com, *.example.com)",
    ),
    "bad cipher string": (
        listener(f"{HTTPS}\n  ciphers: 'ECDHE+AESGCM:ECDHE-RSA-AES-NONE'\npool: web"),
        "listeners[0].tls.ciphers",
        "'ECDHE-RSA-AES-NONE' names no cipher suite OpenSSL knows (see `openssl ciphers`)",
    ),
    "cipher string selecting nothing": (
        listener(f"{HTTPS}\n  ciphers: '!ALL'\npool: web"),
        "listeners[0].tls.ciphers",
        "'!ALL' leaves no TLS 1.2 cipher suite",
    ),
    "a TLS 1.3 suite in ciphers": (
        listener(f"{HTTPS}\n  ciphers: TLS_AES_128_GCM_SHA256\npool: web"),
        "listeners[0].tls.ciphers",
        "'TLS_AES_128_GCM_SHA256' is a TLS 1.3 suite: `ciphers` sets TLS 1.2 suites only",
    ),
    "ciphers with TLS 1.3 only": (
        listener(f"{HTTPS}\n  min_version: '1.3'\n  ciphers: ECDHE+AESGCM\npool: web"),
        "listeners[0].tls.ciphers",
        'sets TLS 1.2 suites: not with min_version "1.3"',
    ),
    "unknown curve": (
        listener(f"{HTTPS}\n  curves: [X25519, curve9000]\npool: web"),
        "listeners[0].tls.curves[1]",
        "unknown curve 'curve9000' (e.g. X25519, prime256v1, secp384r1)",
    ),
    "repeated curve": (
        listener(f"{HTTPS}\n  curves: [X25519, x25519]\npool: web"),
        "listeners[0].tls.curves",
        "each curve may be listed once",
    ),
    "no curves": (
        listener(f"{HTTPS}\n  curves: []\npool: web"),
        "listeners[0].tls.curves",
        "needs at least 1 item",
    ),
    "TLS 1.1": (
        listener(f"{HTTPS}\n  min_version: 1.1\npool: web"),
        "listeners[0].tls.min_version",
        "must be one of: 1.2, 1.3",
    ),
    "bad hsts": (
        listener(f"{HTTPS}\n  hsts: forever\npool: web"),
        "listeners[0].tls.hsts",
        "invalid max age 'forever' (use e.g. 1y, 180d, 12h)",
    ),
    "hsts on http": (
        listener("tls: {certificates: [{cert: a.pem, key: a.key}], hsts: 1y}\npool: web"),
        "listeners[0].tls",
        "only allowed with protocol https",
    ),
    "listener with neither routes nor pool": (
        listener("routes: []"),
        "listeners[0]",
        "a listener needs exactly one of routes, pool",
    ),
    "listener with routes and pool": (
        listener("pool: web\nroutes: [{pool: api}]"),
        "listeners[0]",
        "a listener needs exactly one of routes, pool",
    ),
    "route with two actions": (
        listener("routes:\n  - {pool: web, redirect: {to: /x}}"),
        "listeners[0].routes[0]",
        "a route needs exactly one of pool, split, redirect",
    ),
    "route with no action": (
        listener("routes:\n  - match: {path_prefix: /x}"),
        "listeners[0].routes[0]",
        "a route needs exactly one of pool, split, redirect",
    ),
    "prefix rewrite without a prefix to replace": (
        listener("routes:\n  - {pool: web, prefix_rewrite: /}"),
        "listeners[0].routes[0].prefix_rewrite",
        "needs match.path_prefix to replace",
    ),
    "prefix rewrite not starting with a slash": (
        listener("routes:\n  - {match: {path_prefix: /a}, pool: web, prefix_rewrite: b}"),
        "listeners[0].routes[0].prefix_rewrite",
        "must start with '/'",
    ),
    "bad regex": (
        listener("routes:\n  - {match: {path_regex: '^/v(1|2'}, pool: web}"),
        "listeners[0].routes[0].match.path_regex",
        "invalid regex '^/v(1|2': missing ), unterminated subpattern at position 3",
    ),
    "path prefix without slash": (
        listener("routes:\n  - {match: {path_prefix: api}, pool: web}"),
        "listeners[0].routes[0].match.path_prefix",
        "path_prefix must start with / (got 'api')",
    ),
    "bad method": (
        listener("routes:\n  - {match: {methods: [GET, 'GET /']}, pool: web}"),
        "listeners[0].routes[0].match.methods[1]",
        "invalid method 'GET /'",
    ),
    "bad host": (
        listener("routes:\n  - {match: {host: 'exa mple.com'}, pool: web}"),
        "listeners[0].routes[0].match.host",
        "invalid host name 'exa mple.com' (expected e.g. example.com, *.example.com)",
    ),
    "bad header name in match": (
        listener("routes:\n  - {match: {headers: {'X Canary': '1'}}, pool: web}"),
        'listeners[0].routes[0].match.headers["X Canary"]',
        "invalid header name 'X Canary' (letters, digits and !#$%&'*+-.^_`|~)",
    ),
    "bad header name to set": (
        listener("routes:\n  - {pool: web, request_headers: {set: {'X:Y': a}}}"),
        'listeners[0].routes[0].request_headers.set["X:Y"]',
        "invalid header name 'X:Y' (letters, digits and !#$%&'*+-.^_`|~)",
    ),
    "bad header name to remove": (
        listener("routes:\n  - {pool: web, response_headers: {remove: [Server, 'X(Y)']}}"),
        "listeners[0].routes[0].response_headers.remove[1]",
        "invalid header name 'X(Y)' (letters, digits and !#$%&'*+-.^_`|~)",
    ),
    "CR/LF in header value": (
        listener('routes:\n  - {pool: web, request_headers: {set: {X-A: "1\\r\\nX-Evil: 1"}}}'),
        "listeners[0].routes[0].request_headers.set.X-A",
        "value of header 'X-A' must not contain CR, LF or NUL",
    ),
    "NUL in header value": (
        listener('routes:\n  - {pool: web, response_headers: {set: {X-B: "a\\0b"}}}'),
        "listeners[0].routes[0].response_headers.set.X-B",
        "value of header 'X-B' must not contain CR, LF or NUL",
    ),
    "LF in redirect": (
        listener('routes:\n  - redirect: {to: "/a\\nSet-Cookie: x=1"}'),
        "listeners[0].routes[0].redirect.to",
        "must not contain CR, LF or NUL",
    ),
    "empty redirect": (
        listener("routes:\n  - redirect: {to: ''}"),
        "listeners[0].routes[0].redirect.to",
        "must not be empty",
    ),
    "bad redirect status": (
        listener("routes:\n  - redirect: {to: /new, status: 305}"),
        "listeners[0].routes[0].redirect.status",
        "must be one of: 301, 302, 303, 307, 308",
    ),
    "bad size": (
        listener("pool: web\nlimits: {max_body_size: 10XB}"),
        "listeners[0].limits.max_body_size",
        "invalid size '10XB' (use e.g. 512, 64KiB, 10MiB)",
    ),
    "zero size": (
        listener("pool: web\nlimits: {max_header_size: 0}"),
        "listeners[0].limits.max_header_size",
        "must be > 0",
    ),
    "zero body size": (
        listener("pool: web\nlimits: {max_body_size: 0KiB}"),
        "listeners[0].limits.max_body_size",
        "must be > 0",
    ),
    "zero client timeout": (
        listener("pool: web\ntimeouts: {idle: 0}"),
        "listeners[0].timeouts.idle",
        "must be > 0",
    ),
    "bad rate": (
        listener("pool: web\nlimits: {rate: 100/d}"),
        "listeners[0].limits.rate",
        "invalid rate '100/d' (use e.g. 100/s, 600/m, 1000/h; > 0)",
    ),
    "zero rate": (
        listener("pool: web\nlimits: {rate: 0/s}"),
        "listeners[0].limits.rate",
        "invalid rate '0/s' (use e.g. 100/s, 600/m, 1000/h; > 0)",
    ),
    "burst without rate": (
        listener("pool: web\nlimits: {burst: 10}"),
        "listeners[0].limits.burst",
        "needs rate",
    ),
    "bad rate key": (
        listener("pool: web\nlimits: {rate: 1/s, key: 'header:'}"),
        "listeners[0].limits.key",
        "invalid rate limit key 'header:' (source_ip, route, header:<Name> or cookie:<name>)",
    ),
    "bad network": (
        listener("pool: web\nlimits: {deny: [10.0.0.0/33]}"),
        "listeners[0].limits.deny[0]",
        "invalid network '10.0.0.0/33' (use CIDR such as 10.0.0.0/8 or 2001:db8::/32)",
    ),
    "bad trusted proxy": (
        listener("pool: web\ntrusted_proxies: [localhost]"),
        "listeners[0].trusted_proxies[0]",
        "invalid network 'localhost' (use CIDR such as 10.0.0.0/8 or 2001:db8::/32)",
    ),
    "bad byte rate": (
        listener("pool: web\nlimits: {min_body_rate: 1KiB}"),
        "listeners[0].limits.min_body_rate",
        "invalid byte rate '1KiB' (use e.g. 1KiB/s, 500/s, 60KiB/m; > 0)",
    ),
    "bad request id header": (
        listener("pool: web\nrequest_id: 'X Id'"),
        "listeners[0].request_id",
        "invalid header name 'X Id' (letters, digits and !#$%&'*+-.^_`|~)",
    ),
    "route rate": (
        listener("routes:\n  - {pool: web, limits: {rate: fast}}"),
        "listeners[0].routes[0].limits.rate",
        "invalid rate 'fast' (use e.g. 100/s, 600/m, 1000/h; > 0)",
    ),
    "filter with two patterns": (
        listener("routes:\n  - {pool: web, filters: [{name: a, on: path, equals: /, regex: x}]}"),
        "listeners[0].routes[0].filters[0]",
        "a filter rule needs exactly one of equals, contains, regex",
    ),
    "filter on nothing": (
        listener("routes:\n  - {pool: web, filters: [{name: a, on: cookie, equals: x}]}"),
        "listeners[0].routes[0].filters[0].on",
        "invalid filter field 'cookie' (method, path, query, header:<Name>, body)",
    ),
    "filter bad regex": (
        listener("routes:\n  - {pool: web, filters: [{name: a, on: path, regex: '(('}]}"),
        "listeners[0].routes[0].filters[0].regex",
        "invalid regex '((': missing ), unterminated subpattern at position 1",
    ),
    "filter body limit too big": (
        listener("routes:\n  - {pool: web, filter_body_limit: 2MiB}"),
        "listeners[0].routes[0].filter_body_limit",
        "must be at most 1MiB (1048576 bytes)",
    ),
    "no listeners": ("listeners: []\n" + GOOD_POOLS, "listeners", "needs at least 1 item"),
    "missing listeners": (GOOD_POOLS, "listeners", "required"),
    "listeners not a list": ("listeners: web\n", "listeners", "must be a list, not 'web'"),
    "null listener": ("listeners: [null]\n", "listeners[0]", "must be a mapping, not null"),
    "duplicate key": (
        pool("backends: [{address: 127.0.0.1:9001}]\nbackends: [{address: 127.0.0.1:9002}]"),
        "pools.p.backends",
        "duplicate key",
    ),
}


@pytest.mark.parametrize(("text", "path", "message"), BAD_FILES.values(), ids=BAD_FILES.keys())
def test_bad_file(text: str, path: str, message: str) -> None:
    assert problems(text) == [(path, message)]


@pytest.mark.parametrize(
    ("text", "per_second"), [("100/s", 100.0), ("600/m", 10.0), ("3600/h", 1.0), ("0.5/s", 0.5)]
)
def test_rates(text: str, per_second: float) -> None:
    config = parse_config(listener(f"pool: web\nlimits: {{rate: {text}}}"))
    assert config.listeners[0].limits.rate == per_second


def test_security_keys_parse() -> None:
    config = parse_config(
        listener(
            "pool: web\nlimits: {min_body_rate: 1KiB/s, allow: ['::1', 10.0.0.0/8]}\n"
            "trusted_proxies: [192.0.2.1]\nrequest_id: true"
        )
    )
    web = config.listeners[0]
    assert web.limits.min_body_rate == 1024.0
    assert web.limits.allow == ["::1/128", "10.0.0.0/8"]
    assert web.trusted_proxies == ["192.0.2.1/32"] and web.request_id is True
    assert web.strip_response_headers == ["Server", "X-Powered-By"]


def test_each_listener_fixture_is_good_without_its_fault() -> None:
    # Guards the helpers above: what they build is valid, so each bad case has one fault.
    parse_config(listener("pool: web"))
    parse_config(pool("backends: [{address: 127.0.0.1:9001}]"))


def test_yaml_syntax_error_names_its_line() -> None:
    text = "listeners:\n  - name: web\n    bind: [127.0.0.1:0\n    pool: web\n"
    (issue,) = issues(text)
    assert issue.path == ""
    # The unclosed [ swallows the next line, whose ":" is where the parser gives up.
    assert issue.line == 4
    assert issue.message.startswith("invalid YAML: expected ',' or ']'")


def test_yaml_bad_indentation_names_its_line() -> None:
    text = "listeners:\n  - name: web\n   bind: 127.0.0.1:0\n"
    (issue,) = issues(text)
    assert issue.line == 3
    assert issue.message.startswith("invalid YAML: ")


@pytest.mark.parametrize("text", ["", "\n\n", "# nothing but a comment\n", "---\n", "null\n"])
def test_empty_file(text: str) -> None:
    assert problems(text) == [("", "the config is empty")]


@pytest.mark.parametrize(
    ("text", "what"), [("- a\n- b\n", "a list"), ("hello\n", "'hello'"), ("42\n", "42")]
)
def test_config_that_is_not_a_mapping(text: str, what: str) -> None:
    assert problems(text) == [("", f"the config must be a mapping, not {what}")]


def test_unsafe_yaml_tags_are_refused() -> None:
    (issue,) = issues("listeners: !!python/object/apply:os.system [echo hi]\n")
    assert issue.message.startswith("invalid YAML: could not determine a constructor")
    assert issue.line == 1


def test_recursive_alias_is_refused() -> None:
    text = "listeners: &all\n  - {name: web, bind: '127.0.0.1:0', pool: *all}\n"
    assert [(i.line, i.path, i.message) for i in issues(text)] == [
        (1, "listeners[0].pool", "an alias refers to its own anchor (recursive data)")
    ]


def test_aliases_and_merge_keys_work() -> None:
    text = """\
        listeners: [{name: web, bind: "127.0.0.1:0", pool: web}]
        pools:
          web:
            backends:
              - &first {address: "127.0.0.1:9001", weight: 3}
              - {<<: *first, address: "127.0.0.1:9002"}
        """
    backends = parse_config(dedent(text)).pools["web"].backends
    assert [(b.address.port, b.weight) for b in backends] == [(9001, 3), (9002, 3)]


def test_unreadable_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError) as caught:
        load_config(missing)
    assert caught.value.source == str(missing)
    (issue,) = caught.value.issues
    assert issue.message == f"cannot read {missing}: No such file or directory"


def test_file_that_is_not_text(tmp_path: Path) -> None:
    path = tmp_path / "binary.yaml"
    path.write_bytes(b"\xff\xfe\x00listeners")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert caught.value.issues == [ConfigIssue("", f"{path} is not UTF-8 text")]


def test_every_problem_is_reported_at_once_with_its_line(tmp_path: Path) -> None:
    text = """\
        listeners:
          - name: web
            bind: 127.0.0.1:8080
            protocol: https
            routes:
              - match: {path_prefix: /api}
                pool: apii
              - pool: web
                redirect: {to: /elsewhere}
        pools:
          web:
            backends:
              - {address: 127.0.0.1:9001}
              - {address: 127.0.0.1:9002, weight: 0}
            timeouts:
              conect: 1s
          api:
            algorithm: fastest
        """
    path = tmp_path / "usher.yaml"
    path.write_text(dedent(text))
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    known = ", ".join(registered_names())
    assert str(caught.value) == dedent(
        f"""\
        {path}: 7 problems in the config
          line 2: listeners[0].tls: required for protocol https
          line 7: listeners[0].routes[0].pool: unknown pool 'apii' (known: api, web)
          line 8: listeners[0].routes[1]: a route needs exactly one of pool, split, redirect
          line 14: pools.web.backends[1].weight: must be > 0
          line 16: pools.web.timeouts.conect: unknown key (did you mean 'connect'?)
          line 18: pools.api.algorithm: unknown algorithm 'fastest' (known: {known})
          line 18: pools.api.backends: required (or a discovery source)"""
    )


def test_cross_checks_run_even_when_fields_are_bad() -> None:
    # The unknown pool and the duplicate name must not hide behind the bad weight, nor the
    # bad route behind the bad regex in its own match.
    text = """\
        listeners:
          - {name: a, bind: "127.0.0.1:0", pool: nope}
          - name: a
            bind: "127.0.0.1:0"
            routes:
              - {match: {path_regex: "("}, pool: web, split: [{pool: web, weight: 1}]}
        pools:
          web: {backends: [{address: "127.0.0.1:9001", weight: 0}]}
        """
    assert [(i.line, i.path, i.message) for i in issues(text)] == [
        (2, "listeners[0].pool", "unknown pool 'nope' (known: web)"),
        (3, "listeners[1].name", "duplicate listener name 'a' (also listeners[0])"),
        (
            6,
            "listeners[1].routes[0].match.path_regex",
            "invalid regex '(': missing ), unterminated subpattern at position 0",
        ),
        (6, "listeners[1].routes[0]", "a route needs exactly one of pool, split, redirect"),
        (8, "pools.web.backends[0].weight", "must be > 0"),
    ]


def test_line_numbers() -> None:
    text = """\
        # a comment
        listeners:
          - name: web
            bind: 127.0.0.1:0
            pool: web
            limits:
              max_headers: 0
            timeouts:
              header: 1s
              bogus: 2s
        pools:
          web:
            backends:
              - address: 127.0.0.1:9001
                weight: -2
              - {address: 127.0.0.1:9002}
              - weight: 1
        """
    assert [(i.line, i.path, i.message) for i in issues(text)] == [
        (7, "listeners[0].limits.max_headers", "must be > 0"),
        (10, "listeners[0].timeouts.bogus", "unknown key"),
        (15, "pools.web.backends[0].weight", "must be > 0"),
        # A missing key is reported on the line of the mapping that lacks it.
        (17, "pools.web.backends[2].address", "required"),
    ]


def test_unknown_key_reported_on_the_key_line() -> None:
    text = listener("pool: web\nextra:\n  a: 1")
    assert [(i.line, i.path) for i in issues(text)] == [(5, "listeners[0].extra")]


def test_config_error_str_format() -> None:
    error = ConfigError([ConfigIssue("pools.web.backends[1].weight", "must be > 0", 12)], "x.yaml")
    assert (
        str(error)
        == "x.yaml: 1 problem in the config\n  line 12: pools.web.backends[1].weight: must be > 0"
    )


# --- Models used from Python ------------------------------------------------------------------


def test_models_are_frozen() -> None:
    config = load_config(CONFIGS / "minimal.yaml")
    with pytest.raises(ValidationError):
        config.listeners[0].name = "other"  # type: ignore[misc]
    with pytest.raises(ValidationError):
        config.pools["web"].backends[0].weight = 5  # type: ignore[misc]
    with pytest.raises(AttributeError):
        config.pools["web"].backends[0].address.port = 1  # type: ignore[misc]


def test_rules_hold_for_models_built_in_python() -> None:
    with pytest.raises(ValidationError, match="a route needs exactly one of pool, split, redirect"):
        Route(pool="web", redirect={"to": "/x"})
    with pytest.raises(ValidationError, match="greater than 0"):
        BackendConfig(address="127.0.0.1:80", weight=0)
    assert Route(pool="web").pool == "web"


def test_default_certificate() -> None:
    site = TlsCertificate(cert="site.pem", key="site.key")
    api = TlsCertificate(cert="api.pem", key="api.key", sni=["api.example.com"])
    assert ListenerTls(certificates=[api, site]).default_certificate() == site
    assert ListenerTls(certificates=[api]).default_certificate() == api


def test_dump_to_json_writes_addresses_as_text() -> None:
    config = load_config(CONFIGS / "full.yaml")
    dumped = json.loads(config.model_dump_json())
    assert dumped["listeners"][0]["bind"] == "[::1]:8443"
    assert dumped["pools"]["web"]["backends"][1]["address"] == "backend.internal:8080"
    assert Config.model_validate(dumped) == config


def test_schema() -> None:
    schema = config_schema()
    text = json.dumps(schema)
    assert json.loads(text) == schema
    assert "listeners" in schema["properties"]
    assert schema["required"] == ["listeners"]
    assert schema["additionalProperties"] is False
    definitions: dict[str, Any] = schema["$defs"]
    connect = definitions["PoolTimeouts"]["properties"]["connect"]
    assert {"type": "string", "pattern": connect["anyOf"][0]["pattern"]} in connect["anyOf"]
    assert re.search(connect["anyOf"][0]["pattern"], "250ms")
    bind = definitions["Listener"]["properties"]["bind"]
    assert bind["type"] == "string"
    assert re.search(bind["pattern"], "[::1]:80") and re.search(bind["pattern"], "a.b:8080")
    size = definitions["ListenerLimits"]["properties"]["max_header_size"]
    assert any(re.search(option.get("pattern", "^$"), "64KiB") for option in size["anyOf"])
    algorithm = definitions["PoolConfig"]["properties"]["algorithm"]
    assert algorithm["anyOf"][0]["enum"] == registered_names()


def test_schema_patterns_agree_with_the_parsers() -> None:
    definitions = config_schema()["$defs"]
    duration = definitions["PoolTimeouts"]["properties"]["connect"]["anyOf"][0]["pattern"]
    size = definitions["ListenerLimits"]["properties"]["max_header_size"]["anyOf"][0]["pattern"]
    for text in ["250ms", "5s", "1m30s", "1.5s", "10"]:
        assert re.search(duration, text)
        parse_duration(text)
    for text in ["abc", "5S", "-1s", "1d"]:
        assert not re.search(duration, text)
    for text in ["512", "64KiB", "16k", "10MB", "1gib"]:
        assert re.search(size, text)
        parse_size(text)
    for text in ["10XB", "1.5MiB", "MiB"]:
        assert not re.search(size, text)


def test_reference_docs_check_finds_a_stale_file(tmp_path: Path) -> None:
    script = ROOT / "scripts" / "gen_config_reference.py"
    stale = tmp_path / "configuration.md"
    stale.write_text("# old\n")
    command = [sys.executable, str(script), "--check", "--output", str(stale)]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    assert result.returncode == 1
    assert "out of date" in result.stderr
    write = [sys.executable, str(script), "--output", str(stale)]
    subprocess.run(write, capture_output=True, check=True)
    assert subprocess.run(command, capture_output=True, check=False).returncode == 0


def test_reference_docs_are_up_to_date() -> None:
    script = ROOT / "scripts" / "gen_config_reference.py"
    result = subprocess.run(
        [sys.executable, str(script), "--check"], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_yaml_1_1_booleans_are_plain_words() -> None:
    # `on` must stay a key (retries.on), not become the boolean True of YAML 1.1.
    config = parse_config(
        "listeners: [{name: web, bind: 127.0.0.1:0, pool: p}]\n"
        "pools:\n"
        "  p:\n"
        "    backends: [{address: 127.0.0.1:9001, backup: false}]\n"
        "    retries: {on: [502, 503]}\n"
    )
    assert config.pools["p"].retries.on == [502, 503]


def test_resource_and_agent_checks_need_an_agent() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(
            "listeners: [{name: web, bind: 127.0.0.1:0, pool: p}]\n"
            "pools:\n"
            "  p:\n"
            "    algorithm: resource\n"
            "    backends: [{address: 127.0.0.1:9001}]\n"
            "    health_check: {type: agent}\n"
        )
    messages = [str(issue) for issue in caught.value.issues]
    assert "line 4: pools.p.agent: required by algorithm resource" in messages
    assert "line 4: pools.p.agent: required by health_check type agent" in messages


def test_health_check_keys_of_another_type_are_refused() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(
            "listeners: [{name: web, bind: 127.0.0.1:0, pool: p}]\n"
            "pools:\n"
            "  p:\n"
            "    backends: [{address: 127.0.0.1:9001}]\n"
            "    health_check: {type: tcp, path: /healthz, expect: pong}\n"
        )
    paths = {(issue.path, issue.message) for issue in caught.value.issues}
    assert paths == {
        ("pools.p.health_check.path", "only for type http"),
        ("pools.p.health_check.expect", "only for type udp"),
    }


@pytest.mark.parametrize("name", ["Content-Length", "transfer-encoding", "Connection", "Upgrade"])
def test_framing_headers_cannot_be_rewritten(name: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(
            "listeners: [{name: web, bind: 127.0.0.1:0, routes: [{pool: p, request_headers: "
            f"{{remove: [{name}]}}}}]}}]\n"
            "pools: {p: {backends: [{address: 127.0.0.1:9001}]}}\n"
        )
    assert [issue.path for issue in caught.value.issues] == [
        "listeners[0].routes[0].request_headers.remove[0]"
    ]
    assert "managed by usher" in caught.value.issues[0].message


def test_encoded_slashes_is_an_http_listener_option() -> None:
    pools = "pools: {p: {backends: [{address: 127.0.0.1:1}]}}\n"
    listener = "listeners: [{name: t, bind: 127.0.0.1:0, protocol: %s, pool: p, %s}]\n"
    web = parse_config(listener % ("http", "encoded_slashes: keep") + pools).listeners[0]
    assert web.encoded_slashes == "keep"
    assert (
        parse_config(listener % ("http", "zero_copy: false") + pools).listeners[0].encoded_slashes
        == "refuse"
    )
    with pytest.raises(ConfigError, match=r"listeners\[0\]\.encoded_slashes"):
        parse_config(listener % ("http", "encoded_slashes: allow") + pools)
    with pytest.raises(ConfigError, match="encoded_slashes: works on HTTP requests"):
        parse_config(listener % ("tcp", "encoded_slashes: decode") + pools)


# --- Addresses: the published pattern and the parser agree -------------------------------------

_ADDRESS_CHARS = "0123456789abcdefABCDEF:.[]%_-xyz K\n"


def _ipv6_texts() -> st.SearchStrategy[str]:
    def forms(number: int, tail: int, upper: bool) -> list[str]:
        address = ipaddress.IPv6Address(number)
        v4 = ipaddress.IPv4Address(tail)
        texts = [address.compressed, address.exploded, f"::{v4}", f"::ffff:{v4}"]
        texts.append(address.exploded.rsplit(":", 2)[0] + f":{v4}")
        return [t.upper() if upper else t for t in texts]

    numbers = st.one_of(st.integers(0, 2**128 - 1), st.integers(0, 2**32), st.just(0))
    lists = st.builds(forms, numbers, st.integers(0, 2**32 - 1), st.booleans())
    return lists.flatmap(st.sampled_from)


@settings(max_examples=100, deadline=None, database=None)
@given(st.from_regex(addresses._ADDRESS_PATTERN, fullmatch=True))
def test_every_address_the_listener_pattern_allows_parses(text: str) -> None:
    parse_address(text)


@settings(max_examples=100, deadline=None, database=None)
@given(st.from_regex(addresses._BACKEND_ADDRESS_PATTERN, fullmatch=True))
def test_every_address_the_backend_pattern_allows_parses(text: str) -> None:
    parse_address(text, allow_port_zero=False)


@settings(max_examples=500, deadline=None, database=None)
@given(
    st.one_of(
        st.text(_ADDRESS_CHARS, max_size=24),
        st.builds("[{}]:{}".format, _ipv6_texts(), st.integers(0, 70000)),
        st.builds("{}:{}".format, st.text(_ADDRESS_CHARS, max_size=12), st.integers(0, 70000)),
        st.text(max_size=12),
    )
)
def test_every_address_that_parses_matches_the_patterns(text: str) -> None:
    try:
        address = parse_address(text)
    except ValueError:
        assert not re.search(addresses._ADDRESS_PATTERN, text) or text.endswith("\n")
        return
    assert re.search(addresses._ADDRESS_PATTERN, text)
    assert bool(re.search(addresses._BACKEND_ADDRESS_PATTERN, text)) == (address.port > 0)


@pytest.mark.parametrize(
    "text", ["127.0.0.1:080", " 127.0.0.1:80", "[fe80::1%eth 0]:80", "\u212a.example:80"]
)
def test_addresses_the_pattern_refuses_are_refused(text: str) -> None:
    assert not re.search(addresses._ADDRESS_PATTERN, text)
    with pytest.raises(ValueError, match="expected host:port"):
        parse_address(text)


def test_discovery_alone_is_a_pool() -> None:
    text = pool(
        """
        discovery:
          - {type: dns, name: _http._tcp.api.internal, resolver: "127.0.0.1:5353", interval: 5s}
          - {type: dns, name: api.internal, port: 8080, resolver: "::1"}
          - {type: etcd, endpoints: ["127.0.0.1:2379"], prefix: /usher/pools/api/}
          - {type: file, path: api-backends.yaml}
        """
    )
    sources = parse_config(text).pools["p"].discovery
    assert [s.type for s in sources] == ["dns", "dns", "etcd", "file"]
    assert str(sources[1].resolver) == "[::1]:53"  # type: ignore[union-attr]


def test_the_package_face_has_every_public_name_of_its_modules() -> None:
    # Other code imports from usher.config only; what a module of the package defines without
    # a leading underscore is reachable there, as the very same object.
    import usher.config as face

    modules = [info.name for info in pkgutil.iter_modules(face.__path__)]
    assert "load" in modules and "values" in modules
    for name in modules:
        module = importlib.import_module(f"usher.config.{name}")
        tree = ast.parse(Path(str(module.__file__)).read_text(encoding="utf-8"))
        defined = [
            target.id
            for node in tree.body
            for target in (
                node.targets
                if isinstance(node, ast.Assign)
                else [node.target]
                if isinstance(node, ast.AnnAssign)
                else []
            )
            if isinstance(target, ast.Name)
        ] + [node.name for node in tree.body if isinstance(node, ast.ClassDef | ast.FunctionDef)]
        for public in (n for n in defined if not n.startswith("_")):
            assert getattr(face, public, None) is getattr(module, public), f"{name}.{public}"
    assert all(hasattr(face, name) for name in face.__all__)


def test_http2_defaults_by_protocol_and_is_refused_off_http() -> None:
    def listener(extra: str) -> str:
        return f"""
            listeners: [{{name: web, bind: "127.0.0.1:0", pool: web{extra}}}]
            pools: {{web: {{backends: [{{address: "127.0.0.1:9001"}}]}}}}
        """

    assert not parse_config(listener("")).listeners[0].serves_http2  # http: off by default
    assert parse_config(listener(", http2: true")).listeners[0].serves_http2  # h2c
    with pytest.raises(ConfigError) as info:
        parse_config(listener(", protocol: tcp, http2: true"))
    assert "listeners[0].http2: only for protocol http or https" in str(info.value)
