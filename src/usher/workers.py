"""Process model: serve in this process (`--workers 1`), or start the control process of
N worker processes (usher.control, usher.worker) that share the listeners with SO_REUSEPORT.
"""

from __future__ import annotations

import asyncio
import contextlib
import resource
import signal
import sys
from collections.abc import Callable
from pathlib import Path

from usher import handover
from usher.config import Config, HostPort
from usher.errors import UsherError
from usher.logs import AccessLog, LogFormat
from usher.server import Balancer
from usher.upgrade import Upgrader

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
    # Until the handler is in place (once serving), SIGUSR2 must not end the process (its
    # default action); there is nothing to hand over yet.
    signal.signal(signal.SIGUSR2, signal.SIG_IGN)
    Balancer(config)  # certificates load here, once, so a bad one is a config error (exit 1)
    try:
        handover.receive_from_env()  # started by `kill -USR2`: the old process's sockets
    except (OSError, ValueError) as exc:
        raise UsherError(f"upgrade: cannot take the sockets over: {exc}") from None
    log = AccessLog(enabled=access_log, format=fmt)
    if workers <= 1:
        _install_uvloop()
        asyncio.run(
            _serve(config, log, seed=0, reuse_port=False, config_path=config_path, workers=1)
        )
        return
    # A control process (health checks, admin API, metrics, reloads) and N workers.
    from usher.control import run_control

    _install_uvloop()
    asyncio.run(run_control(config, workers=workers, access_log=log, config_path=config_path))


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
    upgrader = handle_signals(balancer, stop.set)
    handover.announce_ready()
    upgrader.serving = True
    flusher = asyncio.get_running_loop().create_task(flush_logs())
    await stop.wait()
    print("usher: draining", file=sys.stderr, flush=True)
    await balancer.stop()
    flusher.cancel()
    access_log.flush()  # the lines it holds back for one batched write
    sys.stdout.flush()


def handle_signals(balancer: Balancer, stop: Callable[[], None]) -> Upgrader:
    """SIGTERM and SIGINT call `stop`; SIGHUP reloads the config file (Balancer.reload runs one
    reload at a time); SIGUSR2 upgrades (a new process takes the sockets over, then `stop`).
    The caller sets the upgrader's `serving` once there are sockets to hand over."""
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop)
    upgrader = Upgrader(balancer, stop)
    loop.add_signal_handler(signal.SIGUSR2, upgrader.request)
    reloading: set[asyncio.Task[None]] = set()

    def on_sighup() -> None:
        task = loop.create_task(_reload(balancer))
        reloading.add(task)
        task.add_done_callback(reloading.discard)

    # The handler holds `reloading`, which holds the reloads under way (the loop keeps only
    # weak references to tasks).
    loop.add_signal_handler(signal.SIGHUP, on_sighup)
    return upgrader


async def _reload(balancer: Balancer) -> None:
    """SIGHUP: re-read the config file; a bad one is reported and the running config stays."""
    try:
        report = await balancer.reload()
    except UsherError as exc:
        print(f"usher: reload refused, still running the previous config:\n{exc}", file=sys.stderr)
        return
    changes = ", ".join(f"{k}: {', '.join(v)}" for k, v in report.as_dict().items() if v)
    print(f"usher: reloaded ({changes or 'no changes'})", file=sys.stderr, flush=True)


async def flush_logs() -> None:
    """Access log lines are written buffered (one syscall per line costs throughput); this
    bounds how late they reach a file or pipe."""
    while True:
        await asyncio.sleep(LOG_FLUSH_INTERVAL)
        sys.stdout.flush()


__all__ = ["HostPort", "run_balancer"]
