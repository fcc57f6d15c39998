"""`make cluster-demo`: two usher nodes and one Redis on this machine, and what they share.

Starts a redis-server on a Unix socket in a temporary directory, four demo backends
(`usher backend`, one of them failing every request) and two `usher run` nodes with the same
`cluster:` section, then shows: a 100/s limit held over both nodes, sticky clients
alternating between the nodes, an ejection made by one node applied by the other, and Redis
killed under load with no failed request. Everything stops at the end (or on Ctrl-C).
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

USHER = [sys.executable, "-m", "usher"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_for(url: str, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            httpx.get(url, timeout=2)
            return
        except httpx.HTTPError:
            time.sleep(0.1)
    raise SystemExit(f"{what} did not start ({url})")


def start_redis(directory: Path) -> subprocess.Popen[bytes]:
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("redis-server is not installed: make system-tools")
    sock = directory / "redis.sock"
    args = [binary, "--port", "0", "--unixsocket", str(sock), "--save", "", "--dir", str(directory)]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while not sock.exists():
        if time.monotonic() > deadline:
            raise SystemExit("redis-server did not start")
        time.sleep(0.05)
    return proc


def node_config(name: str, port: int, admin: int, backends: dict[str, int], sock: Path) -> str:
    def pool(names: str) -> str:
        return ", ".join(f"{{address: 127.0.0.1:{backends[n]}}}" for n in names)

    return f"""listeners:
  - {{name: web, bind: 127.0.0.1:{port}, routes: [
      {{match: {{path_prefix: /limited}}, pool: app, prefix_rewrite: /,
        limits: {{rate: 100/s, burst: 10}}}},
      {{match: {{path_prefix: /flaky}}, pool: flaky, prefix_rewrite: /}},
      {{pool: app}}]}}
pools:
  app:
    sticky: {{type: header, header: X-User}}
    backends: [{pool("ABC")}]
  flaky:
    algorithm: round_robin
    backends: [{pool("XA")}]
    passive_health: {{consecutive_5xx: 1, fail_timeout: 30s, max_ejection_percent: 50%}}
admin: {{bind: 127.0.0.1:{admin}}}
cluster: {{redis: "unix://{sock}", node: {name}}}
"""


def cluster_up(admin: str) -> str:
    for line in httpx.get(f"{admin}/metrics", timeout=5).text.splitlines():
        if line.startswith("usher_cluster_up{"):
            return line.rsplit(" ", 1)[1]
    return "?"


def main() -> None:
    procs: list[subprocess.Popen[bytes]] = []
    with tempfile.TemporaryDirectory(prefix="usher-cluster-") as tmp:
        directory = Path(tmp)
        try:
            redis = start_redis(directory)
            procs.append(redis)
            backends = {name: free_port() for name in "ABCX"}
            for name, port in backends.items():
                fail = ["--fail-rate", "1"] if name == "X" else []
                cmd = [*USHER, "backend", "--port", str(port), "--name", name, *fail]
                procs.append(subprocess.Popen(cmd, stdout=subprocess.DEVNULL))
            nodes: list[tuple[str, str]] = []  # (url, admin url)
            for name in ("edge-1", "edge-2"):
                port, admin = free_port(), free_port()
                path = directory / f"{name}.yaml"
                path.write_text(node_config(name, port, admin, backends, directory / "redis.sock"))
                cmd = [*USHER, "run", "-c", str(path), "--workers", "1", "--no-access-log"]
                procs.append(subprocess.Popen(cmd, stdout=subprocess.DEVNULL))
                nodes.append((f"http://127.0.0.1:{port}", f"http://127.0.0.1:{admin}"))
            for url, admin in nodes:
                wait_for(f"{admin}/health", "usher")
                wait_for(url, "usher")
            print(f"redis-server on {directory / 'redis.sock'}; nodes {[u for u, _ in nodes]}\n")
            show_rate_limit(nodes)
            show_sticky(nodes)
            show_ejection(nodes)
            show_store_down(nodes, redis, procs, directory)
        finally:
            for proc in reversed(procs):
                if proc.poll() is None:
                    proc.send_signal(signal.SIGTERM)
            for proc in procs:
                try:
                    proc.wait(15)
                except subprocess.TimeoutExpired:
                    proc.kill()


def show_rate_limit(nodes: list[tuple[str, str]]) -> None:
    time.sleep(0.2)
    start = time.monotonic()

    def client(url: str) -> int:
        ok = 0
        with httpx.Client(timeout=5) as c:
            while time.monotonic() - start < 3.0:
                ok += c.get(f"{url}/limited").status_code != 429
        return ok

    with ThreadPoolExecutor(2) as pool:
        counts = list(pool.map(client, [u for u, _ in nodes]))
    elapsed = time.monotonic() - start
    expected = 10 + 100 * elapsed
    print("1. rate: 100/s (burst 10), one client per node as fast as it can, 3 s")
    print(f"   admitted: edge-1 {counts[0]}, edge-2 {counts[1]}, together {sum(counts)}")
    print(f"   one bucket would admit {expected:.0f}: {sum(counts) / expected - 1:+.1%}\n")


def show_sticky(nodes: list[tuple[str, str]]) -> None:
    seen: dict[str, list[str]] = {}
    for i in range(40):
        user = f"user{i // 2 % 10}"
        url = nodes[i % 2][0]
        seen.setdefault(user, []).append(httpx.get(url, headers={"X-User": user}).text.strip())
    print("2. sticky by X-User, each user alternating edge-1, edge-2, edge-1, ...")
    for user, names in seen.items():
        print(f"   {user}: {' '.join(names)}")
    moved = sum(len(set(names)) > 1 for names in seen.values())
    print(f"   users that changed backend: {moved}\n")


def show_ejection(nodes: list[tuple[str, str]]) -> None:
    (first, _), (second, _) = nodes
    for _ in range(4):
        if httpx.get(f"{first}/flaky").status_code == 500:
            break
    time.sleep(0.2)
    answers = Counter(httpx.get(f"{second}/flaky").text.strip() for _ in range(20))
    print("3. edge-1 got a 500 from backend X and ejected it; 0.2 s later on edge-2:")
    print(f"   20 requests answered by {dict(answers)}\n")


def show_store_down(
    nodes: list[tuple[str, str]],
    redis: subprocess.Popen[bytes],
    procs: list[subprocess.Popen[bytes]],
    directory: Path,
) -> None:
    total = 600
    done: list[int] = []

    def one(i: int) -> int:
        user = f"load{i % 30}"
        status = httpx.get(nodes[i % 2][0], headers={"X-User": user}, timeout=10).status_code
        done.append(i)
        return status

    with ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(one, i) for i in range(total)]
        while len(done) < total // 3:
            time.sleep(0.01)
        redis.kill()
        statuses = Counter(f.result() for f in futures)
    time.sleep(1.5)
    print(f"4. {total} requests over both nodes, Redis killed (SIGKILL) after {total // 3}:")
    print(f"   statuses {dict(statuses)}")
    up = [cluster_up(admin) for _, admin in nodes]
    print(f"   usher_cluster_up: edge-1 {up[0]}, edge-2 {up[1]}")
    procs.insert(0, start_redis(directory))  # stopped last
    time.sleep(3)
    print(
        f"   Redis started again; 3 s later usher_cluster_up: edge-1 {cluster_up(nodes[0][1])}, "
        f"edge-2 {cluster_up(nodes[1][1])}"
    )


if __name__ == "__main__":
    main()
