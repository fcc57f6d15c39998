"""usher against nginx and HAProxy, side by side, in one run (design.md §6; docs/performance.md).

Backends (nginx, or `usher backend` for WebSocket) and the load client run on one core; the
balancer under test runs alone on another (taskset). Candidates: direct (no balancer), nginx
(1 worker, upstream keepalive), HAProxy (1 thread, http-reuse always) and usher (--workers 1),
all doing plain round robin over 3 backends with access logs off, except in two scenarios:
get-log (each one's access log on, to a file) and features (least connections, health checks,
admin, a rate limit, cookie persistence, a header set). The h2 scenario is HTTP/2 over TLS to
the balancers (h2load; HTTP/1.1 to the backends). Rounds are interleaved
(A B C D A B C D ...) and the table shows medians, with ratios to nginx. The candidates' configs
are bench/configs.py's.

    python bench/proxies.py [--scenarios get,close,...] [--rounds 3] [--duration 5] [--json]

Needs nginx, haproxy, wrk and h2load: `apt-get install nginx haproxy wrk nghttp2-client` (and
libnginx-mod-stream for nginx in the tcp scenario).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from clients import idle_connections, raise_fd_limit, websocket_pingpong
from harness import (
    answer_problems,
    cpu_us_per_request,
    medians,
    parse_h2load,
    parse_wrk,
    ratio,
    tree_cpu_seconds,
    tree_rss_kb,
)

from configs import (
    FEATURE_HEADER,
    NGINX_STREAM_MODULE,
    backend_nginx_config,
    haproxy_config,
    nginx_config,
    usher_config,
)

USHER = [sys.executable, "-m", "usher"]
CANDIDATES = ["direct", "nginx", "haproxy", "usher"]
BALANCERS = ("nginx", "haproxy", "usher")
# Extra usher candidates "usher@NAME" and the environment each runs with: --usher-baseline
# (another copy of usher's source first on the path) and --usher-pure (USHER_PURE=1).
USHER_VARIANTS: dict[str, dict[str, str]] = {}
MIB = 1024 * 1024
# Connections each balancer accepts: room for the memory scenario's idle clients.
MAXCONN = 11_000
# The h2 scenario: streams h2load keeps open on each connection (h2load -m).
H2_STREAMS = 10


@dataclass(frozen=True)
class Scenario:
    name: str
    title: str
    mode: str  # what the balancers speak: http | https | h2 (over TLS, ALPN) | tcp | ws
    path: str = "/"
    connections: int = 50
    wrk_args: tuple[str, ...] = ()
    lua: str | None = None
    default: bool = True
    candidates: tuple[str, ...] = tuple(CANDIDATES)
    # What the balancers do beyond round robin with logs off: plain | log (access log on, each
    # candidate's default format, to a file) | features (least connections, active health checks,
    # admin/stats, a rate limit, cookie persistence, a response header set; docs/performance.md).
    profile: str = "plain"


SCENARIOS = {
    s.name: s
    for s in [
        Scenario("get", "small keep-alive GET", "http"),
        Scenario(
            "get-log",
            "small keep-alive GET, access log on (to a file)",
            "http",
            candidates=BALANCERS,
            profile="log",
        ),
        Scenario(
            "features",
            "GET with features: least conn, health checks, admin, rate limit, cookie, header",
            "http",
            candidates=BALANCERS,
            profile="features",
        ),
        Scenario("close", "Connection: close", "http", wrk_args=("-H", "Connection: close")),
        Scenario("download", "1 MiB download", "http", path="/1m", connections=10),
        Scenario(
            "upload",
            "1 MiB upload (POST)",
            "http",
            path="/upload",
            connections=10,
            lua='wrk.method = "POST"\nwrk.body = string.rep("x", 1048576)\n'
            'wrk.headers["Content-Type"] = "application/octet-stream"\n',
        ),
        Scenario(
            "tls",
            "TLS termination (keep-alive)",
            "https",
            candidates=BALANCERS,  # the backends speak plain HTTP
        ),
        Scenario(
            "h2",
            f"HTTP/2 over TLS, small GET ({H2_STREAMS} streams per connection)",
            "h2",
            connections=10,
            candidates=BALANCERS,
        ),
        Scenario("ws", "WebSocket echo messages (32 B)", "ws"),
        Scenario(
            "memory",
            "idle keep-alive connections: RSS",
            "http",
            candidates=BALANCERS,
        ),
        # L4: HTTP through a TCP proxy (nginx needs its stream module, libnginx-mod-stream); a
        # candidate that cannot do it is skipped with the reason.
        Scenario("tcp", "L4 TCP (HTTP through it)", "tcp"),
    ]
}


# Processes


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(port: int, proc: subprocess.Popen[bytes], log: Path, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(
                f"exited with {proc.returncode} before listening on {port}: "
                + log.read_text(errors="replace")[-800:]
            )
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port}")


@dataclass
class Running:
    name: str
    port: int
    proc: subprocess.Popen[bytes] | None = None  # None: direct, nothing in between
    extra: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def stop(self) -> None:
        for proc in [p for p in (self.proc, *self.extra) if p is not None]:
            if proc.poll() is None:
                # nginx: SIGQUIT is its graceful stop, SIGTERM its fast one; we want fast.
                proc.send_signal(signal.SIGTERM)
        for proc in [p for p in (self.proc, *self.extra) if p is not None]:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def spawn(
    cmd: list[str], cpus: str, port: int, log: Path, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        proc = subprocess.Popen(
            ["taskset", "-c", cpus, *cmd], stdout=out, stderr=subprocess.STDOUT, env=env
        )
    try:
        wait_for(port, proc, log)
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    return proc


class Unsupported(Exception):
    """This candidate cannot run this scenario (e.g. a module or listener type is missing)."""


class CheckFailed(Exception):
    """A candidate's first answer is not the one its scenario expects (status, header, log)."""


def access_log_path(name: str, scenario: Scenario, work: Path) -> Path:
    """Where a candidate's access log goes: nginx's own file; HAProxy's and usher's standard
    output, which spawn() sends to the candidate's log file."""
    if name == "nginx":
        return work / "nginx-access.log"
    return work / f"{name}-{scenario.name}.log"


def start_candidate(
    name: str, scenario: Scenario, backends: list[int], work: Path, cpus: str
) -> Running:
    if name == "direct":
        return Running(name, backends[0])
    mode, profile = scenario.mode, scenario.profile
    port, admin_port = free_port(), free_port()
    cfg = work / f"{name}-{scenario.name}.conf"
    log = work / f"{name}-{scenario.name}.log"
    if name == "nginx":
        if mode == "tcp" and not NGINX_STREAM_MODULE.exists():
            raise Unsupported("nginx has no stream module (apt-get install libnginx-mod-stream)")
        cfg.write_text(nginx_config(mode, port, backends, work, profile, admin_port, MAXCONN))
        cmd = ["nginx", "-e", str(work / "nginx.err"), "-c", str(cfg), "-g", "daemon off;"]
    elif name == "haproxy":
        cfg.write_text(haproxy_config(mode, port, backends, work, MAXCONN, profile, admin_port))
        cmd = ["haproxy", "-db", "-f", str(cfg)]
    else:
        cfg = cfg.with_suffix(".yaml")
        cfg.write_text(usher_config(mode, port, backends, work, profile, admin_port))
        check = subprocess.run(
            [*USHER, "check", "-c", str(cfg)], capture_output=True, text=True, check=False
        )
        if check.returncode != 0:
            raise Unsupported("usher: " + (check.stdout + check.stderr).strip().splitlines()[-1])
        cmd = [*USHER, "run", "-c", str(cfg), "--workers", "1"]
        if profile != "log":
            cmd.append("--no-access-log")
        if name in USHER_VARIANTS:
            # Another copy of usher's source (e.g. `git archive` of an older commit) first on
            # the path, or this one uncompiled: before/after figures from one interleaved run.
            env = {**os.environ, **USHER_VARIANTS[name]}
            return Running(name, port, spawn(cmd, cpus, port, log, env))
    return Running(name, port, spawn(cmd, cpus, port, log))


def make_certificate(work: Path) -> None:
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
            "-nodes", "-days", "2", "-subj", "/CN=localhost",
            "-keyout", str(work / "key.pem"), "-out", str(work / "cert.pem"),
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    (work / "combined.pem").write_text(
        (work / "cert.pem").read_text() + (work / "key.pem").read_text()
    )


# Measurements


def check_candidate(name: str, scenario: Scenario, target: Running, work: Path) -> None:
    """One request through curl before measuring: 200, the features' header and cookie, the
    access-log line; HTTP/2 in the h2 scenario. Raises CheckFailed saying what is wrong."""
    if scenario.mode == "h2":
        return check_http2(target.port)
    if scenario.profile == "plain" or name == "direct":
        return
    marker = f"/?bench-check={name}"
    done = subprocess.run(
        ["curl", "-sS", "-o", "/dev/null", "-D", "-", "--max-time", "5",
         f"http://127.0.0.1:{target.port}{marker}"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    expected: dict[str, str | None] = {}
    if scenario.profile == "features":
        expected = {FEATURE_HEADER[0]: FEATURE_HEADER[1], "Set-Cookie": None}
    problems = answer_problems(done.stdout, 200, expected)
    if done.returncode != 0:
        problems.insert(0, f"curl exited with {done.returncode}: {done.stderr.strip()}")
    if not problems and scenario.profile == "log":
        log = access_log_path(name, scenario, work)
        deadline = time.monotonic() + 3.0  # usher writes its lines in batches (0.25 s)
        while not (log.exists() and marker in log.read_text(errors="replace")):
            if time.monotonic() > deadline:
                problems.append(f"no access-log line for {marker} in {log.name}")
                break
            time.sleep(0.05)
    if problems:
        raise CheckFailed("; ".join(problems))


def check_http2(port: int) -> None:
    """curl --http2 over TLS: the balancer must pick h2 by ALPN and answer 200 (not fall back
    to HTTP/1.1, which h2load would count as failures and wrk would never notice)."""
    done = subprocess.run(
        ["curl", "-sS", "-k", "--http2", "-o", "/dev/null", "-w", "%{http_version} %{http_code}",
         "--max-time", "5", f"https://127.0.0.1:{port}/"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    if done.returncode != 0 or done.stdout != "2 200":
        got = done.stderr.strip() or f"HTTP version and status {done.stdout!r}"
        raise CheckFailed(f"curl --http2: {got}, expected HTTP/2 and 200")


def run_h2load(port: int, connections: int, amount: str, seconds: float) -> str:
    """h2load over TLS (ALPN h2): GETs of / on `connections` connections with H2_STREAMS streams
    open on each, for `amount`: -nCOUNT requests, or -DSECONDS."""
    cmd = ["h2load", f"-c{connections}", f"-m{H2_STREAMS}", "-t1", amount]
    cmd.append(f"https://127.0.0.1:{port}/")
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds * 10 + 30)
    if done.returncode != 0:
        raise RuntimeError(f"h2load failed: {done.stderr.strip() or done.stdout.strip()}")
    return done.stdout


def run_wrk(scenario: Scenario, port: int, duration: int, work: Path, scheme: str) -> str:
    cmd = [
        "wrk",
        "-t1",
        f"-c{scenario.connections}",
        f"-d{duration}s",
        "--latency",
        "--timeout",
        "5s",
    ]
    cmd += list(scenario.wrk_args)
    if scenario.lua is not None:
        script = work / f"{scenario.name}.lua"
        script.write_text(scenario.lua)
        cmd += ["-s", str(script)]
    cmd.append(f"{scheme}://127.0.0.1:{port}{scenario.path}")
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 30)
    if done.returncode != 0:
        raise RuntimeError(f"wrk failed: {done.stderr.strip() or done.stdout.strip()}")
    return done.stdout


def measure(
    scenario: Scenario, target: Running, args: argparse.Namespace, work: Path, warm: bool
) -> dict[str, float]:
    pid = target.pid
    cpu = (lambda: tree_cpu_seconds(pid)) if pid is not None else (lambda: 0.0)
    if scenario.name == "memory":
        assert pid is not None
        return asyncio.run(
            idle_connections(target.port, args.idle_connections, lambda: tree_rss_kb(pid))
        )
    if scenario.mode == "ws":
        marks: list[float] = []
        result = asyncio.run(
            websocket_pingpong(
                target.port,
                connections=scenario.connections,
                warmup=0.5 if warm else 0.2,
                duration=args.duration,
                on_window=lambda _opening: marks.append(cpu()),
            )
        )
    elif scenario.mode == "h2":
        # A count of requests, not -D: a timed run stops mid-stream and counts the streams in
        # flight then as failed. A 1 s timed probe (its failures unread) gives the rate, so the
        # count lasts about --duration; it also warms up as wrk's first second does.
        probe = parse_h2load(run_h2load(target.port, scenario.connections, "-D1", 1))
        count = f"-n{max(1000, round(probe['rps'] * args.duration))}"
        before = cpu()
        result = parse_h2load(run_h2load(target.port, scenario.connections, count, args.duration))
        marks = [before, cpu()]
    else:
        scheme = "https" if scenario.mode == "https" else "http"
        if warm:  # connections to the backends, caches, first-use allocations
            run_wrk(scenario, target.port, 1, work, scheme)
        before = cpu()
        result = parse_wrk(run_wrk(scenario, target.port, args.duration, work, scheme))
        marks = [before, cpu()]
    result["cpu_us"] = cpu_us_per_request(marks[0], marks[1], result["requests"]) if pid else 0.0
    return result


def run_scenario(
    scenario: Scenario,
    backends: list[int],
    args: argparse.Namespace,
    work: Path,
    log: Callable[[str], None],
) -> dict[str, dict[str, Any]]:
    names = [
        c
        for c in args.candidates
        if c in scenario.candidates or (c in USHER_VARIANTS and "usher" in scenario.candidates)
    ]
    skipped: dict[str, str] = {}
    samples: dict[str, list[dict[str, float]]] = {n: [] for n in names}
    fresh_each_round = scenario.name == "memory"  # RSS from a clean start, not after the last run
    running: dict[str, Running] = {}
    try:
        for round_no in range(args.rounds):
            for name in names:
                if name in skipped:
                    continue
                if name not in running:
                    try:
                        running[name] = start_candidate(
                            name, scenario, backends, work, args.balancer_cpu
                        )
                    except Unsupported as exc:
                        skipped[name] = str(exc)
                        log(f"{scenario.name}: {name} skipped: {exc}")
                        continue
                    try:
                        check_candidate(name, scenario, running[name], work)
                    except CheckFailed as exc:
                        skipped[name] = f"FAILED its check: {exc}"
                        log(f"{scenario.name}: {name} FAILED its check: {exc}")
                        running.pop(name).stop()
                        continue
                first = round_no == 0 or fresh_each_round
                samples[name].append(measure(scenario, running[name], args, work, first))
                log(f"{scenario.name} round {round_no + 1}: {name} {_brief(samples[name][-1])}")
                if scenario.profile == "features" and samples[name][-1]["errors"]:
                    log(
                        f"{scenario.name}: {name}: errors (a 429 or 503 would be its rate limit "
                        "or health checks refusing: none are expected)"
                    )
                if fresh_each_round:
                    running.pop(name).stop()
    finally:
        for target in running.values():
            target.stop()
    table: dict[str, dict[str, Any]] = {}
    for name in names:
        if name in skipped:
            table[name] = {"skipped": skipped[name]}
            continue
        row: dict[str, Any] = medians(samples[name])
        row["rounds"] = len(samples[name])
        table[name] = row
    ref = table.get("nginx", {})
    for row in table.values():
        if "skipped" in row:
            continue
        latency = latency_columns(scenario.mode)[1]
        keys = ("kb_per_connection",) if scenario.name == "memory" else ("cpu_us", "rps", latency)
        row["vs_nginx"] = {k: ratio(row[k], ref.get(k, 0.0)) for k in keys}
    return table


def _brief(r: dict[str, float]) -> str:
    if "kb_per_connection" in r:
        return f"{r['kb_per_connection']:.1f} KiB/conn, {r['errors']:.0f} errors"
    key = latency_columns("h2" if "mean_ms" in r else "http")[1]
    return f"{r['rps']:.0f} req/s, {r['cpu_us']:.0f} us/req, {key.split('_')[0]} {r[key]:.2f} ms"


# Output


def latency_columns(mode: str) -> tuple[tuple[tuple[str, str], ...], str]:
    """The latency columns (key, heading) of a scenario's rows and the key compared with nginx:
    wrk's percentiles, or what h2load gives (min, max, mean and sd of a request's time)."""
    if mode == "h2":
        return (("mean_ms", "mean ms"), ("sd_ms", "sd ms"), ("max_ms", "max ms")), "mean_ms"
    return (("p50_ms", "p50 ms"), ("p99_ms", "p99 ms")), "p99_ms"


def print_table(results: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=max(Console().width, 150))
    for name, rows in results["scenarios"].items():
        scenario = SCENARIOS[name]
        table = Table(title=scenario.title, title_justify="left")
        table.add_column("candidate")
        if name == "memory":
            cols = ["connections", "RSS before MiB", "RSS after MiB", "KiB/conn", "x nginx"]
        else:
            latency, compared = latency_columns(scenario.mode)
            cols = ["req/s", "CPU us/req", *(label for _, label in latency), "errors", "MiB/s"]
            cols += ["CPU x nginx", "req/s x nginx", f"{compared.split('_')[0]} x nginx"]
        for col in cols:
            table.add_column(col, justify="right")
        for cand, row in rows.items():
            if "skipped" in row:
                table.add_row(cand, f"skipped: {row['skipped']}")
                continue
            vs = row["vs_nginx"]
            if name == "memory":
                cells = [
                    f"{row['connections']:.0f}",
                    f"{row['rss_before_kb'] / 1024:.1f}",
                    f"{row['rss_after_kb'] / 1024:.1f}",
                    f"{row['kb_per_connection']:.1f}",
                    _x(vs["kb_per_connection"]),
                ]
            else:
                direct = cand == "direct"
                cells = [
                    f"{row['rps']:.0f}",
                    "-" if direct else f"{row['cpu_us']:.1f}",
                    *(f"{row[key]:.2f}" for key, _ in latency),
                    f"{row['errors']:.0f}",
                    f"{row['bytes_per_s'] / MIB:.1f}" if row["bytes_per_s"] else "-",
                    "-" if direct else _x(vs["cpu_us"]),
                    _x(vs["rps"]),
                    _x(vs[compared]),
                ]
            table.add_row(cand, *cells)
        console.print(table)
    m = results["machine"]
    console.print(
        f"{m['cpus']} CPUs ({m['cpu']}); balancer on CPU {results['balancer_cpu']}, backends and "
        f"client on CPU {results['client_cpu']}; {results['duration']}s x {results['rounds']} "
        "interleaved rounds, medians; CPU = utime+stime of the balancer's process tree / requests"
    )
    console.print(f"usher: {results['usher']}")


def _usher_version() -> str:
    """`usher version` of the `usher` candidate: the version and whether it runs compiled."""
    result = subprocess.run([*USHER, "version"], capture_output=True, text=True, check=False)
    return result.stdout.strip() or result.stderr.strip()


def _x(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    defaults = ",".join(s.name for s in SCENARIOS.values() if s.default)
    parser.add_argument(
        "--scenarios", default=defaults, help=f"comma-separated, of: {', '.join(SCENARIOS)}"
    )
    parser.add_argument("--candidates", default=",".join(CANDIDATES))
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (medians)")
    parser.add_argument("--duration", type=int, default=5, help="seconds per measurement")
    parser.add_argument("--idle-connections", type=int, default=10_000)
    parser.add_argument("--json", action="store_true", help="print JSON instead of tables")
    parser.add_argument(
        "--usher-baseline",
        metavar="NAME=SRC",
        action="append",
        default=[],
        help="also run the usher in SRC (a src/ dir, e.g. from `git archive`) as usher@NAME; "
        "repeatable: before/after figures of a change from one interleaved run",
    )
    parser.add_argument(
        "--usher-pure",
        action="store_true",
        help="also run this usher with USHER_PURE=1 (its hot path uncompiled) as usher@pure",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a short check that every scenario runs: 1 round of 2 s, 1,000 idle connections",
    )
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.duration = 1, 2
        args.idle_connections = min(args.idle_connections, 1000)

    # The package that brings each tool, for the install line.
    packages = {"nginx": "nginx", "haproxy": "haproxy", "wrk": "wrk"}
    packages |= {"taskset": "util-linux", "openssl": "openssl", "h2load": "nghttp2-client"}
    missing = [tool for tool in packages if shutil.which(tool) is None]
    if missing:
        extra = " ".join(
            packages[t] for t in missing if packages[t] not in ("nginx", "haproxy", "wrk")
        )
        print(
            f"missing: {', '.join(missing)}. Install them with: "
            f"apt-get install nginx haproxy wrk{' ' + extra if extra else ''}",
            file=sys.stderr,
        )
        return 1
    scenarios = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    unknown = [s for s in scenarios if s not in SCENARIOS]
    args.candidates = [c.strip() for c in args.candidates.split(",") if c.strip()]
    for spec in args.usher_baseline:
        label, sep, src = spec.partition("=")
        if not sep or not Path(src, "usher", "__init__.py").is_file():
            parser.error(f"--usher-baseline {spec}: expected NAME=SRC, SRC holding usher/")
        USHER_VARIANTS[f"usher@{label}"] = {"PYTHONPATH": str(Path(src).resolve())}
        args.candidates.append(f"usher@{label}")
    if args.usher_pure:
        USHER_VARIANTS["usher@pure"] = {"USHER_PURE": "1"}
        args.candidates.append("usher@pure")
    unknown += [c for c in args.candidates if c not in CANDIDATES and c not in USHER_VARIANTS]
    if unknown or args.rounds < 1 or args.duration <= 0:
        parser.error(
            f"unknown scenario or candidate: {', '.join(unknown)}"
            if unknown
            else "--rounds must be >= 1 and --duration > 0"
        )
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        print("the benchmark needs 2 CPUs: one for the balancer, one for the rest", file=sys.stderr)
        return 1
    args.balancer_cpu, client_cpus = str(cpus[-1]), ",".join(map(str, cpus[:-1]))
    # This process (wrk, the Python clients) and the backends stay off the balancer's core.
    os.sched_setaffinity(0, set(cpus[:-1]))
    global MAXCONN
    MAXCONN = max(MAXCONN, args.idle_connections + 1000)
    # The idle clients (here) and each balancer hold one descriptor per connection.
    raise_fd_limit(args.idle_connections + 2000 if "memory" in scenarios else 0)

    def log(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    results: dict[str, Any] = {
        "machine": {"cpus": len(cpus), "cpu": _cpu_model(), "python": platform.python_version()},
        "balancer_cpu": args.balancer_cpu,
        "client_cpu": client_cpus,
        "rounds": args.rounds,
        "duration": args.duration,
        "command": " ".join(["python", "bench/proxies.py", *sys.argv[1:]]),
        "usher": _usher_version(),
        "scenarios": {},
    }
    with tempfile.TemporaryDirectory(prefix="usher-bench-") as tmp:
        work = Path(tmp)
        (work / "www").mkdir()
        (work / "www" / "1m").write_bytes(b"x" * MIB)
        make_certificate(work)
        http_ports = [free_port() for _ in range(3)]
        backend_log = work / "backends.log"
        (work / "backends.conf").write_text(backend_nginx_config(http_ports, work))
        servers: list[subprocess.Popen[bytes]] = []
        try:
            servers.append(
                spawn(
                    ["nginx", "-e", str(work / "backends.err"), "-c", str(work / "backends.conf"),
                     "-g", "daemon off;"],
                    client_cpus, http_ports[0], backend_log,
                )
            )  # fmt: skip
            ws_ports: list[int] = []
            if any(SCENARIOS[s].mode == "ws" for s in scenarios):
                ws_ports = [free_port() for _ in range(3)]
                for i, p in enumerate(ws_ports):
                    cmd = [*USHER, "backend", "--port", str(p), "--name", f"b{i}"]
                    servers.append(spawn(cmd, client_cpus, p, work / f"ws{i}.log"))
            for name in scenarios:
                scenario = SCENARIOS[name]
                backends = ws_ports if scenario.mode == "ws" else http_ports
                results["scenarios"][name] = run_scenario(scenario, backends, args, work, log)
        finally:
            for proc in servers:
                proc.terminate()
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        print_table(results)
    failed = [
        f"{scenario}: {name}"
        for scenario, rows in results["scenarios"].items()
        for name, row in rows.items()
        if str(row.get("skipped", "")).startswith("FAILED")
    ]
    if failed:
        print(f"failed their check: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONDONTWRITEBYTECODE", "1")
    try:
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    except ImportError:
        pass
    raise SystemExit(main())
