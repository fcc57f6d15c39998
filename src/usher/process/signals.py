"""Signals of `usher run`, whatever the process model: SIGTERM and SIGINT drain, SIGHUP
reloads, SIGUSR2 upgrades; and the periodic flush of the access log."""

from __future__ import annotations

import asyncio
import signal
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING

from usher.errors import UsherError
from usher.upgrade import Upgrader

if TYPE_CHECKING:  # a worker flushes its logs here; it has no control plane (nor the admin API)
    from usher.runtime.controlplane import ControlPlane

LOG_FLUSH_INTERVAL = 1.0


def handle_signals(balancer: ControlPlane, stop: Callable[[], None]) -> Upgrader:
    """SIGTERM and SIGINT call `stop`; SIGHUP reloads the config file (ControlPlane.reload runs
    one reload at a time); SIGUSR2 upgrades (a new process takes the sockets over, then `stop`).
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


async def _reload(balancer: ControlPlane) -> None:
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
