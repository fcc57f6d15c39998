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


# Captured from h2load 1.52.0 (Debian 12) against nginx: a timed run (-D 2), whose streams in
# flight at the stop count as failed, and a counted run (-n 100) answered 404.
H2LOAD = """starting benchmark...
spawning thread #0: 10 total client(s). Timing-based test with 0s of warm-up time and 2s of main duration for measurements.
TLS Protocol: TLSv1.2
Cipher: ECDHE-ECDSA-AES128-GCM-SHA256
Server Temp Key: X25519 253 bits
Application protocol: h2
Process Request Failure:2
Main benchmark duration is over for thread #0. Stopping all clients.
Stopped all clients for thread #0

finished in 2.02s, 5000.00 req/s, 351.88KB/s
requests: 10038 total, 10090 started, 10038 done, 10000 succeeded, 38 failed, 38 errored, 0 timeout
status codes: 10000 2xx, 0 3xx, 0 4xx, 0 5xx
traffic: 703.77KB (720660) total, 468.75KB (480000) headers (space savings 51.02%), 58.59KB (60000) data
                     min         max         mean         sd        +/- sd
time for request:      200us     18.80ms      3.37ms      3.07ms    90.25%
time for connect:    36.69ms     44.17ms     41.86ms      3.54ms    70.00%
time to 1st byte:    43.67ms     62.80ms     56.96ms      9.12ms    70.00%
req/s           :    2151.51     2232.06     2175.16       26.28    80.00%
"""
H2LOAD_404 = """starting benchmark...
spawning thread #0: 2 total client(s). 100 total requests
Application protocol: h2
progress: 100% done

finished in 60.13ms, 1663.15 req/s, 360.53KB/s
requests: 100 total, 100 started, 100 done, 0 succeeded, 100 failed, 0 errored, 0 timeout
status codes: 0 2xx, 0 3xx, 100 4xx, 0 5xx
traffic: 21.68KB (22198) total, 4.88KB (5000) headers (space savings 49.49%), 14.94KB (15300) data
                     min         max         mean         sd        +/- sd
time for request:       65us     12.04ms      1.44ms      3.10ms    88.00%
time for connect:    19.81ms     19.86ms     19.84ms        33us   100.00%
"""


def test_parse_h2load_reads_every_figure() -> None:
    r = harness.parse_h2load(H2LOAD)
    assert r["requests"] == 10038 and r["errors"] == 38
    assert r["seconds"] == pytest.approx(2.02) and r["rps"] == pytest.approx(5000.0)
    assert r["bytes_per_s"] == pytest.approx(720660 / 2.02)
    # The time for a request, not to connect nor to the first byte; microseconds converted.
    assert (r["min_ms"], r["max_ms"]) == pytest.approx((0.2, 18.8))
    assert (r["mean_ms"], r["sd_ms"]) == pytest.approx((3.37, 3.07))


def test_parse_h2load_counts_answers_that_are_not_2xx_as_errors() -> None:
    r = harness.parse_h2load(H2LOAD_404)
    assert r["requests"] == 100 and r["errors"] == 100
    assert r["seconds"] == pytest.approx(0.06013) and r["mean_ms"] == pytest.approx(1.44)


def test_parse_h2load_refuses_what_it_does_not_understand() -> None:
    with pytest.raises(harness.H2loadOutputError, match="no request count"):
        harness.parse_h2load("starting benchmark...\nNo protocol negotiated. Aborted\n")
    cut = H2LOAD.split("time for request")[0]
    with pytest.raises(harness.H2loadOutputError, match="time for request"):
        harness.parse_h2load(cut)


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
configs = _load("configs")
PROFILES = ["plain", "log", "features"]


def _run(cmd: list[str]) -> None:
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("profile", PROFILES)
def test_nginx_configs_parse(tmp_path: Path, profile: str) -> None:
    conf = tmp_path / "nginx.conf"
    conf.write_text(
        configs.nginx_config("http", 18080, [18081, 18082, 18083], tmp_path, profile, 18090)
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
        configs.haproxy_config("http", 18080, [18081, 18082], tmp_path, 100, profile, 18090)
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
    conf.write_text(configs.usher_config("http", 18080, [18081, 18082], tmp_path, profile, 18090))
    _run([sys.executable, "-m", "usher", "check", "-c", str(conf)])
    text = conf.read_text()
    if profile == "features":
        for line in ("algorithm: least_connections", "type: http, interval: 1", "type: cookie"):
            assert line in text
        assert "rate: 1000000/s" in text and "admin: {bind: 127.0.0.1:18090}" in text


@pytest.mark.parametrize("profile", ["plain", "features"])
def test_per_request_configs_check(tmp_path: Path, profile: str) -> None:
    conf = tmp_path / "usher.yaml"
    conf.write_text(per_request.config_text(profile, 18080, [18081]))
    _run([sys.executable, "-m", "usher", "check", "-c", str(conf)])
    text = conf.read_text()
    assert "admin:" not in text  # its start under valgrind would take minutes
    if profile == "features":
        assert "sticky: {type: cookie" in text and "rate: 1000000/s" in text


def test_per_request_plain_config_takes_the_algorithm_and_every_backend(tmp_path: Path) -> None:
    conf = tmp_path / "usher.yaml"
    ports = [18081, 18082, 18083]
    conf.write_text(per_request.config_text("plain", 18080, ports, "least_connections"))
    _run([sys.executable, "-m", "usher", "check", "-c", str(conf)])
    text = conf.read_text()
    assert "algorithm: least_connections" in text
    assert all(f"127.0.0.1:{port}" in text for port in ports)


def test_h2_configs_parse(tmp_path: Path) -> None:
    # nginx -t and haproxy -c read the certificate files: real ones, as the benchmark makes.
    proxies.make_certificate(tmp_path)
    conf = tmp_path / "nginx.conf"
    conf.write_text(configs.nginx_config("h2", 18080, [18081, 18082], tmp_path))
    _run(["nginx", "-t", "-q", "-e", str(tmp_path / "err"), "-c", str(conf)])
    assert "listen 127.0.0.1:18080 ssl http2;" in conf.read_text()
    conf = tmp_path / "haproxy.cfg"
    conf.write_text(configs.haproxy_config("h2", 18080, [18081, 18082], tmp_path, 100))
    _run(["haproxy", "-c", "-q", "-f", str(conf)])
    assert f"bind 127.0.0.1:18080 ssl crt {tmp_path}/combined.pem alpn h2,http/1.1" in (
        conf.read_text()
    )
    conf = tmp_path / "usher.yaml"
    conf.write_text(configs.usher_config("h2", 18080, [18081, 18082], tmp_path))
    _run([sys.executable, "-m", "usher", "check", "-c", str(conf)])
    assert "protocol: https" in conf.read_text()  # where http2 is on by default


@pytest.mark.parametrize("http2", [True, False])
def test_the_http2_check_and_h2load_through_usher(tmp_path: Path, http2: bool) -> None:
    # End to end, bounded (200 requests): usher on https before a demo backend. With http2 off
    # ALPN picks HTTP/1.1, which the check must refuse before anything is measured.
    proxies.make_certificate(tmp_path)
    cpus = ",".join(map(str, sorted(os.sched_getaffinity(0))))
    backend, port = proxies.free_port(), proxies.free_port()
    text = configs.usher_config("h2", port, [backend], tmp_path)
    if not http2:
        text = text.replace("    protocol: https\n", "    protocol: https\n    http2: false\n")
    (tmp_path / "usher.yaml").write_text(text)
    cmd = [*proxies.USHER, "backend", "--port", str(backend)]
    running = proxies.Running(
        "usher", port, extra=[proxies.spawn(cmd, cpus, backend, tmp_path / "b.log")]
    )
    try:
        cmd = [
            *proxies.USHER,
            "run",
            "-c",
            str(tmp_path / "usher.yaml"),
            "--workers",
            "1",
            "--no-access-log",
        ]
        running.proc = proxies.spawn(cmd, cpus, port, tmp_path / "usher.log")
        if not http2:
            with pytest.raises(proxies.CheckFailed, match=r"status '1\.1 200'"):
                proxies.check_http2(port)
            return
        proxies.check_http2(port)
        r = harness.parse_h2load(proxies.run_h2load(port, 2, "-n200", 10))
        assert (r["requests"], r["errors"]) == (200, 0)
        assert r["rps"] > 0 and 0 < r["min_ms"] <= r["mean_ms"] <= r["max_ms"]
    finally:
        running.stop()
