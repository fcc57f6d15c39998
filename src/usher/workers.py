"""Process model: serve in this process, or in N forked workers sharing the listeners.

With N workers, the parent resolves and reserves every listener address, then forks; each
worker binds its own socket on the same address with SO_REUSEPORT so the kernel spreads
connections across them. The parent only supervises: it restarts a worker that dies and passes
SIGTERM/SIGINT on. Each worker has its own pools (round robin seeded by worker number, so the
workers do not move in lockstep).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import sys
import time

from usher.config import Config, HostPort, Listener
from usher.errors import UsherError
from usher.logs import AccessLog, LogFormat
from usher.server import Balancer, BindError

# A worker that dies this soon after it started is failing, not crashing once: stop restarting.
RESTART_BACKOFF = 1.0
LOG_FLUSH_INTERVAL = 1.0


def run_balancer(
    config: Config, *, workers: int = 1, log_format: str = "text", access_log: bool = True
) -> None:
    fmt: LogFormat = "json" if log_format == "json" else "text"
    Balancer(config)  # certificates load here, once, so a bad one is a config error (exit 1)
    if workers <= 1:
        _install_uvloop()
        asyncio.run(
            _serve(config, AccessLog(enabled=access_log, format=fmt), seed=0, reuse_port=False)
        )
        return
    config, reserved = _reserve_ports(config)
    try:
        _supervise(config, workers, AccessLog(enabled=access_log, format=fmt))
    finally:
        for sock in reserved:
            sock.close()


def _install_uvloop() -> None:
    import uvloop

    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


async def _serve(config: Config, access_log: AccessLog, *, seed: int, reuse_port: bool) -> None:
    balancer = Balancer(config, access_log=access_log, seed=seed, reuse_port=reuse_port)
    await balancer.start()
    for bound in balancer.bound.values():
        print(f"usher: listener {bound.name} on {bound.url}", file=sys.stderr, flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, _refuse_reload)
    flusher = loop.create_task(_flush_logs())
    await stop.wait()
    print("usher: draining", file=sys.stderr, flush=True)
    await balancer.stop()
    flusher.cancel()
    sys.stdout.flush()


def _refuse_reload() -> None:
    # SIGHUP's default action would kill the balancer mid-request. Until hot reload exists,
    # the signal is refused out loud instead.
    print(
        "usher: SIGHUP ignored: hot reload is not available yet; restart to apply a new config",
        file=sys.stderr,
        flush=True,
    )


async def _flush_logs() -> None:
    """Access log lines are written buffered (one syscall per line costs throughput); this
    bounds how late they reach a file or pipe."""
    while True:
        await asyncio.sleep(LOG_FLUSH_INTERVAL)
        sys.stdout.flush()


def _reserve_ports(config: Config) -> tuple[Config, list[socket.socket]]:
    """Bind (without listening) each listener address, so that port 0 becomes one real port
    shared by every worker and a port in use is reported once, before any fork."""
    reserved: list[socket.socket] = []
    listeners: list[Listener] = []
    for lc in config.listeners:
        family = socket.AF_INET6 if ":" in lc.bind.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        try:
            sock.bind((lc.bind.host, lc.bind.port))
        except OSError as exc:
            sock.close()
            for other in reserved:
                other.close()
            raise BindError(
                f"listener {lc.name}: cannot listen on {lc.bind}: {exc.strerror or exc}"
            ) from exc
        reserved.append(sock)
        port = sock.getsockname()[1]
        listeners.append(lc.model_copy(update={"bind": HostPort(lc.bind.host, port)}))
    return config.model_copy(update={"listeners": listeners}), reserved


def _supervise(config: Config, count: int, access_log: AccessLog) -> None:
    children: dict[int, int] = {}  # pid -> worker number
    started: dict[int, float] = {}
    stopping = False

    def spawn(number: int) -> None:
        pid = os.fork()
        if pid == 0:
            code = 0
            try:
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
                signal.signal(signal.SIGINT, signal.SIG_DFL)
                signal.signal(signal.SIGHUP, signal.SIG_IGN)  # the parent speaks for all
                _install_uvloop()
                asyncio.run(_serve(config, access_log, seed=number, reuse_port=True))
            except UsherError as exc:
                print(f"usher worker {number}: {exc}", file=sys.stderr, flush=True)
                code = 2
            except BaseException:
                code = 2
            finally:
                sys.stdout.flush()
                os._exit(code)
        children[pid] = number
        started[pid] = time.monotonic()

    def forward(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True
        for pid in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    signal.signal(signal.SIGHUP, lambda _signum, _frame: _refuse_reload())
    for number in range(count):
        spawn(number)
    while children:
        try:
            pid, status = os.wait()
        except ChildProcessError:
            break
        except InterruptedError:
            continue
        number = children.pop(pid, -1)
        if number < 0 or stopping:
            continue
        lived = time.monotonic() - started.pop(pid, 0.0)
        code = os.waitstatus_to_exitcode(status)
        print(f"usher: worker {number} (pid {pid}) exited with {code}", file=sys.stderr, flush=True)
        if lived < RESTART_BACKOFF and code == 2:
            forward(signal.SIGTERM, None)
            raise UsherError(f"worker {number} failed at start; see the messages above")
        spawn(number)


__all__ = ["HostPort", "run_balancer"]
