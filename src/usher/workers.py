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
import resource
import signal
import socket
import sys
import time
from pathlib import Path

from usher.config import Config, HostPort, Listener
from usher.errors import ConfigError, ConfigIssue, UsherError
from usher.logs import AccessLog, LogFormat
from usher.server import Balancer, BindError

# A worker that dies this soon after it started is failing, not crashing once: stop restarting.
RESTART_BACKOFF = 1.0
LOG_FLUSH_INTERVAL = 1.0


def run_balancer(
    config: Config,
    *,
    workers: int = 1,
    log_format: str = "text",
    access_log: bool = True,
    config_path: Path | None = None,
) -> None:
    fmt: LogFormat = "json" if log_format == "json" else "text"
    raise_open_file_limit()
    Balancer(config)  # certificates load here, once, so a bad one is a config error (exit 1)
    log = AccessLog(enabled=access_log, format=fmt)
    if workers <= 1:
        _install_uvloop()
        asyncio.run(
            _serve(config, log, seed=0, reuse_port=False, config_path=config_path, workers=1)
        )
        return
    if config.admin is not None:
        # Each worker keeps its own pools until the control process shares them: an admin API
        # in one worker would change a fraction of the traffic and report a fraction of it.
        raise ConfigError(
            [ConfigIssue("admin", "the admin API needs --workers 1 for now (one process)")]
        )
    config, reserved = _reserve_ports(config)
    try:
        _supervise(config, workers, log, config_path)
    finally:
        for sock in reserved:
            sock.close()


def raise_open_file_limit() -> None:
    """Every client and backend connection is a descriptor: take the soft limit up to the hard
    one, as nginx's worker_rlimit_nofile does (the hard limit is the administrator's)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _install_uvloop() -> None:
    import uvloop

    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


async def _serve(
    config: Config,
    access_log: AccessLog,
    *,
    seed: int,
    reuse_port: bool,
    config_path: Path | None,
    workers: int,
) -> None:
    balancer = Balancer(
        config,
        access_log=access_log,
        seed=seed,
        reuse_port=reuse_port,
        config_path=config_path,
        workers=workers,
    )
    await balancer.start()
    for bound in balancer.bound.values():
        print(f"usher: listener {bound.name} on {bound.url}", file=sys.stderr, flush=True)
    if balancer.admin_url is not None:
        print(
            f"usher: admin API and dashboard on {balancer.admin_url}", file=sys.stderr, flush=True
        )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    reloading: set[asyncio.Task[None]] = set()

    def on_sighup() -> None:
        task = loop.create_task(_reload(balancer))
        reloading.add(task)
        task.add_done_callback(reloading.discard)

    loop.add_signal_handler(signal.SIGHUP, on_sighup)
    flusher = loop.create_task(_flush_logs())
    await stop.wait()
    print("usher: draining", file=sys.stderr, flush=True)
    await balancer.stop()
    flusher.cancel()
    sys.stdout.flush()


async def _reload(balancer: Balancer) -> None:
    """SIGHUP: re-read the config file; a bad one is reported and the running config stays."""
    try:
        report = await balancer.reload()
    except UsherError as exc:
        print(f"usher: reload refused, still running the previous config:\n{exc}", file=sys.stderr)
        return
    changes = ", ".join(f"{k}: {', '.join(v)}" for k, v in report.as_dict().items() if v)
    print(f"usher: reloaded ({changes or 'no changes'})", file=sys.stderr, flush=True)


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


def _supervise(config: Config, count: int, access_log: AccessLog, config_path: Path | None) -> None:
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
                # Ignored until the worker's loop takes SIGHUP over (a reload of its own).
                signal.signal(signal.SIGHUP, signal.SIG_IGN)
                _install_uvloop()
                asyncio.run(
                    _serve(
                        config,
                        access_log,
                        seed=number,
                        reuse_port=True,
                        config_path=config_path,
                        workers=count,
                    )
                )
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

    def reload_all(_signum: int, _frame: object) -> None:
        for pid in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGHUP)

    signal.signal(signal.SIGHUP, reload_all)
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
