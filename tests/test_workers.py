"""`usher run --workers 2` as real processes: the control process and its workers share counts,
state, metrics and signals. Requests go over a fresh connection each, so SO_REUSEPORT spreads
them over both workers. Every wait is bounded."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import free_port

USHER = [sys.executable, "-m", "usher"]


def wait_until(check: Callable[[], bool], timeout: float = 10.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    raise AssertionError(f"not within {timeout}s: {what or check}")


def alive(pid: int) -> bool:
    """Running (a zombie waiting for its parent to reap it is not)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@dataclass
class Cluster:
    config: Path
    lb: subprocess.Popen[str]
    url: str
    admin: str
    backends: dict[str, int]  # name -> port
    procs: list[subprocess.Popen[str]] = field(default_factory=list)

    def get(self, path: str = "/", timeout: float = 10.0) -> httpx.Response:
        return httpx.get(self.url + path, timeout=timeout)  # a new connection each time

    def names(self, n: int = 20) -> Counter[str]:
        return Counter(self.get().text.strip() for _ in range(n))

    def pool(self) -> dict[str, Any]:
        pools: dict[str, Any] = httpx.get(f"{self.admin}/api/pools", timeout=5).json()
        return pools

    def backend(self, name: str) -> dict[str, Any]:
        port = self.backends[name]
        found: dict[str, Any] = next(
            b for b in self.pool()["pools"]["p"]["backends"] if b["address"].endswith(f":{port}")
        )
        return found

    def active(self) -> int:
        return sum(b["active"] for b in self.pool()["pools"]["p"]["backends"])

    def worker_pids(self) -> dict[int, int]:
        return {w["number"]: w["pid"] for w in self.pool()["workers"]}

    def metrics(self) -> str:
        return httpx.get(f"{self.admin}/metrics", timeout=10).text


def write_config(path: Path, lb_port: int, admin_port: int, ports: list[int]) -> None:
    backends = ", ".join(f"{{address: 127.0.0.1:{p}}}" for p in ports)
    path.write_text(
        f"listeners: [{{name: web, bind: 127.0.0.1:{lb_port}, pool: p}}]\n"
        "pools:\n"
        "  p:\n"
        "    algorithm: least_connections\n"
        f"    backends: [{backends}]\n"
        "    health_check: {type: http, path: /health, interval: 200ms,\n"
        "                   healthy_threshold: 1, unhealthy_threshold: 1}\n"
        "    passive_health: {max_fails: 0}\n"
        f"admin: {{bind: 127.0.0.1:{admin_port}}}\n"
    )


def start_cluster(tmp: Path) -> Cluster:
    procs: list[subprocess.Popen[str]] = []
    ports = {"A": free_port(), "B": free_port()}
    for name, port in ports.items():
        procs.append(
            subprocess.Popen(
                [*USHER, "backend", "--port", str(port), "--name", name],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                text=True,
            )
        )
    lb_port, admin_port = free_port(), free_port()
    config = tmp / "usher.yaml"
    write_config(config, lb_port, admin_port, list(ports.values()))
    lb = subprocess.Popen(
        [*USHER, "run", "-c", str(config), "--workers", "2", "--no-access-log"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    procs.append(lb)
    cluster = Cluster(
        config, lb, f"http://127.0.0.1:{lb_port}", f"http://127.0.0.1:{admin_port}", ports, procs
    )
    try:
        wait_until(lambda: len(cluster.pool()["workers"]) == 2, 30, "the workers to start")
        wait_until(lambda: cluster.names(4).total() == 4, 10, "backends to answer")
    except AssertionError:
        stop_cluster(cluster)
        raise
    return cluster


def stop_cluster(cluster: Cluster) -> None:
    for proc in cluster.procs:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=15)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    c = start_cluster(tmp_path_factory.mktemp("workers"))
    yield c
    stop_cluster(c)


@pytest.fixture
def own_cluster(tmp_path: Path) -> Iterator[Cluster]:
    c = start_cluster(tmp_path)
    yield c
    stop_cluster(c)


def in_flight(cluster: Cluster, pool: ThreadPoolExecutor, n: int, path: str) -> list[Future[Any]]:
    """Start `n` slow requests one after another, each once the previous one is counted."""
    started: list[Future[Any]] = []
    for i in range(n):
        started.append(pool.submit(cluster.get, path, 30.0))
        wait_until(lambda i=i: cluster.active() == i + 1, 10, f"{i + 1} requests in flight")
    return started


def test_requests_in_flight_are_summed_over_the_workers(cluster: Cluster) -> None:
    with ThreadPoolExecutor(8) as pool:
        futures = in_flight(cluster, pool, 8, "/sleep/5")  # long enough for a loaded machine
        # least_connections reads the sum: each new request went to the backend with fewer in
        # flight over both workers, whichever worker took it.
        assert cluster.backend("A")["active"] == cluster.backend("B")["active"] == 4
        gauges = [
            float(line.rsplit(" ", 1)[1])
            for line in cluster.metrics().splitlines()
            if line.startswith("usher_backend_active{")
        ]
        assert sum(gauges) == 8
        assert [f.result().status_code for f in futures] == [200] * 8
    wait_until(lambda: cluster.active() == 0, 5, "the counts to return to 0")


def _requests_total(text: str) -> float:
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("usher_requests_total{")
    )


def test_metrics_are_summed_over_the_workers(cluster: Cluster, tmp_path: Path) -> None:
    before = _requests_total(cluster.metrics())
    assert cluster.names(30).total() == 30
    text = cluster.metrics()
    assert _requests_total(text) == before + 30
    assert 'usher_health_checks_total{backend="127.0.0.1:' in text
    requests = sum(b["requests_total"] for b in cluster.pool()["pools"]["p"]["backends"])
    assert requests >= before + 30
    promtool = shutil.which("promtool")
    assert promtool is not None, "promtool is needed: apt-get install prometheus"
    check = subprocess.run(
        [promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=30
    )
    assert check.returncode == 0, check.stdout + check.stderr


def test_admin_changes_reach_every_worker(cluster: Cluster) -> None:
    a = f"{cluster.admin}/api/pools/p/backends/127.0.0.1:{cluster.backends['A']}"
    assert httpx.patch(a, json={"state": "draining"}, timeout=5).status_code == 200
    wait_until(lambda: cluster.backend("A")["state"] == "disabled", 5, "A drained")
    time.sleep(0.2)
    assert cluster.names(20) == Counter({"B": 20})
    assert httpx.patch(a, json={"state": "enabled"}, timeout=5).status_code == 200
    time.sleep(0.2)
    assert set(cluster.names(20)) == {"A", "B"}
    # Weights break least_connections' ties, 9 to 1 in every worker: at most 4 of 30 go to B
    # however the connections fall on the workers (15 each at 1 to 1).
    assert httpx.patch(a, json={"weight": 9}, timeout=5).status_code == 200
    time.sleep(0.2)
    counts = cluster.names(30)
    assert counts["A"] >= 22, counts
    assert httpx.patch(a, json={"weight": 1}, timeout=5).status_code == 200


def test_a_drain_waits_for_the_requests_in_flight_in_every_worker(cluster: Cluster) -> None:
    a = f"{cluster.admin}/api/pools/p/backends/127.0.0.1:{cluster.backends['A']}"
    with ThreadPoolExecutor(4) as pool:
        # Long enough that none ends before the drain is seen, however slowly they start.
        futures = in_flight(cluster, pool, 4, "/sleep/3")
        assert cluster.backend("A")["active"] == 2
        assert httpx.patch(a, json={"state": "draining"}, timeout=5).status_code == 200
        time.sleep(0.5)
        assert cluster.backend("A")["state"] == "draining"  # 2 still in flight, somewhere
        assert [f.result().status_code for f in futures] == [200] * 4
    wait_until(lambda: cluster.backend("A")["state"] == "disabled", 5, "A drained")
    assert httpx.patch(a, json={"state": "enabled"}, timeout=5).status_code == 200
    wait_until(lambda: cluster.backend("A")["state"] == "healthy", 5, "A back")


def test_a_health_verdict_reaches_every_worker(cluster: Cluster) -> None:
    b_url = f"http://127.0.0.1:{cluster.backends['B']}"
    httpx.post(f"{b_url}/health/fail", timeout=5)
    try:
        wait_until(lambda: cluster.backend("B")["state"] == "unhealthy", 5, "B unhealthy")
        time.sleep(0.1)
        assert cluster.names(20) == Counter({"A": 20})
    finally:
        httpx.post(f"{b_url}/health/ok", timeout=5)
    wait_until(lambda: cluster.backend("B")["state"] == "healthy", 5, "B healthy")
    time.sleep(0.1)
    assert set(cluster.names(20)) == {"A", "B"}


def test_a_killed_worker_is_restarted_with_its_slots_cleared(cluster: Cluster) -> None:
    pids = cluster.worker_pids()
    victim = pids[0]
    with ThreadPoolExecutor(12) as pool:
        futures = in_flight(cluster, pool, 12, "/sleep/8")  # none ends before the count
        os.kill(victim, signal.SIGKILL)
        wait_until(
            lambda: cluster.worker_pids().get(0) not in (None, victim), 15, "worker 0 restarted"
        )
        left = cluster.active()
        ok = 0
        for future in futures:
            with contextlib.suppress(httpx.HTTPError):  # those the killed worker had
                ok += future.result().status_code == 200
    # What the dead worker had in flight left the counts with it; the other's remained.
    assert left == ok
    assert ok < 12, "all 12 connections went to one worker (1 chance in 4096)"
    assert cluster.active() == 0
    assert cluster.names(20).total() == 20
    assert cluster.worker_pids()[1] == pids[1]


def test_sighup_reloads_every_worker_and_sigterm_drains_all(own_cluster: Cluster) -> None:
    c = own_cluster
    lb_port = int(c.url.rsplit(":", 1)[1])
    admin_port = int(c.admin.rsplit(":", 1)[1])
    pids = list(c.worker_pids().values())
    kept = socket.create_connection(("127.0.0.1", lb_port), timeout=10)
    request = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"
    kept.sendall(request)
    assert kept.recv(4096).startswith(b"HTTP/1.1 200")
    write_config(c.config, lb_port, admin_port, [c.backends["B"]])
    c.lb.send_signal(signal.SIGHUP)
    wait_until(lambda: len(c.pool()["pools"]["p"]["backends"]) == 1, 10, "A removed")
    assert c.names(20) == Counter({"B": 20})
    kept.sendall(request)  # the listener kept its socket: a connection from before still works
    assert kept.recv(4096).startswith(b"HTTP/1.1 200")
    kept.close()
    c.config.write_text("listeners: [{name: web, bind: nowhere}]\n")
    c.lb.send_signal(signal.SIGHUP)
    time.sleep(0.5)
    assert c.lb.poll() is None
    assert c.names(20) == Counter({"B": 20})
    assert list(c.worker_pids().values()) == pids  # a reload restarts no worker
    with ThreadPoolExecutor(2) as pool:
        futures = in_flight(c, pool, 2, "/sleep/1")
        c.lb.send_signal(signal.SIGTERM)
        assert [f.result().status_code for f in futures] == [200, 200]  # drained, not cut
    _, err = c.lb.communicate(timeout=40)
    assert c.lb.returncode == 0, err
    assert "usher: reloaded" in err
    assert "reload refused, still running the previous config" in err
    assert "listeners[0].bind" in err
    assert not any(alive(pid) for pid in pids)


def test_workers_do_not_outlive_their_control_process(own_cluster: Cluster) -> None:
    pids = list(own_cluster.worker_pids().values())
    own_cluster.lb.kill()
    own_cluster.lb.wait(timeout=10)
    wait_until(lambda: not any(alive(pid) for pid in pids), 15, "the workers to exit")


def test_the_default_is_one_worker_per_core(tmp_path: Path) -> None:
    backend_port, lb_port = free_port(), free_port()
    config = tmp_path / "usher.yaml"
    config.write_text(
        f"listeners: [{{name: web, bind: 127.0.0.1:{lb_port}, pool: p}}]\n"
        f"pools: {{p: {{backends: [{{address: 127.0.0.1:{backend_port}}}]}}}}\n"
    )
    lb = subprocess.Popen(
        [*USHER, "run", "-c", str(config), "--no-access-log"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        # Nothing serves the backend's port: 502 says the balancer answered.
        wait_until(lambda: httpx.get(f"http://127.0.0.1:{lb_port}/").status_code == 502, 30)
        lb.send_signal(signal.SIGTERM)
        _, err = lb.communicate(timeout=40)
    finally:
        if lb.poll() is None:
            lb.kill()
            lb.communicate(timeout=10)
    assert lb.returncode == 0, err
    cores = os.cpu_count() or 1
    if cores > 1:
        assert f"usher: {cores} workers serving" in err
    else:
        assert "workers serving" not in err


UDP_ECHO = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("127.0.0.1", 0))
print(s.getsockname()[1], flush=True)
while True:
    data, peer = s.recvfrom(65535)
    s.sendto(b"echo:" + data, peer)
"""


def test_tcp_and_udp_listeners_are_served_by_the_workers(tmp_path: Path) -> None:
    """The control process reserves a layer-4 listener's address with the right socket type
    (port 0 becomes one UDP port for a udp listener) and every worker serves it."""
    echo = subprocess.Popen([sys.executable, "-c", UDP_ECHO], stdout=subprocess.PIPE, text=True)
    backend_port = free_port()
    web = subprocess.Popen(
        [*USHER, "backend", "--port", str(backend_port), "--name", "T"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    procs: list[subprocess.Popen[Any]] = [echo, web]
    try:
        assert echo.stdout is not None
        udp_port = int(echo.stdout.readline())
        config = tmp_path / "usher.yaml"
        config.write_text(
            "listeners:\n"
            "  - {name: t, bind: 127.0.0.1:0, protocol: tcp, pool: tcp}\n"
            "  - {name: u, bind: 127.0.0.1:0, protocol: udp, pool: udp}\n"
            "pools:\n"
            f"  tcp: {{backends: [{{address: 127.0.0.1:{backend_port}}}]}}\n"
            f"  udp: {{backends: [{{address: 127.0.0.1:{udp_port}}}]}}\n"
        )
        lb = subprocess.Popen(
            [*USHER, "run", "-c", str(config), "--workers", "2", "--no-access-log"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        procs.append(lb)
        assert lb.stderr is not None
        lines: dict[str, str] = {}
        while len(lines) < 2:
            line = lb.stderr.readline()
            assert line, "usher exited before its listeners were up"
            if line.startswith("usher: listener "):
                name, _, url = line.split()[2:5]
                lines[name] = url
        tcp_port = int(lines["t"].rsplit(":", 1)[1])
        udp_lb_port = int(lines["u"].rsplit(":", 1)[1])
        wait_until(
            lambda: httpx.get(f"http://127.0.0.1:{tcp_port}/", timeout=5).text == "T\n",
            20,
            "the tcp listener to answer",
        )
        assert all(
            httpx.get(f"http://127.0.0.1:{tcp_port}/", timeout=5).text == "T\n" for _ in range(10)
        )
        for i in range(6):  # several clients: SO_REUSEPORT hashes each to a worker
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
                client.settimeout(5)
                client.sendto(f"ping{i}".encode(), ("127.0.0.1", udp_lb_port))
                assert client.recv(100) == f"echo:ping{i}".encode()
        lb.send_signal(signal.SIGTERM)
        assert lb.wait(timeout=30) == 0
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
            proc.communicate(timeout=15)  # reaps it and closes its pipes
