"""One balancer across all workers (usher.state): `usher run --workers N` as real processes,
at N = 1, 2 and 4, against recording backends in this process. Each check holds whatever
worker the kernel hands a connection to; the bounds are the asserts, never the timing."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import free_port
from tests.test_workers import wait_until

USHER = [sys.executable, "-m", "usher"]


@dataclass
class Recorder:
    """A backend that answers its name after `delay` (or `status`), and remembers the order
    requests came in (their X-Seq header) and the most it had in flight at once. While
    `held`, requests wait at it before their delay starts."""

    name: str
    delay: float = 0.0
    status: int = 200
    held: bool = False
    port: int = 0
    hits: int = 0
    in_flight: int = 0
    most: int = 0
    order: list[str] = field(default_factory=list)
    writers: set[asyncio.StreamWriter] = field(default_factory=set)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writers.add(writer)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                seq = ""
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"x-seq:"):
                        seq = line[6:].strip().decode()
                self.hits += 1
                self.in_flight += 1
                self.most = max(self.most, self.in_flight)
                self.order.append(seq)
                path = head.split(b" ", 2)[1]
                while self.held:
                    await asyncio.sleep(0.005)
                if self.delay and path != b"/fast":
                    await asyncio.sleep(self.delay)
                self.in_flight -= 1
                body = self.name.encode()
                writer.write(
                    b"HTTP/1.1 %d X\r\nContent-Length: %d\r\n\r\n%s"
                    % (self.status, len(body), body)
                )
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self.writers.discard(writer)
            writer.close()

    def reset(self) -> None:
        self.hits = self.most = 0
        self.order = []


class Backends:
    """Recorders served by an event loop in a thread of the test process."""

    def __init__(self, recorders: list[Recorder]) -> None:
        self.by_name = {r.name: r for r in recorders}
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.servers = [self._run(self._serve(r)) for r in recorders]

    def _run(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(10)

    async def _serve(self, recorder: Recorder) -> asyncio.Server:
        server = await asyncio.start_server(recorder.handle, "127.0.0.1", 0)
        recorder.port = server.sockets[0].getsockname()[1]
        return server

    def __getitem__(self, name: str) -> Recorder:
        return self.by_name[name]

    def close(self) -> None:
        async def close_all() -> None:
            for server in self.servers:
                server.close()
            for recorder in self.by_name.values():
                for writer in list(recorder.writers):
                    writer.close()
            await asyncio.sleep(0.05)  # the handlers see their connections end

        self._run(close_all())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@dataclass
class Usher:
    proc: subprocess.Popen[str]
    ports: dict[str, int]
    admin: str
    log: Path  # its standard error

    def url(self, listener: str, path: str = "/") -> str:
        return f"http://127.0.0.1:{self.ports[listener]}{path}"

    def get(self, listener: str, path: str = "/", **kwargs: Any) -> httpx.Response:
        return httpx.get(self.url(listener, path), timeout=30, **kwargs)  # a new connection

    def fetch(self, listener: str, headers: dict[str, str]) -> tuple[int, str]:
        """One request on a new connection, over a plain socket (an httpx client per request
        costs tens of milliseconds): (status, body)."""
        extra = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        with socket.create_connection(("127.0.0.1", self.ports[listener]), timeout=30) as sock:
            sock.sendall(f"GET / HTTP/1.1\r\nHost: t\r\n{extra}Connection: close\r\n\r\n".encode())
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        return int(head.split(b" ", 2)[1]), body.decode()

    def api(self) -> dict[str, Any]:
        found: dict[str, Any] = httpx.get(f"{self.admin}/api/pools", timeout=10).json()
        return found

    def worker_pids(self) -> list[int]:
        workers = self.api()["workers"]
        return [] if workers is None else [w["pid"] for w in workers]


def config(backends: Backends, ports: dict[str, int], admin: int) -> str:
    def addr(name: str, extra: str = "") -> str:
        return f"{{address: 127.0.0.1:{backends[name].port}{extra}}}"

    listeners = "\n".join(
        f"  - {{name: {name}, bind: 127.0.0.1:{port}, pool: {name}{limits}}}"
        for name, port in ports.items()
        for limits in [", limits: {rate: 100/s, burst: 10}" if name == "rated" else ""]
    )
    quiet = "passive_health: {max_fails: 0}"
    return f"""listeners:
{listeners}
pools:
  weights:
    algorithm: round_robin
    backends: [{addr("A", ", weight: 5")}, {addr("B")}, {addr("C")}]
    {quiet}
  by_ip:
    algorithm: round_robin
    sticky: {{type: source_ip}}
    backends: [{addr("A")}, {addr("B")}, {addr("C")}]
    {quiet}
  by_header:
    algorithm: round_robin
    sticky: {{type: header, header: X-User}}
    backends: [{addr("A")}, {addr("B")}, {addr("C")}]
    {quiet}
  limited:
    backends: [{addr("L", ", max_connections: 1")}]
    queue: {{size: 50, timeout: 30s}}
    {quiet}
  rated:
    backends: [{addr("A")}]
    {quiet}
  ejecting:
    algorithm: round_robin
    backends: [{addr("E")}, {addr("F")}]
    passive_health: {{max_fails: 0, consecutive_5xx: 1, fail_timeout: 60s,
                      max_ejection_percent: 50%}}
  killed:
    backends: [{addr("K", ", max_connections: 2")}]
    {quiet}
  retrying:
    algorithm: round_robin
    backends: [{addr("R1")}, {addr("R2")}]
    retries: {{attempts: 1, on: [503], budget: 10%}}
    {quiet}
admin: {{bind: 127.0.0.1:{admin}}}
"""


LISTENERS = ["weights", "by_ip", "by_header", "limited", "rated", "ejecting", "killed", "retrying"]


@pytest.fixture(scope="module")
def backends() -> Iterator[Backends]:
    b = Backends(
        [
            Recorder("A"),
            Recorder("B"),
            Recorder("C"),
            Recorder("L", delay=0.05),
            Recorder("E", status=500),
            Recorder("F"),
            Recorder("K", delay=0.6),
            Recorder("R1", status=503),
            Recorder("R2", status=503),
        ]
    )
    yield b
    b.close()


@pytest.fixture(scope="module", params=[1, 2, 4], ids=lambda n: f"workers{n}")
def usher(
    request: pytest.FixtureRequest, backends: Backends, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Usher]:
    workers = int(request.param)
    ports = {name: free_port() for name in LISTENERS}
    admin = free_port()
    path: Path = tmp_path_factory.mktemp("global") / "usher.yaml"
    path.write_text(config(backends, ports, admin))
    log = path.with_suffix(".log")
    with log.open("w") as stderr:
        proc = subprocess.Popen(
            [*USHER, "run", "-c", str(path), "--workers", str(workers), "--no-access-log"],
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            text=True,
        )
    u = Usher(proc, ports, f"http://127.0.0.1:{admin}", log)
    try:
        want = 0 if workers == 1 else workers
        wait_until(
            lambda: proc.poll() is not None or len(u.worker_pids()) == want, 60, "the workers"
        )
        assert proc.poll() is None, log.read_text()
        wait_until(lambda: u.get("rated", "/").status_code == 200, 30, "usher to serve")
        yield u
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate(timeout=10)


def fresh(
    usher: Usher, listener: str, n: int, headers: Callable[[int], dict[str, str]]
) -> list[str]:
    """`n` requests, each on a new connection (so the kernel spreads them over the workers)."""

    def one(i: int) -> str:
        status, body = usher.fetch(listener, headers(i))
        assert status == 200, body
        return body

    with ThreadPoolExecutor(4) as pool:
        return list(pool.map(one, range(n)))


def test_weights_5_1_1_hold_over_every_worker(usher: Usher) -> None:
    got = Counter(fresh(usher, "weights", 700, lambda i: {}))
    assert 485 <= got["A"] <= 515, got
    assert 97 <= got["B"] <= 103, got
    assert 97 <= got["C"] <= 103, got


def test_source_ip_persistence_holds_over_new_connections(usher: Usher) -> None:
    got = Counter(fresh(usher, "by_ip", 200, lambda i: {}))
    assert len(got) == 1, got  # every connection comes from 127.0.0.1: one backend


def test_header_persistence_holds_over_new_connections(usher: Usher) -> None:
    answers = fresh(usher, "by_header", 200, lambda i: {"X-User": f"user{i % 10}"})
    by_user: dict[int, set[str]] = {}
    for i, name in enumerate(answers):
        by_user.setdefault(i % 10, set()).add(name)
    assert all(len(names) == 1 for names in by_user.values()), by_user
    assert len({n for names in by_user.values() for n in names}) > 1  # users spread out


def at_once(usher: Usher, listener: str, n: int, headers: dict[str, str]) -> list[str]:
    """`n` requests on `n` connections opened first (the kernel hands them to the workers),
    then sent together."""
    extra = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    request = f"GET / HTTP/1.1\r\nHost: t\r\n{extra}Connection: close\r\n\r\n".encode()
    socks = [
        socket.create_connection(("127.0.0.1", usher.ports[listener]), timeout=30) for _ in range(n)
    ]
    start = threading.Barrier(n)

    def one(sock: socket.socket) -> str:
        with sock:
            start.wait()
            sock.sendall(request)
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        assert head.split(b" ", 2)[1] == b"200", data
        return body.decode()

    with ThreadPoolExecutor(n) as pool:
        return list(pool.map(one, socks))


def test_first_requests_of_a_key_racing_on_several_workers_all_keep_the_first_pin(
    usher: Usher,
) -> None:
    # Issue 14: each worker chose a backend before either had pinned one, and the later pin
    # moved the first client. The first pin wins, as in nginx's `sticky learn` and HAProxy.
    for attempt in range(30):
        answers = at_once(usher, "by_header", 8, {"X-User": f"racing{attempt}"})
        assert len(set(answers)) == 1, (attempt, answers)
        status, body = usher.fetch("by_header", {"X-User": f"racing{attempt}"})
        assert (status, body) == (200, answers[0])


def test_max_connections_1_is_never_exceeded_and_the_queue_is_first_in_first_out(
    usher: Usher, backends: Backends
) -> None:
    """Six requests, each sent once the one before is at the backend or counted in the queue
    (the backend holds the first until all are queued, so none is counted twice on its way
    from the queue to the backend); then newcomers while the queue drains. Every waiter is
    served in its arrival order, whichever worker it waits in and whichever frees the slot,
    and the newcomers after all of them."""
    recorder = backends["L"]
    recorder.reset()
    n, late = 6, 4

    def one(seq: str) -> int:
        return usher.get("limited", headers={"X-Seq": seq}).status_code

    def queued() -> int:
        found: int = usher.api()["pools"]["limited"]["queued"]
        return found

    recorder.held = True
    try:
        with ThreadPoolExecutor(n + late) as pool:
            futures = [pool.submit(one, "0")]
            wait_until(lambda: recorder.hits == 1, 20, "request 0 at the backend")
            for i in range(1, n):
                futures.append(pool.submit(one, str(i)))
                wait_until(lambda i=i: queued() == i, 20, f"request {i} in the queue")
            recorder.held = False
            futures += [pool.submit(one, f"late{i}") for i in range(late)]
            statuses = [f.result(timeout=60) for f in futures]
    finally:
        recorder.held = False
    assert statuses == [200] * (n + late)
    assert recorder.most == 1
    assert recorder.order[:n] == [str(i) for i in range(n)], recorder.order
    assert sorted(recorder.order[n:]) == [f"late{i}" for i in range(late)], recorder.order


def test_a_rate_limit_is_exact_whichever_workers_take_the_connections(usher: Usher) -> None:
    """Two keep-alive clients: their connections land on one or two workers, not all."""
    time.sleep(0.2)  # the bucket refills from the readiness check (burst 10 at 100/s)
    window = 2.0
    ready = threading.Barrier(2)

    def client() -> tuple[int, float, float]:
        """(requests allowed, when the first and the last allowed one were sent)"""
        ok = 0
        with httpx.Client(timeout=10) as c:
            ready.wait(30)  # both clients made (that takes a while), then both send
            first = last = time.monotonic()
            while (sent := time.monotonic()) - first < window:
                if c.get(usher.url("rated")).status_code == 200:
                    ok += 1
                    last = sent  # its token was taken after this, before the answer
        return ok, first, last

    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(lambda _: client(), range(2)))
    allowed = sum(ok for ok, _, _ in results)
    elapsed = max(r[2] for r in results) - min(r[1] for r in results)
    expected = 10 + 100 * elapsed  # the burst, then the rate
    assert 0.9 * expected <= allowed <= 1.1 * expected, (allowed, expected)


def test_an_ejection_seen_by_one_worker_applies_in_all_within_100ms(
    usher: Usher, backends: Backends
) -> None:
    bad = backends["E"]
    first = None
    for _ in range(20):
        first = usher.get("ejecting").status_code
        if first == 500:
            break
    assert first == 500  # one worker saw a 5xx from E and ejected it
    hits = bad.hits
    time.sleep(0.1)
    answers = fresh(usher, "ejecting", 40, lambda i: {})
    assert set(answers) == {"F"}
    assert bad.hits == hits


def test_the_retry_budget_is_one_for_every_worker(usher: Usher, backends: Backends) -> None:
    """Every answer is a 503 that the pool retries on its other backend while its budget
    lasts: 10 retries in reserve, then 10% of the tries (retries deposit too). Budgets per
    worker would allow 10 more per worker."""
    tried = [backends["R1"], backends["R2"]]
    for recorder in tried:
        recorder.reset()
    n = 100

    def one(i: int) -> int:
        return usher.fetch("retrying", {})[0]

    with ThreadPoolExecutor(4) as pool:
        statuses = list(pool.map(one, range(n)))
    assert statuses == [503] * n
    retries = sum(r.hits for r in tried) - n
    most = int((10 + 0.1 * n) / 0.9)  # r <= 10 + 0.1 * (n + r)
    assert 10 <= retries <= most, (retries, most)


def test_a_worker_killed_mid_request_leaks_no_count(usher: Usher, backends: Backends) -> None:
    pids = usher.worker_pids()
    if not pids:
        pytest.skip("one process: nothing to kill but usher itself")
    recorder = backends["K"]
    with ThreadPoolExecutor(2) as pool:
        futures = [pool.submit(usher.get, "killed") for _ in range(2)]
        wait_until(lambda: recorder.in_flight == 2, 20, "two requests at the backend")
        for pid in pids:
            os.kill(pid, signal.SIGKILL)
        for future in futures:
            with pytest.raises(httpx.HTTPError):
                future.result(timeout=30)
    wait_until(
        lambda: usher.log.read_text().count(" restarted (pid ") == len(pids), 60, "the restarts"
    )
    wait_until(lambda: recorder.in_flight == 0, 20, "the backend to see them gone")
    recorder.reset()
    # Both slots of max_connections: 2 are free again: two requests at once both get in.
    with ThreadPoolExecutor(2) as pool:
        statuses = list(pool.map(lambda _: usher.get("killed").status_code, range(2)))
    assert statuses == [200, 200]
    assert recorder.most == 2
