"""What a replay shows: figures per algorithm, the rich table, summary.json and the PNG plots."""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from rich.table import Table

from usher.simulate.engine import SAMPLE_EVERY, RunResult

PERCENTILES = (50, 90, 99, 99.9)
PLOTS = ("latency_cdf.png", "share_over_time.png", "in_flight.png")


def percentile(ordered: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile of sorted values (0.0 when there are none)."""
    if not ordered:
        return 0.0
    rank = max(1, math.ceil(pct / 100.0 * len(ordered)))
    return ordered[rank - 1]


def is_error(status: int) -> bool:
    return status >= 500 or status == 429


def summarize(result: RunResult) -> dict[str, Any]:
    """The figures of one algorithm's replay, as summary.json has them."""
    ordered = sorted(result.latencies)
    answered = len(ordered)
    errors = sum(n for status, n in result.statuses.items() if is_error(status))
    sent = sum(result.attempts.values())
    return {
        "algorithm": result.algorithm,
        "requests": answered,
        "throughput_rps": round(answered / result.duration, 1),
        "mean_ms": round(1000 * sum(ordered) / answered, 3) if answered else 0.0,
        **{
            f"p{pct:g}_ms".replace(".", "_"): round(1000 * percentile(ordered, pct), 3)
            for pct in PERCENTILES
        },
        "errors": errors,
        "error_rate": round(errors / answered, 5) if answered else 0.0,
        "statuses": {str(status): n for status, n in sorted(result.statuses.items())},
        "retries": result.retries,
        "rejected": result.rejected,
        "share": {
            label: round(n / sent, 5) if sent else 0.0 for label, n in result.attempts.items()
        },
        "sent": dict(result.attempts),
        "state_changes": [
            {"at": round(at, 3), "backend": label, "state": state, "reason": reason}
            for at, label, state, reason in result.state_changes
        ],
        "events": result.events,
    }


def rankings(summaries: Sequence[dict[str, Any]]) -> dict[str, list[str]]:
    """Algorithms from best to worst by p99 and by throughput (ties keep the scenario's order)."""
    return {
        "by_p99": [s["algorithm"] for s in sorted(summaries, key=lambda s: s["p99_ms"])],
        "by_throughput": [
            s["algorithm"] for s in sorted(summaries, key=lambda s: -s["throughput_rps"])
        ],
    }


def table(summaries: Sequence[dict[str, Any]], backends: Sequence[str], title: str) -> Table:
    out = Table(
        title=title,
        title_justify="left",
        caption="latencies in ms; the last columns: share of the requests sent to each backend",
        caption_justify="left",
    )
    out.add_column("algorithm", no_wrap=True)
    for name in ("requests", "req/s", "p50", "p99", "errors"):
        out.add_column(name, justify="right", no_wrap=True)
    for label in short_labels(backends):
        out.add_column(label, justify="right", no_wrap=True)
    for s in summaries:
        out.add_row(
            s["algorithm"],
            f"{s['requests']:,}",
            f"{s['throughput_rps']:,.0f}",
            f"{s['p50_ms']:.2f}",
            f"{s['p99_ms']:.2f}",
            f"{s['errors']:,}",
            *[f"{100 * s['share'][label]:.1f}%" for label in backends],
        )
    return out


def short_labels(backends: Sequence[str]) -> list[str]:
    """`:9001` for `127.0.0.1:9001` when every backend is on the same host."""
    hosts = {label.rpartition(":")[0] for label in backends}
    if len(hosts) == 1:
        return [":" + label.rpartition(":")[2] for label in backends]
    return list(backends)


def write_summary(path: Path, meta: dict[str, Any], summaries: Sequence[dict[str, Any]]) -> None:
    document = {**meta, "algorithms": list(summaries), "ranking": rankings(summaries)}
    path.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")


def write_plots(out: Path, results: Sequence[RunResult], bucket: float) -> list[Path]:
    """latency_cdf.png, share_over_time.png and in_flight.png in `out`; returns their paths."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display, whatever the environment says
    import matplotlib.pyplot as plt

    paths = [out / name for name in PLOTS]
    backends = results[0].backends

    fig, ax = plt.subplots(figsize=(7, 3.6), dpi=80)
    for result in results:
        ordered = sorted(result.latencies)
        if not ordered:
            continue
        n = len(ordered)
        step = max(1, n // 2000)  # a few thousand points draw the same curve
        xs = [1000 * ordered[i] for i in range(0, n, step)] + [1000 * ordered[-1]]
        ys = [i / n for i in range(0, n, step)] + [1.0]
        ax.plot(xs, ys, label=result.algorithm)
    ax.set_xscale("log")
    ax.set_xlabel("latency (ms, log scale)")
    ax.set_ylabel("share of requests")
    ax.set_title("Latency CDF per algorithm")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(paths[0])
    plt.close(fig)

    def shares(ax: Any, result: RunResult) -> None:
        times = [bucket * (i + 1) for i in range(len(result.share_series))]
        for label in backends:
            shares = []
            for counts in result.share_series:
                total = sum(counts.values())
                shares.append(100 * counts.get(label, 0) / total if total else 0.0)
            ax.plot(times, shares, label=label)
        ax.set_ylim(0, 100)

    def in_flight(ax: Any, result: RunResult) -> None:
        times = [t for t, _ in result.in_flight]
        for i, label in enumerate(backends):
            ax.plot(times, [counts[i] for _, counts in result.in_flight], label=label)

    xlabel = f"time (s); share of each {bucket:g}s bucket"
    _per_algorithm(plt, results, shares, "% sent", xlabel, paths[1])
    xlabel = f"time (s); sampled every {SAMPLE_EVERY * 1000:g} ms"
    _per_algorithm(plt, results, in_flight, "in flight", xlabel, paths[2])
    return paths


def _per_algorithm(
    plt: Any,
    results: Sequence[RunResult],
    draw: Callable[[Any, RunResult], None],
    ylabel: str,
    xlabel: str,
    path: Path,
) -> None:
    """One row of axes per algorithm, sharing the time axis; `draw` fills each."""
    rows = len(results)
    fig, axes = plt.subplots(rows, 1, figsize=(7, 1.8 * rows + 0.6), dpi=80, sharex=True)
    rows_of_axes = _as_list(axes)
    for ax, result in zip(rows_of_axes, results, strict=True):
        draw(ax, result)
        ax.set_ylabel(ylabel)
        ax.set_title(result.algorithm, fontsize="small", loc="left")
        ax.grid(True, alpha=0.3)
    rows_of_axes[0].legend(fontsize="x-small", loc="upper right")
    rows_of_axes[-1].set_xlabel(xlabel)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _as_list(axes: Any) -> list[Any]:
    # plt.subplots gives one Axes for one row, an array of them for several.
    return list(axes) if hasattr(axes, "__len__") else [axes]
