"""The admin API through real sockets: a started balancer with an admin section, demo backends,
and httpx both on the admin address and through the balancer's listener."""

from __future__ import annotations

import asyncio
import socket
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from importlib import resources
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.conftest import RunningBalancer, free_port, pool_of, simple_config

CONTRACT_FIELDS = {
    "address",
    "weight",
    "effective_weight",
    "state",
    "healthy",
    "active",
    "requests_total",
    "failures_total",
    "latency_ewma_ms",
    "last_check",
}

Start = Callable[..., Awaitable[tuple[RunningBalancer, httpx.AsyncClient]]]


def with_admin(config: dict[str, Any], **admin: Any) -> dict[str, Any]:
    return {**config, "admin": {"bind": "127.0.0.1:0", **admin}}


@pytest.fixture
async def start(balancer: Any) -> AsyncIterator[Start]:
    """Start a balancer with an admin section; returns it and a client for its admin API."""
    clients: list[httpx.AsyncClient] = []

    async def start(
        config: dict[str, Any], **kwargs: Any
    ) -> tuple[RunningBalancer, httpx.AsyncClient]:
        token = kwargs.pop("token", None)
        lb = await balancer(with_admin(config, token=token), **kwargs)
        assert lb.balancer.admin_url is not None
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        client = httpx.AsyncClient(base_url=lb.balancer.admin_url, headers=headers, timeout=10)
        clients.append(client)
        return lb, client

    yield start
    for client in clients:
        await client.aclose()


def config_file(tmp_path: Path, config: dict[str, Any]) -> Path:
    path = tmp_path / "usher.yaml"
    path.write_text(yaml.safe_dump(with_admin(config)))
    return path


async def names(lb: RunningBalancer, count: int, path: str = "/") -> Counter[str]:
    """Which backend answered each of `count` requests through the balancer."""
    seen: Counter[str] = Counter()
    async with httpx.AsyncClient(timeout=10) as client:
        for _ in range(count):
            response = await client.get(lb.url(path))
            assert response.status_code == 200, response.text
            seen[response.text.strip()] += 1
    return seen


async def backend_view(api: httpx.AsyncClient, address: str, pool: str = "web") -> dict[str, Any]:
    response = await api.get(f"/api/pools/{pool}")
    assert response.status_code == 200
    found = [b for b in response.json()["backends"] if b["address"] == address]
    assert found, f"{address} not in pool {pool}"
    return found[0]


async def wait_active(api: httpx.AsyncClient, count: int, pool: str = "web") -> None:
    """Until `count` requests are in flight in the pool."""
    for _ in range(500):
        body = (await api.get(f"/api/pools/{pool}")).json()
        if sum(b["active"] for b in body["backends"]) == count:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"never {count} requests in flight: {body}")


async def wait_for(check: Callable[[], Awaitable[bool]], what: str) -> None:
    for _ in range(500):
        if await check():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


def assert_error(response: httpx.Response, status: int, *words: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    message = response.json()["error"]
    for word in words:
        assert word in message, message


# Reading


async def test_health_answers_ok(start: Start, backends: Any) -> None:
    servers = await backends(1)
    _, api = await start(simple_config({"web": pool_of(*servers)}))
    response = await api.get("/health")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


async def test_pools_list_every_pool_backend_and_listener(start: Start, backends: Any) -> None:
    a, b, c = await backends(3)
    config = simple_config({"web": pool_of(a, b), "api": pool_of(c, algorithm="least_connections")})
    lb, api = await start(config)
    await names(lb, 4)

    response = await api.get("/api/pools")
    assert response.status_code == 200
    body = response.json()
    assert set(body["pools"]) == {"web", "api"}
    web = body["pools"]["web"]
    assert web["name"] == "web"
    assert web["algorithm"] == "round_robin"
    assert [x["address"] for x in web["backends"]] == [a.address, b.address]
    for backend in web["backends"]:
        assert set(backend) >= CONTRACT_FIELDS
        assert backend["state"] == "healthy"
        assert backend["healthy"] is True
        assert backend["requests_total"] == 2
        assert backend["active"] == 0
        assert backend["last_check"] is None  # no active checks configured
    assert body["pools"]["api"]["algorithm"] == "least_connections"
    [listener] = body["listeners"]
    assert listener["name"] == "web"
    assert listener["url"] == lb.url("")


async def test_one_pool_and_an_unknown_one(start: Start, backends: Any) -> None:
    servers = await backends(2)
    _, api = await start(simple_config({"web": pool_of(*servers)}))
    response = await api.get("/api/pools/web")
    assert response.status_code == 200
    assert response.json() == (await api.get("/api/pools")).json()["pools"]["web"]
    assert_error(await api.get("/api/pools/nope"), 404, "nope", "web")


async def test_last_check_shows_active_health_checks(start: Start, backends: Any) -> None:
    servers = await backends(1)
    pool = pool_of(*servers, health_check={"type": "http", "path": "/health", "interval": "50ms"})
    _, api = await start(simple_config({"web": pool}))

    async def checked() -> bool:
        return (await backend_view(api, servers[0].address))["last_check"] is not None

    await wait_for(checked, "a health check")
    check = (await backend_view(api, servers[0].address))["last_check"]
    assert check["ok"] is True
    assert set(check) == {"ok", "at", "detail"}
    assert check["at"] > 1_600_000_000  # wall-clock time, not the monotonic clock's


# Adding


async def test_added_backend_takes_traffic(start: Start, backends: Any) -> None:
    a, c = await backends(2)
    lb, api = await start(simple_config({"web": pool_of(a)}))
    assert await names(lb, 4) == {"A": 4}

    response = await api.post("/api/pools/web/backends", json={"address": c.address, "weight": 1})
    assert response.status_code == 201, response.text
    added = response.json()
    assert added["address"] == c.address
    assert added["weight"] == 1
    assert added["state"] == "healthy"
    assert set(added) >= CONTRACT_FIELDS

    assert await names(lb, 10) == {"A": 5, "B": 5}
    assert (await backend_view(api, c.address))["requests_total"] == 5


async def test_added_backend_takes_the_options_given(start: Start, backends: Any) -> None:
    a, b = await backends(2)
    _, api = await start(simple_config({"web": pool_of(a)}))
    body = {"address": b.address, "weight": 3, "backup": True, "max_connections": 7}
    added = (await api.post("/api/pools/web/backends", json=body)).json()
    assert (added["weight"], added["backup"], added["max_connections"]) == (3, True, 7)
    default = (await api.post("/api/pools/web/backends", json={"address": "127.0.0.1:9"})).json()
    assert (default["weight"], default["backup"], default["max_connections"]) == (1, False, None)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"address": "127.0.0.1:9004", "weight": 0}, "weight"),
        ({"address": "127.0.0.1:9004", "weight": -3}, "weight"),
        ({"address": "127.0.0.1:9004", "weight": "heavy"}, "weight"),
        ({"address": "not an address"}, "address"),
        ({"address": "127.0.0.1"}, "address"),
        ({"address": "127.0.0.1:0"}, "address"),
        ({"address": "127.0.0.1:70000"}, "address"),
        ({"weight": 2}, "address"),
        ({"address": "127.0.0.1:9004", "max_connections": 0}, "max_connections"),
        ({"address": "127.0.0.1:9004", "colour": "red"}, "colour"),
        # Strict JSON types: the schema says boolean and integer, and means it.
        ({"address": "127.0.0.1:9004", "backup": 0}, "backup"),
        ({"address": "127.0.0.1:9004", "backup": 1}, "backup"),
        ({"address": "127.0.0.1:9004", "backup": "true"}, "backup"),
        ({"address": "127.0.0.1:9004", "weight": True}, "weight"),
        ({"address": "127.0.0.1:9004", "weight": "5"}, "weight"),
        ({"address": "127.0.0.1:9004", "max_connections": "5"}, "max_connections"),
        # The address pattern of the schema is the parser's.
        ({"address": "127.0.0.1:09004"}, "address"),
        ({"address": " 127.0.0.1:9004"}, "address"),
        ({"address": "[fe80::1%eth 0]:9004"}, "address"),
        ({"address": "1.2.3:9004"}, "address"),
    ],
)
async def test_add_refuses_bad_values_naming_the_field(
    start: Start, backends: Any, body: dict[str, Any], field: str
) -> None:
    servers = await backends(1)
    _, api = await start(simple_config({"web": pool_of(*servers)}))
    response = await api.post("/api/pools/web/backends", json=body)
    assert_error(response, 400, field)
    assert response.json()["issues"][0]["path"] == field
    assert len((await api.get("/api/pools/web")).json()["backends"]) == 1


async def test_add_refuses_a_missing_or_malformed_body(start: Start, backends: Any) -> None:
    servers = await backends(1)
    _, api = await start(simple_config({"web": pool_of(*servers)}))
    assert_error(await api.post("/api/pools/web/backends"), 400, "body")
    malformed = await api.post(
        "/api/pools/web/backends",
        content=b'{"address": ',
        headers={"Content-Type": "application/json"},
    )
    assert_error(malformed, 400, "JSON")
    assert_error(await api.post("/api/pools/web/backends", json=[1, 2]), 400)


async def test_add_to_an_unknown_pool_or_twice(start: Start, backends: Any) -> None:
    a, b = await backends(2)
    _, api = await start(simple_config({"web": pool_of(a)}))
    body = {"address": b.address}
    assert_error(await api.post("/api/pools/nope/backends", json=body), 404, "nope")
    assert (await api.post("/api/pools/web/backends", json=body)).status_code == 201
    assert_error(await api.post("/api/pools/web/backends", json=body), 409, b.address)
    duplicate = {"address": a.address.replace("127.0.0.1", "127.000.0.1")}
    assert_error(await api.post("/api/pools/web/backends", json=duplicate), 400, "address")
    assert_error(await api.post("/api/pools/web/backends", json={"address": a.address}), 409)


async def test_addresses_the_schema_allows_are_accepted(start: Start, backends: Any) -> None:
    servers = await backends(1)
    _, api = await start(simple_config({"web": pool_of(*servers)}))
    for address, shown in [
        ("[::ffff:10.0.0.1]:80", "[::ffff:a00:1]:80"),
        ("[FE80::1%eth0]:443", "[fe80::1%eth0]:443"),
        ("Backend_1.Internal:65535", "backend_1.internal:65535"),
        ("10.0.0.1:1", "10.0.0.1:1"),
    ]:
        response = await api.post("/api/pools/web/backends", json={"address": address})
        assert response.status_code == 201, response.text
        assert response.json()["address"] == shown
    listed = await api.get("/api/pools/web/backends")
    assert listed.status_code == 200
    assert [b["address"] for b in listed.json()][1:] == [
        "[::ffff:a00:1]:80",
        "[fe80::1%eth0]:443",
        "backend_1.internal:65535",
        "10.0.0.1:1",
    ]
    assert_error(await api.get("/api/pools/nope/backends"), 404, "nope")


async def test_openapi_publishes_the_formats(start: Start, backends: Any) -> None:
    servers = await backends(1)
    _, api = await start(simple_config({"web": pool_of(*servers)}))
    schema = (await api.get("/openapi.json")).json()
    body = schema["components"]["schemas"]["BackendConfig"]["properties"]
    assert body["address"]["pattern"].startswith("^(")
    assert body["address"]["description"]
    assert body["backup"]["type"] == "boolean"
    item = schema["paths"]["/api/pools/{pool}/backends/{address}"]
    (address,) = [p for p in item["delete"]["parameters"] if p["name"] == "address"]
    assert address["schema"]["pattern"] == body["address"]["pattern"]
    (timeout,) = [p for p in item["delete"]["parameters"] if p["name"] == "timeout"]
    text = next(s for s in timeout["schema"]["anyOf"] if s.get("type") == "string")
    assert text["pattern"].startswith("^") and "ms|s|m|h" in text["pattern"]


async def test_options_and_405_list_every_method_of_the_resource(
    start: Start, backends: Any
) -> None:
    (a,) = await backends(1)
    _, api = await start(simple_config({"web": pool_of(a)}))
    backend = f"/api/pools/web/backends/{a.address}"
    for path, allow in [
        (backend, "DELETE, OPTIONS, PATCH"),
        ("/api/pools/web/backends", "GET, OPTIONS, POST"),
        ("/api/pools/web", "GET, OPTIONS"),
        ("/api/reload", "OPTIONS, POST"),
    ]:
        options = await api.options(path)
        assert (options.status_code, options.headers["allow"]) == (204, allow), path
        not_allowed = await api.put(path)
        assert_error(not_allowed, 405)
        assert not_allowed.headers["allow"] == allow
    assert_error(await api.options("/api/nothing"), 404)
    assert (await backend_view(api, a.address))["state"] == "healthy"


# Changing


async def test_reweight_changes_the_split(start: Start, backends: Any) -> None:
    a, b = await backends(2)
    lb, api = await start(simple_config({"web": pool_of(a, b)}))
    assert await names(lb, 8) == {"A": 4, "B": 4}

    response = await api.patch(f"/api/pools/web/backends/{a.address}", json={"weight": 3})
    assert response.status_code == 200, response.text
    assert response.json()["weight"] == 3
    assert response.json()["effective_weight"] == 3
    assert await names(lb, 40) == {"A": 30, "B": 10}


async def test_disable_then_enable(start: Start, backends: Any) -> None:
    a, b = await backends(2)
    lb, api = await start(simple_config({"web": pool_of(a, b)}))
    url = f"/api/pools/web/backends/{a.address}"

    disabled = await api.patch(url, json={"state": "disabled"})
    assert disabled.status_code == 200
    assert (disabled.json()["state"], disabled.json()["healthy"]) == ("disabled", False)
    assert await names(lb, 6) == {"B": 6}

    enabled = await api.patch(url, json={"state": "enabled"})
    assert enabled.json()["state"] == "healthy"
    assert await names(lb, 6) == {"A": 3, "B": 3}


async def test_weight_and_state_in_one_change(start: Start, backends: Any) -> None:
    a, b = await backends(2)
    _, api = await start(simple_config({"web": pool_of(a, b)}))
    change = {"weight": 4, "state": "disabled"}
    body = (await api.patch(f"/api/pools/web/backends/{a.address}", json=change)).json()
    assert (body["weight"], body["state"]) == (4, "disabled")


async def test_drain_via_patch_lets_requests_in_flight_finish(start: Start, backends: Any) -> None:
    a, b = await backends(2)
    lb, api = await start(simple_config({"web": pool_of(a, b)}))
    async with httpx.AsyncClient(timeout=10) as client:
        slow = [asyncio.ensure_future(client.get(lb.url("/sleep/0.4"))) for _ in range(4)]
        await wait_active(api, 4)

        response = await api.patch(
            f"/api/pools/web/backends/{a.address}", json={"state": "draining"}
        )
        assert response.status_code == 200
        draining = await backend_view(api, a.address)
        assert (draining["state"], draining["active"]) == ("draining", 2)
        assert await names(lb, 4) == {"B": 4}  # no new requests to a draining backend

        assert [r.status_code for r in await asyncio.gather(*slow)] == [200] * 4

    async def disabled() -> bool:
        return (await backend_view(api, a.address))["state"] == "disabled"

    await wait_for(disabled, "the drained backend to be disabled")


@pytest.mark.parametrize(
    ("body", "status", "words"),
    [
        ({}, 400, ["weight", "state"]),
        ({"weight": None, "state": None}, 400, ["weight", "state"]),
        ({"weight": 0}, 400, ["weight"]),
        ({"weight": 2.5}, 400, ["weight"]),
        ({"weight": True}, 400, ["weight"]),
        ({"weight": "2"}, 400, ["weight"]),
        ({"state": "sleeping"}, 400, ["state"]),
        ({"state": "healthy"}, 400, ["state"]),
        ({"wieght": 2}, 400, ["wieght"]),
    ],
)
async def test_patch_refuses_bad_changes(
    start: Start, backends: Any, body: dict[str, Any], status: int, words: list[str]
) -> None:
    a, b = await backends(2)
    _, api = await start(simple_config({"web": pool_of(a, b)}))
    response = await api.patch(f"/api/pools/web/backends/{a.address}", json=body)
    assert_error(response, status, *words)
    assert (await backend_view(api, a.address))["weight"] == 1


async def test_patch_unknown_pool_or_backend(start: Start, backends: Any) -> None:
    a, b = await backends(2)
    _, api = await start(simple_config({"web": pool_of(a)}))
    change = {"weight": 2}
    assert_error(await api.patch(f"/api/pools/nope/backends/{a.address}", json=change), 404, "nope")
    assert_error(
        await api.patch(f"/api/pools/web/backends/{b.address}", json=change), 404, b.address
    )
    assert_error(await api.patch("/api/pools/web/backends/garbage", json=change), 404)
    assert_error(await api.patch(f"/api/pools/web/backends/{b.address}", json={}), 404)


async def test_ipv6_addresses_in_the_path(start: Start, backends: Any) -> None:
    servers = await backends(1)
    _, api = await start(simple_config({"web": pool_of(*servers)}))
    added = await api.post("/api/pools/web/backends", json={"address": "[0:0::1]:9", "weight": 1})
    assert added.status_code == 201
    assert added.json()["address"] == "[::1]:9"

    encoded = "/api/pools/web/backends/%5B%3A%3A1%5D%3A9"
    response = await api.patch(encoded, json={"state": "disabled"})
    assert response.status_code == 200, response.text
    assert response.json()["state"] == "disabled"
    # However the address is written, it names the same backend.
    same = await api.patch("/api/pools/web/backends/%5B0%3A0%3A%3A1%5D%3A9", json={"weight": 2})
    assert same.json()["weight"] == 2

    removed = await api.delete(encoded)
    assert removed.json() == {"removed": "[::1]:9", "drained": True}


# Removing


async def test_delete_waits_for_requests_in_flight_and_loses_none(
    start: Start, backends: Any
) -> None:
    a, b = await backends(2)
    lb, api = await start(simple_config({"web": pool_of(a, b)}))
    async with httpx.AsyncClient(timeout=10) as client:
        slow = [asyncio.ensure_future(client.get(lb.url("/sleep/0.4"))) for _ in range(4)]
        await wait_active(api, 4)

        loop = asyncio.get_running_loop()
        began = loop.time()
        response = await api.delete(
            f"/api/pools/web/backends/{a.address}", params={"timeout": "5s"}
        )
        assert loop.time() - began > 0.2  # it waited for the two requests on A
        assert response.status_code == 200, response.text
        assert response.json() == {"removed": a.address, "drained": True}
        assert [r.status_code for r in await asyncio.gather(*slow)] == [200] * 4

    pool = (await api.get("/api/pools/web")).json()
    assert [x["address"] for x in pool["backends"]] == [b.address]
    assert await names(lb, 4) == {"B": 4}


async def test_delete_stops_waiting_at_the_timeout(start: Start, backends: Any) -> None:
    a, b = await backends(2)
    lb, api = await start(simple_config({"web": pool_of(a, b)}))
    async with httpx.AsyncClient(timeout=10) as client:
        slow = [asyncio.ensure_future(client.get(lb.url("/sleep/1"))) for _ in range(2)]
        await wait_active(api, 2)
        response = await api.delete(
            f"/api/pools/web/backends/{a.address}", params={"timeout": "100ms"}
        )
        assert response.json() == {"removed": a.address, "drained": False}
        assert [x["address"] for x in (await api.get("/api/pools/web")).json()["backends"]] == [
            b.address
        ]
        # Removed from the pool, but the request it was answering still completes.
        assert [r.status_code for r in await asyncio.gather(*slow)] == [200, 200]


async def test_a_second_delete_joins_the_first(start: Start, backends: Any) -> None:
    a, b = await backends(2)
    lb, api = await start(simple_config({"web": pool_of(a, b)}))
    async with httpx.AsyncClient(timeout=10) as client:
        slow = [asyncio.ensure_future(client.get(lb.url("/sleep/0.3"))) for _ in range(2)]
        await wait_active(api, 2)
        url = f"/api/pools/web/backends/{a.address}"
        first = asyncio.ensure_future(api.delete(url, params={"timeout": "5s"}))
        await asyncio.sleep(0.05)
        second = await api.delete(url, params={"timeout": "5s"})
        assert second.json() == {"removed": a.address, "drained": True}
        assert (await first).json() == {"removed": a.address, "drained": True}
        assert [r.status_code for r in await asyncio.gather(*slow)] == [200, 200]
    assert_error(await api.delete(url), 404)


async def test_enabling_a_backend_while_it_is_removed_calls_the_removal_off(
    start: Start, backends: Any
) -> None:
    a, b = await backends(2)
    lb, api = await start(simple_config({"web": pool_of(a, b)}))
    async with httpx.AsyncClient(timeout=10) as client:
        slow = [asyncio.ensure_future(client.get(lb.url("/sleep/0.5"))) for _ in range(2)]
        await wait_active(api, 2)
        url = f"/api/pools/web/backends/{a.address}"
        removal = asyncio.ensure_future(api.delete(url, params={"timeout": "10s"}))
        await asyncio.sleep(0.05)
        enabled = await api.patch(url, json={"state": "enabled"})
        assert enabled.status_code == 200, enabled.text
        response = await asyncio.wait_for(removal, 2)  # at once, not after the requests
        assert_error(response, 409, "called off")
        assert [r.status_code for r in await asyncio.gather(*slow)] == [200, 200]
    backend = (await api.get(url.rsplit("/backends", 1)[0])).json()["backends"][0]
    assert (backend["address"], backend["state"], backend["admin_state"]) == (
        a.address,
        "healthy",
        "enabled",
    )
    assert await names(lb, 4) == {"A": 2, "B": 2}


async def test_delete_without_requests_in_flight_is_immediate(start: Start, backends: Any) -> None:
    a, b = await backends(2)
    lb, api = await start(simple_config({"web": pool_of(a, b)}))
    response = await api.delete(f"/api/pools/web/backends/{b.address}")
    assert response.json() == {"removed": b.address, "drained": True}
    assert await names(lb, 3) == {"A": 3}


async def test_delete_refusals(start: Start, backends: Any) -> None:
    a, b = await backends(2)
    _, api = await start(simple_config({"web": pool_of(a)}))
    assert_error(await api.delete(f"/api/pools/nope/backends/{a.address}"), 404, "nope")
    assert_error(await api.delete(f"/api/pools/web/backends/{b.address}"), 404, b.address)
    bad = await api.delete(f"/api/pools/web/backends/{a.address}", params={"timeout": "soon"})
    assert_error(bad, 400, "timeout", "soon")
    assert_error(
        await api.delete(f"/api/pools/web/backends/{a.address}", params={"timeout": "-1s"}), 400
    )
    assert (await backend_view(api, a.address))["state"] == "healthy"


# Errors and the token


async def test_every_error_is_json_with_an_error_key(start: Start, backends: Any) -> None:
    servers = await backends(1)
    _, api = await start(simple_config({"web": pool_of(*servers)}))
    assert_error(await api.get("/api/nothing"), 404)
    assert_error(await api.get("/nothing/at/all"), 404)
    not_allowed = await api.put("/api/pools")
    assert_error(not_allowed, 405)
    assert not_allowed.headers["allow"] == "GET, OPTIONS"
    assert_error(await api.post("/api/pools/web/backends/127.0.0.1:1"), 405)


async def test_token_guards_the_api_but_not_health(start: Start, backends: Any) -> None:
    servers = await backends(1)
    lb, api = await start(simple_config({"web": pool_of(*servers)}), token="s3cret")
    assert (await api.get("/api/pools")).status_code == 200
    assert (
        await api.post("/api/pools/web/backends", json={"address": "127.0.0.1:9"})
    ).status_code == 201

    async with httpx.AsyncClient(base_url=lb.balancer.admin_url, timeout=10) as anonymous:
        for method, path in [
            ("GET", "/api/pools"),
            ("GET", "/api/pools/web"),
            ("POST", "/api/pools/web/backends"),
            ("PATCH", f"/api/pools/web/backends/{servers[0].address}"),
            ("DELETE", f"/api/pools/web/backends/{servers[0].address}"),
            ("POST", "/api/reload"),
            ("GET", "/api/no/such/thing"),
            ("GET", "/metrics"),
        ]:
            response = await anonymous.request(method, path)
            assert_error(response, 401, "token")
            assert response.headers["www-authenticate"].startswith("Bearer")

        for wrong in ["Bearer nope", "Bearer s3cre", "Basic czNjcmV0", "s3cret", "Bearer"]:
            response = await anonymous.get("/api/pools", headers={"Authorization": wrong})
            assert_error(response, 401)
            assert response.headers["www-authenticate"].startswith("Bearer")
        lower = await anonymous.get("/api/pools", headers={"Authorization": "bearer s3cret"})
        assert lower.status_code == 200

        assert (await anonymous.get("/health")).status_code == 200
        assert (await anonymous.get("/")).status_code in (200, 404)  # the page asks for the token
        assert (await anonymous.get("/openapi.json")).status_code == 200
    assert (await backend_view(api, servers[0].address))["state"] == "healthy"


async def test_no_token_configured_means_no_token_needed(start: Start, backends: Any) -> None:
    servers = await backends(1)
    _, api = await start(simple_config({"web": pool_of(*servers)}))
    response = await api.get("/api/pools", headers={"Authorization": "Bearer anything"})
    assert response.status_code == 200


async def test_dashboard_page_when_installed(start: Start, backends: Any) -> None:
    servers = await backends(1)
    _, api = await start(simple_config({"web": pool_of(*servers)}))
    page = resources.files("usher.admin") / "dashboard" / "index.html"
    response = await api.get("/")
    if page.is_file():
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/html")
        assert response.content == page.read_bytes()
    else:
        assert_error(response, 404, "dashboard")


async def test_openapi_documents_the_contract(start: Start, backends: Any) -> None:
    servers = await backends(1)
    _, api = await start(simple_config({"web": pool_of(*servers)}))
    schema = (await api.get("/openapi.json")).json()
    operations = {
        (method.upper(), path) for path, item in schema["paths"].items() for method in item
    }
    assert operations >= {
        ("GET", "/health"),
        ("GET", "/api/pools"),
        ("GET", "/api/pools/{pool}"),
        ("POST", "/api/pools/{pool}/backends"),
        ("PATCH", "/api/pools/{pool}/backends/{address}"),
        ("DELETE", "/api/pools/{pool}/backends/{address}"),
        ("POST", "/api/reload"),
    }
    backend = schema["components"]["schemas"]["BackendView"]
    assert set(backend["required"]) >= CONTRACT_FIELDS


# Reload


async def test_reload_applies_a_good_file(start: Start, backends: Any, tmp_path: Path) -> None:
    a, b = await backends(2)
    bind = f"127.0.0.1:{free_port()}"  # port 0 would be a fresh port at each reload
    config = simple_config({"web": pool_of(a)}, bind=bind)
    path = config_file(tmp_path, config)
    lb, api = await start(config, config_path=path)
    assert await names(lb, 4) == {"A": 4}

    config_file(tmp_path, simple_config({"web": pool_of(a, b)}, bind=bind))
    response = await api.post("/api/reload")
    assert response.status_code == 200, response.text
    report = response.json()
    assert report["backends_added"] == [f"web/{b.address}"]
    assert report["listeners_kept"] == ["web"]
    assert report["overwritten"] == []
    assert await names(lb, 4) == {"A": 2, "B": 2}


async def test_reload_of_a_bad_file_changes_nothing(
    start: Start, backends: Any, tmp_path: Path
) -> None:
    a, b = await backends(2)
    config = simple_config({"web": pool_of(a)})
    path = config_file(tmp_path, config)
    lb, api = await start(config, config_path=path)
    before = (await api.get("/api/pools")).json()
    assert before["pools"]["web"]["backends"][0]["requests_total"] == 0

    bad = simple_config({"web": pool_of(a, b)})
    bad["pools"]["web"]["backends"][1]["weight"] = 0
    config_file(tmp_path, bad)
    response = await api.post("/api/reload")
    assert response.status_code == 400
    body = response.json()
    assert body["error"] == "invalid config"
    [issue] = body["issues"]
    assert issue["path"] == "pools.web.backends[1].weight"
    assert "0" in issue["message"]
    assert isinstance(issue["line"], int)

    path.write_text("listeners: [\n")
    broken = await api.post("/api/reload")
    assert broken.status_code == 400
    assert broken.json()["issues"][0]["line"] is not None

    path.unlink()
    missing = await api.post("/api/reload")
    assert missing.status_code == 400
    assert "cannot read" in missing.json()["issues"][0]["message"]

    assert (await api.get("/api/pools")).json() == before
    assert await names(lb, 4) == {"A": 4}  # the old config keeps serving


async def test_reload_that_removes_a_backend_drains_it(
    start: Start, backends: Any, tmp_path: Path
) -> None:
    a, b = await backends(2)
    config = simple_config({"web": pool_of(a, b)})
    path = config_file(tmp_path, config)
    lb, api = await start(config, config_path=path)
    async with httpx.AsyncClient(timeout=10) as client:
        slow = [asyncio.ensure_future(client.get(lb.url("/sleep/0.4"))) for _ in range(4)]
        await wait_active(api, 4)

        config_file(tmp_path, simple_config({"web": pool_of(a)}))
        response = await api.post("/api/reload")
        assert response.status_code == 200, response.text
        assert response.json()["backends_draining"] == [f"web/{b.address}"]
        leaving = await backend_view(api, b.address)
        assert (leaving["state"], leaving["active"]) == ("draining", 2)
        assert await names(lb, 3) == {"A": 3}
        assert [r.status_code for r in await asyncio.gather(*slow)] == [200] * 4

    async def gone() -> bool:
        pool = (await api.get("/api/pools/web")).json()
        return [x["address"] for x in pool["backends"]] == [a.address]

    await wait_for(gone, "the dropped backend to leave")


async def test_reload_reports_runtime_changes_it_overwrites(
    start: Start, backends: Any, tmp_path: Path
) -> None:
    a, b, c = await backends(3)
    config = simple_config({"web": pool_of(a, b)})
    path = config_file(tmp_path, config)
    _, api = await start(config, config_path=path)
    assert (
        await api.patch(f"/api/pools/web/backends/{a.address}", json={"weight": 5})
    ).status_code == 200
    assert (
        await api.post("/api/pools/web/backends", json={"address": c.address})
    ).status_code == 201

    response = await api.post("/api/reload")
    assert response.status_code == 200, response.text
    overwritten = response.json()["overwritten"]
    assert f"web/{a.address}: weight 5 at runtime, 1 in the file" in overwritten
    assert f"web/{c.address}: added at runtime, not in the file: removed" in overwritten
    assert response.json()["backends_draining"] == [f"web/{c.address}"]
    assert (await backend_view(api, a.address))["weight"] == 1

    again = await api.post("/api/reload")
    assert again.json()["overwritten"] == []  # runtime changes are forgotten once reloaded


async def test_reload_without_a_config_file(start: Start, backends: Any) -> None:
    servers = await backends(1)
    _, api = await start(simple_config({"web": pool_of(*servers)}))
    assert_error(await api.post("/api/reload"), 400, "config file")


async def test_reload_that_cannot_bind_changes_nothing(
    start: Start, backends: Any, tmp_path: Path
) -> None:
    servers = await backends(1)
    config = simple_config({"web": pool_of(*servers)})
    path = config_file(tmp_path, config)
    lb, api = await start(config, config_path=path)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        more = simple_config({"web": pool_of(*servers)})
        more["listeners"].append(
            {"name": "more", "bind": f"127.0.0.1:{port}", "protocol": "http", "pool": "web"}
        )
        config_file(tmp_path, more)
        response = await api.post("/api/reload")
    assert_error(response, 409, str(port))
    assert [x["name"] for x in (await api.get("/api/pools")).json()["listeners"]] == ["web"]
    assert await names(lb, 2) == {"A": 2}


async def test_concurrent_reloads_each_answer(start: Start, backends: Any, tmp_path: Path) -> None:
    a, b = await backends(2)
    config = simple_config({"web": pool_of(a)})
    path = config_file(tmp_path, config)
    _, api = await start(config, config_path=path)
    config_file(tmp_path, simple_config({"web": pool_of(a, b)}))
    responses = await asyncio.gather(*(api.post("/api/reload") for _ in range(3)))
    assert [r.status_code for r in responses] == [200] * 3
    added = [r.json()["backends_added"] for r in responses]
    assert sorted(added) == [[], [], [f"web/{b.address}"]]
