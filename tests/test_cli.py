"""The `usher` command as a user runs it: a real process, its exit codes and its output."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import free_port
from usher import __version__, native

USHER = [sys.executable, "-m", "usher"]


def usher(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*USHER, *args], capture_output=True, text=True, timeout=timeout)


def wait_for_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on {port}")


def spawn(processes: list[subprocess.Popen[str]], *args: str) -> subprocess.Popen[str]:
    """Start `usher ARGS...` in the background; the `processes` fixture stops it."""
    proc = subprocess.Popen(
        [*USHER, *args], text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    processes.append(proc)
    return proc


def one_pool_config(path: Path, lb_port: int, backend_port: int) -> Path:
    path.write_text(
        f"listeners: [{{name: web, bind: 127.0.0.1:{lb_port}, pool: p}}]\n"
        f"pools: {{p: {{backends: [{{address: 127.0.0.1:{backend_port}}}]}}}}\n"
    )
    return path


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[str]]]:
    started: list[subprocess.Popen[str]] = []
    yield started
    for proc in started:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=10)  # also closes its pipes


def test_check_accepts_a_good_file():
    result = usher("check", "-c", "src/usher/sample.yaml")
    assert result.returncode == 0, result.stderr
    assert "ok" in result.stdout


def test_check_reports_every_problem_with_its_path(tmp_path: Path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "listeners:\n"
        "  - name: web\n"
        "    bind: 127.0.0.1:8080\n"
        "    pool: nope\n"
        "pools:\n"
        "  web:\n"
        "    backends:\n"
        "      - {address: 127.0.0.1:9001, weight: 0}\n"
    )
    result = usher("check", "-c", str(bad))
    assert result.returncode == 1
    assert "listeners[0].pool: unknown pool 'nope'" in result.stderr
    assert "pools.web.backends[0].weight: must be > 0" in result.stderr


def test_check_rejects_a_bad_discovery_entry_with_its_path(tmp_path: Path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "listeners: [{name: web, bind: 127.0.0.1:8080, pool: api}]\n"
        "pools:\n"
        "  api:\n"
        "    discovery:\n"
        "      - {type: dns, name: api.internal, port: 8080, resolver: nameserver}\n"
        "      - {type: etcd, endpoints: [127.0.0.1:2379]}\n"
        "      - {type: file, path: a.yaml, interval: never}\n"
    )
    result = usher("check", "-c", str(bad))
    assert result.returncode == 1
    assert "pools.api.discovery[0].resolver: invalid resolver 'nameserver'" in result.stderr
    assert "pools.api.discovery[1].prefix: required" in result.stderr
    assert "pools.api.discovery[2].interval: invalid duration 'never'" in result.stderr


def test_check_prints_an_import_path_as_written(tmp_path: Path):
    # rich would turn ":x:" in "nomod:x: cannot import" into an emoji; the console must not.
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "listeners: [{name: web, bind: 127.0.0.1:8080, pool: api}]\n"
        "pools:\n"
        "  api: {algorithm: 'nomod:x', backends: [{address: 127.0.0.1:9001}]}\n"
    )
    result = usher("check", "-c", str(bad))
    assert result.returncode == 1
    assert "nomod:x" in result.stderr
    assert "\u274c" not in result.stderr


def test_check_reports_a_missing_certificate(tmp_path: Path):
    cfg = tmp_path / "tls.yaml"
    cfg.write_text(
        "listeners:\n"
        "  - {name: s, bind: 127.0.0.1:8443, protocol: https, pool: p,\n"
        "     tls: {certificates: [{cert: /nonexistent.pem, key: /nonexistent.key}]}}\n"
        "pools:\n"
        "  p: {backends: [{address: 127.0.0.1:9001}]}\n"
    )
    result = usher("check", "-c", str(cfg))
    assert result.returncode == 1
    assert "listeners[0].tls.certificates[0]" in result.stderr


def test_check_of_a_missing_file_is_exit_1():
    result = usher("check", "-c", "/nonexistent/usher.yaml")
    assert result.returncode == 1
    assert "/nonexistent/usher.yaml" in result.stderr


def test_usage_errors_exit_1():
    assert usher("run").returncode == 1  # -c is required
    assert usher("no-such-command").returncode == 1


def test_version_says_whether_the_hot_path_runs_compiled():
    result = usher("version")
    assert result.returncode == 0
    assert result.stdout == f"usher {__version__}, {native.settle()}\n"


def test_schema_is_json_schema():
    result = usher("schema")
    assert result.returncode == 0
    schema = json.loads(result.stdout)
    assert "listeners" in schema["properties"]


def test_demo_prints_its_config():
    result = usher("demo", "--print-config")
    assert result.returncode == 0
    assert result.stdout == Path("src/usher/sample.yaml").read_text()


def test_run_serves_and_drains_on_sigterm(tmp_path: Path, processes):
    backend_port, lb_port = free_port(), free_port()
    spawn(processes, "backend", "--port", str(backend_port), "--name", "solo")
    cfg = one_pool_config(tmp_path / "usher.yaml", lb_port, backend_port)
    lb = spawn(processes, "run", "-c", str(cfg), "--workers", "1", "--log-format", "json")
    wait_for_port(backend_port)
    wait_for_port(lb_port)
    response = httpx.get(f"http://127.0.0.1:{lb_port}/")
    assert response.text == "solo\n"
    lb.send_signal(signal.SIGTERM)
    out, err = lb.communicate(timeout=15)
    assert lb.returncode == 0, err
    assert f"usher: usher {__version__}, {native.settle()}\n" in err  # the start log says the mode
    record = json.loads(out.strip().splitlines()[-1])
    assert record["status"] == 200 and record["pool"] == "p"
    assert record["backend"] == f"127.0.0.1:{backend_port}"


def test_run_with_a_port_in_use_exits_2_naming_it(tmp_path: Path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        cfg = tmp_path / "usher.yaml"
        cfg.write_text(
            f"listeners: [{{name: web, bind: 127.0.0.1:{port}, pool: p}}]\n"
            "pools: {p: {backends: [{address: 127.0.0.1:9}]}}\n"
        )
        result = usher("run", "-c", str(cfg), "--workers", "1")
    assert result.returncode == 2
    assert f"127.0.0.1:{port}" in result.stderr


def test_workers_share_the_listener(tmp_path: Path, processes):
    backend_port, lb_port = free_port(), free_port()
    spawn(processes, "backend", "--port", str(backend_port))
    cfg = one_pool_config(tmp_path / "usher.yaml", lb_port, backend_port)
    lb = spawn(processes, "run", "-c", str(cfg), "--workers", "2", "--no-access-log")
    wait_for_port(backend_port)
    wait_for_port(lb_port)
    time.sleep(0.3)  # let both workers bind
    for _ in range(20):
        with httpx.Client() as client:  # a new connection each time
            assert client.get(f"http://127.0.0.1:{lb_port}/").status_code == 200
    lb.send_signal(signal.SIGTERM)
    _, err = lb.communicate(timeout=15)
    assert lb.returncode == 0, err
    assert err.count("listener web on") == 1  # said once, by the control process
    assert "2 workers serving" in err


def test_demo_end_to_end(processes):
    for port in (9001, 9002, 9003):
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                pytest.fail(f"port {port} is taken: the demo needs 9001-9003 free")
    port = free_port()
    demo = spawn(processes, "demo", "--port", str(port))
    wait_for_port(port)
    with httpx.Client() as client:
        names = {client.get(f"http://127.0.0.1:{port}/").text.strip() for _ in range(3)}
        api = client.get(f"http://127.0.0.1:{port}/api/headers").json()
    assert names == {"A", "B", "C"}
    assert ["X-Usher-Route", "api"] in api["headers"]
    demo.send_signal(signal.SIGHUP)  # nothing to reload: said, and the demo goes on
    time.sleep(0.2)
    with httpx.Client() as client:
        assert client.get(f"http://127.0.0.1:{port}/").status_code == 200
    demo.send_signal(signal.SIGINT)
    out, err = demo.communicate(timeout=15)
    assert demo.returncode == 0, err
    assert "SIGHUP ignored" in out
    assert "backend=127.0.0.1:900" in out  # each request's log line names its backend
    assert "curl" in out


def test_sighup_reloads_the_config_and_a_bad_file_changes_nothing(tmp_path: Path, processes):
    a_port, b_port, lb_port = free_port(), free_port(), free_port()
    spawn(processes, "backend", "--port", str(a_port), "--name", "A")
    spawn(processes, "backend", "--port", str(b_port), "--name", "B")
    cfg = one_pool_config(tmp_path / "usher.yaml", lb_port, a_port)
    lb = spawn(processes, "run", "-c", str(cfg), "--workers", "1", "--no-access-log")
    for port in (a_port, b_port, lb_port):
        wait_for_port(port)
    url = f"http://127.0.0.1:{lb_port}/"
    with httpx.Client() as client:
        assert {client.get(url).text for _ in range(4)} == {"A\n"}
        one_pool_config(cfg, lb_port, b_port)  # now the pool is B alone
        lb.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while client.get(url).text != "B\n" and time.monotonic() < deadline:
            time.sleep(0.05)
        assert {client.get(url).text for _ in range(4)} == {"B\n"}
        cfg.write_text("listeners: [{name: web, bind: nowhere}]\n")  # broken
        lb.send_signal(signal.SIGHUP)
        time.sleep(0.5)
        assert lb.poll() is None
        assert {client.get(url).text for _ in range(4)} == {"B\n"}
    lb.send_signal(signal.SIGTERM)
    _, err = lb.communicate(timeout=15)
    assert lb.returncode == 0
    assert "usher: reloaded" in err
    assert "reload refused, still running the previous config" in err
    assert "listeners[0].bind" in err


def test_a_bad_certificate_is_exit_1_with_workers_too(tmp_path: Path):
    cfg = tmp_path / "tls.yaml"
    cfg.write_text(
        "listeners:\n"
        "  - {name: s, bind: 127.0.0.1:0, protocol: https, pool: p,\n"
        "     tls: {certificates: [{cert: /nonexistent.pem, key: /nonexistent.key}]}}\n"
        "pools: {p: {backends: [{address: 127.0.0.1:9001}]}}\n"
    )
    for workers in ("1", "2"):
        result = usher("run", "-c", str(cfg), "--workers", workers)
        assert result.returncode == 1, result.stderr
        assert "listeners[0].tls.certificates[0]" in result.stderr
