"""A data-plane worker process of `usher run --workers N`: serves the listeners, nothing else.

The control process starts it as `python -m usher.worker CHANNEL_FD TABLE_FD STATE_FD NUMBER
WORKERS CAPACITY` and sends
the config and the backends' state over the channel (usher.channel). Health checks, the admin
API and reloads are the control process's; the worker applies what it is sent, publishes its
counts in its slots of the shared table (usher.shared), and answers scrapes with its counters.
It drains and exits on SIGTERM, on a `Stop` message, or when the control process goes away.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
import sys
from typing import Any

from usher import handover
from usher.channel import Channel, ChannelClosed
from usher.config import Config
from usher.errors import UsherError
from usher.logs import AccessLog
from usher.messages import (
    Connections,
    Failed,
    Ready,
    Reload,
    Reloaded,
    Scrape,
    Scraped,
    Start,
    State,
    Stop,
)
from usher.pool import Backend, Pool
from usher.process.heap import freeze_startup_objects
from usher.server import Balancer, ReloadReport
from usher.shared import SharedTable
from usher.signals import flush_logs
from usher.state import install
from usher.state.shm import SharedState
from usher.sync import PoolsState, apply_state, detach, quiet_state_log

# How often the worker tells the control process its open client connections per listener.
CONNECTIONS_INTERVAL = 1.0
# How often the worker takes on what the others did in the shared state (ejections, the head
# of a queue) and settles its retry budget deposits: an ejection reaches every worker within it.
FOLLOW_INTERVAL = 0.02
EXIT_RUNTIME = 2


class WorkerBalancer(Balancer):
    """A Balancer without the control plane: no health checks and no admin API, and backends a
    reload drops stay (draining) until the control process, which sees every worker's requests
    in flight, removes them."""

    def __init__(
        self, config: Config, table: SharedTable, number: int, access_log: AccessLog
    ) -> None:
        super().__init__(
            config,
            access_log=access_log,
            seed=number,
            reuse_port=True,
            workers=table.workers,
            control_plane=False,  # the control process's checks and discovery reach us by sync
        )
        self.table = table
        self.number = number

    async def drain_out(self, pool_name: str, backend: Backend) -> None:
        pool = self.pools.get(pool_name)
        if pool is not None and backend in pool.backends and backend.state == "enabled":
            with quiet_state_log():
                pool.set_state(backend, "draining", "draining")

    async def retire_pool(self, pool: Pool) -> None:
        # A pool the reload removed: its rows go back to the control process at once.
        for backend in pool.backends:
            detach(backend)
        await super().retire_pool(pool)

    def apply(self, state: PoolsState) -> None:
        apply_state(self.pools, state, self.table, self.number)

    def connections(self) -> dict[str, int]:
        return {name: len(listener.connections) for name, listener in self.listeners.items()}


async def serve(channel: Channel, table: SharedTable, number: int) -> int:
    """Run one worker until it is told to stop; returns the exit code."""
    start = await channel.recv()
    if not isinstance(start, Start):
        raise ChannelClosed(f"expected a start message, got {type(start).__name__}")
    options = start.options
    access_log = AccessLog(enabled=options.access_log, format=options.log_format)
    # The control process opens the listening sockets (they outlive a worker and go over to
    # the next process in an upgrade); the listeners take them where they bind.
    handover.adopt_fds(start.listening)
    try:
        balancer = WorkerBalancer(start.config, table, number, access_log)
        balancer.apply(start.state)
        await balancer.start()
        handover.release_unclaimed()
        freeze_startup_objects()
    except UsherError as exc:
        channel.send(Failed(str(exc)))
        with contextlib.suppress(ChannelClosed):
            await channel.drain()
        return EXIT_RUNTIME
    channel.send(Ready(tuple(bound.url for bound in balancer.bound.values())))
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    tasks = [
        loop.create_task(_listen(channel, balancer, stop)),
        loop.create_task(_report_connections(channel, balancer)),
        loop.create_task(_follow_shared(balancer)),
        loop.create_task(flush_logs()),
    ]
    await stop.wait()
    await balancer.stop()
    for task in tasks:
        task.cancel()
    access_log.flush()  # the lines it holds back for one batched write
    sys.stdout.flush()
    return 0


async def _listen(channel: Channel, balancer: WorkerBalancer, stop: asyncio.Event) -> None:
    """Handle the control process's messages in order (a reload before the state after it)."""
    try:
        while True:
            match await channel.recv():
                case State(state):
                    balancer.apply(state)
                case Reload(config):
                    channel.send(Reloaded(await _reload(balancer, config)))
                case Scrape(ident):
                    snapshot = balancer.metrics.snapshot()
                    channel.send(Scraped(ident, snapshot, balancer.connections()))
                case Stop():
                    break
    except ChannelClosed:
        print(
            f"usher worker {balancer.number}: the control process is gone; draining",
            file=sys.stderr,
            flush=True,
        )
    stop.set()


async def _reload(balancer: WorkerBalancer, config: Config) -> str | None:
    try:
        report: ReloadReport = await balancer.reload(config)
    except UsherError as exc:
        return str(exc)
    del report  # the control process reports the reload once, for all
    return None


async def _report_connections(channel: Channel, balancer: WorkerBalancer) -> None:
    with contextlib.suppress(ChannelClosed):
        while True:
            await asyncio.sleep(CONNECTIONS_INTERVAL)
            channel.send(Connections(balancer.connections()))


async def _follow_shared(balancer: WorkerBalancer) -> None:
    while True:
        await asyncio.sleep(FOLLOW_INTERVAL)
        with quiet_state_log():
            for pool in list(balancer.pools.values()):
                pool.follow_shared()


async def _main(
    channel_fd: int, table_fd: int, state_fd: int, number: int, workers: int, capacity: int
) -> int:
    sock = socket.socket(fileno=channel_fd)
    table = SharedTable(table_fd, workers, capacity)
    # Pools and rate limits built from here on keep their state where every worker sees it.
    install(SharedState(state_fd, table, capacity, worker=number))
    channel = await Channel.open(sock)
    try:
        return await serve(channel, table, number)
    except ChannelClosed:
        return EXIT_RUNTIME
    finally:
        channel.close()


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 6:
        sys.exit(
            "usage: python -m usher.worker CHANNEL_FD TABLE_FD STATE_FD NUMBER WORKERS CAPACITY"
        )
    channel_fd, table_fd, state_fd, number, workers, capacity = (int(a) for a in args)
    # The control process passes Ctrl-C on as SIGTERM; the terminal's own SIGINT to the whole
    # process group must not stop the workers behind its back. SIGHUP and SIGUSR2 (reload,
    # upgrade) are the control's too: by default either would end a worker.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    signal.signal(signal.SIGUSR2, signal.SIG_IGN)
    logging.basicConfig(
        level=logging.INFO,
        format=f"%(asctime)s usher worker {number}: %(message)s",
        stream=sys.stderr,
    )
    import uvloop

    code: Any = uvloop.run(_main(channel_fd, table_fd, state_fd, number, workers, capacity))
    sys.stdout.flush()
    sys.exit(int(code))


if __name__ == "__main__":
    main()
