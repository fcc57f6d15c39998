"""A data-plane worker process of `usher run --workers N`: serves the listeners, nothing else.

The control process starts it as `python -m usher.process.worker CHANNEL_FD TABLE_FD STATE_FD
NUMBER WORKERS CAPACITY` and sends the config and the backends' state over the channel
(usher.process.channel). Health checks, the admin API and reloads are the control process's;
the worker applies what it is sent, publishes its counts in its slots of the shared table
(usher.shared), and answers scrapes with its counters.
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
from usher.config import Config
from usher.errors import UsherError
from usher.logs import AccessLog, quiet_library_debug
from usher.process.channel import Channel, ChannelClosed
from usher.process.heap import freeze_startup_objects
from usher.process.messages import (
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
from usher.process.signals import flush_logs
from usher.process.sync import quiet_state_log
from usher.runtime import reload
from usher.runtime.dataplane import DataPlane, Follower, import_user_code
from usher.shared import SharedTable
from usher.state import install
from usher.state.shm import SharedState

# How often the worker tells the control process its open client connections per listener.
CONNECTIONS_INTERVAL = 1.0
# How often the worker takes on what the others did in the shared state (ejections, the head
# of a queue) and settles its retry budget deposits: an ejection reaches every worker within it.
FOLLOW_INTERVAL = 0.02
EXIT_RUNTIME = 2


def data_plane(config: Config, table: SharedTable, number: int, access_log: AccessLog) -> DataPlane:
    """A worker's data plane: no health checks and no admin API (the control process's reach
    it by the state it sends), its backends attached to their rows of the shared table."""
    return DataPlane(
        config,
        access_log=access_log,
        seed=number,
        reuse_port=True,
        workers=table.workers,
        follower=Follower(table, number),
    )


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
        plane = data_plane(start.config, table, number, access_log)
    except UsherError as exc:
        return await _failed(channel, exc)
    try:
        plane.apply(start.state)
        await plane.start()
        handover.release_unclaimed()
        freeze_startup_objects()
    except UsherError as exc:
        await plane.stop(timeout=0)
        return await _failed(channel, exc)
    channel.send(Ready(tuple(bound.url for bound in plane.bound.values())))
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    background: set[asyncio.Task[None]] = set()
    tasks = [
        loop.create_task(_listen(channel, plane, number, stop, background)),
        loop.create_task(_report_connections(channel, plane)),
        loop.create_task(_follow_shared(plane)),
        loop.create_task(flush_logs()),
    ]
    await stop.wait()
    await plane.stop()
    for task in [*tasks, *background]:
        task.cancel()
    access_log.flush()  # the lines it holds back for one batched write
    sys.stdout.flush()
    return 0


async def _failed(channel: Channel, exc: UsherError) -> int:
    """Tell the control process why this worker cannot serve; returns the exit code."""
    channel.send(Failed(str(exc)))
    with contextlib.suppress(ChannelClosed):
        await channel.drain()
    return EXIT_RUNTIME


async def _listen(
    channel: Channel,
    plane: DataPlane,
    number: int,
    stop: asyncio.Event,
    background: set[asyncio.Task[None]],
) -> None:
    """Handle the control process's messages in order (a reload before the state after it)."""
    try:
        while True:
            match await channel.recv():
                case State(state):
                    plane.apply(state)
                case Reload(config):
                    channel.send(Reloaded(await _reload(plane, config, background)))
                case Scrape(ident):
                    snapshot = plane.metrics.snapshot()
                    channel.send(Scraped(ident, snapshot, plane.connections()))
                case Stop():
                    break
    except ChannelClosed:
        print(
            f"usher worker {number}: the control process is gone; draining",
            file=sys.stderr,
            flush=True,
        )
    stop.set()


async def _reload(
    plane: DataPlane, config: Config, background: set[asyncio.Task[None]]
) -> str | None:
    """Apply the config the control process reloaded (it reports the reload once, for all).
    Backends it dropped stay, draining, until the control process, which sees every worker's
    requests in flight, removes them; removed pools retire here at once."""
    try:
        import_user_code(config, fresh=True)
        applied = await reload.reload_to(plane, config)
    except UsherError as exc:
        return str(exc)
    with quiet_state_log():
        for name, backend in applied.dropped:
            pool = plane.pools.get(name)
            if pool is not None and backend in pool.backends and backend.state == "enabled":
                pool.set_state(backend, "draining", "draining")
    for pool in applied.retired:
        task = asyncio.get_running_loop().create_task(plane.retire(pool))
        background.add(task)
        task.add_done_callback(background.discard)
    return None


async def _report_connections(channel: Channel, plane: DataPlane) -> None:
    with contextlib.suppress(ChannelClosed):
        while True:
            await asyncio.sleep(CONNECTIONS_INTERVAL)
            channel.send(Connections(plane.connections()))


async def _follow_shared(plane: DataPlane) -> None:
    while True:
        await asyncio.sleep(FOLLOW_INTERVAL)
        with quiet_state_log():
            for pool in list(plane.pools.values()):
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
            "usage: python -m usher.process.worker"
            " CHANNEL_FD TABLE_FD STATE_FD NUMBER WORKERS CAPACITY"
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
    quiet_library_debug()
    import uvloop

    code: Any = uvloop.run(_main(channel_fd, table_fd, state_fd, number, workers, capacity))
    sys.stdout.flush()
    sys.exit(int(code))


if __name__ == "__main__":
    main()
