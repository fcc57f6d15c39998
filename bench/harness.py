"""The pure parts of `bench/proxies.py`: reading wrk's and h2load's reports, CPU and memory of
a process tree from /proc, medians and ratios. No sockets, no subprocesses:
`tests/test_bench.py` covers them.
"""

from __future__ import annotations

import os
import re
import statistics
from collections.abc import Iterable, Mapping
from pathlib import Path

CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1000.0, "m": 60_000.0}
_BYTES = {"B": 1, "KB": 1024, "MB": 1024**2, "GB": 1024**3}


class WrkOutputError(ValueError):
    """wrk printed something this parser does not understand."""


def _latency_ms(text: str) -> float:
    match = re.fullmatch(r"([0-9.]+)(us|ms|s|m)", text)
    if match is None:
        raise WrkOutputError(f"not a wrk latency: {text!r}")
    return float(match.group(1)) * _UNITS[match.group(2)]


def parse_wrk(out: str) -> dict[str, float]:
    """The figures of one `wrk --latency` run: requests, seconds, rps, p50_ms, p99_ms, errors
    (non-2xx/3xx answers plus socket errors) and bytes per second."""
    total = re.search(r"(\d+) requests in ([0-9.]+)(us|ms|s|m)", out)
    rps = re.search(r"Requests/sec:\s+([0-9.]+)", out)
    if total is None or rps is None:
        raise WrkOutputError("wrk printed no request count: " + out.strip()[-300:])
    result = {
        "requests": float(total.group(1)),
        "seconds": _latency_ms(total.group(2) + total.group(3)) / 1000.0,
        "rps": float(rps.group(1)),
    }
    for pct in ("50", "99"):
        found = re.search(rf"^\s+{pct}(?:\.000)?%\s+(\S+)", out, re.MULTILINE)
        if found is None:
            raise WrkOutputError(f"wrk printed no {pct}th percentile (was --latency given?)")
        result[f"p{pct}_ms"] = _latency_ms(found.group(1))
    errors = 0.0
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if non_2xx:
        errors += float(non_2xx.group(1))
    sockets = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out
    )
    if sockets:
        errors += sum(float(x) for x in sockets.groups())
    result["errors"] = errors
    transfer = re.search(r"Transfer/sec:\s+([0-9.]+)(B|KB|MB|GB)", out)
    result["bytes_per_s"] = (
        float(transfer.group(1)) * _BYTES[transfer.group(2)] if transfer else 0.0
    )
    return result


class H2loadOutputError(ValueError):
    """h2load printed something this parser does not understand."""


def parse_h2load(out: str) -> dict[str, float]:
    """The figures of one `h2load -n N` run: requests (done), seconds, rps, errors (requests
    that did not succeed: non-2xx answers, resets, timeouts, never started), bytes per second,
    and the time for a request as h2load gives it (min, max, mean, sd: no percentiles)."""
    finished = re.search(r"^finished in ([0-9.]+)(us|ms|s|m), ([0-9.]+) req/s", out, re.MULTILINE)
    counts = re.search(
        r"^requests: (\d+) total, \d+ started, (\d+) done, (\d+) succeeded", out, re.M
    )
    if finished is None or counts is None:
        raise H2loadOutputError("h2load printed no request count: " + out.strip()[-300:])
    seconds = _latency_ms(finished.group(1) + finished.group(2)) / 1000.0
    total, done, succeeded = (float(x) for x in counts.groups())
    traffic = re.search(r"^traffic: .*?\((\d+)\) total", out, re.MULTILINE)
    times = re.search(r"^time for request:\s+(\S+)\s+(\S+)\s+(\S+)\s+(\S+)", out, re.MULTILINE)
    if times is None:
        raise H2loadOutputError("h2load printed no time for request")
    low, high, mean, sd = (_latency_ms(t) for t in times.groups())
    return {
        "requests": done,
        "seconds": seconds,
        "rps": float(finished.group(3)),
        "errors": total - succeeded,
        "bytes_per_s": float(traffic.group(1)) / seconds if traffic and seconds else 0.0,
        "min_ms": low,
        "max_ms": high,
        "mean_ms": mean,
        "sd_ms": sd,
    }


def parse_stat(text: str) -> tuple[int, int]:
    """(ppid, utime+stime in clock ticks) from the text of /proc/PID/stat."""
    # The command name is in parentheses and may itself hold spaces or parentheses.
    fields = text[text.rindex(")") + 2 :].split()
    # After the name: state(3) ppid(4) ... utime(14) stime(15), so offsets 1, 11 and 12 here.
    return int(fields[1]), int(fields[11]) + int(fields[12])


def process_tree(root: int, proc: Path = Path("/proc")) -> list[int]:
    """root and all its descendants that are alive now."""
    children: dict[int, list[int]] = {}
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid, _ = parse_stat((entry / "stat").read_text())
        except (OSError, ValueError, IndexError):
            continue  # it exited while we looked
        children.setdefault(ppid, []).append(int(entry.name))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(children.get(pid, ()))
    return tree


def tree_cpu_seconds(root: int, proc: Path = Path("/proc")) -> float:
    """utime+stime of root and its live descendants, in seconds."""
    ticks = 0
    for pid in process_tree(root, proc):
        try:
            ticks += parse_stat((proc / str(pid) / "stat").read_text())[1]
        except (OSError, ValueError, IndexError):
            continue
    return ticks / CLK_TCK


def parse_rss_kb(status: str) -> int:
    match = re.search(r"^VmRSS:\s+(\d+) kB", status, re.MULTILINE)
    return int(match.group(1)) if match else 0  # a zombie has no VmRSS


def tree_rss_kb(root: int, proc: Path = Path("/proc")) -> int:
    """Resident memory of root and its live descendants, in KiB (shared pages count once per
    process, as `ps` shows them)."""
    total = 0
    for pid in process_tree(root, proc):
        try:
            total += parse_rss_kb((proc / str(pid) / "status").read_text())
        except OSError:
            continue
    return total


def cpu_us_per_request(cpu_before: float, cpu_after: float, requests: float) -> float:
    """CPU microseconds the balancer spent per request over a measured window."""
    if requests <= 0:
        return float("nan")
    return (cpu_after - cpu_before) * 1e6 / requests


def medians(samples: Iterable[Mapping[str, float]]) -> dict[str, float]:
    """The per-key median of several rounds."""
    rows = list(samples)
    if not rows:
        return {}
    return {key: statistics.median(row[key] for row in rows) for key in rows[0]}


def ratio(value: float, reference: float) -> float | None:
    """value / reference, or None when the reference is missing or zero."""
    if not reference or reference != reference or value != value:  # NaN compares unequal
        return None
    return value / reference


def answer_problems(head: str, status: int, headers: Mapping[str, str | None]) -> list[str]:
    """What is wrong with one answer's head (curl -sS -D -: status line and headers), against
    the status and headers expected of it: a value must match exactly (case-insensitive name), None
    only that the header is there. The last head counts (curl prints one per 1xx answer too)."""
    blocks = [b for b in head.replace("\r\n", "\n").split("\n\n") if b.strip()]
    if not blocks:
        return ["no answer"]
    lines = blocks[-1].split("\n")
    problems: list[str] = []
    parts = lines[0].split()
    if len(parts) < 2 or parts[1] != str(status):
        problems.append(f"status line {lines[0].strip()!r}, expected {status}")
    seen: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if sep:
            seen.setdefault(name.strip().lower(), value.strip())
    for name, want in headers.items():
        got = seen.get(name.lower())
        if got is None:
            problems.append(f"no {name} header")
        elif want is not None and got != want:
            problems.append(f"{name}: {got!r}, expected {want!r}")
    return problems
