"""`usher status`: a running balancer's pools and backends (and its dns listeners' records),
read from its admin API, as tables (once, or refreshed in place) or as the API's JSON."""

from __future__ import annotations

import json
import time
from typing import Any

import httpx
from rich import box
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.table import Table
from rich.text import Text

from usher.errors import StatusError as StatusError  # re-exported: its first home

# How long one read of the admin API may take.
FETCH_TIMEOUT = 5.0

STATE_STYLES = {
    "healthy": "green",
    "unhealthy": "bold red",
    "draining": "yellow",
    "disabled": "dim",
}


def fetch(client: httpx.Client, admin_url: str) -> dict[str, Any]:
    """`GET /api/pools` from the admin API at `admin_url` (`host:port` means http), with the
    dns listeners' records from `GET /api/dns` under `dns` when there are any."""
    body = _get(client, admin_url, "/api/pools", "pools")
    if any(listener.get("protocol") == "dns" for listener in body.get("listeners", [])):
        body["dns"] = _get(client, admin_url, "/api/dns", "listeners")["listeners"]
    return body


def _get(client: httpx.Client, admin_url: str, path: str, key: str) -> dict[str, Any]:
    if "://" not in admin_url:
        admin_url = f"http://{admin_url}"
    url = admin_url.rstrip("/") + path
    try:
        response = client.get(url)
    except httpx.InvalidURL as exc:
        raise StatusError(1, f"--admin {admin_url}: {exc}") from None
    except httpx.TransportError as exc:
        reason = str(exc) or type(exc).__name__
        raise StatusError(2, f"cannot reach the admin API at {admin_url}: {reason}") from None
    if response.status_code == 401:
        if "authorization" in client.headers:
            raise StatusError(1, f"the admin API at {admin_url} refused the token")
        raise StatusError(
            1, f"the admin API at {admin_url} needs a token: pass --token (its admin.token)"
        )
    try:
        body = response.json()
    except ValueError:
        body = None
    if response.status_code != 200 or not isinstance(body, dict) or key not in body:
        detail = body.get("error") if isinstance(body, dict) else None
        raise StatusError(
            2,
            f"unexpected answer from {url}: HTTP {response.status_code}"
            + (f": {detail}" if detail else ""),
        )
    return body


def client_for(token: str | None) -> httpx.Client:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    # No proxies from the environment: the admin API listens on loopback or a private address.
    return httpx.Client(headers=headers, timeout=FETCH_TIMEOUT, trust_env=False)


def render(overview: dict[str, Any], now: float | None = None) -> RenderableType:
    """A table per pool, under a line per listener."""
    now = time.time() if now is None else now
    parts: list[RenderableType] = []
    for listener in overview.get("listeners", []):
        where = listener.get("url") or listener.get("bind")
        parts.append(
            Text.assemble(
                ("listener ", "dim"),
                (str(listener.get("name")), "bold"),
                f" {listener.get('protocol')} {where}",
                (f"  {listener.get('connections', 0)} connections", "dim"),
            )
        )
    for listener in overview.get("dns", []):
        parts.append(_records_table(listener))
    for name, pool in overview.get("pools", {}).items():
        parts.append(_pool_table(name, pool, now))
    if not overview.get("pools"):
        parts.append(Text("no pools", style="dim"))
    return Group(*parts)


def _table(title: str) -> Table:
    # No vertical rules and short headings: the tables fit in 80 columns.
    return Table(
        title=title,
        title_justify="left",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
        collapse_padding=True,
    )


def _records_table(listener: dict[str, Any]) -> Table:
    """A dns listener's records: policy, TTL, and the sites with their backends' health."""
    zones = ", ".join(listener.get("zones", []))
    table = _table(f"[bold]{listener.get('listener')}[/] [dim]dns records of {zones}[/]")
    table.add_column("record", no_wrap=True)
    table.add_column("policy", no_wrap=True)
    table.add_column("ttl", justify="right", no_wrap=True)
    table.add_column("sites (healthy backends/all)", ratio=1)
    for record in listener.get("records", []):
        sites = Text()
        for i, site in enumerate(record.get("sites", [])):
            backends = site.get("backends", [])
            up = sum(1 for b in backends if b.get("healthy"))
            style = "green" if up else "bold red"
            sites.append(", " if i else "")
            sites.append(f"{site.get('pool')} {up}/{len(backends)}", style=style)
        policy = str(record.get("policy"))
        if record.get("answers"):
            policy += f" (max {record['answers']})"
        table.add_row(str(record.get("name")), policy, f"{record.get('ttl', 0):g}s", sites)
    if not listener.get("records"):
        table.add_row(Text("no records", style="dim"), "", "", "")
    return table


def _pool_table(name: str, pool: dict[str, Any], now: float) -> Table:
    title = f"[bold]{name}[/] [dim]{pool.get('algorithm', '')}[/]"
    if pool.get("panic"):
        title += " [bold red]PANIC[/]"
    if pool.get("queued"):
        title += f" [yellow]{pool['queued']} queued[/]"
    table = _table(title)
    table.add_column("backend", no_wrap=True)
    table.add_column("state", no_wrap=True)
    table.add_column("weight", justify="right", no_wrap=True)
    table.add_column("active", justify="right", no_wrap=True)
    table.add_column("reqs", justify="right", no_wrap=True)
    table.add_column("fails", justify="right", no_wrap=True)
    table.add_column("ms", justify="right", no_wrap=True)
    table.add_column("last check", min_width=12, ratio=1)
    for backend in pool.get("backends", []):
        state = str(backend.get("state", "?"))
        address = Text(str(backend.get("address")))
        if backend.get("backup"):
            address.append(" (b)", style="dim")
        weight = str(backend.get("weight"))
        effective = backend.get("effective_weight")
        if effective is not None and effective != backend.get("weight"):
            weight += f"/{effective:g}"
        failures = int(backend.get("failures_total", 0))
        table.add_row(
            address,
            Text(state, style=STATE_STYLES.get(state, "")),
            weight,
            str(backend.get("active", 0)),
            str(backend.get("requests_total", 0)),
            Text(str(failures), style="red" if failures else ""),
            f"{float(backend.get('latency_ewma_ms') or 0.0):.1f}",
            _last_check(backend.get("last_check"), now),
        )
    if not pool.get("backends"):
        table.add_row(Text("no backends", style="dim"), "", "", "", "", "", "", "")
    return table


def _last_check(check: dict[str, Any] | None, now: float) -> Text:
    if not check:
        return Text("-", style="dim")
    ok = bool(check.get("ok"))
    text = Text("ok" if ok else "failed", style="green" if ok else "red")
    detail = check.get("detail")
    if detail:
        text.append(f" {detail}")
    at = check.get("at")
    if isinstance(at, int | float):
        text.append(f" ({max(0.0, now - at):.0f}s ago)", style="dim")
    return text


def show(
    console: Console,
    admin_url: str,
    *,
    token: str | None = None,
    as_json: bool = False,
    watch: bool = False,
    interval: float = 2.0,
) -> None:
    """Print the status once, or until Ctrl-C with `watch`. Raises StatusError when the first
    read fails; later failures, while watching, are shown in place of the tables."""
    with client_for(token) as client:
        overview = fetch(client, admin_url)
        if as_json:
            _print_json(console, overview, indent=None if watch else 2)
            while watch:
                time.sleep(interval)
                _print_json(console, _fetch_or_error(client, admin_url), indent=None)
            return
        if not watch:
            console.print(render(overview))
            return
        first = _watched(render(overview), admin_url)
        with Live(first, console=console, auto_refresh=False) as live:
            while True:
                time.sleep(interval)
                current = _fetch_or_error(client, admin_url)
                shown = (
                    Text(f"{current['error']} (retrying)", style="bold red")
                    if "error" in current
                    else render(current)
                )
                live.update(_watched(shown, admin_url), refresh=True)


def _fetch_or_error(client: httpx.Client, admin_url: str) -> dict[str, Any]:
    try:
        return fetch(client, admin_url)
    except StatusError as exc:
        return {"error": str(exc)}


def _watched(body: RenderableType, admin_url: str) -> RenderableType:
    stamp = time.strftime("%H:%M:%S")
    return Group(Text(f"{admin_url}  {stamp}  (Ctrl-C to stop)", style="dim"), body)


def _print_json(console: Console, data: dict[str, Any], *, indent: int | None) -> None:
    # Straight to the file: rich would wrap long lines and break the JSON.
    console.file.write(json.dumps(data, indent=indent) + "\n")
    console.file.flush()
