"""The messages between the control process of `usher run --workers N` and its workers.

Each is a frozen dataclass; the channel (usher.process.channel) carries them pickled. The control
sends a worker `Start` first, then `State`, `Reload`, `Scrape` or `Stop`; a worker answers
`Ready` or `Failed` to the start, `Reloaded` to a reload and `Scraped` to a scrape, and sends
`Connections` on its own every second.
"""

from __future__ import annotations

from dataclasses import dataclass

from usher.config import Config
from usher.logs import LogFormat
from usher.metrics import Snapshot
from usher.process.sync import PoolsState

# Control to worker.


@dataclass(frozen=True, slots=True)
class WorkerOptions:
    """How a worker logs: what `usher run` was told for the access log."""

    access_log: bool
    log_format: LogFormat


@dataclass(frozen=True, slots=True)
class Start:
    """The first message: what to serve, the backends' state, and the listening sockets the
    worker inherited (their file descriptors)."""

    config: Config
    state: PoolsState
    options: WorkerOptions
    listening: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class State:
    """The backends' state changed (health verdicts, admin changes, drains, backends added or
    removed)."""

    state: PoolsState


@dataclass(frozen=True, slots=True)
class Reload:
    """Serve this config from now on; answered with `Reloaded`."""

    config: Config


@dataclass(frozen=True, slots=True)
class Scrape:
    """Send your counters; answered with `Scraped` carrying the same `ident`."""

    ident: int


@dataclass(frozen=True, slots=True)
class Stop:
    """Drain and exit."""


# Worker to control.


@dataclass(frozen=True, slots=True)
class Ready:
    """The worker serves its listeners, at these URLs."""

    urls: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Failed:
    """The worker could not start; it exits."""

    error: str


@dataclass(frozen=True, slots=True)
class Reloaded:
    """The answer to a `Reload`: None, or why the worker could not apply it."""

    error: str | None


@dataclass(frozen=True, slots=True)
class Scraped:
    """The answer to a `Scrape`: the worker's counters and its open client connections."""

    ident: int
    snapshot: Snapshot
    connections: dict[str, int]


@dataclass(frozen=True, slots=True)
class Connections:
    """The worker's open client connections per listener."""

    connections: dict[str, int]


ToWorker = Start | State | Reload | Scrape | Stop
ToControl = Ready | Failed | Reloaded | Scraped | Connections
Message = ToWorker | ToControl
MESSAGE_TYPES: tuple[type[Message], ...] = (
    Start,
    State,
    Reload,
    Scrape,
    Stop,
    Ready,
    Failed,
    Reloaded,
    Scraped,
    Connections,
)
