"""`kill -USR2` on `usher run` as real processes, under a request loop: the new process takes
the sockets over and serves, the old one drains and exits 0, and no request fails; a new
process that cannot start leaves the old one serving. Every wait is bounded."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from tests.conftest import free_port
from tests.test_workers import USHER, alive, wait_until

LOOP_SECONDS = 3.0
MIN_REQUESTS = 300


@dataclass
class Site:
    config: Path
    log: Path
    lb: subprocess.Popen[bytes]
    url: str
    admin: str
    procs: list[subprocess.Popen[bytes]]
    workers: int

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


@dataclass
class Tally:
    """What a request loop saw: every request is one of ok, failed (with why)."""

    ok: int = 0
    failed: list[str] = field(default_factory=list)
    # Requests sent on a keep-alive connection the balancer closed as idle at that very moment
    # (a drain closes idle connections): sent again on a new connection, as RFC 9112 §9.3.1
    # allows for idempotent requests and as browsers and urllib3 do.
    resent: int = 0


def write_config(path: Path, port: int, admin: int, backends: list[int]) -> None:
    listed = ", ".join(f"{{address: 127.0.0.1:{p}}}" for p in backends)
    path.write_text(
        f"listeners: [{{name: web, bind: 127.0.0.1:{port}, pool: p}}]\n"
        f"pools: {{p: {{backends: [{listed}]}}}}\n"
        f"admin: {{bind: 127.0.0.1:{admin}}}\n"
    )


@pytest.fixture(params=[1, 2], ids=["workers1", "workers2"])
def site(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Site]:
    procs: list[subprocess.Popen[bytes]] = []
    ports = [free_port(), free_port()]
    for port in ports:
        procs.append(
            subprocess.Popen(
                [*USHER, "backend", "--port", str(port)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
    port, admin = free_port(), free_port()
    config = tmp_path / "usher.yaml"
    write_config(config, port, admin, ports)
    log = tmp_path / "usher.log"
    with log.open("wb") as sink:  # the new process writes here too: it inherits the descriptor
        lb = subprocess.Popen(
            [*USHER, "run", "-c", str(config), "--workers", str(request.param), "--no-access-log"],
            stdout=subprocess.DEVNULL,
            stderr=sink,
        )
    procs.append(lb)
    site = Site(
        config,
        log,
        lb,
        f"http://127.0.0.1:{port}",
        f"http://127.0.0.1:{admin}",
        procs,
        request.param,
    )
    try:
        wait_until(lambda: "serving" in site.log_text() or "dashboard" in site.log_text(), 30)
        wait_until(lambda: httpx.get(site.url + "/", timeout=5).status_code == 200, 10)
        yield site
    finally:
        for pid in new_pids(site):
            stop_pid(pid)
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=15)


def listening_inodes(port: int) -> set[int]:
    """The kernel sockets listening on 127.0.0.1:port (one per worker), from /proc/net/tcp."""
    found = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[1] == f"0100007F:{port:04X}" and fields[3] == "0A":  # 0A: LISTEN
            found.add(int(fields[9]))
    return found


def new_pids(site: Site) -> list[int]:
    return [int(p) for p in re.findall(r"upgrade: pid (\d+) serves now", site.log_text())]


def stop_pid(pid: int) -> None:
    """Stop a process that is not our child (the old usher started it), bounded."""
    if alive(pid):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 40
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    if alive(pid):
        os.kill(pid, signal.SIGKILL)


def request_loop(url: str, stop: threading.Event, tally: Tally, *, keep_alive: bool) -> None:
    """GET / until told to stop, on one keep-alive connection or a new connection each time."""
    client = httpx.Client(timeout=10)
    try:
        while not stop.is_set():
            if not keep_alive:
                client.close()
                client = httpx.Client(timeout=10)
            try:
                answer = client.get(url + "/")
            except httpx.RemoteProtocolError:
                if not keep_alive:
                    raise
                tally.resent += 1
                client.close()
                client = httpx.Client(timeout=10)
                answer = client.get(url + "/")
            if answer.status_code == 200:
                tally.ok += 1
            else:
                tally.failed.append(f"{answer.status_code} {answer.text[:80]}")
            time.sleep(0.01)
    except httpx.HTTPError as exc:
        tally.failed.append(f"{type(exc).__name__}: {exc}")
    finally:
        client.close()


def under_load(site: Site, event: str, action: object) -> tuple[Tally, Tally, httpx.Response]:
    """Run a keep-alive loop, a new-connection loop and one slow request (in flight when the
    signal comes), calling `action` a second in; go on until `event` is in the log, for at
    least LOOP_SECONDS and MIN_REQUESTS (bounded)."""
    stop = threading.Event()
    kept, fresh = Tally(), Tally()
    slow: list[httpx.Response] = []
    loops = [
        threading.Thread(
            target=request_loop, args=(site.url, stop, kept), kwargs={"keep_alive": True}
        ),
        threading.Thread(
            target=request_loop, args=(site.url, stop, fresh), kwargs={"keep_alive": False}
        ),
        threading.Thread(
            target=lambda: slow.append(httpx.get(site.url + "/sleep/1.5", timeout=20))
        ),
    ]
    started = time.monotonic()
    for thread in loops:
        thread.start()
    try:
        time.sleep(1.0)
        assert callable(action)
        action()
        wait_until(lambda: event in site.log_text(), 70, f"{event!r} in the log")
        time.sleep(max(0.5, LOOP_SECONDS - (time.monotonic() - started)))  # and more after it
        # A slow machine makes fewer requests a second: go on up to a count, bounded.
        wait_until(lambda: kept.ok + fresh.ok >= MIN_REQUESTS, 30, f"{MIN_REQUESTS} requests")
    finally:
        stop.set()
        for thread in loops:
            thread.join(timeout=30)
    assert slow, "the slow request did not finish"
    return kept, fresh, slow[0]


def test_usr2_hands_the_sockets_over_and_no_request_fails(site: Site) -> None:
    old = site.lb.pid
    port = int(site.url.rsplit(":", 1)[1])
    sockets = listening_inodes(port)
    assert len(sockets) == site.workers

    def upgrade_twice() -> None:
        os.kill(old, signal.SIGUSR2)
        time.sleep(0.1)
        os.kill(old, signal.SIGUSR2)  # while the first runs: refused

    kept, fresh, slow = under_load(site, "serves now", upgrade_twice)
    assert site.lb.wait(timeout=40) == 0, site.log_text()
    log = site.log_text()
    assert "upgrade refused: an upgrade is already under way" in log
    assert kept.failed == [] and fresh.failed == [], (kept, fresh, log)
    assert slow.status_code == 200  # in flight on the old process as it drained
    (new,) = new_pids(site)
    assert new != old and alive(new)
    assert httpx.get(site.url + "/", timeout=5).status_code == 200
    assert httpx.get(site.admin + "/health", timeout=5).json() == {"status": "ok"}
    # The very sockets the old process listened on, not new ones bound beside them.
    assert listening_inodes(port) == sockets
    assert f"handed {site.workers + 1} sockets over" in log  # and the admin API's
    print(f"upgrade: {kept} {fresh}")


def test_a_new_process_that_fails_leaves_the_old_one_serving(site: Site) -> None:
    good = site.config.read_text()
    site.config.write_text(good.replace("backends: [", "backends: [{address: nowhere}, "))
    kept, fresh, slow = under_load(
        site, "upgrade failed", lambda: os.kill(site.lb.pid, signal.SIGUSR2)
    )
    log = site.log_text()
    assert "exited with 1 before it was ready" in log
    assert site.lb.poll() is None, log  # the old one serves on
    assert kept.failed == [] and fresh.failed == [] and kept.resent == 0, (kept, fresh, log)
    assert slow.status_code == 200
    assert new_pids(site) == []
    # And once the file is good again, an upgrade goes through (here by the command).
    site.config.write_text(good)
    done = subprocess.run(
        [*USHER, "upgrade", "--pid", str(site.lb.pid), "--wait", "60s"],
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"pid {site.lb.pid} has handed over and exited" in done.stdout
    assert site.lb.wait(timeout=5) == 0
    (new,) = new_pids(site)
    assert alive(new) and httpx.get(site.url + "/", timeout=5).status_code == 200


def test_the_upgrade_command_signals_only_usher_run(site: Site) -> None:
    backend = site.procs[0]
    refused = subprocess.run(
        [*USHER, "upgrade", "--pid", str(backend.pid)], capture_output=True, text=True, timeout=30
    )
    assert refused.returncode == 1
    assert f"pid {backend.pid} is not `usher run`" in refused.stderr
    assert backend.poll() is None  # SIGUSR2 would have killed it
