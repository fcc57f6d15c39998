"""A well-behaved client, run as its own process during an attack so that its timings are not
the attacker's: keep-alive GETs from 127.0.0.1 for a while, then one JSON line of results.

python tests/attacks/normal_client.py PORT SECONDS [PAUSE_MS]
"""

from __future__ import annotations

import json
import socket
import sys
import time

REQUEST = b"GET / HTTP/1.1\r\nHost: normal\r\nUser-Agent: normal-client\r\n\r\n"


def read_response(sock: socket.socket, buffer: bytearray) -> int:
    """Read one Content-Length response; its status."""
    while b"\r\n\r\n" not in buffer:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed")
        buffer += chunk
    head, _, rest = bytes(buffer).partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    while len(rest) < length:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed")
        rest += chunk
    buffer[:] = rest[length:]
    return status


def main() -> None:
    port, seconds = int(sys.argv[1]), float(sys.argv[2])
    pause = float(sys.argv[3]) / 1000 if len(sys.argv) > 3 else 0.002
    latencies: list[float] = []
    began = time.monotonic()
    slow: list[tuple[float, float]] = []  # (seconds into the run, ms) of requests over 5 ms
    failures: dict[str, int] = {}
    sock: socket.socket | None = None
    buffer = bytearray()
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        start = time.perf_counter()
        try:
            if sock is None:
                sock = socket.create_connection(("127.0.0.1", port), timeout=5)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                buffer.clear()
            sock.sendall(REQUEST)
            status = read_response(sock, buffer)
        except OSError as exc:
            failures[type(exc).__name__] = failures.get(type(exc).__name__, 0) + 1
            if sock is not None:
                sock.close()
            sock = None
            time.sleep(0.01)
            continue
        if status == 200:
            took = time.perf_counter() - start
            latencies.append(took)
            if took > 0.005 and len(slow) < 20:
                slow.append((round(time.monotonic() - began, 3), round(took * 1000, 1)))
        else:
            failures[str(status)] = failures.get(str(status), 0) + 1
        time.sleep(pause)
    if sock is not None:
        sock.close()
    latencies.sort()
    total = len(latencies) + sum(failures.values())

    def pct(p: float) -> float:
        if not latencies:
            return float("nan")
        return round(latencies[min(len(latencies) - 1, int(p * len(latencies)))] * 1000, 3)

    print(
        json.dumps(
            {
                "requests": total,
                "ok": len(latencies),
                "success_rate": round(len(latencies) / total, 5) if total else 0.0,
                "p50_ms": pct(0.50),
                "p99_ms": pct(0.99),
                "max_ms": round(latencies[-1] * 1000, 3) if latencies else None,
                "failures": failures,
                "slow": slow,
            }
        )
    )


if __name__ == "__main__":
    main()
