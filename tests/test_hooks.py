"""Hooks (usher.hooks, docs/hooks.md) through real sockets: each phase, async ones within their
budget, failures answered, counted and logged once per burst, errors at their config path,
reload, workers, and a route without hooks on the path it had before."""

from __future__ import annotations

import asyncio
import itertools
import logging
import subprocess
import textwrap
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.conftest import free_port, pool_of
from tests.test_workers import USHER, wait_until
from usher.config import parse_config
from usher.errors import ConfigError
from usher.http import hook_phases
from usher.metrics import build_registry, render
from usher.server import Balancer

_names = itertools.count()


def hook_module(tmp_path: Path, source: str) -> str:
    """Write `source` as a fresh module in tmp_path; returns its name (new each time, since
    this process keeps the modules it imported)."""
    name = f"user_hooks_{next(_names)}"
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(source))
    return name


def config(tmp_path: Path, servers: list[Any], *, hooks: list[Any], **listener: Any) -> str:
    spec: dict[str, Any] = {
        "name": "web",
        "bind": "127.0.0.1:0",
        "routes": [{"pool": "p", "hooks": hooks}],
        **listener,
    }
    data = {"python_path": [str(tmp_path)], "listeners": [spec], "pools": {"p": pool_of(*servers)}}
    return yaml.safe_dump(data)


async def test_on_request_answers_or_changes_the_forwarded_request(backends, balancer, tmp_path):
    servers = await backends(1)
    mod = hook_module(
        tmp_path,
        """
        from usher.hooks import Response

        class Gate:
            def __init__(self, options):
                self.header = options["header"]

            def on_request(self, request):
                if request.headers.get(self.header) is None:
                    return Response(401, "who are you?\\n", {"WWW-Authenticate": "Token"})
                request.set_header("X-User", request.headers.get(self.header).upper())
                request.remove_header(self.header)
                request.path = "/headers"
                request.state["seen"] = True
                return None
        """,
    )
    hooks = [{"use": f"{mod}:Gate", "options": {"header": "X-Token"}}]
    lb = await balancer(config(tmp_path, servers, hooks=hooks))
    async with httpx.AsyncClient() as client:
        refused = await client.get(lb.url("/anything"))
        passed = await client.get(lb.url("/anything"), headers={"X-Token": "alice"})
    assert refused.status_code == 401
    assert refused.text == "who are you?\n"
    assert refused.headers["www-authenticate"] == "Token"
    assert passed.status_code == 200
    echoed = {k.lower(): v for k, v in passed.json()["headers"]}  # the backend's /headers
    assert echoed["x-user"] == "ALICE"
    assert "x-token" not in echoed


async def test_select_narrows_the_pool_and_the_algorithm_balances_within(
    backends, balancer, tmp_path
):
    servers = await backends(3)
    mod = hook_module(
        tmp_path,
        """
        class Tenant:
            def __init__(self, options):
                self.tenants = options["tenants"]

            def select(self, request, candidates):
                wanted = self.tenants.get(request.headers.get("X-Tenant"), [])
                return [c for c in candidates if c.address in wanted]
        """,
    )
    b, c = (f"127.0.0.1:{s.port}" for s in servers[1:])
    hooks = [{"use": f"{mod}:Tenant", "options": {"tenants": {"t1": [b, c], "t2": [c]}}}]
    lb = await balancer(config(tmp_path, servers, hooks=hooks))
    async with httpx.AsyncClient() as client:
        t1 = Counter(
            [
                (await client.get(lb.url(), headers={"X-Tenant": "t1"})).text.strip()
                for _ in range(10)
            ]
        )
        t2 = {
            (await client.get(lb.url(), headers={"X-Tenant": "t2"})).text.strip() for _ in range(5)
        }
        nobody = await client.get(lb.url(), headers={"X-Tenant": "t9"})
    assert t1 == Counter({"B": 5, "C": 5})  # round robin, among the tenant's two only
    assert t2 == {"C"}
    assert nobody.status_code == 503  # narrowed to none: no backend for it
    # Health still applies inside the narrowing: with C out, t2 has nowhere to go.
    pool = lb.pools["p"]
    pool.set_state(pool.find(c), "disabled")
    async with httpx.AsyncClient() as client:
        assert (await client.get(lb.url(), headers={"X-Tenant": "t2"})).status_code == 503
        assert (await client.get(lb.url(), headers={"X-Tenant": "t1"})).text.strip() == "B"


async def test_select_in_another_order_is_a_preference(backends, balancer, tmp_path):
    servers = await backends(3)
    mod = hook_module(
        tmp_path,
        """
        SEEN = []

        class LastFirst:
            def __init__(self, options):
                pass

            def select(self, request, candidates):
                SEEN.append([(c.address, c.healthy, c.weight, c.active) for c in candidates])
                return list(reversed(candidates))
        """,
    )
    lb = await balancer(config(tmp_path, servers, hooks=[f"{mod}:LastFirst"]))
    async with httpx.AsyncClient() as client:
        first = {(await client.get(lb.url())).text.strip() for _ in range(6)}
        pool = lb.pools["p"]
        pool.set_state(pool.find(f"127.0.0.1:{servers[2].port}"), "disabled")
        second = {(await client.get(lb.url())).text.strip() for _ in range(4)}
    assert first == {"C"}  # always the hook's first choice
    assert second == {"B"}  # its next, once the first cannot take requests
    seen = __import__(mod).SEEN
    addresses = [f"127.0.0.1:{s.port}" for s in servers]
    assert seen[0] == [(a, True, 1, 0) for a in addresses]  # the pool's order, live state
    assert seen[-1][2] == (addresses[2], False, 1, 0)


async def test_on_response_and_on_log(backends, balancer, tmp_path):
    servers = await backends(1)
    mod = hook_module(
        tmp_path,
        """
        RECORDS = []

        class Stamp:
            def __init__(self, options):
                pass

            def on_request(self, request):
                request.state["path"] = request.path

            def on_response(self, request, response):
                response.set_header("X-Seen-Path", request.state["path"])
                response.set_header("X-Backend-Type", response.headers.get("content-type") or "")
                if request.path == "/teapot":
                    response.status = 418

            def on_log(self, record):
                RECORDS.append(record)
        """,
    )
    lb = await balancer(config(tmp_path, servers, hooks=[f"{mod}:Stamp"]))
    async with httpx.AsyncClient() as client:
        ok = await client.get(lb.url("/"))
        teapot = await client.get(lb.url("/teapot"))
    assert ok.status_code == 200 and ok.headers["x-seen-path"] == "/"
    assert ok.headers["x-backend-type"].startswith("text/plain")
    assert teapot.status_code == 418 and teapot.headers["x-seen-path"] == "/teapot"
    records = __import__(mod).RECORDS
    assert [(r["path"], r["status"]) for r in records] == [("/", 200), ("/teapot", 418)]
    assert records[0]["backend"] == f"127.0.0.1:{servers[0].port}"


ASYNC_HOOKS = """
    import asyncio

    class Slow:
        def __init__(self, options):
            self.delay = options["delay"]

        async def on_request(self, request):
            await asyncio.sleep(self.delay)
            request.set_header("X-Waited", str(self.delay))

        async def select(self, request, candidates):
            await asyncio.sleep(self.delay)
            return candidates[:1]
"""


async def test_async_phases_are_awaited_within_their_timeout(backends, balancer, tmp_path):
    servers = await backends(2)
    mod = hook_module(tmp_path, ASYNC_HOOKS)
    hooks = [
        {"use": f"{mod}:Slow", "options": {"delay": 0.01}, "timeout": "1s"},
        {"use": f"{mod}:Slow", "options": {"delay": 0.5}, "timeout": "50ms", "error_status": 503},
    ]
    text = config(tmp_path, servers, hooks=hooks[:1])
    text_slow = config(tmp_path, servers, hooks=hooks)
    lb = await balancer(text)
    async with httpx.AsyncClient() as client:
        answers = [await client.get(lb.url("/headers")) for _ in range(4)]
        assert {a.status_code for a in answers} == {200}
        assert {a.json()["headers"][0][1] for a in answers} == {f"127.0.0.1:{lb.port}"}
        assert all(["X-Waited", "0.01"] in a.json()["headers"] for a in answers)
        await lb.balancer.reload(parse_config(text_slow, "test.yaml"))
        loop = asyncio.get_running_loop()
        started = loop.time()
        overrun = await client.get(lb.url("/"))
        took = loop.time() - started
    assert overrun.status_code == 503
    assert took < 0.4  # answered at the 50 ms budget, not after the hook's 0.5 s
    errors = lb.balancer.metrics.hook_errors_total
    assert errors == {(f"{mod}:Slow", "on_request"): 1}


async def test_a_failing_hook_answers_500_is_counted_and_logged_once_per_burst(
    backends, balancer, tmp_path, caplog
):
    servers = await backends(1)
    mod = hook_module(
        tmp_path,
        """
        class Broken:
            def __init__(self, options):
                pass

            def on_request(self, request):
                if request.path == "/bad":
                    raise RuntimeError("tenant table missing")
                if request.path == "/wrong":
                    return "not a response"
        """,
    )
    lb = await balancer(config(tmp_path, servers, hooks=[f"{mod}:Broken"]))
    caplog.set_level(logging.ERROR, logger="usher.hooks")
    async with httpx.AsyncClient() as client:
        bad = [await client.get(lb.url("/bad")) for _ in range(20)]
        wrong = await client.get(lb.url("/wrong"))
        fine = await client.get(lb.url("/"))
    assert {r.status_code for r in bad} == {500} and wrong.status_code == 500
    assert fine.status_code == 200  # usher goes on
    assert "tenant table missing" not in bad[0].text  # the client is told nothing of the cause
    messages = [r.getMessage() for r in caplog.records if r.name == "usher.hooks"]
    assert messages == [
        f"hook {mod}:Broken failed in on_request: RuntimeError: tenant table missing"
    ]
    metrics = lb.balancer.metrics
    assert metrics.hook_errors_total == {(f"{mod}:Broken", "on_request"): 21}
    assert sum(metrics.hook_seconds[(f"{mod}:Broken", "on_request")][:-1]) == 22
    exposed = render(build_registry(metrics, dict, dict))[0].decode()
    assert f'usher_hook_errors_total{{hook="{mod}:Broken",phase="on_request"}} 21.0' in exposed
    assert f'usher_hook_seconds_count{{hook="{mod}:Broken",phase="on_request"}} 22.0' in exposed


def test_an_import_error_is_a_config_error_at_the_hooks_path(tmp_path):
    mod = hook_module(
        tmp_path, "class Empty:\n    pass\nclass Ok:\n    def on_log(self, r): pass\n"
    )
    text = config(
        tmp_path,
        ["127.0.0.1:9"],
        hooks=[f"{mod}:Ok", f"{mod}:Missing", {"use": f"{mod}:Empty"}, "no_such_module:X"],
    )
    with pytest.raises(ConfigError) as caught:
        parse_config(text, str(tmp_path / "usher.yaml"))
    issues = {issue.path: issue.message for issue in caught.value.issues}
    assert issues == {
        "listeners[0].routes[0].hooks[1]": f"{mod}:Missing: module {mod!r} has no 'Missing'",
        "listeners[0].routes[0].hooks[2].use": f"{mod}:Empty: defines no hook phase "
        "(on_request, select, on_response, on_log)",
        "listeners[0].routes[0].hooks[3]": "cannot import no_such_module:X: "
        "ModuleNotFoundError: No module named 'no_such_module'",
    }


def test_a_constructor_that_raises_is_a_config_error_at_the_hooks_path(tmp_path):
    mod = hook_module(
        tmp_path,
        """
        class Picky:
            def __init__(self, options):
                if "key" not in options:
                    raise KeyError("key")
            def on_request(self, request):
                pass
        """,
    )
    data = yaml.safe_load(config(tmp_path, ["127.0.0.1:9"], hooks=[]))
    data["listeners"][0]["hooks"] = [{"use": f"{mod}:Picky", "options": {"key": 1}}]
    data["listeners"][0]["routes"][0]["hooks"] = [f"{mod}:Picky"]
    with pytest.raises(ConfigError) as caught:
        Balancer(parse_config(yaml.safe_dump(data), "test.yaml"))
    [issue] = caught.value.issues
    assert issue.path == "listeners[0].routes[0].hooks[0]"
    assert issue.message == f"{mod}:Picky({{}}) raised KeyError: 'key'"


def test_hooks_are_for_http_listeners_and_forwarding_routes(tmp_path):
    mod = hook_module(tmp_path, "class Ok:\n    def on_log(self, r): pass\n")
    text = yaml.safe_dump(
        {
            "python_path": [str(tmp_path)],
            "listeners": [
                {
                    "name": "t",
                    "bind": "127.0.0.1:0",
                    "protocol": "tcp",
                    "pool": "p",
                    "hooks": [f"{mod}:Ok"],
                },
                {
                    "name": "r",
                    "bind": "127.0.0.1:0",
                    "routes": [{"redirect": {"to": "/x"}, "hooks": [f"{mod}:Ok"]}],
                },
            ],
            "pools": {"p": pool_of("127.0.0.1:9")},
        }
    )
    with pytest.raises(ConfigError) as caught:
        parse_config(text, "test.yaml")
    assert {(i.path, i.message) for i in caught.value.issues} == {
        ("listeners[0].hooks", "hooks run on http and https listeners only"),
        ("listeners[1].routes[0].hooks", "a redirect route forwards nothing to run hooks on"),
    }


async def test_listener_hooks_run_before_the_routes(backends, balancer, tmp_path):
    servers = await backends(1)
    mod = hook_module(
        tmp_path,
        """
        class Mark:
            def __init__(self, options):
                self.name = options["name"]

            def on_request(self, request):
                before = request.headers.get("X-Order")
                request.set_header("X-Order", f"{before},{self.name}" if before else self.name)
        """,
    )
    text = config(
        tmp_path,
        servers,
        hooks=[{"use": f"{mod}:Mark", "options": {"name": "route"}}],
    )
    data = yaml.safe_load(text)
    data["listeners"][0]["hooks"] = [{"use": f"{mod}:Mark", "options": {"name": "listener"}}]
    lb = await balancer(yaml.safe_dump(data))
    async with httpx.AsyncClient() as client:
        echoed = dict((await client.get(lb.url("/headers"))).json()["headers"])
    assert echoed["X-Order"] == "listener,route"


async def test_reload_builds_the_edited_hook(backends, balancer, tmp_path):
    servers = await backends(1)
    source = """
        class Version:
            def __init__(self, options):
                pass

            def on_response(self, request, response):
                response.set_header("X-Hook-Version", "{version}")
        """
    mod = hook_module(tmp_path, source.format(version="one"))
    lb = await balancer(config(tmp_path, servers, hooks=[f"{mod}:Version"]))
    path = tmp_path / "test.yaml"
    path.write_text(config(tmp_path, servers, hooks=[f"{mod}:Version"]))
    lb.balancer.config_path = path
    async with httpx.AsyncClient() as client:
        assert (await client.get(lb.url())).headers["x-hook-version"] == "one"
        (tmp_path / f"{mod}.py").write_text(textwrap.dedent(source.format(version="second")))
        await lb.balancer.reload()
        assert (await client.get(lb.url())).headers["x-hook-version"] == "second"
        # A broken edit is refused, naming the hook; the running one stays.
        (tmp_path / f"{mod}.py").write_text("class Version:\n    pass\n")
        with pytest.raises(ConfigError, match=r"routes\[0\]\.hooks\[0\]"):
            await lb.balancer.reload()
        assert (await client.get(lb.url())).headers["x-hook-version"] == "second"


async def test_a_route_without_hooks_takes_the_path_it_took_before(
    backends, balancer, tmp_path, monkeypatch
):
    servers = await backends(1)
    mod = hook_module(
        tmp_path, "class Ok:\n    def __init__(self, o): pass\n    def on_log(self, r): pass\n"
    )
    data = yaml.safe_load(config(tmp_path, servers, hooks=[f"{mod}:Ok"]))
    data["listeners"][0]["routes"].insert(0, {"match": {"path_prefix": "/headers"}, "pool": "p"})
    lb = await balancer(yaml.safe_dump(data))
    router = lb.balancer.listeners["web"].router
    assert [r.hooks is None for r in router.routes] == [True, False]
    started: list[bytes] = []
    start = hook_phases.RouteHooks.start

    def spy(self, exchange):
        started.append(exchange.request.target)
        start(self, exchange)

    # (RouteHooks is plain Python in either build; the exchange may be compiled.)
    monkeypatch.setattr(hook_phases.RouteHooks, "start", spy)
    async with httpx.AsyncClient() as client:
        assert (await client.get(lb.url("/headers"))).status_code == 200
        assert (await client.get(lb.url("/"))).status_code == 200
    assert started == [b"/"]  # /headers went from start() straight to forward()


def test_workers_run_the_hooks(tmp_path: Path) -> None:
    mod = hook_module(
        tmp_path,
        """
        import os

        class Pid:
            def __init__(self, options):
                self.tag = options["tag"]

            def on_response(self, request, response):
                response.set_header("X-Worker", f"{self.tag}-{os.getpid()}")
        """,
    )
    backend_port, lb_port, admin_port = free_port(), free_port(), free_port()
    data = yaml.safe_load(config(tmp_path, [f"127.0.0.1:{backend_port}"], hooks=[]))
    data["listeners"][0]["bind"] = f"127.0.0.1:{lb_port}"
    data["listeners"][0]["hooks"] = [{"use": f"{mod}:Pid", "options": {"tag": "w"}}]
    data["admin"] = {"bind": f"127.0.0.1:{admin_port}"}
    path = tmp_path / "usher.yaml"
    path.write_text(yaml.safe_dump(data))
    procs = [
        subprocess.Popen(
            [*USHER, "backend", "--port", str(backend_port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        ),
        subprocess.Popen(
            [*USHER, "run", "-c", str(path), "--workers", "2", "--no-access-log"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            cwd="/",
        ),
    ]
    url = f"http://127.0.0.1:{lb_port}/"
    try:
        wait_until(
            lambda: (
                len(
                    httpx.get(f"http://127.0.0.1:{admin_port}/api/pools", timeout=5).json()[
                        "workers"
                    ]
                )
                == 2
            ),
            30,
            "both workers to start",
        )
        wait_until(lambda: httpx.get(url, timeout=5).status_code == 200, 10, "usher to serve")
        tags = {httpx.get(url, timeout=5).headers["x-worker"] for _ in range(40)}
        # SIGHUP: the workers rebuild the hook with the new options.
        data["listeners"][0]["hooks"][0]["options"]["tag"] = "v2"
        path.write_text(yaml.safe_dump(data))
        procs[1].send_signal(1)
        wait_until(
            lambda: httpx.get(url, timeout=5).headers["x-worker"].startswith("v2"), 20, "the reload"
        )
        after = {httpx.get(url, timeout=5).headers["x-worker"] for _ in range(40)}
    finally:
        for proc in procs:
            proc.kill()
            proc.communicate(timeout=15)
    assert len(tags) == 2 and all(t.startswith("w-") for t in tags)  # one per worker
    assert len(after) == 2 and all(t.startswith("v2-") for t in after)


async def test_framing_headers_are_usher_s_and_a_failing_on_response_replaces_the_answer(
    backends, balancer, tmp_path
):
    servers = await backends(1)
    mod = hook_module(
        tmp_path,
        """
        class Smuggler:
            def __init__(self, options):
                pass

            def on_request(self, request):
                if request.path == "/cl":
                    request.set_header("Content-Length", "5")
                if request.path == "/crlf":
                    request.set_header("X-A", "1\\r\\nX-B: 2")

            def on_response(self, request, response):
                if request.path == "/te":
                    response.set_header("Transfer-Encoding", "chunked")
                if request.path == "/204":
                    response.status = 204
        """,
    )
    hooks = [{"use": f"{mod}:Smuggler", "error_status": 502}]
    lb = await balancer(config(tmp_path, servers, hooks=hooks))
    async with httpx.AsyncClient() as client:
        answers = {p: await client.get(lb.url(p)) for p in ("/cl", "/crlf", "/te", "/204", "/")}
    assert {p: a.status_code for p, a in answers.items()} == {
        "/cl": 502,
        "/crlf": 502,
        "/te": 502,
        "/204": 502,
        "/": 200,
    }
    assert answers["/te"].text == f"502 Bad Gateway: hook {mod}:Smuggler failed\n"
    assert lb.balancer.metrics.hook_errors_total == {
        (f"{mod}:Smuggler", "on_request"): 2,
        (f"{mod}:Smuggler", "on_response"): 2,
    }
    assert lb.balancer.metrics.rejected_total[("web", "hook")] == 4


def test_async_on_response_is_refused_at_its_path(tmp_path):
    mod = hook_module(
        tmp_path,
        "class Late:\n    async def on_response(self, request, response):\n        pass\n",
    )
    with pytest.raises(ConfigError) as caught:
        parse_config(config(tmp_path, ["127.0.0.1:9"], hooks=[f"{mod}:Late"]), "test.yaml")
    [issue] = caught.value.issues
    assert issue.path == "listeners[0].routes[0].hooks[0]"
    assert issue.message == f"{mod}:Late: on_response must be a plain def, not async def"


async def test_persistence_holds_inside_the_narrowing_and_never_outside_it(
    backends, balancer, tmp_path
):
    servers = await backends(3)
    mod = hook_module(
        tmp_path,
        """
        class Only:
            def __init__(self, options):
                pass

            def select(self, request, candidates):
                wanted = request.headers.get("X-Only")
                return [c for c in candidates if wanted is None or c.address in wanted.split(",")]
        """,
    )
    data = yaml.safe_load(config(tmp_path, servers, hooks=[f"{mod}:Only"]))
    data["pools"]["p"]["sticky"] = {"type": "header", "header": "X-Session"}
    lb = await balancer(yaml.safe_dump(data))
    a, b, c = (f"127.0.0.1:{s.port}" for s in servers)
    async with httpx.AsyncClient() as client:

        async def name(**headers: str) -> str:
            return (await client.get(lb.url(), headers=headers)).text.strip()

        pinned = await name(**{"X-Session": "s1", "X-Only": f"{b},{c}"})
        assert pinned in ("B", "C")
        again = [await name(**{"X-Session": "s1", "X-Only": f"{b},{c}"}) for _ in range(5)]
        assert again == [pinned] * 5  # the pin holds among the allowed
        # Narrowed to a backend that is not the pinned one: the narrowing wins.
        assert await name(**{"X-Session": "s1", "X-Only": a}) == "A"
