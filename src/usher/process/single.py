"""`usher run`: serve in this process (`--workers 1`), or start the control process of N worker
processes (usher.process.supervisor, usher.process.worker) that share the listeners with
SO_REUSEPORT.
"""

from __future__ import annotations

import asyncio
import contextlib
import resource
import signal
import sys
from pathlib import Path

from usher import handover
from usher.config import Config
from usher.errors import UsherError
from usher.logs import AccessLog, LogFormat
from usher.process.heap import freeze_startup_objects
from usher.process.signals import flush_logs, handle_signals
from usher.process.supervisor import run_control
from usher.runtime.controlplane import ControlPlane


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
    ControlPlane(config)  # certificates load here, once, so a bad one is a config error (exit 1)
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
    balancer = ControlPlane(
        config,
        access_log=access_log,
        seed=seed,
        reuse_port=reuse_port,
        config_path=config_path,
        workers=workers,
    )
    await balancer.start()
    freeze_startup_objects()
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
