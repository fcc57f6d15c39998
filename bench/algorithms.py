"""Balancing quality with one slow backend: p50/p99 per usher algorithm, and nginx's round robin
and least_conn, in one run with interleaved rounds.

Three demo backends answer after 2 ms, one of them after 20 ms (10x slower). wrk drives each
candidate in turn; rounds are interleaved (A B C ... A B C) and the table shows medians, with
the share of the requests each backend served (counted by the backends themselves).

    python bench/algorithms.py [--rounds 3] [--duration 5] [--connections 32] [--json]
                               [--only "usher p2c" --only "nginx least_conn"]

Needs wrk (and nginx for its rows): `apt-get install wrk nginx`.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

USHER = [sys.executable, "-m", "usher"]
ALGORITHMS = [
    "round_robin",
    "least_connections",
    "least_response_time",
    "p2c",
    "random",
    "ip_hash",
    "consistent_hash",
    "resource",
]
FAST, SLOW = "2ms", "20ms"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(port: int, proc: subprocess.Popen[bytes] | None = None, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"exited with {proc.returncode} before listening on {port}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port}")


# What usher prints once its workers serve: it listens before, from the control process, and
# a connection made then waits for a worker (seconds, on a busy machine: wrk counted timeouts).
SERVING = b" workers serving"


def spawns_workers(cmd: list[str]) -> bool:
    """Whether `cmd` is an `usher run` with worker processes (one per core unless --workers)."""
    if cmd[: len(USHER) + 1] != [*USHER, "run"]:
        return False
    if "--workers" in cmd[:-1]:
        return int(cmd[cmd.index("--workers") + 1]) > 1
    return (os.cpu_count() or 1) > 1


@contextmanager
def running(
    cmd: list[str], port: int, log: Path, timeout: float = 30.0
) -> Iterator[subprocess.Popen[bytes]]:
    """`cmd` started with its output in `log`, once it listens on `port` (and, for usher, once
    its workers serve)."""
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_for(port, proc, timeout)
        deadline = time.monotonic() + timeout
        while spawns_workers(cmd) and SERVING not in log.read_bytes():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"its workers did not start: {log.read_text()[-500:]}")
            time.sleep(0.05)
        yield proc
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=max(timeout, 10))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def usher_config(port: int, backends: list[int], algorithm: str) -> str:
    lines = [
        f"listeners: [{{name: web, bind: 127.0.0.1:{port}, pool: p}}]",
        "pools:",
        "  p:",
        f"    algorithm: {algorithm}",
        "    backends:",
        *[f"      - {{address: 127.0.0.1:{b}}}" for b in backends],
    ]
    if algorithm == "resource":
        lines.append("    agent: {path: /load, interval: 200ms}")
    return "\n".join(lines) + "\n"


def nginx_config(port: int, backends: list[int], least_conn: bool, workdir: Path) -> str:
    servers = "\n".join(f"        server 127.0.0.1:{b};" for b in backends)
    return f"""
worker_processes 1;
pid {workdir}/nginx.pid;
error_log {workdir}/nginx.err;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {workdir}/body;
    proxy_temp_path {workdir}/proxy;
    fastcgi_temp_path {workdir}/fastcgi;
    uwsgi_temp_path {workdir}/uwsgi;
    scgi_temp_path {workdir}/scgi;
    upstream backends {{
        {"least_conn;" if least_conn else ""}
{servers}
        keepalive 64;
    }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://backends;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}
}}
"""


def wrk(port: int, duration: int, connections: int) -> dict[str, float]:
    out = subprocess.run(
        [
            "wrk",
            "-t1",
            f"-c{connections}",
            f"-d{duration}s",
            "--latency",
            f"http://127.0.0.1:{port}/",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    result = {"rps": float(re.search(r"Requests/sec:\s+([0-9.]+)", out).group(1))}  # type: ignore[union-attr]
    for pct in ("50", "99"):
        value, unit = re.search(rf"\s{pct}%\s+([0-9.]+)(us|ms|s)", out).groups()  # type: ignore[union-attr]
        result[f"p{pct}_ms"] = float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    socket_errors = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out
    )
    result["errors"] = float(errors.group(1)) if errors else 0.0
    if socket_errors:
        result["errors"] += sum(float(x) for x in socket_errors.groups())
    return result


def served(port: int) -> int:
    """How many requests the demo backend on `port` has answered (its /conn report)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/conn", timeout=10) as answer:
        return int(json.load(answer)["requests_total"])


def measure(
    candidate: str, ports: list[int], workdir: Path, args: argparse.Namespace
) -> dict[str, float]:
    """wrk's figures for `candidate`, and `share<i>`: the share of the requests backend i
    served meanwhile (the warm-up's few included)."""
    before = [served(p) for p in ports]
    result = _run(candidate, ports, workdir, args)
    counts = [served(p) - b for p, b in zip(ports, before, strict=True)]
    total = sum(counts) or 1
    for i, count in enumerate(counts):
        result[f"share{i}"] = count / total
    return result


def _run(
    candidate: str, ports: list[int], workdir: Path, args: argparse.Namespace
) -> dict[str, float]:
    for attempt in (1, 2):  # a free port can be taken by someone else before we bind it
        port = free_port()
        if candidate.startswith("usher "):
            algorithm = candidate.split(" ", 1)[1]
            cfg = workdir / f"{algorithm}.yaml"
            cfg.write_text(usher_config(port, ports, algorithm))
            cmd = [*USHER, "run", "-c", str(cfg), "--no-access-log"]
        else:
            cfg = workdir / "nginx.conf"
            cfg.write_text(nginx_config(port, ports, "least_conn" in candidate, workdir))
            cmd = ["nginx", "-c", str(cfg), "-g", "daemon off;"]
        try:
            with running(cmd, port, workdir / "candidate.log"):
                time.sleep(0.5)  # let agents report, connections warm up
                return wrk(port, args.duration, args.connections)
        except (RuntimeError, TimeoutError) as exc:
            if attempt == 2:
                raise RuntimeError(f"{candidate}: {exc}") from exc
    raise AssertionError("unreachable")


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=int, default=5, help="seconds per measurement")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument(
        "--only",
        action="append",
        metavar="CANDIDATE",
        help='measure only this candidate ("usher p2c", "nginx least_conn"); repeatable',
    )
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        print("wrk is missing: apt-get install wrk nginx", file=sys.stderr)
        return 1
    have_nginx = shutil.which("nginx") is not None
    if not have_nginx:
        print("nginx is missing (apt-get install nginx): its rows are skipped", file=sys.stderr)

    ports = [free_port() for _ in range(3)]
    latencies = [FAST, FAST, SLOW]
    candidates: list[str] = [f"usher {a}" for a in ALGORITHMS]
    if have_nginx:
        candidates += ["nginx round robin", "nginx least_conn"]
    if args.only:
        unknown = sorted(set(args.only) - set(candidates))
        if unknown:
            parser.error(f"unknown candidates {unknown} (known: {', '.join(candidates)})")
        candidates = [c for c in candidates if c in args.only]
    samples: dict[str, list[dict[str, float]]] = {c: [] for c in candidates}
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        backends = [
            subprocess.Popen(
                [*USHER, "backend", "--port", str(p), "--name", f"b{i}", "--latency", lat],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            for i, (p, lat) in enumerate(zip(ports, latencies, strict=True))
        ]
        try:
            for p in ports:
                wait_for(p)
            for round_no in range(args.rounds):
                for candidate in candidates:
                    r = measure(candidate, ports, workdir, args)
                    samples[candidate].append(r)
                    print(
                        f"round {round_no + 1}: {candidate}: {r['rps']:.0f} req/s, "
                        f"p99 {r['p99_ms']:.2f} ms, slow share {r[f'share{len(ports) - 1}']:.2%}",
                        file=sys.stderr,
                    )
        finally:
            for proc in backends:
                proc.terminate()
                proc.wait()

    table = {
        c: {k: statistics.median(s[k] for s in samples[c]) for k in samples[c][0]}
        for c in candidates
    }
    if args.json:
        print(
            json.dumps({"backends": latencies, "rounds": args.rounds, "results": table}, indent=2)
        )
        return 0
    print(
        f"three backends, latencies {', '.join(latencies)}; wrk -c{args.connections}, "
        f"{args.duration}s x {args.rounds} interleaved rounds, medians\n"
    )
    share_head = " / ".join(latencies)
    print(
        f"| {'candidate':<28} | {'req/s':>8} | {'p50 ms':>7} | {'p99 ms':>7} | {'errors':>6} "
        f"| share {share_head} |"
    )
    print(f"|{'-' * 30}|{'-' * 10}|{'-' * 9}|{'-' * 9}|{'-' * 8}|{'-' * (len(share_head) + 8)}|")
    for c, r in table.items():
        cells = (
            f"{r['rps']:>8.0f} | {r['p50_ms']:>7.2f} | {r['p99_ms']:>7.2f} | {r['errors']:>6.0f}"
        )
        shares = " / ".join(f"{r[f'share{i}']:.1%}" for i in range(len(ports)))
        print(f"| {c:<28} | {cells} | {shares} |")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONDONTWRITEBYTECODE", "1")
    raise SystemExit(main())
