"""`usher demo`: three demo backends and the balancer on the packaged sample config.

`origin` is the demo and test backend server (`usher backend`). Importing it imports this
package first, so the balancer is imported only when `run_demo` runs.
"""

from __future__ import annotations

import asyncio
import signal
from importlib.resources import files
from typing import TYPE_CHECKING

from usher.demo.origin import BackendOptions, BackendServer, start_backend

if TYPE_CHECKING:
    from rich.console import Console

    from usher.logs import LogFormat

SAMPLE_CONFIG_TEXT = files("usher").joinpath("sample.yaml").read_text(encoding="utf-8")
BACKEND_NAMES = "ABCDEFGHIJ"


SIGHUP_MESSAGE = (
    "usher demo: SIGHUP ignored: the demo runs the packaged config, there is no file to reload "
    "(usher demo --print-config > usher.yaml, then usher run -c usher.yaml)"
)


async def run_demo(*, port: int = 8080, log_format: str = "text", console: Console) -> None:
    from usher.config import HostPort, parse_config
    from usher.logs import AccessLog
    from usher.server import Balancer, BindError

    config = parse_config(SAMPLE_CONFIG_TEXT, "sample.yaml")
    listener = config.listeners[0]
    listener = listener.model_copy(update={"bind": HostPort(listener.bind.host, port)})
    config = config.model_copy(update={"listeners": [listener, *config.listeners[1:]]})
    addresses = sorted(
        {b.address for pool in config.pools.values() for b in pool.backends},
        key=lambda a: (a.host, a.port),
    )
    backends: list[BackendServer] = []
    fmt: LogFormat = "json" if log_format == "json" else "text"
    balancer = Balancer(config, access_log=AccessLog(format=fmt))
    try:
        for i, address in enumerate(addresses):
            name = BACKEND_NAMES[i % len(BACKEND_NAMES)]
            try:
                backends.append(
                    await start_backend(address.host, address.port, BackendOptions(name=name))
                )
            except OSError as exc:
                raise BindError(
                    f"demo backend {name}: cannot listen on {address}: {exc.strerror or exc}"
                ) from exc
        await balancer.start()
        url = balancer.bound[listener.name].url
        console.print(f"[bold]usher demo[/] on {url}")
        for server, address in zip(backends, addresses, strict=True):
            console.print(f"  backend {server.options.name} on http://{address}")
        if balancer.admin_url is not None:
            console.print(f"  dashboard and admin API on {balancer.admin_url}/")
        console.print("\nTry:")
        console.print(f"  curl {url}/                  # round robin over A, B, C")
        console.print(f"  curl {url}/api/              # pool api: weights 2:1, C as backup")
        console.print(f"  curl {url}/headers           # what a backend sees (X-Forwarded-For...)")
        console.print(f"  curl -d hello {url}/echo     # bodies stream both ways")
        if balancer.admin_url is not None:
            admin = balancer.admin_url
            console.print(f"  usher status --admin {admin}       # pools and backends as a table")
            console.print(f"  curl {admin}/metrics                # Prometheus metrics")
        console.print(
            "\nEach request is logged below with the backend that answered. Ctrl-C stops.\n"
        )
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        # The demo's config is packaged, not a file: there is nothing to re-read, and a SIGHUP
        # (a closing terminal) must not kill it without draining.
        loop.add_signal_handler(signal.SIGHUP, lambda: console.print(SIGHUP_MESSAGE))
        await stop.wait()
    finally:
        await balancer.stop(timeout=2.0)
        for server in backends:
            await server.close()
        console.print("usher demo stopped")
