"""What one small GET over downstream HTTP/2 costs usher in Python-level calls (cProfile), the
h2 counterpart of bench/per_request.py's `profile` (docs/http2.md, "Figures").

    python bench/h2_per_request.py [--requests 2000] [--modes compiled,pure] [--top 25]

Each measurement runs `usher run --workers 1` under cProfile with one `http` listener with
`http2: true` (h2c, prior knowledge) in front of one `usher backend`, sends it WARMUP requests
with h2load and then either a few or `--requests` more (one h2load connection each time, at
most STREAMS streams open on it), and stops it with SIGTERM. The difference of the two runs'
call counts divided by the difference of their request counts is the cost of one request;
call counts do not depend on the machine's load.
"""

from __future__ import annotations

import argparse
import os
import pstats
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from algorithms import free_port, wait_for
from per_request import (
    FEW,
    MODES,
    PROFILED,
    USHER,
    WARMUP,
    kill_left,
    per_call_counts,
    per_request,
    stop,
)

STREAMS = 10  # h2load -m: streams open at once on the connection
H2LOAD_TIMEOUT = 120.0


def h2load(port: int, requests: int) -> None:
    """`requests` GETs over one h2c connection; raises unless every one was answered 2xx."""
    result = subprocess.run(
        ["h2load", "-n", str(requests), "-c", "1", "-m", str(STREAMS), f"http://127.0.0.1:{port}/"],
        capture_output=True,
        text=True,
        timeout=H2LOAD_TIMEOUT,
        check=True,
    )
    expected = f"{requests} succeeded"
    if expected not in result.stdout or f"status codes: {requests} 2xx" not in result.stdout:
        raise RuntimeError(f"h2load did not get {requests} 2xx answers:\n{result.stdout}")


def measure_run(env: dict[str, str], requests: int, out: Path, work: Path) -> None:
    """One profiled `usher run`: warm-up, `requests` more, SIGTERM, wait for its exit."""
    backend_port, port = free_port(), free_port()
    config = work / "usher.yaml"
    config.write_text(
        f"listeners: [{{name: web, bind: 127.0.0.1:{port}, protocol: http, http2: true,"
        f" pool: p}}]\n"
        f"pools: {{p: {{backends: [{{address: 127.0.0.1:{backend_port}}}]}}}}\n"
    )
    backend = subprocess.Popen(
        [*USHER, "backend", "--port", str(backend_port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    profiled = [sys.executable, "-c", PROFILED, str(out)]
    cmd = [*profiled, "-m", "usher", "run", "-c", str(config), "--workers", "1", "--no-access-log"]
    with (work / "usher.log").open("ab") as log:
        usher = subprocess.Popen(
            cmd, env={**os.environ, **env}, stdout=subprocess.DEVNULL, stderr=log
        )
    try:
        wait_for(backend_port, backend, 30)
        wait_for(port, usher, 120)
        h2load(port, WARMUP)
        h2load(port, requests)
        stop(usher, work, timeout=120)
    finally:
        kill_left(usher, backend)


def profile(mode: str, requests: int, work: Path) -> list[dict[str, Any]]:
    counts = []
    for count in (FEW, FEW + requests):
        out = work / f"profile.{mode}.{count}"
        measure_run(MODES[mode], count, out, work)
        counts.append(per_call_counts(pstats.Stats(str(out))))
    return per_request(counts[0], counts[1], requests)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=2000, help="requests measured")
    parser.add_argument("--modes", default="compiled,pure", help="compiled, pure or both")
    parser.add_argument("--top", type=int, default=25, help="functions shown")
    parser.add_argument(
        "--by-module", action="store_true", help="also sum the calls per source file"
    )
    args = parser.parse_args()
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if any(m not in MODES for m in modes) or args.requests < 1:
        parser.error("--modes takes compiled and/or pure; --requests must be >= 1")
    with tempfile.TemporaryDirectory(prefix="usher-h2-per-request-") as tmp:
        for mode in modes:
            rows = profile(mode, args.requests, Path(tmp))
            calls = sum(r["calls"] for r in rows)
            print(f"\n{mode}: {calls:.0f} Python-level calls per request (cProfile)")
            if args.by_module:
                print(f"{'calls/req':>9}  source")
                for where, total in by_source(rows):
                    print(f"{total:9.2f}  {where}")
            print(f"{'calls/req':>9}  {'own us/req':>10}  function")
            for row in rows[: args.top]:
                print(f"{row['calls']:9.2f}  {row['own_us']:10.2f}  {row['function']}")
    return 0


def by_source(rows: list[dict[str, Any]]) -> list[tuple[str, float]]:
    """The calls per request summed per source file (builtins as one), most first."""
    totals: dict[str, float] = {}
    for row in rows:
        function: str = row["function"]
        where = function.rsplit("(", 1)[-1].split(":", 1)[0] if function.endswith(")") else ""
        key = where or "<builtins>"
        totals[key] = totals.get(key, 0.0) + row["calls"]
    return sorted(totals.items(), key=lambda item: item[1], reverse=True)


if __name__ == "__main__":
    sys.exit(main())
