"""Listening sockets sent over a Unix socket and taken by the listener that binds their address;
the Upgrader's answer to a new process that crashes, hangs or says ready. Real sockets and
real child processes, bounded."""

from __future__ import annotations

import socket
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import free_port
from usher import handover
from usher.config import parse_config
from usher.l4.accept import listening_socket
from usher.server import Balancer
from usher.upgrade import UpgradeFailed, Upgrader


@pytest.fixture(autouse=True)
def nothing_adopted() -> Iterator[None]:
    yield
    handover.release_unclaimed()


def test_sockets_cross_a_unix_socket_and_are_claimed_by_address() -> None:
    tcp = listening_socket("127.0.0.1", 0)
    udp = listening_socket("127.0.0.1", 0, kind=socket.SOCK_DGRAM)
    many = [listening_socket("127.0.0.1", 0) for _ in range(handover.FDS_PER_MESSAGE + 5)]
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    with ours, theirs:
        handover.send(ours, [tcp.fileno(), udp.fileno(), *(s.fileno() for s in many)])
        received = handover.receive(theirs)  # two messages: more than one takes
    assert len(received) == 2 + len(many)
    handover.adopt(received)
    port = tcp.getsockname()[1]
    # The same kernel socket: a connection to the old one is accepted on the claimed one.
    claimed = listening_socket("127.0.0.1", port)
    assert claimed is not None and claimed.fileno() not in (tcp.fileno(), -1)
    with socket.create_connection(("127.0.0.1", port), timeout=5):
        claimed.setblocking(True)
        claimed.settimeout(5)
        conn, _ = claimed.accept()
        conn.close()
    udp_port = udp.getsockname()[1]
    claimed_udp = handover.claim(("udp", "127.0.0.1", udp_port))
    assert claimed_udp is not None
    assert handover.claim(("udp", "127.0.0.1", udp_port)) is None  # taken once
    left = handover.release_unclaimed()
    assert sorted(k[2] for k in left) == sorted(s.getsockname()[1] for s in many)
    for sock in [tcp, udp, claimed, claimed_udp, *many]:
        sock.close()


async def started_balancer() -> Balancer:
    port = free_port()
    balancer = Balancer(
        parse_config(
            f"listeners: [{{name: web, bind: 127.0.0.1:{port}, pool: p}}]\n"
            "pools: {p: {backends: [{address: 127.0.0.1:9}]}}\n"
        )
    )
    await balancer.start()
    return balancer


def child(tmp_path: Path, code: str) -> list[str]:
    script = tmp_path / "child.py"
    script.write_text(textwrap.dedent(code))
    return [sys.executable, str(script)]


@pytest.mark.parametrize(
    ("code", "timeout", "why"),
    [
        ("import sys; sys.exit(3)", 10.0, "exited with 3 before it was ready"),
        ("import time; time.sleep(30)", 0.5, "was not ready in 0.5s"),
        (
            # Takes the sockets, then dies before it serves (importing usher takes over 0.5 s
            # on a busy machine: the timeout is not what is tested here).
            "from usher import handover; handover.receive_from_env(); raise SystemExit(2)",
            10.0,
            "exited with 2 before it was ready",
        ),
    ],
    ids=["crash", "hang", "dies-after-taking"],
)
async def test_a_new_process_that_does_not_get_ready_is_reported_and_stopped(
    tmp_path: Path, code: str, timeout: float, why: str
) -> None:
    balancer = await started_balancer()
    try:
        upgrader = Upgrader(balancer, done=lambda: None)
        upgrader.timeout = timeout
        upgrader.command = child(tmp_path, code)
        with pytest.raises(UpgradeFailed, match=why):
            await upgrader.upgrade()
        assert upgrader.process is None
        # The old process still listens (a child that took the sockets shares, never closes).
        port = balancer.bound["web"].port
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            pass
    finally:
        await balancer.stop(timeout=0)


async def test_a_new_process_that_says_ready_gets_every_listening_socket(tmp_path: Path) -> None:
    balancer = await started_balancer()
    report = tmp_path / "keys"
    try:
        upgrader = Upgrader(balancer, done=lambda: None)
        upgrader.command = child(
            tmp_path,
            f"""
            import time
            from usher import handover
            count = handover.receive_from_env()
            keys = sorted(handover._adopted)
            open({str(report)!r}, "w").write(f"{{count}} {{keys}}")
            for key in keys:
                handover.claim(key)
            handover.announce_ready()
            time.sleep(0.5)  # serving, for a while
            """,
        )
        pid = await upgrader.upgrade()
        assert upgrader.process is not None and upgrader.process.pid == pid
        assert upgrader.process.wait(timeout=10) == 0
        port = balancer.bound["web"].port
        assert report.read_text() == f"1 [('tcp', '127.0.0.1', {port})]"
    finally:
        await balancer.stop(timeout=0)
