"""TCP bulk transfer through a layer-4 balancer: usher's plain relay, usher's splice relay
(`zero_copy: true`), HAProxy `mode tcp` by default and with `option splice-request` and
`splice-response`, each on one pinned core.

    flock /tmp/bench.lock python bench/tcp.py [--mib 512] [--rounds 3]   (or: make bench-tcp)

A client sends `--mib` MiB through the balancer to a sink, half-closes, and waits for the
sink's close: the wall time gives MiB/s; the balancer's utime+stime from /proc/PID/stat (its
whole process tree) over the same window gives CPU milliseconds per MiB. The balancers run
pinned to the last core, the client and sink to core 0 (taskset). Rounds are interleaved
(A B C D, A B C D, ...) and the table shows medians. Only 127.0.0.1.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CHUNK = 1 << 20
HAPROXY = shutil.which("haproxy") or "/usr/sbin/haproxy"
CLK_TCK = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port} after {timeout}s")


def sink(port: int) -> None:
    """Accept connections one at a time; read to EOF into one buffer, then close."""
    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("127.0.0.1", port))
    server.listen(16)
    buf = bytearray(CHUNK)
    while True:
        conn, _ = server.accept()
        with conn:
            while conn.recv_into(buf):
                pass


def cpu_seconds(pid: int) -> float:
    """utime+stime of `pid` and its descendants, in seconds."""
    children: dict[int, list[int]] = {}
    stats: dict[int, list[str]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            text = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = text[text.rindex(")") + 2 :].split()
        stats[int(entry)] = fields
        children.setdefault(int(fields[1]), []).append(int(entry))
    total = 0
    todo = [pid]
    while todo:
        current = todo.pop()
        fields = stats.get(current)
        if fields is not None:
            total += int(fields[11]) + int(fields[12])  # utime, stime
        todo += children.get(current, [])
    return total / CLK_TCK


def transfer(port: int, mib: int, pid: int) -> tuple[float, float]:
    """Send `mib` MiB through port; returns (MiB/s, CPU ms per MiB of pid)."""
    payload = os.urandom(CHUNK)
    cpu0 = cpu_seconds(pid)
    t0 = time.perf_counter()
    with socket.create_connection(("127.0.0.1", port)) as conn:
        for _ in range(mib):
            conn.sendall(payload)
        conn.shutdown(socket.SHUT_WR)
        while conn.recv(65536):
            pass
    elapsed = time.perf_counter() - t0
    time.sleep(0.2)  # the balancer logs and tidies up after the close: count that too
    cpu = cpu_seconds(pid) - cpu0
    return mib / elapsed, cpu * 1000 / mib


def usher_config(port: int, sink_port: int, zero_copy: bool) -> str:
    return (
        "listeners:\n"
        f"  - {{name: bulk, bind: '127.0.0.1:{port}', protocol: tcp, pool: sink, "
        f"zero_copy: {'true' if zero_copy else 'false'}}}\n"
        f"pools:\n  sink: {{backends: [{{address: '127.0.0.1:{sink_port}'}}]}}\n"
    )


def haproxy_config(port: int, sink_port: int, splice: bool) -> str:
    # HAProxy copies through its buffers by default; these options make it splice both ways.
    option = "    option splice-request\n    option splice-response\n" if splice else ""
    return f"""global
    nbthread 1
    maxconn 1000
defaults
    mode tcp
{option}
    timeout connect 5s
    timeout client 60s
    timeout server 60s
frontend bulk
    bind 127.0.0.1:{port}
    default_backend sink
backend sink
    server s1 127.0.0.1:{sink_port}
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=512, help="MiB per transfer")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--sink", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.sink:
        sink(args.sink)
        return
    cores = os.cpu_count() or 1
    balancer_core = str(cores - 1)
    load_core = "0"
    workdir = Path(tempfile.mkdtemp(prefix="usher-bench-tcp-"))
    sink_port = free_port()
    procs: list[subprocess.Popen[bytes]] = []
    quiet = subprocess.DEVNULL
    try:
        procs.append(
            subprocess.Popen(
                ["taskset", "-c", load_core, sys.executable, __file__, "--sink", str(sink_port)]
            )
        )
        wait_port(sink_port)
        candidates: dict[str, tuple[int, int]] = {}
        usher = str(Path(sys.executable).with_name("usher"))
        for name, zero_copy in (("usher plain", False), ("usher splice", True)):
            port = free_port()
            config = workdir / f"{name.replace(' ', '-')}.yaml"
            config.write_text(usher_config(port, sink_port, zero_copy))
            cmd = ["taskset", "-c", balancer_core, usher, "run", "-c", str(config)]
            proc = subprocess.Popen([*cmd, "--no-access-log"], stdout=quiet, stderr=quiet)
            procs.append(proc)
            candidates[name] = (port, proc.pid)
        for name, splice in (("haproxy mode tcp", False), ("haproxy splice", True)):
            port = free_port()
            config = workdir / f"{name.replace(' ', '-')}.cfg"
            config.write_text(haproxy_config(port, sink_port, splice))
            cmd = ["taskset", "-c", balancer_core, HAPROXY, "-db", "-f", str(config)]
            proc = subprocess.Popen(cmd, stdout=quiet, stderr=quiet)
            procs.append(proc)
            candidates[name] = (port, proc.pid)
        for port, _ in candidates.values():
            wait_port(port)
        results: dict[str, list[tuple[float, float]]] = {name: [] for name in candidates}
        for port, pid in candidates.values():
            transfer(port, 16, pid)  # warm-up
        for _ in range(args.rounds):
            for name, (port, pid) in candidates.items():
                results[name].append(transfer(port, args.mib, pid))
        print(
            f"TCP bulk transfer, {args.mib} MiB per round, medians of {args.rounds} interleaved "
            f"rounds; balancer pinned to core {balancer_core}, client and sink to core {load_core}"
        )
        base_rate = statistics.median(r for r, _ in results["haproxy mode tcp"])
        base_cpu = statistics.median(c for _, c in results["haproxy mode tcp"])
        print(
            f"{'candidate':<18} {'MiB/s':>9} {'CPU ms/MiB':>11} {'rate/haproxy':>13} "
            f"{'cpu/haproxy':>12}"
        )
        for name, rows in results.items():
            rate = statistics.median(r for r, _ in rows)
            cpu = statistics.median(c for _, c in rows)
            print(
                f"{name:<18} {rate:>9.0f} {cpu:>11.3f} {rate / base_rate:>13.2f} "
                f"{cpu / base_cpu:>12.2f}"
            )
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
