"""`usher status` as a user runs it: a real process against the admin API of a balancer started
in the test (so the process runs as an asyncio subprocess: the test's loop serves the API)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import pytest

from tests.conftest import RunningBalancer, free_port, pool_of, simple_config

USHER = [sys.executable, "-m", "usher"]
# Wide enough that no table cell is cut; no colour codes in what the tests read.
ENV = {**os.environ, "COLUMNS": "200", "NO_COLOR": "1"}
ENV.pop("USHER_ADMIN_TOKEN", None)


async def usher(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        *USHER,
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env or ENV,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def read_until(
    stream: asyncio.StreamReader, done: Callable[[str], bool], timeout: float = 20
) -> str:
    """What the stream gave until `done` holds of it."""
    seen = ""

    async def read() -> str:
        nonlocal seen
        while not done(seen):
            chunk = await stream.read(4096)
            if not chunk:
                raise AssertionError(f"the stream ended first: {seen!r}")
            seen += chunk.decode()
        return seen

    return await asyncio.wait_for(read(), timeout)


Start = Callable[..., Awaitable[RunningBalancer]]


@pytest.fixture
async def admin(balancer: Any, backends: Any) -> Callable[..., Awaitable[RunningBalancer]]:
    async def start(count: int = 2, **admin: Any) -> RunningBalancer:
        servers = await backends(count)
        config = simple_config({"web": pool_of(*servers)})
        config["admin"] = {"bind": "127.0.0.1:0", **admin}
        lb: RunningBalancer = await balancer(config)
        return lb

    return start


def url_of(lb: RunningBalancer) -> str:
    assert lb.balancer.admin_url is not None
    return lb.balancer.admin_url


async def some_traffic(lb: RunningBalancer, count: int) -> None:
    async with httpx.AsyncClient(timeout=10) as client:
        for _ in range(count):
            assert (await client.get(lb.url("/"))).status_code == 200


async def test_json_prints_what_the_api_answers(admin: Start) -> None:
    lb = await admin()
    await some_traffic(lb, 4)
    code, out, err = await usher("status", "--admin", url_of(lb), "--json")
    assert code == 0, err
    body = json.loads(out)
    backends = body["pools"]["web"]["backends"]
    assert [b["address"] for b in backends] == [b.label for b in lb.balancer.pools["web"].backends]
    assert [b["requests_total"] for b in backends] == [2, 2]
    assert body["listeners"][0]["url"] == lb.url("")


async def test_table_shows_every_backend_and_its_state(admin: Start) -> None:
    lb = await admin()
    await some_traffic(lb, 3)
    pool = lb.balancer.pools["web"]
    first, second = pool.backends
    pool.set_state(second, "disabled")

    code, out, err = await usher("status", "--admin", url_of(lb))
    assert code == 0, err
    assert "web round_robin" in out
    assert f"http {lb.url('')}" in out  # the listener line
    rows = {line.split()[0]: line.split() for line in out.splitlines() if "127.0.0.1:" in line}
    # backend, state, weight, active, requests, failures, latency, last check
    assert rows[first.label][1:6] == ["healthy", "1", "0", "2", "0"]
    assert rows[second.label][1:6] == ["disabled", "1", "0", "1", "0"]
    assert rows[first.label][7] == "-"  # no active checks configured


async def test_admin_given_as_host_and_port(admin: Start) -> None:
    lb = await admin()
    code, out, err = await usher("status", "--admin", url_of(lb).removeprefix("http://"), "--json")
    assert code == 0, err
    assert "web" in json.loads(out)["pools"]


async def test_unreachable_admin_exits_2_naming_the_url() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    code, out, err = await usher("status", "--admin", url)
    assert code == 2
    assert url in err
    assert "cannot reach" in err
    assert out == ""


async def test_token(admin: Start) -> None:
    lb = await admin(token="s3cret")
    url = url_of(lb)

    code, _, err = await usher("status", "--admin", url)
    assert code == 1
    assert "token" in err
    assert "--token" in err

    code, _, err = await usher("status", "--admin", url, "--token", "wrong")
    assert code == 1
    assert "refused the token" in err

    code, out, err = await usher("status", "--admin", url, "--token", "s3cret", "--json")
    assert code == 0, err
    assert "web" in json.loads(out)["pools"]

    code, out, err = await usher(
        "status", "--admin", url, env={**ENV, "USHER_ADMIN_TOKEN": "s3cret"}
    )
    assert code == 0, err
    assert "round_robin" in out


async def test_bad_interval_is_a_usage_error(admin: Start) -> None:
    lb = await admin()
    for interval in ("soon", "0s"):
        code, _, err = await usher(
            "status", "--admin", url_of(lb), "--watch", "--interval", interval
        )
        assert code == 1
        assert "--interval" in err


async def test_watch_refreshes_until_ctrl_c(admin: Start) -> None:
    lb = await admin()
    proc = await asyncio.create_subprocess_exec(
        *USHER,
        "status",
        "--admin",
        url_of(lb),
        "--watch",
        "--interval",
        "100ms",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        # As in a terminal, so that the table is drawn (and redrawn) while it runs.
        env={**ENV, "TTY_COMPATIBLE": "1", "TTY_INTERACTIVE": "1"},
    )
    assert proc.stdout is not None
    address = lb.balancer.pools["web"].backends[0].label
    await read_until(proc.stdout, lambda seen: address in seen and "Ctrl-C" in seen)
    proc.send_signal(signal.SIGINT)
    _, err = await asyncio.wait_for(proc.communicate(), 10)
    assert proc.returncode == 0, err.decode()
    assert "Traceback" not in err.decode()


async def test_json_watch_prints_a_line_per_refresh_and_survives_the_admin_going_away(
    admin: Start,
) -> None:
    lb = await admin()
    proc = await asyncio.create_subprocess_exec(
        *USHER,
        "status",
        "--admin",
        url_of(lb),
        "--watch",
        "--json",
        "--interval",
        "100ms",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=ENV,
    )
    assert proc.stdout is not None
    seen = await read_until(proc.stdout, lambda s: s.count("\n") >= 2)
    for line in seen.splitlines()[:2]:
        assert "web" in json.loads(line)["pools"]

    await lb.balancer.stop(timeout=0)
    seen = await read_until(proc.stdout, lambda s: '"error"' in s and s.endswith("\n"))
    failure = json.loads(seen.splitlines()[-1])
    assert "cannot reach" in failure["error"]
    assert proc.returncode is None  # still watching

    proc.send_signal(signal.SIGINT)
    await asyncio.wait_for(proc.communicate(), 10)
    assert proc.returncode == 0
