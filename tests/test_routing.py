"""Tests of routing: matching rules in order, weighted splits and redirects."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest

from usher.clock import ManualClock
from usher.config import PoolConfig, Route, parse_config
from usher.http.codec import Request, RequestReader
from usher.pool import Pool
from usher.routing import Router, host_of, split_target

POOL_NAMES = ("web", "api", "static", "next")


@pytest.fixture
def pools() -> dict[str, Pool]:
    clock = ManualClock()
    return {
        name: Pool(
            name,
            PoolConfig.model_validate({"backends": [{"address": f"127.0.0.1:{9001 + i}"}]}),
            clock,
        )
        for i, name in enumerate(POOL_NAMES)
    }


def router(pools: dict[str, Pool], *routes: dict[str, Any]) -> Router:
    return Router([Route.model_validate(r) for r in routes], pools)


def request(
    target: str = "/",
    *,
    method: str = "GET",
    host: str | None = "example.com",
    headers: list[tuple[str, str]] | None = None,
) -> Request:
    """A request as the codec parses it from the wire."""
    lines = [f"{method} {target} HTTP/1.1"]
    if host is not None:
        lines.append(f"Host: {host}")
    lines += [f"{name}: {value}" for name, value in headers or []]
    raw = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    event = RequestReader().feed(raw)[0]
    assert isinstance(event, Request)
    return event


def pool_of(r: Router, req: Request) -> str | None:
    """The name of the pool a request goes to, or None when no route matches."""
    route = r.route(req)
    if route is None:
        return None
    pool = route.pick_pool()
    return pool.name if pool is not None else None


# --- Order ---------------------------------------------------------------------------------------


def test_first_match_wins(pools: dict[str, Pool]) -> None:
    r = router(
        pools,
        {"match": {"path_prefix": "/api"}, "pool": "api"},
        {"match": {"path_prefix": "/api/v2"}, "pool": "next"},
        {"pool": "web"},
    )
    route = r.route(request("/api/v2/users"))
    assert route is not None
    assert route.index == 0
    assert pool_of(r, request("/api/v2/users")) == "api"
    assert pool_of(r, request("/other")) == "web"


def test_catch_all_route_only_after_the_ones_before_it(pools: dict[str, Pool]) -> None:
    r = router(
        pools,
        {"match": {"path_prefix": "/static"}, "pool": "static"},
        {"pool": "web"},
        {"match": {"path_prefix": "/api"}, "pool": "api"},
    )
    assert pool_of(r, request("/static/a.css")) == "static"
    assert pool_of(r, request("/api/x")) == "web"  # the catch-all comes first


def test_no_match_gives_none(pools: dict[str, Pool]) -> None:
    r = router(pools, {"match": {"path_prefix": "/api"}, "pool": "api"})
    assert r.route(request("/web")) is None


def test_listener_pool_shorthand_matches_everything(pools: dict[str, Pool]) -> None:
    config = parse_config(
        """
        listeners:
          - {name: web, bind: "127.0.0.1:0", pool: web}
        pools:
          web: {backends: [{address: "127.0.0.1:9001"}]}
        """
    )
    r = Router(config.listeners[0].effective_routes(), pools)
    assert pool_of(r, request("/anything?at=all", method="DELETE", host="x.y")) == "web"


def test_routes_from_a_config_file(pools: dict[str, Pool]) -> None:
    config = parse_config(
        """
        listeners:
          - name: web
            bind: "127.0.0.1:0"
            routes:
              - match: {host: api.example.com, path_prefix: /api, methods: [get, POST],
                        headers: {X-Canary: 1}, query: {v: 2}}
                pool: api
              - match: {path_prefix: /old}
                redirect: {to: "https://example.com/new", status: 301}
              - pool: web
        pools:
          web: {backends: [{address: "127.0.0.1:9001"}]}
          api: {backends: [{address: "127.0.0.1:9002"}]}
        """
    )
    r = Router(config.listeners[0].routes, pools)
    canary = [("X-Canary", "1")]
    assert pool_of(r, request("/api/x?v=2", host="api.example.com", headers=canary)) == "api"
    assert pool_of(r, request("/api/x?v=2", host="api.example.com")) == "web"
    route = r.route(request("/old/page"))
    assert route is not None and route.redirect is not None
    assert route.redirect.status == 301


# --- Host ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "matches"),
    [
        ("api.example.com", True),
        ("API.Example.COM", True),
        ("api.example.com:8443", True),
        ("API.EXAMPLE.COM:80", True),
        ("www.example.com", False),
        ("api.example.com.evil.net", False),
        ("xapi.example.com", False),
        ("example.com", False),
    ],
)
def test_exact_host(pools: dict[str, Pool], host: str, matches: bool) -> None:
    r = router(pools, {"match": {"host": "api.example.com"}, "pool": "api"})
    assert (pool_of(r, request(host=host)) == "api") is matches


@pytest.mark.parametrize(
    ("host", "matches"),
    [
        ("a.example.com", True),
        ("A.EXAMPLE.com", True),
        ("deep.sub.example.com", True),
        ("a.example.com:8080", True),
        ("example.com", False),
        ("badexample.com", False),
        ("a.example.com.evil.net", False),
        ("example.org", False),
    ],
)
def test_wildcard_host(pools: dict[str, Pool], host: str, matches: bool) -> None:
    r = router(pools, {"match": {"host": "*.example.com"}, "pool": "api"})
    assert (pool_of(r, request(host=host)) == "api") is matches


def test_host_rule_written_in_upper_case(pools: dict[str, Pool]) -> None:
    r = router(
        pools,
        {"match": {"host": "API.Example.com"}, "pool": "api"},
        {"match": {"host": "*.Static.Example.com"}, "pool": "static"},
    )
    assert pool_of(r, request(host="api.example.com")) == "api"
    assert pool_of(r, request(host="img.static.example.com")) == "static"


def test_request_without_host_does_not_match_a_host_rule(pools: dict[str, Pool]) -> None:
    r = router(pools, {"match": {"host": "example.com"}, "pool": "api"}, {"pool": "web"})
    raw = b"GET / HTTP/1.0\r\n\r\n"
    req = RequestReader().feed(raw)[0]
    assert isinstance(req, Request)
    assert pool_of(r, req) == "web"


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("Example.COM", "example.com"),
        ("example.com:8080", "example.com"),
        ("[::1]:8080", "[::1]"),
        ("[2001:DB8::1]", "[2001:db8::1]"),
        ("127.0.0.1:80", "127.0.0.1"),
    ],
)
def test_host_of(host: str, expected: str) -> None:
    assert host_of(request(host=host)) == expected


# --- Path, method, headers, query --------------------------------------------------------------


@pytest.mark.parametrize(
    ("target", "matches"),
    [
        ("/api", True),
        ("/api/users", True),
        ("/api?x=1", True),
        ("/apiv2", True),  # a prefix is a string prefix, as nginx's location
        ("/ap", False),
        ("/API", False),
        ("/web/api", False),
        ("/?/api", False),
    ],
)
def test_path_prefix(pools: dict[str, Pool], target: str, matches: bool) -> None:
    r = router(pools, {"match": {"path_prefix": "/api"}, "pool": "api"})
    assert (pool_of(r, request(target)) == "api") is matches


def test_path_prefix_ignores_the_query(pools: dict[str, Pool]) -> None:
    r = router(pools, {"match": {"path_prefix": "/api"}, "pool": "api"})
    assert pool_of(r, request("/web?next=/api")) is None


@pytest.mark.parametrize(
    ("target", "matches"),
    [
        ("/v1/users", True),
        ("/v42/", True),
        ("/v/users", False),
        ("/x/v1/users", False),
        ("/users?v=/v1/", False),
    ],
)
def test_path_regex(pools: dict[str, Pool], target: str, matches: bool) -> None:
    r = router(pools, {"match": {"path_regex": "^/v[0-9]+/"}, "pool": "api"})
    assert (pool_of(r, request(target)) == "api") is matches


def test_path_regex_searches_anywhere_without_anchor(pools: dict[str, Pool]) -> None:
    r = router(pools, {"match": {"path_regex": r"\.php$"}, "pool": "api"})
    assert pool_of(r, request("/a/b/index.php")) == "api"
    assert pool_of(r, request("/a/b/index.php.txt")) is None


@pytest.mark.parametrize(
    ("method", "matches"),
    [("GET", True), ("POST", True), ("DELETE", False), ("HEAD", False), ("PUT", False)],
)
def test_methods(pools: dict[str, Pool], method: str, matches: bool) -> None:
    r = router(pools, {"match": {"methods": ["get", "POST"]}, "pool": "api"})
    assert (pool_of(r, request(method=method)) == "api") is matches


@pytest.mark.parametrize(
    ("headers", "matches"),
    [
        ([("X-Canary", "1")], True),
        ([("x-canary", "1")], True),
        ([("X-CANARY", "1"), ("Other", "a")], True),
        ([("X-Canary", "0"), ("X-Canary", "1")], True),
        ([("X-Canary", "2")], False),
        ([("X-Canary", "10")], False),
        ([("X-Other", "1")], False),
        ([], False),
    ],
)
def test_header_match(
    pools: dict[str, Pool], headers: list[tuple[str, str]], matches: bool
) -> None:
    r = router(pools, {"match": {"headers": {"X-Canary": "1"}}, "pool": "api"})
    assert (pool_of(r, request(headers=headers)) == "api") is matches


def test_every_header_must_match(pools: dict[str, Pool]) -> None:
    r = router(pools, {"match": {"headers": {"X-A": "1", "X-B": "2"}}, "pool": "api"})
    assert pool_of(r, request(headers=[("X-A", "1"), ("X-B", "2")])) == "api"
    assert pool_of(r, request(headers=[("X-A", "1")])) is None


@pytest.mark.parametrize(
    ("target", "matches"),
    [
        ("/search?v=2", True),
        ("/search?x=1&v=2", True),
        ("/search?v=%32", True),
        ("/search?v=3", False),
        ("/search?v=", False),
        ("/search?vv=2", False),
        ("/search", False),
        ("/search/v=2", False),
    ],
)
def test_query_match(pools: dict[str, Pool], target: str, matches: bool) -> None:
    r = router(pools, {"match": {"query": {"v": "2"}}, "pool": "api"})
    assert (pool_of(r, request(target)) == "api") is matches


def test_query_match_with_an_empty_value(pools: dict[str, Pool]) -> None:
    r = router(pools, {"match": {"query": {"debug": ""}}, "pool": "api"})
    assert pool_of(r, request("/?debug=")) == "api"
    assert pool_of(r, request("/?debug")) == "api"
    assert pool_of(r, request("/?debug=1")) is None


def test_all_conditions_must_hold(pools: dict[str, Pool]) -> None:
    r = router(
        pools,
        {
            "match": {
                "host": "api.example.com",
                "path_prefix": "/api",
                "methods": ["POST"],
                "headers": {"X-Canary": "1"},
                "query": {"v": "2"},
            },
            "pool": "api",
        },
    )
    good: dict[str, Any] = {
        "target": "/api/x?v=2",
        "method": "POST",
        "host": "api.example.com",
        "headers": [("X-Canary", "1")],
    }
    assert pool_of(r, request(**good)) == "api"
    for key, bad in [
        ("target", "/web/x?v=2"),
        ("target", "/api/x?v=3"),
        ("method", "GET"),
        ("host", "www.example.com"),
        ("headers", [("X-Canary", "0")]),
    ]:
        assert pool_of(r, request(**{**good, key: bad})) is None, (key, bad)


# --- Absolute-form targets ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("target", "path", "query"),
    [
        (b"/a/b?x=1", b"/a/b", b"x=1"),
        (b"/a/b", b"/a/b", b""),
        (b"/?", b"/", b""),
        (b"http://example.com/a/b?x=1", b"/a/b", b"x=1"),
        (b"https://example.com:8443/a", b"/a", b""),
        (b"http://example.com", b"/", b""),
        (b"http://example.com?x=1", b"/", b"x=1"),
        (b"http://user@example.com/a?x=http://b/c", b"/a", b"x=http://b/c"),
    ],
)
def test_split_target(target: bytes, path: bytes, query: bytes) -> None:
    assert split_target(target) == (path, query)


def test_absolute_form_target_matches_on_its_path(pools: dict[str, Pool]) -> None:
    r = router(
        pools,
        {"match": {"path_prefix": "/api", "query": {"v": "2"}}, "pool": "api"},
        {"match": {"path_regex": "^/static/"}, "pool": "static"},
    )
    assert pool_of(r, request("http://example.com/api/users?v=2")) == "api"
    assert pool_of(r, request("http://example.com:8080/static/a.css")) == "static"
    assert pool_of(r, request("http://example.com/other")) is None


def test_absolute_form_target_without_path_keeps_its_query(pools: dict[str, Pool]) -> None:
    r = router(pools, {"match": {"query": {"v": "2"}}, "pool": "api"})
    assert pool_of(r, request("http://example.com?v=2")) == "api"


# --- Splits --------------------------------------------------------------------------------------


def split_router(pools: dict[str, Pool], *weights: tuple[str, int]) -> Router:
    split = [{"pool": name, "weight": weight} for name, weight in weights]
    return router(pools, {"match": {"path_prefix": "/beta"}, "split": split})


def test_split_90_10_is_exact_over_100_picks(pools: dict[str, Pool]) -> None:
    r = split_router(pools, ("web", 90), ("next", 10))
    picks = [pool_of(r, request("/beta")) for _ in range(100)]
    assert Counter(picks) == {"web": 90, "next": 10}


def test_split_is_smooth(pools: dict[str, Pool]) -> None:
    r = split_router(pools, ("web", 90), ("next", 10))
    picks = [pool_of(r, request("/beta")) for _ in range(100)]
    # Never a run of the small share, and one in every 10 picks.
    for start in range(0, 100, 10):
        assert picks[start : start + 10].count("next") == 1, picks


@pytest.mark.parametrize(
    "weights",
    [
        (("web", 50), ("api", 30), ("next", 20)),
        (("web", 1), ("api", 1)),
        (("web", 3), ("api", 1)),
        (("web", 1), ("api", 99)),
    ],
)
def test_split_is_exact_by_weight(
    pools: dict[str, Pool], weights: tuple[tuple[str, int], ...]
) -> None:
    r = split_router(pools, *weights)
    total = sum(w for _, w in weights)
    rounds = 3
    picks = Counter(pool_of(r, request("/beta")) for _ in range(total * rounds))
    assert picks == {name: weight * rounds for name, weight in weights}


def test_split_only_for_its_route(pools: dict[str, Pool]) -> None:
    r = router(
        pools,
        {"match": {"path_prefix": "/beta"}, "split": [{"pool": "next", "weight": 1}]},
        {"pool": "web"},
    )
    assert pool_of(r, request("/beta/x")) == "next"
    assert pool_of(r, request("/x")) == "web"


# --- Redirects and header rules ----------------------------------------------------------------


def test_redirect_route(pools: dict[str, Pool]) -> None:
    r = router(
        pools,
        {
            "match": {"path_prefix": "/old"},
            "redirect": {"to": "https://example.com/new", "status": 301},
        },
        {"match": {"path_prefix": "/tmp"}, "redirect": {"to": "/elsewhere"}},
        {"pool": "web"},
    )
    route = r.route(request("/old/page"))
    assert route is not None
    assert route.redirect is not None
    assert route.redirect.location == b"https://example.com/new"
    assert route.redirect.status == 301
    assert route.pool is None
    assert route.pick_pool() is None

    route = r.route(request("/tmp"))
    assert route is not None and route.redirect is not None
    assert route.redirect.location == b"/elsewhere"
    assert route.redirect.status == 302  # the default

    route = r.route(request("/page"))
    assert route is not None
    assert route.redirect is None


def test_route_header_rules(pools: dict[str, Pool]) -> None:
    r = router(
        pools,
        {
            "pool": "web",
            "request_headers": {"set": {"X-Env": "prod"}, "remove": ["X-Debug"]},
            "response_headers": {"set": {"Strict-Transport-Security": "max-age=31536000"}},
        },
    )
    route = r.route(request())
    assert route is not None
    assert route.request_rules is not None and route.response_rules is not None
    headers = [(b"x-env", b"dev"), (b"X-Debug", b"1"), (b"Accept", b"*/*")]
    assert route.request_rules.apply(headers) == [(b"Accept", b"*/*"), (b"X-Env", b"prod")]
    assert route.response_rules.apply([]) == [(b"Strict-Transport-Security", b"max-age=31536000")]


def test_route_without_header_rules(pools: dict[str, Pool]) -> None:
    route = router(pools, {"pool": "web"}).route(request())
    assert route is not None
    assert route.request_rules is None
    assert route.response_rules is None
