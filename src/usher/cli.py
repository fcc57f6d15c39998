"""The `usher` command: run, check, demo, backend, schema.

Exit codes: 0 ok; 1 bad config or usage; 2 runtime failure (e.g. a port in use).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import sys
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console

from usher import __version__, build_mode
from usher.errors import ConfigError, UsherError

if TYPE_CHECKING:
    from usher.config import Config

EXIT_OK = 0
EXIT_BAD_INPUT = 1
EXIT_RUNTIME = 2

app = typer.Typer(
    name="usher",
    help="usher: a load balancer written in Python.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
err = Console(stderr=True, highlight=False)
out = Console(highlight=False)


class LogFormat(StrEnum):
    text = "text"
    json = "json"


ConfigOption = Annotated[
    Path, typer.Option("--config", "-c", help="The config file (YAML or JSON).")
]


class RuntimeFailure(Exception):
    """Ends the program with exit code 2 (usage errors, which the parser reports, end with 1)."""


def _fail(code: int, message: str) -> Exception:
    if code == EXIT_RUNTIME:
        return RuntimeFailure(message)
    err.print(f"[bold red]error:[/] {message}", markup=True, soft_wrap=True)
    return typer.Exit(code)


def _load(path: Path) -> Config:
    from usher.config import load_config

    try:
        return load_config(path)
    except ConfigError as exc:
        raise _fail(EXIT_BAD_INPUT, str(exc)) from None


def _install_logging() -> None:
    # State changes of backends, reloads and warnings: one timestamped line each, on stderr.
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s usher: %(message)s", stream=sys.stderr
    )


def _install_loop() -> None:
    import uvloop

    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


@app.command()
def run(
    config: ConfigOption,
    workers: Annotated[
        int | None,
        typer.Option(
            help="Data-plane processes sharing the listeners (SO_REUSEPORT), plus a control "
            "process when N > 1. Default: the number of cores.",
            min=1,
            show_default=False,
        ),
    ] = None,
    log_format: Annotated[LogFormat, typer.Option(help="Access log format.")] = LogFormat.text,
    access_log: Annotated[bool, typer.Option(help="Write one line per request.")] = True,
) -> None:
    """Serve a config. SIGHUP reloads it; SIGTERM (or Ctrl-C) drains and exits."""
    cfg = _load(config)
    from usher.workers import run_balancer

    _install_logging()
    logging.getLogger("usher").info("usher %s, %s", __version__, build_mode())
    try:
        run_balancer(
            cfg,
            workers=workers if workers is not None else os.cpu_count() or 1,
            log_format=log_format.value,
            access_log=access_log,
            config_path=config,
        )
    except ConfigError as exc:
        raise _fail(EXIT_BAD_INPUT, str(exc)) from None
    except UsherError as exc:
        raise _fail(EXIT_RUNTIME, str(exc)) from None


@app.command()
def check(config: ConfigOption) -> None:
    """Validate a config file: exit 0, or 1 with every problem and its path."""
    cfg = _load(config)
    from usher.server import Balancer

    try:
        Balancer(cfg)  # loads certificates and builds routes without binding anything
    except ConfigError as exc:
        raise _fail(EXIT_BAD_INPUT, f"{config}: {exc}") from None
    listeners = len(cfg.listeners)
    backends = sum(len(p.backends) for p in cfg.pools.values())
    out.print(
        f"{config}: ok ({listeners} listener{'s' * (listeners != 1)}, "
        f"{len(cfg.pools)} pool{'s' * (len(cfg.pools) != 1)}, "
        f"{backends} backend{'s' * (backends != 1)})"
    )


@app.command()
def schema() -> None:
    """Print the JSON Schema of the config file."""
    from usher.config import config_schema

    sys.stdout.write(json.dumps(config_schema(), indent=2) + "\n")


@app.command()
def demo(
    port: Annotated[int, typer.Option(help="Port of the balancer's listener.")] = 8080,
    print_config: Annotated[
        bool, typer.Option("--print-config", help="Print the demo's config and exit.")
    ] = False,
    log_format: Annotated[LogFormat, typer.Option(help="Access log format.")] = LogFormat.text,
) -> None:
    """Run three demo backends and the balancer on the packaged sample config."""
    from usher.demo import SAMPLE_CONFIG_TEXT, run_demo

    if print_config:
        sys.stdout.write(SAMPLE_CONFIG_TEXT)
        return
    _install_logging()
    _install_loop()
    try:
        asyncio.run(run_demo(port=port, log_format=log_format.value, console=out))
    except UsherError as exc:
        raise _fail(EXIT_RUNTIME, str(exc)) from None
    except KeyboardInterrupt:
        pass


@app.command()
def backend(
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 9001,
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    name: Annotated[
        str | None, typer.Option(help="Name it answers with (default: its port).")
    ] = None,
    latency: Annotated[str, typer.Option(help="Delay added to each answer, e.g. 20ms.")] = "0s",
    fail_rate: Annotated[
        float, typer.Option(help="Fraction of requests answered 500.", min=0.0, max=1.0)
    ] = 0.0,
) -> None:
    """Run one demo backend (GET /, /health, /load, /headers, POST /echo, /bytes/N, /ws)."""
    from usher.backend import BackendOptions, start_backend
    from usher.config import parse_duration

    try:
        delay = parse_duration(latency)
    except ValueError as exc:
        raise _fail(EXIT_BAD_INPUT, f"--latency: {exc}") from None
    options = BackendOptions(name=name or str(port), latency=delay, fail_rate=fail_rate)
    _install_loop()

    async def serve() -> None:
        server = await start_backend(host, port, options)
        out.print(f"backend {options.name} on http://{host}:{server.port}")
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        await server.close()

    try:
        asyncio.run(serve())
    except OSError as exc:
        raise _fail(
            EXIT_RUNTIME, f"cannot listen on {host}:{port}: {exc.strerror or exc}"
        ) from None


@app.command()
def status(
    admin: Annotated[
        str, typer.Option(help="URL of the balancer's admin API.")
    ] = "http://127.0.0.1:9900",
    token: Annotated[
        str | None,
        typer.Option(help="The admin API's token (admin.token).", envvar="USHER_ADMIN_TOKEN"),
    ] = None,
    watch: Annotated[bool, typer.Option("--watch", help="Refresh until Ctrl-C.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the API's JSON.")] = False,
    interval: Annotated[str, typer.Option(help="Time between refreshes, e.g. 2s.")] = "2s",
) -> None:
    """Show the pools and backends of a running balancer, from its admin API."""
    from usher.config import parse_duration
    from usher.status import StatusError, show

    try:
        every = parse_duration(interval)
    except ValueError as exc:
        raise _fail(EXIT_BAD_INPUT, f"--interval: {exc}") from None
    if every <= 0:
        raise _fail(EXIT_BAD_INPUT, "--interval: must be > 0")
    try:
        show(out, admin, token=token, as_json=as_json, watch=watch, interval=every)
    except StatusError as exc:
        raise _fail(exc.exit_code, str(exc)) from None
    except KeyboardInterrupt:
        pass


@app.command()
def version() -> None:
    """Print usher's version and whether its hot path runs compiled or as pure Python."""
    out.print(f"usher {__version__}, {build_mode()}", soft_wrap=True)


def main(argv: list[str] | None = None) -> None:
    """Entry point of the `usher` script and `python -m usher`."""
    try:
        app(args=argv, prog_name="usher")
    except RuntimeFailure as exc:
        err.print(f"[bold red]error:[/] {exc}", markup=True, soft_wrap=True)
        sys.exit(EXIT_RUNTIME)
    except SystemExit as exc:
        # The command-line parser ends usage errors with 2; our contract says 1 for those.
        code = exc.code
        sys.exit(EXIT_BAD_INPUT if code == 2 else code)
