"""The pure parts of the benchmark (bench/harness.py): wrk's report, /proc figures, ratios.
Timing never decides a test: these only check the arithmetic and the parsing."""

from __future__ import annotations

import importlib.util
import math
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"


def _load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


harness = _load("harness")

WRK = """Running 3s test @ http://127.0.0.1:40000/
  1 threads and 50 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     2.31ms  812.00us  21.80ms   91.20%
    Req/Sec     7.31k   402.11     8.02k    70.00%
  Latency Distribution
     50%    2.21ms
     75%    2.40ms
     90%    2.71ms
     99%   850.00us
  21843 requests in 3.00s, 3.21MB read
  Socket errors: connect 0, read 2, write 1, timeout 0
  Non-2xx or 3xx responses: 4
Requests/sec:   7281.00
Transfer/sec:      1.07MB
"""


def test_parse_wrk_reads_every_figure() -> None:
    r = harness.parse_wrk(WRK)
    assert r["requests"] == 21843
    assert r["seconds"] == pytest.approx(3.0)
    assert r["rps"] == pytest.approx(7281.0)
    assert r["p50_ms"] == pytest.approx(2.21)
    assert r["p99_ms"] == pytest.approx(0.85)  # microseconds converted
    assert r["errors"] == 7  # 4 non-2xx + 2 read + 1 write
    assert r["bytes_per_s"] == pytest.approx(1.07 * 1024 * 1024)


def test_parse_wrk_without_errors_and_in_seconds() -> None:
    out = WRK.replace("  Socket errors: connect 0, read 2, write 1, timeout 0\n", "")
    out = out.replace("  Non-2xx or 3xx responses: 4\n", "").replace(
        "99%   850.00us", "99%    1.20s"
    )
    r = harness.parse_wrk(out)
    assert r["errors"] == 0
    assert r["p99_ms"] == pytest.approx(1200.0)


def test_parse_wrk_refuses_what_it_does_not_understand() -> None:
    with pytest.raises(harness.WrkOutputError, match="no request count"):
        harness.parse_wrk("unable to connect to 127.0.0.1:1 Connection refused\n")
    no_latency = "\n".join(line for line in WRK.splitlines() if "%" not in line or "Stdev" in line)
    with pytest.raises(harness.WrkOutputError, match="50th percentile"):
        harness.parse_wrk(no_latency)


def test_parse_stat_handles_odd_command_names() -> None:
    # pid (comm) state ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt utime stime
    line = "42 (a (b) c) S 7 42 42 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 1 0"
    assert harness.parse_stat(line) == (7, 300)


def test_tree_cpu_and_rss_sum_over_descendants(tmp_path: Path) -> None:
    def proc(pid: int, ppid: int, ticks: tuple[int, int], rss_kb: int) -> None:
        d = tmp_path / str(pid)
        d.mkdir()
        fields = f"S {ppid} 1 1 0 -1 0 0 0 0 0 {ticks[0]} {ticks[1]} 0 0 20 0 1 0"
        (d / "stat").write_text(f"{pid} (x) {fields}\n")
        (d / "status").write_text(f"Name:\tx\nVmRSS:\t    {rss_kb} kB\n")

    proc(10, 1, (100, 20), 1000)  # the master
    proc(11, 10, (300, 80), 2000)  # its worker
    proc(12, 11, (1, 1), 10)  # a grandchild
    proc(20, 1, (999, 999), 99999)  # someone else
    (tmp_path / "self").mkdir()  # not a process directory
    assert sorted(harness.process_tree(10, tmp_path)) == [10, 11, 12]
    assert harness.tree_cpu_seconds(10, tmp_path) == pytest.approx(502 / harness.CLK_TCK)
    assert harness.tree_rss_kb(10, tmp_path) == 3010


def test_tree_cpu_of_this_process_is_real() -> None:
    assert harness.tree_cpu_seconds(os.getpid()) > 0
    assert harness.tree_rss_kb(os.getpid()) > 1000


def test_cpu_per_request_medians_and_ratios() -> None:
    assert harness.cpu_us_per_request(1.0, 1.5, 10_000) == pytest.approx(50.0)
    assert math.isnan(harness.cpu_us_per_request(1.0, 1.5, 0))
    rows = [
        {"rps": 10.0, "p99_ms": 3.0},
        {"rps": 30.0, "p99_ms": 1.0},
        {"rps": 20.0, "p99_ms": 2.0},
    ]
    assert harness.medians(rows) == {"rps": 20.0, "p99_ms": 2.0}
    assert harness.medians([]) == {}
    assert harness.ratio(30.0, 20.0) == pytest.approx(1.5)
    assert harness.ratio(1.0, 0.0) is None
    assert harness.ratio(float("nan"), 2.0) is None


per_request = _load("per_request")


def test_callgrind_total_reads_the_totals_line() -> None:
    text = "version: 1\ncreator: callgrind-3.19.0\nevents: Ir\nfn=main\n5 10\ntotals: 123456\n"
    assert per_request.callgrind_total(text) == 123456
    assert per_request.callgrind_total("events: Ir\nsummary: 42\n") == 42
    with pytest.raises(ValueError, match="totals"):
        per_request.callgrind_total("events: Ir\n")


def test_per_request_counts_only_what_the_extra_requests_added() -> None:
    feed = ("/src/usher/http/codec.py", 229, "feed")
    startup = ("/src/usher/config.py", 10, "load")
    builtin = ("~", 0, "<method 'append' of 'list' objects>")
    few = {feed: (110, 0.011), startup: (1, 0.5), builtin: (300, 0.003)}
    many = {feed: (1110, 0.111), startup: (1, 0.5), builtin: (2300, 0.013)}
    rows = per_request.per_request(few, many, 1000)
    assert [r["function"] for r in rows] == ["feed (codec.py:229)", builtin[2]]
    assert rows[0]["calls"] == 1.0 and math.isclose(rows[0]["own_us"], 100.0)
    assert rows[1]["calls"] == 2.0 and math.isclose(rows[1]["own_us"], 10.0)


def test_a_profiled_usher_run_counts_the_codec_once_per_request(tmp_path: Path) -> None:
    # The method end to end, bounded: two short runs of the real `usher run` under cProfile.
    run = per_request.Run(per_request.MODES["pure"], access_log=False, profile="plain")
    rows = per_request.profile("pure", 20, tmp_path, run)
    readers = ("feed (request_reader.py", "feed (response_reader.py")
    feeds = [r for r in rows if r["function"].startswith(readers)]
    assert len(feeds) == 2  # the request reader's and the response reader's
    assert all(0.9 <= r["calls"] <= 1.5 for r in feeds), feeds
    assert sum(r["calls"] for r in rows) > 50


def test_answer_problems_reads_the_last_head() -> None:
    head = (
        "HTTP/1.1 100 Continue\r\n\r\n"
        "HTTP/1.1 200 OK\r\nX-Bench: features\r\nset-cookie: SRV=s1; Path=/\r\n\r\n"
    )
    assert harness.answer_problems(head, 200, {"x-bench": "features", "Set-Cookie": None}) == []
    assert harness.answer_problems(head, 200, {"X-Bench": "other"}) == [
        "X-Bench: 'features', expected 'other'"
    ]
    assert harness.answer_problems("HTTP/1.1 429 Too Many Requests\r\n\r\n", 200, {"X": None}) == [
        "status line 'HTTP/1.1 429 Too Many Requests', expected 200",
        "no X header",
    ]
    assert harness.answer_problems("", 200, {}) == ["no answer"]


proxies = _load("proxies")
PROFILES = ["plain", "log", "features"]


def _run(cmd: list[str]) -> None:
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("profile", PROFILES)
def test_nginx_configs_parse(tmp_path: Path, profile: str) -> None:
    conf = tmp_path / "nginx.conf"
    conf.write_text(
        proxies.nginx_config("http", 18080, [18081, 18082, 18083], tmp_path, profile, 18090)
    )
    _run(["nginx", "-t", "-q", "-e", str(tmp_path / "err"), "-c", str(conf)])
    text = conf.read_text()
    if profile == "log":
        assert f"access_log {tmp_path}/nginx-access.log;" in text
    if profile == "features":
        assert "least_conn;" in text and "stub_status" in text and "limit_req " in text
        assert '"|127.0.0.1:18082" "SRV=s1; Path=/; HttpOnly"' in text


@pytest.mark.parametrize("profile", PROFILES)
def test_haproxy_configs_parse(tmp_path: Path, profile: str) -> None:
    conf = tmp_path / "haproxy.cfg"
    conf.write_text(
        proxies.haproxy_config("http", 18080, [18081, 18082], tmp_path, 100, profile, 18090)
    )
    _run(["haproxy", "-c", "-q", "-f", str(conf)])
    text = conf.read_text()
    if profile == "log":
        assert "log stdout format raw local0" in text and "option httplog" in text
    if profile == "features":
        for line in ("balance leastconn", "cookie SRV insert", "option httpchk GET /health"):
            assert line in text
        assert "server s1 127.0.0.1:18082 check inter 1s cookie s1" in text
        assert "http-response set-header X-Bench features" in text


@pytest.mark.parametrize("profile", PROFILES)
def test_usher_configs_check(tmp_path: Path, profile: str) -> None:
    conf = tmp_path / "usher.yaml"
    conf.write_text(proxies.usher_config("http", 18080, [18081, 18082], tmp_path, profile, 18090))
    _run([sys.executable, "-m", "usher", "check", "-c", str(conf)])
    text = conf.read_text()
    if profile == "features":
        for line in ("algorithm: least_connections", "type: http, interval: 1", "type: cookie"):
            assert line in text
        assert "rate: 1000000/s" in text and "admin: {bind: 127.0.0.1:18090}" in text


@pytest.mark.parametrize("profile", ["plain", "features"])
def test_per_request_configs_check(tmp_path: Path, profile: str) -> None:
    conf = tmp_path / "usher.yaml"
    conf.write_text(per_request.config_text(profile, 18080, 18081))
    _run([sys.executable, "-m", "usher", "check", "-c", str(conf)])
    text = conf.read_text()
    assert "admin:" not in text  # its start under valgrind would take minutes
    if profile == "features":
        assert "sticky: {type: cookie" in text and "rate: 1000000/s" in text
