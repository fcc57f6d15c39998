"""examples/algorithms/pinned.py: it keeps usher.testing's contract, and `usher run --workers 2`
balances with it (both worker processes import it from `python_path` and pin alike)."""

from __future__ import annotations

import socket
import subprocess
from collections import Counter
from pathlib import Path

import httpx
import pytest

from tests.conftest import free_port
from tests.test_workers import USHER, wait_until
from usher.clock import ManualClock
from usher.config import parse_config
from usher.pool import Pool, Selection
from usher.testing import AlgorithmContract

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "algorithms"


class TestPinnedKeepsTheContract(AlgorithmContract):
    @pytest.fixture
    def algorithm(self, monkeypatch: pytest.MonkeyPatch) -> str:
        monkeypatch.syspath_prepend(str(EXAMPLES))
        return "pinned:Pinned"


def config_text(lb_port: int, ports: list[int], admin_port: int | None = None) -> str:
    backends = ", ".join(f"{{address: 127.0.0.1:{p}}}" for p in ports)
    admin = f"admin: {{bind: 127.0.0.1:{admin_port}}}\n" if admin_port is not None else ""
    return (
        f"python_path: [{EXAMPLES}]\n"
        f"listeners: [{{name: web, bind: 127.0.0.1:{lb_port}, pool: p}}]\n"
        f'pools: {{p: {{algorithm: "pinned:Pinned", backends: [{backends}]}}}}\n' + admin
    )


def test_usher_run_with_two_workers_pins_each_client(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ports = [free_port() for _ in range(3)]
    lb_port, admin_port = free_port(), free_port()
    config = tmp_path / "usher.yaml"
    config.write_text(config_text(lb_port, ports, admin_port))
    # The backend pinned.py picks for client 127.0.0.1, computed in this process.
    monkeypatch.syspath_prepend(str(EXAMPLES))
    parsed = parse_config(config.read_text(), str(config))
    expected = Pool("p", parsed.pools["p"], ManualClock()).select(Selection("127.0.0.1", 0.0))
    assert expected is not None
    procs = [
        subprocess.Popen(
            [*USHER, "backend", "--port", str(port), "--name", str(port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for port in ports
    ]
    # Every backend listens before usher starts: a refused first connect would eject the one
    # the client is pinned to, and another would answer.
    for port in ports:
        wait_until(lambda port=port: _accepts(port), 30, f"backend {port} to listen")
    procs.append(
        subprocess.Popen(
            [*USHER, "run", "-c", str(config), "--workers", "2", "--no-access-log"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            cwd="/",  # nothing importable from here: python_path alone must find pinned.py
        )
    )
    url = f"http://127.0.0.1:{lb_port}/"
    workers = f"http://127.0.0.1:{admin_port}/api/pools"
    try:
        wait_until(
            lambda: len(httpx.get(workers, timeout=5).json()["workers"]) == 2,
            30,
            "both workers to start",
        )
        wait_until(lambda: httpx.get(url, timeout=5).status_code == 200, 10, "usher to serve")
        # A new connection each time, so both workers answer some of them.
        answers = Counter(httpx.get(url, timeout=5).text.strip() for _ in range(30))
    finally:
        for proc in procs:
            proc.kill()
            proc.communicate(timeout=15)
    assert answers == Counter({str(expected.port): 30})


def _accepts(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return False
    return True


def test_usher_check_names_a_missing_module(tmp_path: Path) -> None:
    config = tmp_path / "usher.yaml"
    config.write_text(config_text(free_port(), [9001]).replace("pinned:Pinned", "pinnd:Pinned"))
    result = subprocess.run(
        [*USHER, "check", "-c", str(config)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 1
    assert "pools.p.algorithm: cannot import pinnd:Pinned: ModuleNotFoundError" in result.stderr
