"""The listening sockets of the workers of `usher run --workers N`, held by the control process."""

from __future__ import annotations

import socket
from collections.abc import Iterable

from usher.handover import Key, key_for, key_of
from usher.l4.accept import listening_socket


class WorkerSockets:
    """The listening sockets of each worker of `--workers N`, opened by the control process and
    passed to the worker at its start: a restarted worker gets the same ones back, and an
    upgrade hands them all over."""

    def __init__(self) -> None:
        self.by_worker: dict[int, dict[Key, socket.socket]] = {}

    def for_worker(
        self, number: int, addresses: Iterable[tuple[str, int, int]]
    ) -> list[socket.socket]:
        """Worker `number`'s sockets for these (host, port, kind): kept, adopted, or bound."""
        mine = self.by_worker.setdefault(number, {})
        wanted: dict[Key, socket.socket] = {}
        for host, port, kind in addresses:
            key = key_for(host, port, kind)
            if key in mine:
                wanted[key] = mine.pop(key)
            else:
                sock = listening_socket(host, port, kind=kind, reuse_port=True)
                wanted[key_of(sock)] = sock
        for sock in mine.values():
            sock.close()
        self.by_worker[number] = wanted
        return list(wanted.values())

    def keep_only(self, addresses: Iterable[tuple[str, int, int]]) -> None:
        """After a reload: close the sockets of addresses no listener binds any more."""
        keys = {key_for(host, port, kind) for host, port, kind in addresses}
        for mine in self.by_worker.values():
            for key in [k for k in mine if k not in keys]:
                mine.pop(key).close()

    def fds(self) -> list[int]:
        return [sock.fileno() for mine in self.by_worker.values() for sock in mine.values()]

    def close(self) -> None:
        for mine in self.by_worker.values():
            for sock in mine.values():
                sock.close()
        self.by_worker.clear()
