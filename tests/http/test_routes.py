"""Routes through real sockets: matches, splits, redirects and header rewrites."""

from __future__ import annotations

import asyncio
import collections

import httpx

from tests.conftest import pool_of, raw_exchange


def config(a, b, routes):
    return {
        "listeners": [{"name": "web", "bind": "127.0.0.1:0", "routes": routes}],
        "pools": {"a": pool_of(a), "b": pool_of(b)},
    }


async def test_first_matching_route_wins(backends, balancer):
    a, b = await backends(2)
    routes = [
        {"match": {"host": "api.example.com", "path_prefix": "/v1"}, "pool": "b"},
        {"match": {"methods": ["DELETE"]}, "pool": "b"},
        {"match": {"headers": {"X-Canary": "1"}}, "pool": "b"},
        {"match": {"query": {"beta": "yes"}}, "pool": "b"},
        {"match": {"path_regex": "^/v[0-9]+/admin"}, "pool": "b"},
        {"pool": "a"},
    ]
    lb = await balancer(config(a, b, routes))
    async with httpx.AsyncClient() as client:

        async def who(method="GET", path="/", **kw):
            return (await client.request(method, lb.url(path), **kw)).headers["x-backend"]

        assert await who(path="/v1/x", headers={"Host": "API.example.com:8080"}) == "B"
        assert await who(path="/v2/x", headers={"Host": "api.example.com"}) == "A"
        assert await who("DELETE") == "B"
        assert await who(headers={"X-Canary": "1"}) == "B"
        assert await who(headers={"X-Canary": "0"}) == "A"
        assert await who(path="/?beta=yes") == "B"
        assert await who(path="/v3/admin") == "B"
        assert await who(path="/x/v3/admin") == "A"


async def test_no_matching_route_is_404(backends, balancer):
    a, b = await backends(2)
    lb = await balancer(config(a, b, [{"match": {"path_prefix": "/only"}, "pool": "a"}]))
    async with httpx.AsyncClient() as client:
        response = await client.get(lb.url("/elsewhere"))
    assert response.status_code == 404
    assert "no route" in response.text


async def test_weighted_split_for_canaries(backends, balancer):
    a, b = await backends(2)
    routes = [{"split": [{"pool": "a", "weight": 9}, {"pool": "b", "weight": 1}]}]
    lb = await balancer(config(a, b, routes))
    async with httpx.AsyncClient() as client:
        seen = [(await client.get(lb.url("/"))).headers["x-backend"] for _ in range(50)]
    assert collections.Counter(seen) == {"A": 45, "B": 5}


async def test_redirect(backends, balancer):
    a, b = await backends(2)
    routes = [
        {
            "match": {"path_prefix": "/old"},
            "redirect": {"to": "https://example.com/new", "status": 301},
        },
        {"pool": "a"},
    ]
    lb = await balancer(config(a, b, routes))
    async with httpx.AsyncClient() as client:
        response = await client.get(lb.url("/old/page"))
        after = await client.get(lb.url("/"))
    assert response.status_code == 301
    assert response.headers["location"] == "https://example.com/new"
    assert after.status_code == 200
    assert a.requests_total == 1


async def test_header_rewrites_both_ways(backends, balancer):
    a, b = await backends(2)
    routes = [
        {
            "pool": "a",
            "request_headers": {"set": {"X-Env": "prod"}, "remove": ["X-Debug"]},
            "response_headers": {
                "set": {"Strict-Transport-Security": "max-age=31536000"},
                "remove": ["X-Backend"],
            },
        }
    ]
    lb = await balancer(config(a, b, routes))
    async with httpx.AsyncClient() as client:
        response = await client.get(lb.url("/headers"), headers={"X-Debug": "1", "X-Env": "dev"})
    seen = [(n.lower(), v) for n, v in response.json()["headers"]]
    assert ("x-env", "prod") in seen and ("x-env", "dev") not in seen
    assert "x-debug" not in dict(seen)
    assert response.headers["strict-transport-security"] == "max-age=31536000"
    assert "x-backend" not in response.headers


async def test_prefix_rewrite(backends, balancer):
    a, b = await backends(2)
    routes = [
        {"match": {"path_prefix": "/api"}, "pool": "a", "prefix_rewrite": "/"},
        {"match": {"path_prefix": "/v2/"}, "pool": "a", "prefix_rewrite": "/status/"},
        {"pool": "b"},
    ]
    lb = await balancer(config(a, b, routes))
    async with httpx.AsyncClient() as client:
        assert (await client.get(lb.url("/api/headers?x=1"))).json()["path"] == "/headers?x=1"
        assert (await client.get(lb.url("/api"))).text == "A\n"
        assert (await client.get(lb.url("/v2/203"))).status_code == 203


async def test_usher_own_answer_to_head_has_no_body(backends, balancer):
    """An error page to HEAD is the head only: a body would be read as the next answer."""
    a, b = await backends(2)
    lb = await balancer(config(a, b, [{"match": {"path_prefix": "/only"}, "pool": "a"}]))
    reader, writer = await asyncio.open_connection("127.0.0.1", lb.port)
    try:
        writer.write(
            b"HEAD /elsewhere HTTP/1.1\r\nHost: x\r\n\r\n"
            b"GET /elsewhere HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        data = await asyncio.wait_for(reader.read(-1), 10)
    finally:
        writer.close()
    first, _, rest = data.partition(b"\r\n\r\n")
    assert first.startswith(b"HTTP/1.1 404 ") and b"Content-Length: " in first
    assert rest.startswith(b"HTTP/1.1 404 ")
    assert b"no route" in rest


async def test_usher_own_answer_keeps_an_http10_keep_alive_client(backends, balancer):
    a, b = await backends(2)
    lb = await balancer(config(a, b, [{"match": {"path_prefix": "/only"}, "pool": "a"}]))
    data = b"GET /elsewhere HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"
    (response,), closed = await raw_exchange(lb.port, data)
    assert response.status == 404
    assert response.header("connection") == "keep-alive"
    assert not closed
