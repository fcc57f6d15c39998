"""How discovered backends join and leave a live pool (a file source: the quickest to drive)."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aetcd
import httpx
import pytest
import yaml

from tests.conftest import RunningBalancer
from tests.discovery.servers import EtcdServer, etcd_binary, write_atomically
from usher.config import parse_config
from usher.demo.origin import BackendServer

pytestmark = pytest.mark.timeout(60)

StartBalancer = Callable[..., Awaitable[RunningBalancer]]
StartBackends = Callable[..., Awaitable[list[BackendServer]]]
INTERVAL = 0.05


async def until(check: Callable[[], bool], timeout: float = 5.0, what: str = "") -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not check():
        if loop.time() > deadline:
            raise AssertionError(f"not within {timeout}s: {what}")
        await asyncio.sleep(0.01)


def config(path: Path, static: list[BackendServer], **pool: Any) -> dict[str, Any]:
    return {
        "listeners": [{"name": "web", "bind": "127.0.0.1:0", "pool": "p"}],
        "pools": {
            "p": {
                "backends": [{"address": s.address} for s in static],
                "discovery": [{"type": "file", "path": str(path), "interval": INTERVAL}],
                **pool,
            }
        },
    }


def listed(path: Path, entries: list[Any]) -> None:
    write_atomically(path, yaml.safe_dump(entries))


def sources(lb: RunningBalancer) -> dict[str, str]:
    return {b["address"]: b["source"] for b in lb.balancer.describe()["pools"]["p"]["backends"]}


async def test_discovered_backends_join_the_static_ones_with_slow_start(
    tmp_path: Path, balancer: StartBalancer, backends: StartBackends
) -> None:
    a, b, c = await backends(3)
    path = tmp_path / "found.yaml"
    listed(path, [b.address, {"address": c.address, "weight": 4, "max_connections": 9}])
    lb = await balancer(config(path, [a], slow_start="30s"))
    await until(lambda: len(lb.pools["p"].backends) == 3, what="discovered backends")
    assert sources(lb) == {
        a.address: "config",
        b.address: f"file:{path}",
        c.address: f"file:{path}",
    }
    found = lb.pools["p"].find(c.address)
    assert found is not None and (found.weight, found.max_connections) == (4, 9)
    assert found.effective_weight < found.weight  # slow start
    async with httpx.AsyncClient() as client:
        names = {(await client.get(lb.url())).text.strip() for _ in range(12)}
    assert names == {"A", "B", "C"}


async def test_a_vanished_backend_drains_then_goes(
    tmp_path: Path, balancer: StartBalancer, backends: StartBackends
) -> None:
    a, b = await backends(2, latency=0.5)
    path = tmp_path / "found.yaml"
    listed(path, [a.address, b.address])
    lb = await balancer(config(path, []))
    await until(lambda: len(lb.pools["p"].backends) == 2, what="discovered backends")
    async with httpx.AsyncClient() as client:
        slow = [asyncio.ensure_future(client.get(lb.url())) for _ in range(4)]
        await until(lambda: lb.pools["p"].find(b.address).active > 0, what="a request in flight")  # type: ignore[union-attr]
        listed(path, [a.address])
        gone = lb.pools["p"].find(b.address)
        assert gone is not None
        await until(lambda: gone.state == "draining", what="draining")
        assert gone.active > 0  # in flight: not cut
        answers = await asyncio.gather(*slow)
    assert [r.status_code for r in answers] == [200] * 4
    await until(lambda: lb.pools["p"].find(b.address) is None, what="removal after the drain")


async def test_a_disabled_one_that_vanishes_goes_and_one_listed_again_while_draining_stays(
    tmp_path: Path, balancer: StartBalancer, backends: StartBackends
) -> None:
    a, b, c = await backends(3, latency=0.5)
    path = tmp_path / "found.yaml"
    listed(path, [a.address, b.address, c.address])
    lb = await balancer(config(path, []))
    await until(lambda: len(lb.pools["p"].backends) == 3, what="discovered backends")
    lb.balancer.update_backend("p", b.address, state="disabled")
    async with httpx.AsyncClient() as client:
        slow = [asyncio.ensure_future(client.get(lb.url())) for _ in range(4)]
        back = lb.pools["p"].find(c.address)
        assert back is not None
        await until(lambda: back.active > 0, what="a request in flight to c")
        listed(path, [a.address])
        await until(lambda: lb.pools["p"].find(b.address) is None, what="b gone")
        await until(lambda: back.state == "draining", what="c draining")
        listed(path, [a.address, c.address])  # c is back before its drain ends
        await until(lambda: back.state == "enabled", what="c enabled again")
        assert [r.status_code for r in await asyncio.gather(*slow)] == [200] * 4
    await asyncio.sleep(INTERVAL * 4)
    assert lb.pools["p"].find(c.address) is back


async def test_a_failing_source_keeps_its_last_set_and_says_so_once(
    tmp_path: Path,
    balancer: StartBalancer,
    backends: StartBackends,
    caplog: pytest.LogCaptureFixture,
) -> None:
    a, b = await backends(2)
    path = tmp_path / "found.yaml"
    listed(path, [a.address, b.address])
    lb = await balancer(config(path, []))
    await until(lambda: len(lb.pools["p"].backends) == 2, what="discovered backends")
    caplog.set_level(logging.WARNING, "usher.discovery")
    for broken in ("- {address: [nope", "[]"):
        write_atomically(path, broken)
        await asyncio.sleep(INTERVAL * 6)
        assert len(lb.pools["p"].backends) == 2
    path.unlink()
    await asyncio.sleep(INTERVAL * 6)
    assert {b.label for b in lb.pools["p"].backends} == {a.address, b.address}
    failures = [r for r in caplog.records if "failed" in r.getMessage()]
    assert len(failures) == 1 and "keeping the 2 backends it found last" in failures[0].getMessage()
    listed(path, [a.address])
    await until(lambda: len(lb.pools["p"].backends) == 1, what="the source answering again")
    assert any("answering again" in r.getMessage() for r in caplog.records)


async def test_a_reload_keeps_discovered_backends(
    tmp_path: Path, balancer: StartBalancer, backends: StartBackends
) -> None:
    a, b, c = await backends(3)
    path = tmp_path / "found.yaml"
    listed(path, [b.address, c.address])
    lb = await balancer(config(path, [a]))
    await until(lambda: len(lb.pools["p"].backends) == 3, what="discovered backends")
    kept = lb.pools["p"].find(b.address)
    # The file changes its own settings; the source is the same: it goes on, nothing drains.
    report = await lb.balancer.reload(
        parse_config(yaml.safe_dump(config(path, [a], slow_start="5s")))
    )
    assert report.backends_draining == []
    assert lb.pools["p"].find(b.address) is kept and kept is not None and kept.state == "enabled"
    assert sources(lb)[c.address] == f"file:{path}"
    # The file now lists c itself: c becomes the file's; b stays discovered.
    report = await lb.balancer.reload(parse_config(yaml.safe_dump(config(path, [a, c]))))
    assert report.backends_draining == []
    assert sources(lb) == {a.address: "config", c.address: "config", b.address: f"file:{path}"}
    # Without the source, what it found drains away.
    plain = config(path, [a, c])
    del plain["pools"]["p"]["discovery"]
    await lb.balancer.reload(parse_config(yaml.safe_dump(plain)))
    await until(lambda: lb.pools["p"].find(b.address) is None, what="b drained out")


async def test_the_admin_api_shows_where_each_backend_came_from(
    tmp_path: Path, balancer: StartBalancer, backends: StartBackends
) -> None:
    a, b, c = await backends(3)
    path = tmp_path / "found.yaml"
    listed(path, [b.address])
    lb = await balancer(config(path, [a]))
    await until(lambda: len(lb.pools["p"].backends) == 2, what="discovered backends")
    lb.balancer.add_backend("p", c.address)
    assert sources(lb) == {a.address: "config", b.address: f"file:{path}", c.address: "admin"}


async def test_etcd_going_down_keeps_the_set_and_coming_back_resumes(
    tmp_path: Path,
    balancer: StartBalancer,
    backends: StartBackends,
    caplog: pytest.LogCaptureFixture,
) -> None:
    if etcd_binary() is None:
        pytest.skip("no etcd binary: install the Debian package etcd-server (make system-tools)")
    a, b = await backends(2)
    etcd = EtcdServer(tmp_path / "etcd")
    (tmp_path / "etcd").mkdir()
    await asyncio.to_thread(etcd.start)
    try:
        client = aetcd.Client("127.0.0.1", etcd.port)
        await client.put(b"/pool/a", json.dumps({"address": a.address}).encode())
        await client.close()
        source = {"type": "etcd", "endpoints": [etcd.endpoint], "prefix": "/pool/"}
        lb = await balancer(
            {
                "listeners": [{"name": "web", "bind": "127.0.0.1:0", "pool": "p"}],
                "pools": {"p": {"discovery": [{**source, "interval": 0.2, "timeout": 0.5}]}},
            }
        )
        await until(lambda: len(lb.pools["p"].backends) == 1, what="the backend in etcd")
        caplog.set_level(logging.WARNING, "usher.discovery")
        await asyncio.to_thread(etcd.stop)
        await until(
            lambda: any("failed" in r.getMessage() for r in caplog.records),
            what="the outage logged",
        )
        await asyncio.sleep(1.0)  # several reconnection attempts
        assert [x.label for x in lb.pools["p"].backends] == [a.address]
        async with httpx.AsyncClient() as http:
            assert (await http.get(lb.url())).text.strip() == "A"
        assert len([r for r in caplog.records if "failed" in r.getMessage()]) == 1
        await asyncio.to_thread(etcd.start)  # same data, same ports
        client = aetcd.Client("127.0.0.1", etcd.port)
        await client.put(b"/pool/b", json.dumps({"address": b.address}).encode())
        await client.close()
        await until(lambda: len(lb.pools["p"].backends) == 2, 10, what="etcd followed again")
    finally:
        await asyncio.to_thread(etcd.stop)
