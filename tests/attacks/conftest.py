"""The attack suite's rig: usher and a backend as their own processes on 127.0.0.1, a
well-behaved client as a third process during each attack, and a record of what both saw.

Attackers connect from 127.0.0.66 (all of 127/8 is loopback on Linux), normal clients from
127.0.0.1, so that per-address limits can tell them apart. Results go to
`<pytest basetemp>/attacks.json` and are printed (`pytest -s tests/attacks`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import resource
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import free_port

ROOT = Path(__file__).resolve().parents[2]
ATTACKER = "127.0.0.66"
NORMAL_CLIENT = Path(__file__).with_name("normal_client.py")


@pytest.fixture(scope="session", autouse=True)
def enough_descriptors() -> None:
    """A thousand attacking sockets need more than the usual 1024 descriptors."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


class Process:
    """A child process whose stderr is collected by a thread."""

    def __init__(self, args: list[str], **popen: Any) -> None:
        self.proc = subprocess.Popen(
            args,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            cwd=ROOT,
            **popen,
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line.rstrip("\n"))

    @property
    def stderr(self) -> str:
        return "\n".join(self.lines)

    def wait_for(self, text: str, timeout: float = 15.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in self.lines:
                if text in line:
                    return line
            if self.proc.poll() is not None:
                break
            time.sleep(0.02)
        raise AssertionError(f"{text!r} not seen; stderr:\n{self.stderr}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._reader.join(2)
        if self.proc.stderr is not None:
            self.proc.stderr.close()


class Usher(Process):
    def __init__(self, config_path: Path, **popen: Any) -> None:
        self.config_path = config_path
        super().__init__(
            # One process: the limits under attack are then exactly the configured ones.
            [
                *(sys.executable, "-m", "usher", "run", "-c", str(config_path)),
                *("--workers", "1", "--no-access-log"),
            ],
            **popen,
        )
        line = self.wait_for("usher: listener web on ")
        self.port = int(line.rsplit(":", 1)[1])

    def cpu_seconds(self) -> float:
        """usher's user + system CPU time so far."""
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@pytest.fixture
def backend_port() -> Iterator[int]:
    port = free_port()
    backend = Process(
        [sys.executable, "-m", "usher", "backend", "--port", str(port), "--name", "B"]
    )
    deadline = time.monotonic() + 15
    import socket

    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            if time.monotonic() > deadline or backend.proc.poll() is not None:
                backend.stop()
                raise AssertionError(f"backend did not start:\n{backend.stderr}") from None
            time.sleep(0.05)
    yield port
    backend.stop()


@pytest.fixture
def start_usher(tmp_path: Path, backend_port: int) -> Iterator[Callable[..., Usher]]:
    started: list[Usher] = []

    def start(listener: dict[str, Any] | None = None, **popen: Any) -> Usher:
        spec: dict[str, Any] = {"name": "web", "bind": "127.0.0.1:0", "pool": "web"}
        spec.update(listener or {})
        config = {
            "listeners": [spec],
            "pools": {"web": {"backends": [{"address": f"127.0.0.1:{backend_port}"}]}},
        }
        path = tmp_path / f"usher-{len(started)}.yaml"
        path.write_text(yaml.safe_dump(config))
        usher = Usher(path, **popen)
        started.append(usher)
        return usher

    yield start
    for usher in started:
        usher.stop()


class NormalTraffic:
    """The well-behaved client process, started before an attack and read after it."""

    def __init__(self, port: int, seconds: float) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(NORMAL_CLIENT), str(port), str(seconds)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    async def result(self) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        out, err = await loop.run_in_executor(None, self.proc.communicate, None)
        assert self.proc.returncode == 0, err
        return dict(json.loads(out))


@pytest.fixture
def normal_traffic() -> Iterator[Callable[[int, float], NormalTraffic]]:
    running: list[NormalTraffic] = []

    def start(port: int, seconds: float) -> NormalTraffic:
        traffic = NormalTraffic(port, seconds)
        running.append(traffic)
        return traffic

    yield start
    for traffic in running:
        if traffic.proc.poll() is None:
            traffic.proc.kill()
        with contextlib.suppress(Exception):
            traffic.proc.communicate(timeout=5)


@pytest.fixture
def remote_attacker() -> Iterator[None]:
    """The attacker is this test process, on the same two cores as usher: a real one would be
    on other machines. Lowering this process's priority during the attack stands for that
    (usher, the backend and the normal client were started before, at normal priority)."""
    before = os.getpriority(os.PRIO_PROCESS, 0)
    os.setpriority(os.PRIO_PROCESS, 0, 19)
    try:
        yield
    finally:
        with contextlib.suppress(PermissionError):  # only root may raise it back
            os.setpriority(os.PRIO_PROCESS, 0, before)


@pytest.fixture(scope="session")
def results_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.getbasetemp() / "attacks.json"


@pytest.fixture
def record(results_file: Path) -> Callable[[str, dict[str, Any], dict[str, Any]], None]:
    def write(attack: str, attacker: dict[str, Any], normal: dict[str, Any]) -> None:
        results = json.loads(results_file.read_text()) if results_file.exists() else {}
        results[attack] = {"attacker": attacker, "normal": normal}
        results_file.write_text(json.dumps(results, indent=2))
        print(
            f"\n[attack] {attack}: attacker saw {json.dumps(attacker)}; normal clients: "
            f"{normal['ok']}/{normal['requests']} ok ({normal['success_rate']:.2%}), "
            f"p50 {normal['p50_ms']} ms, p99 {normal['p99_ms']} ms -> {results_file}"
        )

    return write


async def connect(
    port: int, source: str = ATTACKER
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))
