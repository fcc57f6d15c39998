"""A real `redis-server` for the cluster tests: on a Unix socket in a temporary directory (or
a loopback port), no persistence, stopped by whoever started it. Tests skip without it."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import free_port

REDIS_SERVER = shutil.which("redis-server")


def need_redis() -> str:
    if REDIS_SERVER is None:
        pytest.skip(
            "redis-server is not installed (Debian package redis-server; make system-tools)"
        )
    return REDIS_SERVER


class RedisServer:
    """One redis-server process; `start` again after `kill` brings it back on the same port."""

    def __init__(self, directory: Path, *, tcp: bool = False) -> None:
        self.directory = directory
        self.port = free_port() if tcp else 0
        self.socket_path = directory / "redis.sock"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        if self.port:
            return f"redis://127.0.0.1:{self.port}/0"
        return f"unix://{self.socket_path}"

    def start(self) -> None:
        binary = need_redis()
        args = [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", ""]
        args += ["--appendonly", "no", "--dir", str(self.directory)]
        args += ["--enable-debug-command", "local"]  # DEBUG SLEEP: a store that stalls
        if not self.port:
            args += ["--unixsocket", str(self.socket_path), "--unixsocketperm", "700"]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while not self._answers():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"redis-server did not start: {' '.join(args)}")
            time.sleep(0.02)

    def _answers(self) -> bool:
        family = socket.AF_INET if self.port else socket.AF_UNIX
        address: object = ("127.0.0.1", self.port) if self.port else str(self.socket_path)
        try:
            with socket.socket(family, socket.SOCK_STREAM) as sock:
                sock.settimeout(1)
                sock.connect(address)
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def kill(self) -> None:
        """Gone at once, as a crash (SIGKILL)."""
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(10)
            self.proc = None
        self.socket_path.unlink(missing_ok=True)
