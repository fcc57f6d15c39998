"""One replay per algorithm of a scenario on a config's pool, then the table, JSON and plots."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from usher.config import Config
from usher.simulate.engine import Replay, RunResult
from usher.simulate.report import summarize, table, write_plots, write_summary
from usher.simulate.scenario import Scenario, check_against


def simulate(
    config: Config,
    scenario: Scenario,
    out: Path,
    console: Console,
    *,
    source: str = "<scenario>",
    plots: bool = True,
) -> list[dict[str, Any]]:
    """Replay every algorithm, print the table, write DIR/summary.json and the plots; returns
    the summaries. ConfigError when the scenario does not fit the config."""
    pool_name = check_against(scenario, config, source)
    algorithms = scenario.algorithms or [config.pools[pool_name].algorithm]
    results: list[RunResult] = []
    # On a terminal only: a progress bar in a log file is noise.
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.fields[at]}"),
        TimeElapsedColumn(),
        console=console,
        transient=True,
        disable=not console.is_terminal,
    ) as progress:
        for algorithm in algorithms:
            task = progress.add_task(algorithm, total=scenario.duration, at="")

            def advance(t: float, task: Any = task) -> None:
                progress.update(task, completed=t, at=f"{t:g}s of {scenario.duration:g}s")

            replay = Replay(scenario, config, pool_name, algorithm, on_progress=advance)
            with _quiet(logging.getLogger("usher.health")):
                results.append(replay.run())
    summaries = [summarize(result) for result in results]
    backends = results[0].backends
    arrivals = scenario.arrivals
    load = (
        f"{arrivals.concurrency} concurrent"
        if arrivals.concurrency is not None
        else f"{arrivals.rate:g} req/s (Poisson)"
    )
    title = (
        f"pool {pool_name}: {scenario.duration:g}s of virtual time, {load}, seed {scenario.seed}"
    )
    console.print(table(summaries, backends, title))
    out.mkdir(parents=True, exist_ok=True)
    meta = {
        "pool": pool_name,
        "duration_s": scenario.duration,
        "seed": scenario.seed,
        "arrivals": arrivals.model_dump(exclude_none=True),
        "backends": backends,
    }
    write_summary(out / "summary.json", meta, summaries)
    written = [out / "summary.json"]
    if plots:
        written += write_plots(out, results, scenario.bucket)
    console.print(f"wrote {', '.join(str(p) for p in written)}")
    return summaries


@contextlib.contextmanager
def _quiet(logger: logging.Logger) -> Iterator[None]:
    """The pool logs each change of a backend's state; a replay makes thousands in seconds, and
    summary.json lists them with their virtual times."""
    before = logger.disabled
    logger.disabled = True
    try:
        yield
    finally:
        logger.disabled = before
