"""What one small keep-alive GET costs usher: instructions (callgrind) and Python calls (cProfile),
compiled and pure (docs/performance.md, "Compiled hot path").

    python bench/per_request.py instructions [--requests 1000]   # needs valgrind
    python bench/per_request.py profile [--requests 1000] [--top 25]
    python bench/per_request.py profile --close   # each request on its own connection
    ... [--profile features] [--access-log]   # the `features` scenario's config (bench/proxies.py)
    ... --algorithm least_connections --backends 3   # the plain pool's algorithm and size

Each measurement runs `usher run --workers 1` as a user would (one pool of `--backends`
`usher backend`s, 1 by default, balanced by `--algorithm`, round robin by default; access log
off unless --access-log) under valgrind or cProfile, sends it WARMUP requests and then

either a few or `--requests` more on one keep-alive connection (with --close: each on a new
connection, with `Connection: close`), one at a time, and stops it with SIGTERM. Both runs pay
the same start, warm-up and shutdown, so the difference of their totals divided by the
difference of their request counts is the cost of one request alone. Instruction counts and
call counts do not depend on the machine's load, unlike time. To compare algorithms, give them
the same --backends (3, say): with one backend there is nothing to choose between, and the
choice's cost grows with the backends an algorithm looks at.
"""

from __future__ import annotations

import argparse
import json
import os
import pstats
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from algorithms import free_port, wait_for

from configs import usher_config

USHER = [sys.executable, "-m", "usher"]
WARMUP = 200
FEW = 100
REQUEST = b"GET / HTTP/1.1\r\nHost: bench\r\nUser-Agent: per-request\r\n\r\n"
CLOSING = b"GET / HTTP/1.1\r\nHost: bench\r\nUser-Agent: per-request\r\nConnection: close\r\n\r\n"
MODES = {"compiled": {}, "pure": {"USHER_PURE": "1"}}
# `python -c PROFILED OUT -m usher ARGS...`: usher under cProfile with a CPU-time clock (its
# default, wall time, also counts the time the process waits for a core on a busy machine).
PROFILED = """
import cProfile, runpy, sys, time
out, sys.argv = sys.argv[1], ["usher", *sys.argv[4:]]
profile = cProfile.Profile(time.process_time)
try:
    profile.runcall(runpy.run_module, "usher", run_name="__main__", alter_sys=True)
except SystemExit:
    pass
finally:
    profile.dump_stats(out)
"""


# The pure parts (tests/test_bench.py covers them).


def callgrind_total(text: str) -> int:
    """The instruction count (Ir) of a callgrind output file: its `totals:` or `summary:` line."""
    for line in text.splitlines():
        if line.startswith(("totals:", "summary:")):
            return int(line.split()[1])
    raise ValueError("no totals: or summary: line in the callgrind output")


FunctionKey = tuple[str, int, str]
Counts = Mapping[FunctionKey, tuple[int, float]]


def per_call_counts(stats: pstats.Stats) -> dict[FunctionKey, tuple[int, float]]:
    """Each function's (calls, own seconds) from cProfile stats."""
    raw: dict[FunctionKey, tuple[int, int, float, float, Any]] = stats.stats  # type: ignore[attr-defined]
    return {key: (nc, tt) for key, (_cc, nc, tt, _ct, _callers) in raw.items()}


def per_request(few: Counts, many: Counts, extra_requests: int) -> list[dict[str, Any]]:
    """Per function, the calls and own time that the extra requests added, per request, most
    expensive first."""
    rows = []
    for key, (calls, seconds) in many.items():
        base_calls, base_seconds = few.get(key, (0, 0.0))
        if calls > base_calls:
            filename, line, name = key
            where = f"{Path(filename).name}:{line}" if line else filename
            rows.append(
                {
                    "function": f"{name} ({where})" if line else name,
                    "calls": (calls - base_calls) / extra_requests,
                    "own_us": max(seconds - base_seconds, 0.0) / extra_requests * 1e6,
                }
            )
    rows.sort(key=lambda r: r["own_us"], reverse=True)
    return rows


# Running usher.


def get_many(port: int, count: int, timeout: float) -> None:
    """`count` GETs on one keep-alive connection, each answered 200 before the next is sent."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        buffer = b""
        for _ in range(count):
            sock.sendall(REQUEST)
            while b"\r\n\r\n" not in buffer:
                buffer += _recv(sock)
            head, _, buffer = buffer.partition(b"\r\n\r\n")
            if not head.startswith(b"HTTP/1.1 200"):
                raise RuntimeError(f"unexpected answer: {head[:80]!r}")
            length = next(
                int(line.split(b":", 1)[1])
                for line in head.split(b"\r\n")[1:]
                if line.lower().startswith(b"content-length:")
            )
            while len(buffer) < length:
                buffer += _recv(sock)
            buffer = buffer[length:]


def get_closing(port: int, count: int, timeout: float) -> None:
    """`count` GETs, each on a new connection with `Connection: close`, read to usher's close."""
    for _ in range(count):
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
            sock.sendall(CLOSING)
            answer = b""
            while chunk := sock.recv(65536):
                answer += chunk
            if not answer.startswith(b"HTTP/1.1 200"):
                raise RuntimeError(f"unexpected answer: {answer[:80]!r}")


def _recv(sock: socket.socket) -> bytes:
    data = sock.recv(65536)
    if not data:
        raise RuntimeError("usher closed the connection")
    return data


class Run:
    """What every measured run of one invocation shares: the environment, the access log,
    the config's profile (`plain`: one pool, balanced by `algorithm`; `features`: the
    benchmark's features scenario with those backends) and the number of backends."""

    def __init__(
        self,
        env: Mapping[str, str],
        access_log: bool,
        profile: str,
        close: bool = False,
        *,
        algorithm: str = "round_robin",
        backends: int = 1,
    ) -> None:
        self.env = env
        self.access_log = access_log
        self.profile = profile
        self.close = close  # each request on a new connection
        self.algorithm = algorithm  # the plain pool's
        self.backends = backends


def config_text(
    profile: str, port: int, backend_ports: list[int], algorithm: str = "round_robin"
) -> str:
    if profile == "features":
        text = usher_config("http", port, backend_ports, Path(), "features", free_port())
        # Without the admin API: idle, it costs a request nothing, and under valgrind its
        # start (FastAPI, pydantic's schemas) takes minutes.
        return "".join(line for line in text.splitlines(True) if not line.startswith("admin:"))
    addresses = ", ".join(f"{{address: 127.0.0.1:{p}}}" for p in backend_ports)
    return (
        f"listeners: [{{name: web, bind: 127.0.0.1:{port}, pool: p}}]\n"
        f"pools: {{p: {{algorithm: {algorithm}, backends: [{addresses}]}}}}\n"
    )


def measure_run(python: list[str], run: Run, requests: int, work: Path) -> None:
    """One `usher run` started by `python` (the interpreter, under valgrind, or cProfile's):
    warm-up, `requests` GETs, SIGTERM, wait for its exit."""
    backend_ports, port = [free_port() for _ in range(run.backends)], free_port()
    config = work / "usher.yaml"
    config.write_text(config_text(run.profile, port, backend_ports, run.algorithm))
    backends = [
        subprocess.Popen(
            [*USHER, "backend", "--port", str(backend_port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for backend_port in backend_ports
    ]
    flags = [] if run.access_log else ["--no-access-log"]
    cmd = [*python, "-m", "usher", "run", "-c", str(config), "--workers", "1", *flags]
    with (work / "usher.log").open("ab") as log:
        usher = subprocess.Popen(
            cmd, env={**os.environ, **run.env}, stdout=subprocess.DEVNULL, stderr=log
        )
    try:
        for backend_port, backend in zip(backend_ports, backends, strict=True):
            wait_for(backend_port, backend, 30)
        wait_for(port, usher, 600)  # python under valgrind starts slowly
        (get_closing if run.close else get_many)(port, WARMUP + requests, timeout=60)
        stop(usher, work, timeout=600)
    finally:
        kill_left(usher, *backends)


def stop(usher: subprocess.Popen[bytes], work: Path, timeout: float) -> None:
    """SIGTERM (so that a profile is written at exit), and a clean exit checked."""
    usher.send_signal(signal.SIGTERM)
    if usher.wait(timeout=timeout) != 0:
        raise RuntimeError(f"usher exited with {usher.returncode}: see {work / 'usher.log'}")


def kill_left(*procs: subprocess.Popen[bytes]) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def instructions(mode: str, requests: int, work: Path, run: Run) -> float:
    totals = []
    for count in (FEW, FEW + requests):
        out = work / f"callgrind.{mode}.{count}"
        valgrind = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", "--quiet"]
        measure_run([*valgrind, sys.executable], run, count, work)
        totals.append(callgrind_total(out.read_text()))
    return (totals[1] - totals[0]) / requests


def profile(mode: str, requests: int, work: Path, run: Run) -> list[dict[str, Any]]:
    counts = []
    for count in (FEW, FEW + requests):
        out = work / f"profile.{mode}.{count}"
        measure_run([sys.executable, "-c", PROFILED, str(out)], run, count, work)
        counts.append(per_call_counts(pstats.Stats(str(out))))
    return per_request(counts[0], counts[1], requests)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("what", choices=["instructions", "profile"])
    parser.add_argument("--requests", type=int, default=1000, help="requests measured")
    parser.add_argument("--modes", default="compiled,pure", help="compiled, pure or both")
    parser.add_argument("--access-log", action="store_true", help="leave the access log on")
    parser.add_argument(
        "--profile",
        choices=["plain", "features"],
        default="plain",
        help="the config: one pool (plain) or the features scenario's",
    )
    parser.add_argument(
        "--algorithm",
        default="round_robin",
        help="the plain pool's balancing algorithm (a config name: round_robin, ...)",
    )
    parser.add_argument(
        "--backends", type=int, default=1, help="backends in the pool (3 to compare algorithms)"
    )
    parser.add_argument(
        "--close", action="store_true", help="each request on a new connection (Connection: close)"
    )
    parser.add_argument("--top", type=int, default=25, help="functions shown by `profile`")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if any(m not in MODES for m in modes) or args.requests < 1:
        parser.error("--modes takes compiled and/or pure; --requests must be >= 1")
    if args.backends < 1:
        parser.error(f"--backends must be >= 1, not {args.backends}")
    if args.profile == "features" and args.algorithm != "round_robin":
        parser.error("--algorithm sets the plain profile's pool; `features` has its own")
    from usher.balancing import registered_names

    if args.algorithm not in registered_names():
        parser.error(f"--algorithm {args.algorithm!r}: known: {', '.join(registered_names())}")
    version = subprocess.run([*USHER, "version"], capture_output=True, text=True, check=True)
    if "compiled" in modes and "compiled" not in version.stdout:
        print(f"not compiled ({version.stdout.strip()}): run make first", file=sys.stderr)
        return 1
    results: dict[str, Any] = {
        "requests": args.requests,
        "access_log": args.access_log,
        "profile": args.profile,
        "close": args.close,
        "algorithm": args.algorithm,
        "backends": args.backends,
    }
    with tempfile.TemporaryDirectory(prefix="usher-per-request-") as tmp:
        for mode in modes:
            run = Run(
                MODES[mode],
                args.access_log,
                args.profile,
                args.close,
                algorithm=args.algorithm,
                backends=args.backends,
            )
            if args.what == "instructions":
                results[mode] = instructions(mode, args.requests, Path(tmp), run)
            else:
                results[mode] = profile(mode, args.requests, Path(tmp), run)
    if args.json:
        print(json.dumps(results, indent=2))
    elif args.what == "instructions":
        for mode in modes:
            print(f"{mode}: {results[mode]:,.0f} instructions per request")
        if len(modes) == 2:
            print(f"compiled / pure: {results['compiled'] / results['pure']:.2f}")
    else:
        for mode in modes:
            rows = results[mode]
            calls = sum(r["calls"] for r in rows)
            print(f"\n{mode}: {calls:.0f} Python-level calls per request (cProfile)")
            print(f"{'calls/req':>9}  {'own us/req':>10}  function")
            for row in rows[: args.top]:
                print(f"{row['calls']:9.2f}  {row['own_us']:10.2f}  {row['function']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
