"""`kill -USR2`: start a new usher with the same command line, hand it the listening sockets
(usher.handover), and once it says it serves, stop accepting and drain. A new process that
exits, or is not ready in time, is stopped and this one serves on.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from usher import handover
from usher.errors import UpgradeFailed as UpgradeFailed

if TYPE_CHECKING:
    from usher.server import Balancer

# A new process loads its config and certificates and starts its workers in this time, or
# it is stopped (the same bound as the workers' start).
READY_TIMEOUT = 60.0
POLL_INTERVAL = 0.02
# How long a new process that failed gets to exit on SIGTERM before SIGKILL.
STOP_GRACE = 5.0


def say(message: str) -> None:
    print(f"usher: {message}", file=sys.stderr, flush=True)


def new_command() -> list[str]:
    """This process's own command line, from the same interpreter (`usher run ...` or
    `python -m usher run ...`)."""
    return [sys.executable, *sys.orig_argv[1:]]


def is_usher_run(pid: int) -> bool:
    """Whether `pid` runs `usher run` (a zombie does not run); raises ProcessLookupError when
    there is no such process. A signal sent to anything else could kill it."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        words = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except FileNotFoundError:
        raise ProcessLookupError(pid) from None
    if stat.rsplit(")", 1)[1].split()[0] == "Z":
        return False
    named = any(w == "usher" or w.endswith("/usher") for w in words)
    return named and "run" in words


class Upgrader:
    """Runs one upgrade at a time on SIGUSR2; `done` is called once the new process serves
    (the caller then drains and exits)."""

    def __init__(self, balancer: Balancer, done: Callable[[], None]) -> None:
        self.balancer = balancer
        self.done = done
        self.serving = False  # set once this process serves: there is nothing to hand before
        self.timeout = READY_TIMEOUT
        self.command = new_command()
        self.process: subprocess.Popen[bytes] | None = None
        self._task: asyncio.Task[None] | None = None
        self._handed_over = False

    def request(self) -> None:
        """The SIGUSR2 handler."""
        if self._handed_over:
            say("upgrade refused: this process has handed its sockets over and is draining")
        elif self._task is not None:
            say("upgrade refused: an upgrade is already under way")
        elif not self.serving:
            say("upgrade refused: this process is still starting")
        else:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        try:
            pid = await self.upgrade()
        except UpgradeFailed as exc:
            say(f"upgrade failed, this process (pid {os.getpid()}) serves on: {exc}")
            self._task = None
            return
        self._handed_over = True
        say(f"upgrade: pid {pid} serves now; pid {os.getpid()} stops accepting and drains")
        self.balancer.stop_admin_accepting()
        self.done()

    async def upgrade(self) -> int:
        """Start the new process and hand it the sockets; returns its pid once it is ready."""
        folder = Path(tempfile.mkdtemp(prefix="usher-upgrade-"))  # mode 0700: ours alone
        path = folder / "handover.sock"
        server = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            server.bind(str(path))
            server.listen(1)
            server.setblocking(False)
            command = self.command
            say(f"upgrade: starting {' '.join(command)}")
            try:
                proc = subprocess.Popen(
                    command, env={**os.environ, handover.ENV: str(path)}, stdin=subprocess.DEVNULL
                )
            except OSError as exc:
                raise UpgradeFailed(f"cannot start {command[0]}: {exc}") from None
            try:
                await self._wait_ready(server, proc)
            except UpgradeFailed:
                await _stop(proc)
                raise
            self.process = proc  # kept: it is this process's child until this one exits
            return proc.pid
        finally:
            server.close()
            shutil.rmtree(folder, ignore_errors=True)

    async def _wait_ready(self, server: socket.socket, proc: subprocess.Popen[bytes]) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout
        line: socket.socket | None = None
        try:
            while loop.time() < deadline:
                if line is None:
                    line = self._offer(server)
                ready = line is not None and self._said_ready(line, proc.pid)
                code = proc.poll()  # read after: a process that said ready and died is no heir
                if code is not None:
                    raise UpgradeFailed(
                        f"the new process (pid {proc.pid}) exited with {code} before it was "
                        "ready; its messages are above"
                    )
                if ready:
                    return
                await asyncio.sleep(POLL_INTERVAL)
        finally:
            if line is not None:
                line.close()
        raise UpgradeFailed(f"the new process (pid {proc.pid}) was not ready in {self.timeout:g}s")

    def _offer(self, server: socket.socket) -> socket.socket | None:
        """Hand the sockets to the new process once it has connected."""
        try:
            line, _ = server.accept()
        except BlockingIOError:
            return None
        line.setblocking(True)
        fds = self.balancer.listening_fds()
        try:
            handover.send(line, fds)
        except OSError as exc:
            line.close()
            raise UpgradeFailed(f"cannot hand the sockets over: {exc}") from None
        line.setblocking(False)
        say(f"upgrade: handed {len(fds)} sockets over")
        return line

    def _said_ready(self, line: socket.socket, pid: int) -> bool:
        try:
            data = line.recv(64)
        except BlockingIOError:
            return False
        except OSError as exc:
            raise UpgradeFailed(f"lost the new process (pid {pid}): {exc}") from None
        # Anything else is the line closing without a word: the process is exiting, and its
        # exit code is read on the next round.
        return data == handover.READY


async def _stop(proc: subprocess.Popen[bytes]) -> None:
    """Stop a new process that failed; bounded."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + STOP_GRACE
    while proc.poll() is None and loop.time() < deadline:
        await asyncio.sleep(POLL_INTERVAL)
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        proc.wait(timeout=STOP_GRACE)
