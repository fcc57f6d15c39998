"""Request-target and Host attacks (issue 12, items 5, 6, 8 and 11), data-driven: raw request
bytes in, the status the client gets and the exact request line and Host a recording backend
received out (or that nothing reached it).

The listener has what the attacks aim at: a host route with an allow list nobody here is in,
a host route and the catch-all with an `^/admin` deny filter, and a `prefix_rewrite` route.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import pytest

from tests.conftest import (
    RawHandler,
    RawResponse,
    RunningBalancer,
    raw_exchange,
    read_request_head,
    read_response,
)

DENY_ADMIN = [{"name": "no-admin", "on": "path", "regex": "^/admin"}]
ROUTES: list[dict[str, Any]] = [
    {"match": {"host": "internal.example"}, "pool": "rec", "limits": {"allow": ["10.0.0.0/8"]}},
    {"match": {"host": "api.example"}, "pool": "rec", "filters": DENY_ADMIN},
    {"match": {"path_prefix": "/public/"}, "pool": "rec", "prefix_rewrite": "/static/"},
    {"pool": "rec", "filters": DENY_ADMIN},
]
# Stands for the address the client connected to (the Host an HTTP/1.0 request is given).
LISTENER = "{listener}"


@dataclass(frozen=True)
class Case:
    name: str
    raw: bytes
    status: int
    # What the backend read: its request line and Host; None when nothing may reach it.
    line: bytes | None = None
    host: bytes | None = None


def get(target: bytes, host: bytes | None = b"public.example", version: bytes = b"1.1") -> bytes:
    head = b"GET " + target + b" HTTP/" + version + b"\r\n"
    if host is not None:
        head += b"Host: " + host + b"\r\n"
    return head + b"\r\n"


CORPUS = [
    # 5. Absolute-form: the target's authority replaces Host (RFC 9112 §3.2.2); the backend
    # gets origin-form and a matching Host.
    Case("absolute-form routes on its authority", get(b"http://internal.example/"), 403),
    Case(
        "absolute-form to a filtered host",
        get(b"http://api.example/admin/users", b"public.example"),
        403,
    ),
    Case(
        "absolute-form is forwarded origin-form",
        get(b"http://API.example:8080/v1?x=1", b"public.example"),
        200,
        b"GET /v1?x=1 HTTP/1.1",
        b"api.example:8080",
    ),
    Case(
        "absolute-form gets the prefix_rewrite",
        get(b"http://public.example/public/a.css", b"other.example"),
        200,
        b"GET /static/a.css HTTP/1.1",
        b"public.example",
    ),
    Case(
        "absolute-form with no path",
        get(b"https://public.example?q", b"other.example"),
        200,
        b"GET /?q HTTP/1.1",
        b"public.example",
    ),
    Case(
        "absolute-form OPTIONS with no path is OPTIONS *",
        b"OPTIONS http://public.example HTTP/1.1\r\nHost: public.example\r\n\r\n",
        200,
        b"OPTIONS * HTTP/1.1",
        b"public.example",
    ),
    Case("absolute-form with user information", get(b"http://user@public.example/"), 400),
    Case("absolute-form with a bad authority", get(b"http://a,b/"), 400),
    Case("absolute-form of another scheme", get(b"ftp://public.example/"), 400),
    Case("authority-form outside CONNECT", get(b"public.example:80"), 400),
    # 6. Paths are normalised before routing, filters and prefix_rewrite.
    Case("dot-dot segment", get(b"/x/../admin"), 403),
    Case("dot segment", get(b"/./admin"), 403),
    Case("repeated slashes", get(b"//admin"), 403),
    Case("encoded dot", get(b"/%2e/admin"), 403),
    Case("encoded dot-dot", get(b"/x/%2E%2e/admin"), 403),
    Case("encoded unreserved letter", get(b"/%61dmin"), 403),
    Case("encoded slash is refused", get(b"/%2fadmin"), 400),
    Case("encoded slash upper case is refused", get(b"/x%2F..%2Fadmin"), 400),
    Case("dot-dot out of a prefix_rewrite", get(b"/public/../admin"), 403),
    Case("encoded dot-dot out of a prefix_rewrite", get(b"/public/%2e%2e/admin"), 403),
    Case("dot-dot above the root", get(b"/.."), 400),
    Case("dot-dot above the root, later", get(b"/a/../../admin"), 400),
    Case("a lone percent", get(b"/a%zz"), 400),
    Case("a backslash, which some backends read as a slash", get(b"/\\admin"), 400),
    Case(
        "what reaches the backend: normalised path, query untouched",
        get(b"//public///x/./y/../a.css?q=/../%2e//z"),
        200,
        b"GET /static/x/a.css?q=/../%2e//z HTTP/1.1",
        b"public.example",
    ),
    Case(
        "unreserved decoded, other escapes kept with upper-case hex",
        get(b"/%7euser/caf%c3%a9/a%20b/"),
        200,
        b"GET /~user/caf%C3%A9/a%20b/ HTTP/1.1",
        b"public.example",
    ),
    Case(
        "a directory keeps its trailing slash",
        get(b"/docs/v1/.."),
        200,
        b"GET /docs/ HTTP/1.1",
        b"public.example",
    ),
    # 8. HTTP/1.0 without Host: given the address the client connected to.
    Case(
        "HTTP/1.0 without Host",
        get(b"/x", None, b"1.0"),
        200,
        b"GET /x HTTP/1.1",
        LISTENER.encode(),
    ),
    Case(
        "HTTP/1.0 with Host",
        get(b"/x", b"public.example", b"1.0"),
        200,
        b"GET /x HTTP/1.1",
        b"public.example",
    ),
    Case(
        "HTTP/1.0 absolute-form without Host",
        get(b"http://public.example/x", None, b"1.0"),
        200,
        b"GET /x HTTP/1.1",
        b"public.example",
    ),
    Case("HTTP/1.0 bypass of a filter", get(b"/x/../admin", None, b"1.0"), 403),
    # 11. Invalid Host values, asterisk-form, fragments.
    Case("Host with a space", get(b"/", b"a b"), 400),
    Case("Host that is a list", get(b"/", b"a, b"), 400),
    Case("Host with user information", get(b"/", b"user@x"), 400),
    Case("Host with a path", get(b"/", b"x/path"), 400),
    Case("Host with a bad port", get(b"/", b"x:99999"), 400),
    Case("Host of an empty label", get(b"/", b"a..example"), 400),
    Case("empty Host in HTTP/1.1", get(b"/", b""), 400),
    Case("no Host in HTTP/1.1", get(b"/", None), 400),
    Case(
        "two Host headers",
        b"GET / HTTP/1.1\r\nHost: public.example\r\nHost: internal.example\r\n\r\n",
        400,
    ),
    Case(
        "Host is lower-cased and loses its trailing dot",
        get(b"/", b"Public.Example."),
        200,
        b"GET / HTTP/1.1",
        b"public.example",
    ),
    Case(
        "a trailing dot does not escape a host route",
        get(b"/", b"internal.example."),
        403,
    ),
    Case("IPv6 literal Host", get(b"/", b"[::1]:8080"), 200, b"GET / HTTP/1.1", b"[::1]:8080"),
    Case("bad IPv6 literal Host", get(b"/", b"[::g]"), 400),
    Case("GET *", get(b"*"), 400),
    Case(
        "OPTIONS * is forwarded",
        b"OPTIONS * HTTP/1.1\r\nHost: public.example\r\n\r\n",
        200,
        b"OPTIONS * HTTP/1.1",
        b"public.example",
    ),
    Case("fragment in the path", get(b"/a#frag"), 400),
    Case("fragment after the query", get(b"/a?b=1#frag"), 400),
    Case("fragment hiding a path", get(b"/#/../admin"), 400),
]


async def ask(port: int, raw: bytes) -> tuple[RawResponse, bool]:
    """One request on a new connection: the answer, and whether usher then closed (looked at
    only after a 400, which closes at once; a kept-alive connection is not waited on)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(raw)
        response = await asyncio.wait_for(read_response(reader), 10)
        closed = response.status == 400 and await asyncio.wait_for(reader.read(1), 10) == b""
        return response, closed
    finally:
        writer.close()


class Recorder:
    """A backend that notes each request's line and Host and answers 200, empty."""

    def __init__(self) -> None:
        self.seen: list[tuple[bytes, bytes | None]] = []

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            head = await read_request_head(reader)
            line, *fields = head[:-4].split(b"\r\n")
            hosts = [f.split(b":", 1)[1].strip() for f in fields if f.lower().startswith(b"host:")]
            assert len(hosts) <= 1, head
            self.seen.append((line, hosts[0] if hosts else None))
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
            await writer.drain()


@pytest.fixture
async def rig(
    raw_backend: Callable[[RawHandler], Awaitable[int]],
    balancer: Callable[..., Awaitable[RunningBalancer]],
) -> Callable[..., Awaitable[tuple[RunningBalancer, Recorder]]]:
    async def start(**listener: Any) -> tuple[RunningBalancer, Recorder]:
        recorder = Recorder()
        port = await raw_backend(recorder.handle)
        spec = {"name": "web", "bind": "127.0.0.1:0", "routes": ROUTES, **listener}
        config = {
            "listeners": [spec],
            "pools": {"rec": {"backends": [{"address": f"127.0.0.1:{port}"}]}},
        }
        return await balancer(config), recorder

    return start


@pytest.mark.parametrize("case", CORPUS, ids=[c.name for c in CORPUS])
async def test_target_corpus(rig, case: Case) -> None:
    lb, recorder = await rig()
    response, closed = await ask(lb.port, case.raw)
    assert response.status == case.status, response.body
    if case.line is None:
        assert recorder.seen == []
        if case.status == 400:
            assert closed
        return
    host = case.host.replace(LISTENER.encode(), b"127.0.0.1:%d" % lb.port) if case.host else None
    assert recorder.seen == [(case.line, host)]


@pytest.mark.parametrize(
    ("mode", "raw", "status", "line"),
    [
        ("keep", get(b"/%2fadmin"), 200, b"GET /%2Fadmin HTTP/1.1"),
        ("keep", get(b"/api/group%2fproject/.."), 200, b"GET /api/ HTTP/1.1"),
        ("keep", get(b"/repo/a%2Fb/./c"), 200, b"GET /repo/a%2Fb/c HTTP/1.1"),
        ("decode", get(b"/%2fadmin"), 403, None),
        ("decode", get(b"/public/..%2fadmin"), 403, None),
        ("decode", get(b"/a%2Fb"), 200, b"GET /a/b HTTP/1.1"),
        ("refuse", get(b"/a%2Fb"), 400, None),
    ],
)
async def test_encoded_slashes_policy(rig, mode: str, raw: bytes, status: int, line) -> None:
    lb, recorder = await rig(encoded_slashes=mode)
    response, _ = await ask(lb.port, raw)
    assert response.status == status, response.body
    assert recorder.seen == ([] if line is None else [(line, b"public.example")])


async def test_refusal_names_the_problem(rig) -> None:
    lb, _ = await rig()
    response, closed = await ask(lb.port, get(b"/", b"a b"))
    assert response.status == 400 and closed
    assert b"invalid Host: 'a b'" in response.body
    response, _ = await ask(lb.port, get(b"/%2fadmin"))
    assert b"encoded slash (%2F)" in response.body


async def test_a_good_request_after_a_normalised_one_keeps_the_connection(rig) -> None:
    lb, recorder = await rig()
    raw = get(b"http://public.example/a/./b") + get(b"//c")
    responses, closed = await raw_exchange(lb.port, raw, responses=2)
    assert [r.status for r in responses] == [200, 200] and not closed
    assert recorder.seen == [
        (b"GET /a/b HTTP/1.1", b"public.example"),
        (b"GET /c HTTP/1.1", b"public.example"),
    ]


async def test_the_access_log_keeps_the_target_as_sent(rig) -> None:
    lb, recorder = await rig()
    response, _ = await ask(lb.port, get(b"/x/./y//z"))
    assert response.status == 200 and recorder.seen == [(b"GET /x/y/z HTTP/1.1", b"public.example")]
    assert '"GET /x/./y//z"' in lb.log.getvalue()
