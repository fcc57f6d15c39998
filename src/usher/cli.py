"""The `usher` command: run, check, demo, backend, schema, status, simulate, upgrade.

Exit codes: 0 ok; 1 bad config or usage; 2 runtime failure (e.g. a port in use).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import sys
import time
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console

from usher import __version__, build_mode
from usher.errors import ConfigError, RuntimeFailure, UsherError

if TYPE_CHECKING:
    from usher.config import Config

EXIT_OK = 0
EXIT_BAD_INPUT = 1
EXIT_RUNTIME = 2
EXIT_NOT_SERVING = 1  # `usher status --check`: this balancer does not serve

app = typer.Typer(
    name="usher",
    help="usher: a load balancer written in Python.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
err = Console(stderr=True, highlight=False, emoji=False)
out = Console(highlight=False, emoji=False)


class LogFormat(StrEnum):
    text = "text"
    json = "json"


ConfigOption = Annotated[
    Path, typer.Option("--config", "-c", help="The config file (YAML or JSON).")
]


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
    from usher.logs import quiet_library_debug

    quiet_library_debug()


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
    from usher.process.single import run_balancer

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
    from usher.config import parse_duration
    from usher.demo.origin import BackendOptions, start_backend

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
    check: Annotated[
        bool,
        typer.Option(
            "--check",
            help="Exit 0 when the balancer serves (admin /health ok, its listeners accept "
            "connections, a backend is healthy), else 1; for keepalived's track script.",
        ),
    ] = False,
) -> None:
    """Show the pools and backends of a running balancer, from its admin API."""
    if check:  # first, and nothing else imported: keepalived runs it every second or two
        from usher.serving import check as check_serving

        ok, why = check_serving(admin, token=token)
        (out if ok else err).print(why, markup=False, highlight=False, soft_wrap=True)
        raise typer.Exit(EXIT_OK if ok else EXIT_NOT_SERVING)
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


ha = typer.Typer(
    help="High availability: configs for running usher in pairs.", no_args_is_help=True
)
app.add_typer(ha, name="ha")


@ha.command()
def keepalived(
    vip: Annotated[
        list[str],
        typer.Option(
            help="Virtual address with its prefix, e.g. 192.0.2.10/24; repeat for "
            "active-active (one --priority each)."
        ),
    ],
    interface: Annotated[str, typer.Option(help="Network interface carrying the VIP, e.g. eth0.")],
    priority: Annotated[
        list[int],
        typer.Option(
            help="This node's VRRP priority (1..254) for each --vip; the higher holds it."
        ),
    ],
    peer: Annotated[
        list[str] | None,
        typer.Option(help="The other node's address: unicast VRRP instead of multicast."),
    ] = None,
    router_id: Annotated[
        int, typer.Option(help="virtual_router_id of the first --vip; the next ones count up.")
    ] = 51,
    admin: Annotated[
        str, typer.Option(help="This node's admin API, for the track script.")
    ] = "http://127.0.0.1:9900",
    usher_command: Annotated[
        str | None,
        typer.Option(
            "--usher",
            help="The usher command the track script runs (default: this one, by full path).",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Print a keepalived.conf for this node of a VRRP pair tracking `usher status --check`."""
    import shlex
    import shutil

    from usher.ha import HaError, keepalived_conf

    if usher_command is not None:
        command = shlex.split(usher_command)
    else:
        # The `usher` script beside this interpreter, not `python -m usher`: keepalived runs a
        # script by its resolved path, and a virtualenv's python resolved is the system one,
        # which has no usher.
        beside = Path(sys.executable).parent / "usher"
        found = str(beside) if beside.is_file() else shutil.which("usher")
        command = [found] if found else [sys.executable, "-m", "usher"]
    try:
        text = keepalived_conf(
            vips=vip,
            interface=interface,
            priorities=priority,
            peers=peer or [],
            router_id=router_id,
            check_command=[*command, "status", "--check", "--admin", admin],
        )
    except HaError as exc:
        raise _fail(EXIT_BAD_INPUT, str(exc)) from None
    sys.stdout.write(text)


@app.command()
def simulate(
    config: ConfigOption,
    scenario: Annotated[
        Path, typer.Option("--scenario", "-s", help="The scenario file (YAML): docs/simulate.md.")
    ],
    out_dir: Annotated[
        Path, typer.Option("--out", "-o", help="Directory for summary.json and the PNG plots.")
    ] = Path("simulate-out"),
) -> None:
    """Replay a scenario through usher's own balancing code on virtual time, per algorithm:
    a table, DIR/summary.json and DIR/*.png."""
    cfg = _load(config)
    from usher.simulate.runner import simulate as run_simulation
    from usher.simulate.scenario import load_scenario

    try:
        parsed = load_scenario(scenario)
        # A pipe or a file gets the whole table, however wide, not one cut at 80 columns.
        console = out if out.is_terminal else Console(highlight=False, emoji=False, width=160)
        run_simulation(cfg, parsed, out_dir, console, source=str(scenario))
    except ConfigError as exc:
        raise _fail(EXIT_BAD_INPUT, str(exc)) from None
    except OSError as exc:
        raise _fail(EXIT_RUNTIME, f"cannot write to {out_dir}: {exc.strerror or exc}") from None


@app.command()
def upgrade(
    pid: Annotated[
        int, typer.Option(help="Pid of `usher run` (with --workers N: its control process).")
    ],
    wait: Annotated[
        str,
        typer.Option(help="Wait this long for the old process to drain and exit, e.g. 60s."),
    ] = "0s",
) -> None:
    """Upgrade a running balancer with no dropped connection (as `kill -USR2 PID`): a new
    process takes its listening sockets over, then the old one drains and exits."""
    from usher.config import parse_duration
    from usher.upgrade import is_usher_run

    try:
        patience = parse_duration(wait)
    except ValueError as exc:
        raise _fail(EXIT_BAD_INPUT, f"--wait: {exc}") from None
    try:
        if not is_usher_run(pid):
            raise _fail(EXIT_BAD_INPUT, f"pid {pid} is not `usher run`: no signal sent")
        os.kill(pid, signal.SIGUSR2)
    except ProcessLookupError:
        raise _fail(EXIT_BAD_INPUT, f"no process {pid}") from None
    except PermissionError:
        raise _fail(EXIT_BAD_INPUT, f"not allowed to signal pid {pid}") from None
    out.print(f"sent SIGUSR2 to pid {pid}; its log says how the upgrade goes")
    if patience <= 0:
        return
    deadline = time.monotonic() + patience
    while time.monotonic() < deadline:
        try:
            running = is_usher_run(pid)
        except ProcessLookupError:
            running = False
        if not running:
            out.print(f"pid {pid} has handed over and exited")
            return
        time.sleep(0.1)
    raise _fail(
        EXIT_RUNTIME,
        f"pid {pid} still runs after {wait}: the upgrade failed, or it is still draining "
        "(see its log)",
    )


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
