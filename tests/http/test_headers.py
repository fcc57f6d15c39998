"""Tests of the forwarding header rules: hop-by-hop removal, X-Forwarded-*, Via, rewrites."""

from __future__ import annotations

import pytest

from usher.http.codec import Headers
from usher.http.headers import (
    HeaderRules,
    connection_tokens,
    forward_request_headers,
    forward_response_headers,
    forward_trailers,
    relayed_transfer_encoding,
)


def forward(
    headers: Headers,
    *,
    version: bytes = b"1.1",
    host: bytes = b"example.com",
    client_ip: bytes = b"203.0.113.7",
    scheme: bytes = b"http",
    chunked: bool = False,
    upgrade: bytes | None = None,
) -> Headers:
    return forward_request_headers(
        headers,
        version=version,
        host=host,
        client_ip=client_ip,
        scheme=scheme,
        chunked=chunked,
        upgrade=upgrade,
        content_length=next((int(v) for n, v in headers if n.lower() == b"content-length"), None),
    )


def values(headers: Headers, name: bytes) -> list[bytes]:
    """Every value of header `name`, compared case-insensitively, in order."""
    return [v for n, v in headers if n.lower() == name.lower()]


def names(headers: Headers) -> set[bytes]:
    return {n.lower() for n, _ in headers}


# --- Requests: hop-by-hop ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        b"Connection",
        b"Keep-Alive",
        b"TE",
        b"Transfer-Encoding",
        b"Upgrade",
        b"Proxy-Connection",
        b"Proxy-Authorization",
        b"Proxy-Authenticate",
        b"Proxy-Whatever",
        b"HTTP2-Settings",
        b"KEEP-ALIVE",
        b"proxy-authorization",
    ],
)
def test_hop_by_hop_header_is_removed(name: bytes) -> None:
    out = forward([(b"Host", b"example.com"), (name, b"x"), (b"Accept", b"*/*")])
    assert name.lower() not in names(out)
    assert values(out, b"Accept") == [b"*/*"]


def test_headers_named_in_connection_are_removed() -> None:
    out = forward(
        [
            (b"Host", b"example.com"),
            (b"Connection", b"keep-alive, X-Secret ,x-other"),
            (b"connection", b"X-Third"),
            (b"X-Secret", b"1"),
            (b"X-OTHER", b"2"),
            (b"x-third", b"3"),
            (b"X-Kept", b"4"),
        ]
    )
    assert not names(out) & {b"connection", b"x-secret", b"x-other", b"x-third"}
    assert values(out, b"X-Kept") == [b"4"]


def test_connection_tokens() -> None:
    headers = [(b"Connection", b"Close, X-A"), (b"CONNECTION", b" x-b ")]
    assert connection_tokens(headers) == {b"close", b"x-a", b"x-b"}
    assert connection_tokens([(b"Host", b"a")]) == frozenset()


def test_connection_cannot_remove_content_length_or_host() -> None:
    # A client listing Content-Length in Connection must not get the body forwarded unframed
    # (the backend would read it as a second request), nor Host dropped.
    out = forward(
        [
            (b"Host", b"example.com"),
            (b"Connection", b"close, Content-Length, Host"),
            (b"Content-Length", b"5"),
        ]
    )
    assert values(out, b"Content-Length") == [b"5"]
    assert values(out, b"Host") == [b"example.com"]


def test_upgrade_kept_only_when_upgrading() -> None:
    headers = [
        (b"Host", b"example.com"),
        (b"Connection", b"Upgrade"),
        (b"Upgrade", b"websocket"),
        (b"Sec-WebSocket-Key", b"k"),
    ]
    plain = forward(headers)
    assert not names(plain) & {b"upgrade", b"connection"}
    assert values(plain, b"Sec-WebSocket-Key") == [b"k"]

    upgrading = forward(headers, upgrade=b"websocket")
    assert values(upgrading, b"Upgrade") == [b"websocket"]
    assert [v.lower() for v in values(upgrading, b"Connection")] == [b"upgrade"]
    assert values(upgrading, b"Sec-WebSocket-Key") == [b"k"]


def test_transfer_encoding_is_set_by_the_proxy_when_chunked() -> None:
    headers = [(b"Host", b"a"), (b"Transfer-Encoding", b"chunked")]
    assert values(forward(headers, chunked=True), b"Transfer-Encoding") == [b"chunked"]
    assert values(forward(headers, chunked=False), b"Transfer-Encoding") == []


# --- Requests: X-Forwarded-*, X-Real-IP, Via, Host -------------------------------------------


def test_x_forwarded_for_is_set() -> None:
    out = forward([(b"Host", b"a")], client_ip=b"198.51.100.1")
    assert values(out, b"X-Forwarded-For") == [b"198.51.100.1"]


def test_x_forwarded_for_is_appended_to_the_chain() -> None:
    out = forward(
        [
            (b"Host", b"a"),
            (b"X-Forwarded-For", b"10.0.0.1"),
            (b"Accept", b"*/*"),
            (b"x-forwarded-for", b"10.0.0.2, 10.0.0.3"),
        ],
        client_ip=b"198.51.100.1",
    )
    assert values(out, b"X-Forwarded-For") == [b"10.0.0.1, 10.0.0.2, 10.0.0.3, 198.51.100.1"]


def test_ipv6_client_in_x_forwarded_for() -> None:
    out = forward([(b"Host", b"a"), (b"X-Forwarded-For", b"10.0.0.1")], client_ip=b"2001:db8::1")
    assert values(out, b"X-Forwarded-For") == [b"10.0.0.1, 2001:db8::1"]
    assert values(out, b"X-Real-IP") == [b"2001:db8::1"]


def test_client_forwarded_headers_are_replaced_not_trusted() -> None:
    out = forward(
        [
            (b"Host", b"real.example.com"),
            (b"X-Forwarded-Proto", b"https"),
            (b"x-forwarded-proto", b"https"),
            (b"X-Real-IP", b"1.2.3.4"),
            (b"X-Forwarded-Host", b"evil.example.com"),
            (b"X-REAL-IP", b"5.6.7.8"),
        ],
        host=b"real.example.com",
        client_ip=b"198.51.100.1",
        scheme=b"http",
    )
    assert values(out, b"X-Forwarded-Proto") == [b"http"]
    assert values(out, b"X-Real-IP") == [b"198.51.100.1"]
    assert values(out, b"X-Forwarded-Host") == [b"real.example.com"]


def test_scheme_is_forwarded() -> None:
    out = forward([(b"Host", b"a")], scheme=b"https")
    assert values(out, b"X-Forwarded-Proto") == [b"https"]


def test_no_forwarded_host_without_a_host() -> None:
    out = forward([(b"X-Forwarded-Host", b"evil")], version=b"1.0", host=b"")
    assert values(out, b"X-Forwarded-Host") == []


def test_via_is_added() -> None:
    assert values(forward([(b"Host", b"a")]), b"Via") == [b"1.1 usher"]
    assert values(forward([], version=b"1.0", host=b""), b"Via") == [b"1.0 usher"]


def test_via_is_appended_to_the_chain() -> None:
    out = forward([(b"Host", b"a"), (b"Via", b"1.0 fred"), (b"via", b"1.1 p.example.net")])
    assert values(out, b"Via") == [b"1.0 fred, 1.1 p.example.net, 1.1 usher"]


def test_host_and_end_to_end_headers_pass_unchanged_in_order() -> None:
    headers = [
        (b"Accept", b"*/*"),
        (b"Host", b"Example.COM:8080"),
        (b"Cookie", b"a=1"),
        (b"cookie", b"b=2"),
        (b"Content-Length", b"3"),
        (b"X-Custom", b"  spaced  "),
    ]
    out = forward(headers, host=b"Example.COM:8080")
    kept = [
        h
        for h in out
        if h[0].lower()
        not in {b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host", b"x-real-ip", b"via"}
    ]
    assert kept == headers


# --- Responses -------------------------------------------------------------------------------


def test_response_hop_by_hop_removed_and_via_appended() -> None:
    out = forward_response_headers(
        [
            (b"Content-Type", b"text/plain"),
            (b"Connection", b"keep-alive, X-Internal"),
            (b"Keep-Alive", b"timeout=5"),
            (b"Transfer-Encoding", b"chunked"),
            (b"Proxy-Authenticate", b"Basic"),
            (b"X-Internal", b"1"),
            (b"Content-Length", b"10"),
            (b"Via", b"1.1 backend"),
            (b"Set-Cookie", b"a=1"),
            (b"Set-Cookie", b"b=2"),
        ],
        version=b"1.1",
        upgrade=False,
    )
    assert out == [
        (b"Content-Type", b"text/plain"),
        (b"Set-Cookie", b"a=1"),
        (b"Set-Cookie", b"b=2"),
        (b"Via", b"1.1 backend, 1.1 usher"),
    ]


def test_response_upgrade_kept_only_for_an_upgrade() -> None:
    headers = [
        (b"Connection", b"Upgrade"),
        (b"Upgrade", b"websocket"),
        (b"Sec-WebSocket-Accept", b"x"),
    ]
    plain = forward_response_headers(headers, version=b"1.1", upgrade=False)
    assert not names(plain) & {b"upgrade", b"connection"}
    switched = forward_response_headers(headers, version=b"1.1", upgrade=True)
    assert values(switched, b"Upgrade") == [b"websocket"]
    assert [v.lower() for v in values(switched, b"Connection")] == [b"upgrade"]
    assert values(switched, b"Sec-WebSocket-Accept") == [b"x"]


# --- HeaderRules -----------------------------------------------------------------------------


def test_rules_set_replaces_every_copy_case_insensitively() -> None:
    rules = HeaderRules({"X-Env": "prod"}, [])
    out = rules.apply([(b"x-env", b"dev"), (b"A", b"1"), (b"X-ENV", b"test"), (b"B", b"2")])
    assert out == [(b"A", b"1"), (b"B", b"2"), (b"X-Env", b"prod")]


def test_rules_set_adds_a_missing_header() -> None:
    rules = HeaderRules({"Strict-Transport-Security": "max-age=31536000"}, [])
    assert rules.apply([(b"A", b"1")]) == [
        (b"A", b"1"),
        (b"Strict-Transport-Security", b"max-age=31536000"),
    ]


def test_rules_remove_drops_every_copy_case_insensitively() -> None:
    rules = HeaderRules({}, ["X-Debug", "x-trace"])
    out = rules.apply(
        [(b"x-debug", b"1"), (b"A", b"1"), (b"X-DEBUG", b"2"), (b"X-Trace", b"t"), (b"B", b"2")]
    )
    assert out == [(b"A", b"1"), (b"B", b"2")]


def test_rules_remove_then_set() -> None:
    rules = HeaderRules({"X-Env": "prod", "X-Two": "2"}, ["X-Debug"])
    out = rules.apply([(b"X-Debug", b"1"), (b"X-Env", b"dev"), (b"Keep", b"k")])
    assert out == [(b"Keep", b"k"), (b"X-Env", b"prod"), (b"X-Two", b"2")]


def test_rules_do_not_change_their_input() -> None:
    rules = HeaderRules({"X-Env": "prod"}, ["X-Debug"])
    headers = [(b"X-Debug", b"1"), (b"X-Env", b"dev")]
    rules.apply(headers)
    assert headers == [(b"X-Debug", b"1"), (b"X-Env", b"dev")]


def test_empty_rules_change_nothing() -> None:
    headers = [(b"A", b"1"), (b"a", b"2")]
    assert HeaderRules({}, []).apply(headers) == headers


# --- Framing and trailers ----------------------------------------------------------------------


def test_content_length_is_the_parsed_number_in_place() -> None:
    headers = [(b"Host", b"a"), (b"content-length", b"007"), (b"X-A", b"1")]
    out = forward_request_headers(
        headers,
        version=b"1.1",
        host=b"a",
        client_ip=b"1.2.3.4",
        scheme=b"http",
        chunked=False,
        upgrade=None,
        content_length=7,
    )
    assert out[:3] == [(b"Host", b"a"), (b"Content-Length", b"7"), (b"X-A", b"1")]


@pytest.mark.parametrize("spelling", [b"CHUNKED", b",chunked", b"chunked\t"])
def test_transfer_encoding_is_always_plain_chunked(spelling: bytes) -> None:
    out = forward([(b"Host", b"a"), (b"Transfer-Encoding", spelling)], chunked=True)
    assert values(out, b"Transfer-Encoding") == [b"chunked"]


def test_underscore_spellings_of_framing_headers_are_dropped() -> None:
    out = forward([(b"Host", b"a"), (b"Transfer_Encoding", b"chunked"), (b"CONTENT_LENGTH", b"9")])
    assert names(out) & {b"transfer_encoding", b"content_length"} == set()


@pytest.mark.parametrize(
    ("codings", "relayed"),
    [
        ((), (b"chunked", True)),
        ((b"chunked",), (b"chunked", True)),
        ((b"gzip", b"chunked"), (b"gzip, chunked", True)),
        ((b"gzip",), (b"gzip, chunked", True)),
        ((b"chunked", b"gzip"), (b"chunked, gzip", False)),
    ],
)
def test_relayed_transfer_encoding(codings: tuple[bytes, ...], relayed: tuple[bytes, bool]) -> None:
    assert relayed_transfer_encoding(codings) == relayed


def test_trailers_keep_only_what_usher_does_not_control() -> None:
    trailers = [
        (b"X-Checksum", b"1"),
        (b"x-forwarded-for", b"6.6.6.6"),
        (b"X_Forwarded_Host", b"evil"),
        (b"X-Real-IP", b"6.6.6.6"),
        (b"Host", b"internal"),
        (b"Trailer", b"X"),
        (b"Proxy-Foo", b"1"),
        (b"X-Client-Cert-Subject", b"CN=root"),
        (b"x_client_cert_subject", b"CN=root"),
        (b"Authorization", b"Basic eA=="),
        (b"X-Other", b"2"),
    ]
    kept = forward_trailers(trailers, frozenset({b"x-client-cert-subject"}))
    assert kept == [(b"X-Checksum", b"1"), (b"X-Other", b"2")]
