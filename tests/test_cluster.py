"""Two usher nodes, one Redis (`cluster:`, usher.state.redis), end to end: two `usher run`
processes (one of them with two workers) and a real redis-server on a Unix socket, against
recording backends in this process. The bounds are the asserts, never the timing."""

from __future__ import annotations

import signal
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.conftest import free_port
from tests.redis_server import RedisServer, need_redis
from tests.test_global_state import LISTENERS, USHER, Backends, Recorder, Usher, config
from tests.test_workers import wait_until


def cluster_config(
    backends: Backends, ports: dict[str, int], admin: int, store: str, node: str
) -> str:
    """test_global_state's listeners and pools (rated: 100/s, burst 10; by_header: sticky on
    X-User; ejecting: E answers 500), with a `cluster:` section."""
    return (
        config(backends, ports, admin)
        + f"""cluster:
  redis: {store}
  node: {node}
  # Above a round trip on a loaded test machine (the default is 5ms): these tests are about
  # what the nodes share; tests/test_state_redis.py stalls the store to test the timeout.
  timeout: 100ms
"""
    )


@pytest.fixture(scope="module")
def backends() -> Iterator[Backends]:
    names = [Recorder(n) for n in "ABCF"] + [Recorder("E", status=500)]
    retried = [Recorder("R1", status=503), Recorder("R2", status=503)]  # the `retrying` pool
    b = Backends([*names, Recorder("L", delay=0.3), Recorder("K", delay=0.6), *retried])
    yield b
    b.close()


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    need_redis()
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.kill()


@pytest.fixture(scope="module")
def nodes(
    backends: Backends, store: RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Usher, Usher]]:
    started: list[Usher] = []
    try:
        for node, workers in (("edge-1", 1), ("edge-2", 2)):
            ports = {name: free_port() for name in LISTENERS}
            admin = free_port()
            path = tmp_path_factory.mktemp(node) / "usher.yaml"
            path.write_text(cluster_config(backends, ports, admin, store.url, node))
            log = path.with_suffix(".log")
            with log.open("w") as stderr:
                proc = subprocess.Popen(
                    [*USHER, "run", "-c", str(path), "--workers", str(workers), "--no-access-log"],
                    stdout=subprocess.DEVNULL,
                    stderr=stderr,
                    text=True,
                )
            started.append(Usher(proc, ports, f"http://127.0.0.1:{admin}", log))
        for u in started:
            wait_until(lambda u=u: u.get("rated").status_code == 200, 60, "usher to serve")
            wait_until(lambda u=u: cluster_up(u) == 1, 30, "usher to reach the store")
        yield started[0], started[1]
    finally:
        for u in started:
            u.proc.send_signal(signal.SIGTERM)
            try:
                u.proc.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                u.proc.kill()
                u.proc.communicate(timeout=10)


def cluster_up(u: Usher) -> int:
    for line in httpx.get(f"{u.admin}/metrics", timeout=10).text.splitlines():
        if line.startswith("usher_cluster_up{"):
            return int(float(line.rsplit(" ", 1)[1]))
    return -1  # not listed yet (seen once on a loaded machine just after start): asked again


def test_a_limit_of_100_per_second_holds_over_both_nodes(nodes: tuple[Usher, Usher]) -> None:
    time.sleep(0.3)  # the bucket refills from the readiness checks (burst 10 at 100/s)
    window = 2.0
    start = time.monotonic()

    def client(node: Usher) -> tuple[int, float]:
        ok = 0
        last = start
        with httpx.Client(timeout=10) as c:
            while time.monotonic() - start < window:
                if c.get(node.url("rated")).status_code == 200:
                    ok += 1
                    last = time.monotonic()
        return ok, last

    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(client, nodes))
    allowed = sum(ok for ok, _ in results)
    elapsed = max(last for _, last in results) - start
    expected = 10 + 100 * elapsed  # the burst, then the rate, for both nodes together
    assert 0.9 * expected <= allowed <= 1.1 * expected, (allowed, expected, results)
    assert all(ok > 0.2 * allowed for ok, _ in results), results  # both nodes admitted


def test_a_sticky_client_alternating_between_nodes_keeps_its_backend(
    nodes: tuple[Usher, Usher],
) -> None:
    by_user: dict[int, list[str]] = {}
    for i in range(120):
        user = i // 2 % 20  # each user's requests go to one node, then the other
        status, body = nodes[i % 2].fetch("by_header", {"X-User": f"user{user}"})
        assert status == 200, body
        by_user.setdefault(user, []).append(body)
    moved = {u: names for u, names in by_user.items() if len(set(names)) > 1}
    assert not moved, moved
    assert len({names[0] for names in by_user.values()}) > 1  # users spread out


def test_a_pin_made_on_one_node_holds_on_the_other_where_it_would_choose_otherwise(
    nodes: tuple[Usher, Usher], backends: Backends
) -> None:
    """Pins made on edge-1 while A is disabled there: edge-2, where A is enabled, would place
    about a third of these users on A by itself; through the store it sends none there."""
    first = nodes[0]
    a = f"127.0.0.1:{backends['A'].port}"

    def set_a(state: str) -> None:
        url = f"{first.admin}/api/pools/by_header/backends/{a}"
        httpx.patch(url, json={"state": state}, timeout=10).raise_for_status()

    set_a("disabled")
    try:
        pinned = {u: first.fetch("by_header", {"X-User": f"pinned{u}"})[1] for u in range(20)}
    finally:
        set_a("enabled")
    assert "A" not in pinned.values()
    time.sleep(0.2)  # pub/sub: the pins reach edge-2 in a round trip
    for i in range(80):
        user = i % 20
        status, body = nodes[i // 20 % 2].fetch("by_header", {"X-User": f"pinned{user}"})
        assert (status, body) == (200, pinned[user]), (i, user)


def test_an_ejection_seen_by_one_node_applies_on_the_other_within_1s(
    nodes: tuple[Usher, Usher], backends: Backends
) -> None:
    first, second = nodes
    bad = backends["E"]
    status = None
    for _ in range(20):
        status = first.get("ejecting").status_code
        if status == 500:
            break
    assert status == 500  # edge-1 saw a 5xx from E and ejected it
    seen = time.monotonic()
    hits = bad.hits
    time.sleep(0.2)
    answers = Counter(second.fetch("ejecting", {})[1] for _ in range(40))
    assert time.monotonic() - seen < 1.0
    assert answers == {"F": 40}  # edge-2 never sent E a request: it had it ejected
    assert bad.hits == hits


def test_killing_redis_mid_load_fails_no_request(
    nodes: tuple[Usher, Usher], store: RedisServer
) -> None:
    total = 400
    done: list[int] = []

    def one(i: int) -> int:
        status, _ = nodes[i % 2].fetch("by_header", {"X-User": f"load{i % 30}"})
        done.append(i)
        return status

    with ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(one, i) for i in range(total)]
        wait_until(lambda: len(done) >= total // 4, 60, "a quarter of the load")
        store.kill()
        statuses = Counter(f.result(timeout=60) for f in futures)
    assert statuses == {200: total}
    for node in nodes:
        wait_until(lambda node=node: cluster_up(node) == 0, 10, "usher_cluster_up to drop")
        assert node.log.read_text().count("unreachable") >= 1
    store.start()
    for node in nodes:
        wait_until(lambda node=node: cluster_up(node) == 1, 20, "the store to be back")
        assert "is back" in node.log.read_text()
