"""Listening sockets handed from a running usher to the process that replaces it (`kill -USR2`).

The old process sends its sockets over a Unix socket (SCM_RIGHTS, as HAProxy's `-x` does); the
new one adopts them here, and `usher.l4.accept.listening_socket` takes an adopted socket instead
of binding a new one wherever the address (transport, IP, port) is the same. Both processes then
hold the same kernel socket, so a connection waiting in its listen queue is accepted by one or
the other, never reset. The new process names its handover socket in `USHER_HANDOVER`, and says
`ready` on it once it serves.
"""

from __future__ import annotations

import json
import logging
import os
import socket
from collections.abc import Iterable, Sequence
from typing import Final

log = logging.getLogger("usher.upgrade")

ENV: Final = "USHER_HANDOVER"
READY: Final = b"ready"
# SCM_RIGHTS carries at most 253 descriptors a message (SCM_MAX_FD).
FDS_PER_MESSAGE: Final = 200

# ("tcp" | "udp", IP, port): what a listener binds, whatever host name its config gave.
Key = tuple[str, str, int]

_adopted: dict[Key, list[socket.socket]] = {}
_line: socket.socket | None = None


def transport(kind: int) -> str:
    return "udp" if kind == socket.SOCK_DGRAM else "tcp"


def key_of(sock: socket.socket) -> Key:
    host, port = sock.getsockname()[:2]
    return (transport(sock.type), str(host), int(port))


def key_for(host: str, port: int, kind: int = socket.SOCK_STREAM) -> Key:
    """The key of the address `listening_socket(host, port, kind=kind)` would bind."""
    infos = socket.getaddrinfo(host, port, type=kind, flags=socket.AI_PASSIVE)
    address = infos[0][4]
    return (transport(kind), str(address[0]), int(address[1]))


# The new process's side


def adopt(socks: Iterable[socket.socket]) -> None:
    """Keep these sockets for the listeners that will bind their addresses."""
    for sock in socks:
        _adopted.setdefault(key_of(sock), []).append(sock)


def adopt_fds(fds: Iterable[int]) -> None:
    adopt(socket.socket(fileno=fd) for fd in fds)


def copy_of(key: Key) -> socket.socket | None:
    """A duplicate of an adopted socket bound to `key`, leaving the socket itself to claim."""
    queue = _adopted.get(key)
    return queue[0].dup() if queue else None


def claim(key: Key) -> socket.socket | None:
    """An adopted socket bound to `key`, now the caller's (listening and non-blocking), or None."""
    queue = _adopted.get(key)
    if not queue:
        return None
    sock = queue.pop(0)
    if not queue:
        del _adopted[key]
    if sock.type == socket.SOCK_STREAM:
        sock.listen(1024)  # a reservation of the control process is bound but not listening
    sock.setblocking(False)
    return sock


def release_unclaimed() -> list[Key]:
    """Close the adopted sockets no listener took (the new config dropped their addresses), so
    that nothing queues on them; returns their keys."""
    left = [key for key, socks in _adopted.items() for _ in socks]
    for socks in _adopted.values():
        for sock in socks:
            sock.close()
    _adopted.clear()
    return left


def receive_from_env() -> int:
    """When this process was started by an upgrade, connect to the old process, adopt its
    sockets and keep the line open to say `ready` on; returns how many came (0 otherwise).
    The variable is removed, so that this process's own children never see it."""
    global _line
    path = os.environ.pop(ENV, None)
    if path is None:
        return 0
    line = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    line.settimeout(10.0)
    line.connect(path)
    socks = receive(line)
    adopt(socks)
    _line = line
    return len(socks)


def announce_ready() -> None:
    """Tell the old process that this one serves (it then stops accepting and drains); close
    the sockets no listener took. Nothing to do when this process was not started by one."""
    global _line
    for key in release_unclaimed():
        log.info("upgrade: closed the handed-over socket %s %s:%s (no listener binds it)", *key)
    if _line is None:
        return
    try:
        _line.send(READY)
    except OSError as exc:
        log.warning("upgrade: could not tell the old process that this one is ready: %s", exc)
    _line.close()
    _line = None


# The wire: SOCK_SEQPACKET keeps each message whole; the last one says so.


def send(line: socket.socket, fds: Sequence[int]) -> None:
    chunks = [fds[i : i + FDS_PER_MESSAGE] for i in range(0, len(fds), FDS_PER_MESSAGE)] or [[]]
    for index, chunk in enumerate(chunks):
        header = json.dumps({"count": len(chunk), "last": index == len(chunks) - 1})
        socket.send_fds(line, [header.encode()], list(chunk))


def receive(line: socket.socket) -> list[socket.socket]:
    socks: list[socket.socket] = []
    while True:
        data, fds, _, _ = socket.recv_fds(line, 4096, FDS_PER_MESSAGE)
        socks += [socket.socket(fileno=fd) for fd in fds]
        if not data:
            raise ConnectionError("the old process closed the handover socket mid-way")
        header = json.loads(data)
        if header["count"] != len(fds):
            raise ConnectionError(f"expected {header['count']} sockets, got {len(fds)}")
        if header["last"]:
            return socks
