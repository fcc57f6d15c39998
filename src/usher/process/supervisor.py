"""The control process of `usher run --workers N`: config, health checks, admin API, metrics,
reloads; it starts N worker processes (usher.process.worker) that serve the traffic, and
restarts any that dies.

It holds every listener's address bound but not listening (usher.process.reserve), so that port 0 is
one real port for all workers, a port in use is found before any worker starts, and the kernel
spreads connections over the workers' own sockets only. It owns the live pools: every 50 ms it
reads the workers' counts from the shared table into its backends (requests in flight, totals,
latency; a drain ends when the sum reaches 0) and sends the workers the backends' state when it
changed (health verdicts, admin changes, drains, backends added or removed).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from usher import handover
from usher.config import DEFAULT_DRAIN_TIMEOUT, Config
from usher.errors import UsherError
from usher.logs import AccessLog
from usher.metrics import Metrics, Snapshot
from usher.pool import Pool
from usher.process.channel import Channel, ChannelClosed
from usher.process.counts import Counts
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
    ToControl,
    WorkerOptions,
)
from usher.process.reserve import Reservation, reserve_listener
from usher.process.signals import flush_logs, handle_signals
from usher.process.sync import PoolsState, pools_state
from usher.process.worker_sockets import WorkerSockets
from usher.runtime import reload
from usher.runtime.controlplane import ControlPlane
from usher.shared import RowIndex, SharedTable
from usher.state.shm import SharedState
from usher.surface import ReloadReport

# How often counts come in from the shared table and state goes out to the workers: well
# under any health check interval, so a verdict reaches every worker within one.
SYNC_INTERVAL = 0.05
# A worker that dies this soon after it started with exit code 2 is failing, not crashing once.
RESTART_BACKOFF = 1.0
START_TIMEOUT = 60.0
# A worker slower than this to answer a scrape or a reload is counted with what it said last.
ANSWER_TIMEOUT = 2.0


# The sockets a listener of each protocol binds, where it is not one TCP socket.
SOCKET_TYPES: dict[str, tuple[int, ...]] = {
    "udp": (socket.SOCK_DGRAM,),
    "dns": (socket.SOCK_STREAM, socket.SOCK_DGRAM),  # UDP and TCP on the same address
}


@dataclass
class WorkerProcess:
    number: int
    proc: asyncio.subprocess.Process
    channel: Channel
    started: float
    ready: asyncio.Future[list[str]]
    snapshot: Snapshot | None = None
    connections: dict[str, int] = field(default_factory=dict)
    pending: dict[int, asyncio.Future[Any]] = field(default_factory=dict)
    reloads: list[asyncio.Future[str | None]] = field(default_factory=list)
    watcher: asyncio.Task[None] | None = None

    @property
    def pid(self) -> int:
        return self.proc.pid


class Supervisor:
    """The worker processes of the control process, behind its control plane (which serves no
    traffic itself): it is that control plane's `Fleet` (usher.runtime.controlplane)."""

    def __init__(
        self,
        config: Config,
        *,
        workers: int,
        access_log: AccessLog,
        config_path: Path | None = None,
    ) -> None:
        # Its listeners only hold their addresses; the workers serve them.
        self.control = ControlPlane(
            config,
            access_log=access_log,
            config_path=config_path,
            workers=workers,
            open_sockets=reserve_listener,
            fleet=self,
        )
        self.count = workers
        self.table = SharedTable.create(workers)
        # The global state (usher.state): limits, queues, pins, buckets, ejections.
        self.state = SharedState.create(self.table)
        self.rows = RowIndex(self.table.capacity)
        self.counts = Counts(self.table, self.rows)
        self.workers: dict[int, WorkerProcess] = {}
        self.stopping = False
        self.failure: str | None = None
        self.done = asyncio.Event()
        self._options: WorkerOptions | None = None
        self._sent: PoolsState | None = None
        self._ids = itertools.count()
        # Counts of workers that died, so that totals never go backwards.
        self._retired_metrics = Metrics()
        self._merged = Metrics()
        self._syncer: asyncio.Task[None] | None = None
        self._background: set[asyncio.Task[Any]] = set()
        self.worker_sockets = WorkerSockets()

    @property
    def pools(self) -> dict[str, Pool]:
        return self.control.pools

    def merged_metrics(self) -> Metrics:
        """The counters of every worker, dead ones and this process's (the health checks), as
        the last scrape summed them."""
        return self._merged

    def worker_config(self) -> Config:
        """The config as the workers serve it: the ports actually reserved, no admin API."""
        bound = self.control.bound
        listeners = [
            reload.as_bound(lc, bound[lc.name].port if lc.name in bound else None)
            for lc in self.control.config.listeners
        ]
        return self.control.config.model_copy(update={"listeners": listeners, "admin": None})

    # Workers

    async def start_workers(self, options: WorkerOptions) -> None:
        self._options = options
        await asyncio.gather(*(self._spawn_worker(n) for n in range(self.count)))
        try:
            await asyncio.wait_for(
                asyncio.gather(*(w.ready for w in self.workers.values())), START_TIMEOUT
            )
        except TimeoutError:
            raise UsherError(f"the workers did not start within {START_TIMEOUT:g}s") from None
        self._release_datagram_reservations()
        self._syncer = asyncio.get_running_loop().create_task(self._sync_loop())

    def _worker_addresses(self) -> list[tuple[str, int, int]]:
        """(host, port, socket type) of every socket a worker listens on."""
        return [
            (lc.bind.host, lc.bind.port, kind)
            for lc in self.worker_config().listeners
            for kind in SOCKET_TYPES.get(lc.protocol, (socket.SOCK_STREAM,))
        ]

    def listening_fds(self) -> list[int]:
        return self.worker_sockets.fds()  # the reservations stay here

    async def _spawn_worker(self, number: int) -> WorkerProcess:
        try:
            listening = self.worker_sockets.for_worker(number, self._worker_addresses())
        except OSError as exc:
            raise UsherError(f"worker {number}: cannot open its listening sockets: {exc}") from exc
        fds = [sock.fileno() for sock in listening]
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "usher.process.worker",
                str(theirs.fileno()),
                str(self.table.fd),
                str(self.state.fd),
                str(number),
                str(self.table.workers),
                str(self.table.capacity),
                stdin=subprocess.DEVNULL,
                pass_fds=(theirs.fileno(), self.table.fd, self.state.fd, *fds),
            )
        finally:
            theirs.close()
        channel = await Channel.open(ours)
        loop = asyncio.get_running_loop()
        worker = WorkerProcess(number, proc, channel, time.monotonic(), loop.create_future())
        self.workers[number] = worker
        assert self._options is not None, "start_workers sets the options first"
        channel.send(Start(self.worker_config(), self._state(), self._options, tuple(fds)))
        worker.watcher = loop.create_task(self._watch(worker))
        return worker

    async def _watch(self, worker: WorkerProcess) -> None:
        try:
            while True:
                message = await worker.channel.recv()
                if isinstance(message, ToControl):
                    self._on_message(worker, message)
        except ChannelClosed:
            pass
        code = await worker.proc.wait()
        worker.channel.close()
        self._exited(worker, code)

    def _on_message(self, worker: WorkerProcess, message: ToControl) -> None:
        match message:
            case Ready(urls):
                if not worker.ready.done():
                    worker.ready.set_result(list(urls))
            case Failed(error):
                if self.failure is None:
                    self.failure = f"worker {worker.number}: {error}"
                if not worker.ready.done():
                    worker.ready.set_exception(UsherError(self.failure))
            case Scraped(ident, snapshot, connections):
                worker.snapshot = snapshot
                worker.connections = connections
                future = worker.pending.pop(ident, None)
                if future is not None and not future.done():
                    future.set_result(snapshot)
            case Connections(connections):
                worker.connections = connections
            case Reloaded(error) if worker.reloads:
                reloaded = worker.reloads.pop(0)
                if not reloaded.done():
                    reloaded.set_result(error)

    def _exited(self, worker: WorkerProcess, code: int) -> None:
        if self.workers.get(worker.number) is worker:
            del self.workers[worker.number]
        self._retire_counts(worker)
        for future in [worker.ready, *worker.pending.values(), *worker.reloads]:
            if not future.done():
                future.set_exception(UsherError(f"worker {worker.number} exited"))
                future.exception()  # retrieved: nobody may be waiting any more
        if self.stopping:
            if not self.workers:
                self.done.set()
            return
        lived = time.monotonic() - worker.started
        print(
            f"usher: worker {worker.number} (pid {worker.pid}) exited with {code}",
            file=sys.stderr,
            flush=True,
        )
        if code == 2 and lived < RESTART_BACKOFF:
            self.failure = self.failure or f"worker {worker.number} failed at start"
            self.done.set()
            return
        task = asyncio.get_running_loop().create_task(self._restart(worker.number, lived))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _restart(self, number: int, lived: float) -> None:
        if lived < RESTART_BACKOFF:  # crashing in a loop: do not spin
            await asyncio.sleep(RESTART_BACKOFF)
        if self.stopping:
            return
        worker = await self._spawn_worker(number)
        with contextlib.suppress(UsherError):
            await worker.ready
            print(
                f"usher: worker {number} restarted (pid {worker.pid})", file=sys.stderr, flush=True
            )

    def _retire_counts(self, worker: WorkerProcess) -> None:
        """A dead worker's requests in flight are gone: clear its slots and its waiters in the
        queues, keep its totals."""
        self.counts.retire_worker(self.pools, worker.number)
        self.state.forget_worker(worker.number)
        if worker.snapshot is not None:
            self._retired_metrics.add_snapshot(worker.snapshot)
        self.sync_counts()

    # Counts in, state out

    async def _sync_loop(self) -> None:
        while True:
            self.sync_counts()
            self.push_state()
            await asyncio.sleep(SYNC_INTERVAL)

    def sync_counts(self) -> None:
        self.counts.read_into(self.pools)

    def _state(self) -> PoolsState:
        return pools_state(self.pools, self.rows)

    def push_state(self) -> None:
        state = self._state()
        if state == self._sent:
            return
        for worker in list(self.workers.values()):
            with contextlib.suppress(ChannelClosed):
                worker.channel.send(State(state))
        self._sent = state
        # Rows of backends gone from every pool are free once the workers have been told.
        for row in self.counts.keep_only(self.pools):
            self.state.clear_row(row)

    # Views

    def connections(self) -> dict[str, int]:
        total = dict.fromkeys(self.control.listeners, 0)
        for worker in self.workers.values():
            for name, count in worker.connections.items():
                if name in total:
                    total[name] += count
        return total

    def describe(self, view: dict[str, Any]) -> None:
        for name, pool in view["pools"].items():
            pool["queued"] = self.state.queued(name)  # waiting in every worker
        view["workers"] = [
            {"number": w.number, "pid": w.pid} for w in sorted(self.workers.values(), key=_number)
        ]

    async def before_scrape(self) -> None:
        """Ask every worker for its counters and sum them with this process's own (the health
        checks) and those of workers that died."""
        self.sync_counts()
        loop = asyncio.get_running_loop()
        waits: list[tuple[WorkerProcess, asyncio.Future[Any]]] = []
        for worker in list(self.workers.values()):
            ident = next(self._ids)
            future: asyncio.Future[Any] = loop.create_future()
            worker.pending[ident] = future
            try:
                worker.channel.send(Scrape(ident))
            except ChannelClosed:
                worker.pending.pop(ident, None)
                continue
            waits.append((worker, future))
        if waits:
            await asyncio.wait([f for _, f in waits], timeout=ANSWER_TIMEOUT)
        total = Metrics()
        total.add_snapshot(self.control.metrics.snapshot())
        total.add_snapshot(self._retired_metrics.snapshot())
        for worker in list(self.workers.values()):
            if worker.snapshot is not None:
                total.add_snapshot(worker.snapshot)
        for worker, future in waits:
            worker.pending = {k: f for k, f in worker.pending.items() if f is not future}
            if not future.done():
                future.cancel()
        self._merged = total

    # Reload and stop

    async def reloaded(self, report: ReloadReport) -> None:
        """Have every worker apply the config the control plane has just reloaded."""
        if self._options is None:
            return  # no workers yet: they start with the new config
        worker_config = self.worker_config()
        loop = asyncio.get_running_loop()
        waits: list[tuple[int, asyncio.Future[str | None]]] = []
        for worker in list(self.workers.values()):
            future: asyncio.Future[str | None] = loop.create_future()
            try:
                worker.channel.send(Reload(worker_config))
            except ChannelClosed:
                continue
            worker.reloads.append(future)
            waits.append((worker.number, future))
        self.push_state()  # after the reload message: the workers apply both in this order
        for number, future in waits:
            try:
                error = await asyncio.wait_for(future, ANSWER_TIMEOUT + DEFAULT_DRAIN_TIMEOUT)
            except (TimeoutError, UsherError) as exc:
                error = str(exc) or "no answer"
            if error is not None:
                report.notes.append(f"worker {number}: {error}")
        self._release_datagram_reservations()
        self.worker_sockets.keep_only(self._worker_addresses())

    def _release_datagram_reservations(self) -> None:
        for serving in self.control.dataplane.servers.values():
            if isinstance(serving, Reservation):
                serving.release_datagram()

    async def stop(self, timeout: float = DEFAULT_DRAIN_TIMEOUT) -> None:
        """Every worker drains (up to `timeout`) and exits."""
        self.stopping = True
        if self._syncer is not None:
            self._syncer.cancel()
        workers = list(self.workers.values())
        for worker in workers:
            with contextlib.suppress(ProcessLookupError):
                worker.proc.send_signal(signal.SIGTERM)
        if workers:
            waits = [asyncio.ensure_future(w.proc.wait()) for w in workers]
            _, late = await asyncio.wait(waits, timeout=timeout + 5.0)
            for worker in workers:
                if worker.proc.returncode is None:
                    with contextlib.suppress(ProcessLookupError):
                        worker.proc.kill()
            if late:
                await asyncio.wait(late, timeout=5.0)
        for worker in workers:
            if worker.watcher is not None:
                with contextlib.suppress(asyncio.CancelledError, TimeoutError):
                    await asyncio.wait_for(worker.watcher, 5.0)
        for task in list(self._background):
            task.cancel()

    def close(self) -> None:
        self.state.close()
        self.worker_sockets.close()
        self.table.close()


def _number(worker: WorkerProcess) -> int:
    return worker.number


async def run_control(
    config: Config,
    *,
    workers: int,
    access_log: AccessLog,
    config_path: Path | None,
) -> None:
    """Serve until SIGTERM/SIGINT; SIGHUP reloads. Raises UsherError when the workers cannot
    start (the first one's message) or keep failing at start."""
    supervisor = Supervisor(config, workers=workers, access_log=access_log, config_path=config_path)
    control = supervisor.control
    # Signals are ours from the start: a SIGHUP while the workers start reloads (they start
    # with the new config), a SIGTERM stops them as soon as they are up.
    upgrader = handle_signals(control, supervisor.done.set)
    await control.start()
    try:
        await supervisor.start_workers(WorkerOptions(access_log.enabled, access_log.format))
    except UsherError as exc:
        await control.stop(timeout=0)
        raise UsherError(supervisor.failure or str(exc)) from None
    for bound in control.bound.values():
        print(f"usher: listener {bound.name} on {bound.url}", file=sys.stderr, flush=True)
    if control.admin_url is not None:
        print(f"usher: admin API and dashboard on {control.admin_url}", file=sys.stderr, flush=True)
    pids = ", ".join(str(w.pid) for w in sorted(supervisor.workers.values(), key=_number))
    print(f"usher: {workers} workers serving (pids {pids})", file=sys.stderr, flush=True)
    handover.announce_ready()
    upgrader.serving = True
    flusher = asyncio.get_running_loop().create_task(flush_logs())
    await supervisor.done.wait()
    failure = supervisor.failure
    if failure is None:
        print("usher: draining", file=sys.stderr, flush=True)
    await control.stop(timeout=0 if failure else DEFAULT_DRAIN_TIMEOUT)
    flusher.cancel()
    sys.stdout.flush()
    if failure is not None:
        raise UsherError(f"{failure}; see the messages above")
