"""The admin API served by uvicorn on a socket bound here (or handed over by an upgrade)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from typing import Any

import uvicorn

from usher import handover
from usher.admin.api import create_app
from usher.config import AdminConfig
from usher.errors import BindError
from usher.surface import ControlSurface

# How often `start` looks whether uvicorn has started.
START_POLL = 0.01


class AdminServer:
    """The admin API of one control surface: `start` binds and serves, `stop` ends it."""

    def __init__(self, config: AdminConfig, surface: ControlSurface) -> None:
        self.config = config
        self.surface = surface
        self.url: str | None = None
        self._server: uvicorn.Server | None = None
        self._task: asyncio.Task[Any] | None = None
        self._socket: socket.socket | None = None

    async def start(self) -> None:
        """Bind (raises BindError when the address is taken) and serve."""
        sock = handover.claim(handover.key_for(self.config.bind.host, self.config.bind.port))
        if sock is None:
            sock = _bind(self.config)
        self._socket = sock
        host, port = sock.getsockname()[:2]
        self.url = f"http://{f'[{host}]' if ':' in host else host}:{port}"
        config = uvicorn.Config(
            create_app(self.surface), log_level="warning", access_log=False, lifespan="off"
        )
        self._server = uvicorn.Server(config)
        self._task = asyncio.create_task(self._server.serve(sockets=[sock]))
        while not self._server.started and not self._task.done():
            await asyncio.sleep(START_POLL)

    def fds(self) -> list[int]:
        """The descriptor an upgrade hands over (none once stopped)."""
        if self._server is None or self._socket is None or self._socket.fileno() < 0:
            return []
        return [self._socket.fileno()]

    def stop_accepting(self) -> None:
        """Another process serves the admin API from now on (an upgrade): accept no more."""
        if self._server is not None:
            for server in self._server.servers:
                server.close()

    async def stop(self) -> None:
        if self._server is not None and self._task is not None:
            self._server.should_exit = True
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._server = None


def _bind(admin: AdminConfig) -> socket.socket:
    family = socket.AF_INET6 if ":" in admin.bind.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((admin.bind.host, admin.bind.port))
    except OSError as exc:
        sock.close()
        raise BindError(f"admin: cannot listen on {admin.bind}: {exc.strerror or exc}") from exc
    return sock
