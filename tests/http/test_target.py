"""Request target and Host normalisation: the pure functions, case by case."""

from __future__ import annotations

import pytest

from usher.errors import ClientError
from usher.http.target import (
    authority,
    normalise_host,
    normalise_path,
    request_target,
    with_host,
)


@pytest.mark.parametrize(
    ("path", "normalised"),
    [
        (b"/", b"/"),
        (b"/a/b", b"/a/b"),
        (b"/x/../admin", b"/admin"),
        (b"/./admin", b"/admin"),
        (b"//admin", b"/admin"),
        (b"/a///b//", b"/a/b/"),
        (b"/%2e/admin", b"/admin"),
        (b"/y/%2E%2e/x", b"/x"),
        (b"/%41dmin", b"/Admin"),
        (b"/%7euser", b"/~user"),
        (b"/caf%c3%a9", b"/caf%C3%A9"),
        (b"/a%20b", b"/a%20b"),
        (b"/%252e", b"/%252e"),  # decoded once: `%25` stays, so this is not a dot
        (b"/public/../admin", b"/admin"),
        (b"/a/b/..", b"/a/"),
        (b"/a/.", b"/a/"),
        (b"/a/..", b"/"),
        (b"/.a/..b/...", b"/.a/..b/..."),
    ],
)
def test_paths_are_normalised_as_nginx_does(path: bytes, normalised: bytes) -> None:
    assert normalise_path(path, "refuse") == normalised


@pytest.mark.parametrize(
    ("path", "detail"),
    [
        (b"/..", "above the root"),
        (b"/a/../..", "above the root"),
        (b"/%2e%2e/x", "above the root"),
        (b"/%2fadmin", "encoded slash"),
        (b"/a%2F", "encoded slash"),
        (b"/%00", "NUL"),
        (b"/%zz", "two hex digits"),
        (b"/a%4", "two hex digits"),
        (b"/a%", "two hex digits"),
        (b"/\\admin", "backslash"),
        (b"/a/b\\..\\..\\admin", "backslash"),
    ],
)
def test_bad_paths_are_refused(path: bytes, detail: str) -> None:
    with pytest.raises(ClientError) as caught:
        normalise_path(path, "refuse")
    assert caught.value.status == 400 and detail in caught.value.detail


def test_encoded_slash_policies() -> None:
    assert normalise_path(b"/a%2fb/../c", "decode") == b"/a/c"
    assert normalise_path(b"/%2F%2Fadmin", "decode") == b"/admin"
    assert normalise_path(b"/a%2fb/../c", "keep") == b"/c"
    assert normalise_path(b"/a%2fb/c", "keep") == b"/a%2Fb/c"
    assert normalise_path(b"/..%2fadmin", "keep") == b"/..%2Fadmin"  # one segment, not `..`


@pytest.mark.parametrize(
    ("method", "target", "expected"),
    [
        (b"GET", b"/a/./b?x=/../y", (b"/a/b?x=/../y", b"pub.example")),
        (b"GET", b"/a?", (b"/a?", b"pub.example")),
        (b"GET", b"http://Internal.Example/x?y", (b"/x?y", b"internal.example")),
        (b"GET", b"HTTPS://in.example:8443", (b"/", b"in.example:8443")),
        (b"GET", b"http://in.example?q=1", (b"/?q=1", b"in.example")),
        (b"GET", b"http://in.example//a/../b", (b"/b", b"in.example")),
        (b"OPTIONS", b"http://in.example", (b"*", b"in.example")),
        (b"OPTIONS", b"http://in.example/", (b"/", b"in.example")),
        (b"OPTIONS", b"*", (b"*", b"pub.example")),
    ],
)
def test_request_targets(method: bytes, target: bytes, expected: tuple[bytes, bytes]) -> None:
    assert request_target(method, target, b"1.1", b"Pub.Example", "refuse") == expected


@pytest.mark.parametrize(
    ("method", "target", "detail"),
    [
        (b"GET", b"*", "only OPTIONS"),
        (b"GET", b"/a#b", "#fragment"),
        (b"GET", b"/a?b#c", "#fragment"),
        (b"GET", b"http://u:p@in.example/", "user information"),
        (b"GET", b"http:///x", "no host"),
        (b"GET", b"ftp://in.example/", "path or an http(s) URL"),
        (b"GET", b"in.example:80", "path or an http(s) URL"),
        (b"GET", b"http://in example/", "invalid Host"),
    ],
)
def test_bad_targets_are_refused(method: bytes, target: bytes, detail: str) -> None:
    with pytest.raises(ClientError) as caught:
        request_target(method, target, b"1.1", b"pub.example", "refuse")
    assert caught.value.status == 400 and detail in caught.value.detail


@pytest.mark.parametrize(
    ("host", "normalised"),
    [
        (b"example.com", b"example.com"),
        (b"Example.COM.:8080", b"example.com:8080"),
        (b"in_ternal-1.example", b"in_ternal-1.example"),
        (b"10.0.0.1:80", b"10.0.0.1:80"),
        (b"[::1]", b"[::1]"),
        (b"[2001:DB8::1]:443", b"[2001:db8::1]:443"),
    ],
)
def test_hosts_are_normalised(host: bytes, normalised: bytes) -> None:
    assert normalise_host(host) == normalised


@pytest.mark.parametrize(
    "host",
    [
        b"a b",
        b"a, b",
        b"a,b",
        b"user@x",
        b"x/path",
        b"x\\y",
        b"a..b",
        b".a",
        b".",
        b"x:",
        b"x:a",
        b"x:99999",
        b"[::g]",
        b"[::1",
        b"::1",
        b"x:80:80",
        b"",
    ],
)
def test_bad_hosts_are_refused(host: bytes) -> None:
    with pytest.raises(ClientError) as caught:
        normalise_host(host)
    assert caught.value.status == 400 and "invalid Host" in caught.value.detail


def test_empty_host_is_refused_in_http_1_1_and_left_to_the_caller_in_1_0() -> None:
    with pytest.raises(ClientError, match="non-empty Host"):
        request_target(b"GET", b"/", b"1.1", b"", "refuse")
    assert request_target(b"GET", b"/", b"1.0", b"", "refuse") == (b"/", b"")
    assert request_target(b"GET", b"http://a.example/", b"1.0", b"", "refuse") == (
        b"/",
        b"a.example",
    )


def test_authority_of_a_socket_address() -> None:
    assert authority(("127.0.0.1", 8080)) == b"127.0.0.1:8080"
    assert authority(("::1", 8080, 0, 0)) == b"[::1]:8080"
    assert authority(None) == b"localhost"


def test_with_host_replaces_the_one_host_or_puts_one_first() -> None:
    headers = [(b"Accept", b"*/*"), (b"HOST", b"a"), (b"X", b"y")]
    assert with_host(headers, b"b") == [(b"Accept", b"*/*"), (b"HOST", b"b"), (b"X", b"y")]
    assert with_host([(b"X", b"y")], b"b") == [(b"Host", b"b"), (b"X", b"y")]
