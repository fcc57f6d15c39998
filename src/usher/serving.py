"""`usher status --check`: whether the balancer behind an admin API serves, for keepalived's
track script. It runs every second or two on every node, so it imports only the standard
library (no HTTP client, no config models): its start-up time is the check's cost.
"""

from __future__ import annotations

import json
import socket
import urllib.error
import urllib.request
from typing import Any, Final

# How long the admin API and each listener may take to answer.
TIMEOUT: Final = 2.0
# Listeners that accept TCP connections (udp has nothing to connect to; dns has TCP too).
STREAM_PROTOCOLS: Final = frozenset({"http", "https", "tcp", "tls_passthrough", "dns"})
# No proxy from the environment: the admin API is on loopback or a private address.
_OPENER: Final = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def check(admin_url: str, *, token: str | None = None) -> tuple[bool, str]:
    """Whether the balancer serves, and why (one line).

    It serves when: its admin API answers `/health` with 200; it has at least one listener
    bound, and every bound listener that takes TCP connections accepts one now (with workers,
    that is a worker answering); and, when its pools have backends at all, at least one of
    them is healthy (a node that reaches none of its backends should let its peer serve)."""
    base = (admin_url if "://" in admin_url else f"http://{admin_url}").rstrip("/")
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        _read(f"{base}/health", headers)
        overview = json.loads(_read(f"{base}/api/pools", headers))
    except urllib.error.HTTPError as exc:
        return False, f"admin API at {admin_url} answered HTTP {exc.code} for {exc.url}"
    except (OSError, ValueError) as exc:
        reason = getattr(exc, "reason", None) or exc
        return False, f"admin API at {admin_url} does not answer: {reason}"
    listeners = [lst for lst in _list(overview, "listeners") if lst.get("url")]
    if not listeners:
        return False, "no listener is bound"
    for listener in listeners:
        if listener.get("protocol") not in STREAM_PROTOCOLS:
            continue
        host, port = _host_port(str(listener["url"]))
        try:
            socket.create_connection((host, port), timeout=TIMEOUT).close()
        except OSError as exc:
            return False, f"listener {listener.get('name')} ({host}:{port}) refuses: {exc}"
    pools = overview.get("pools") if isinstance(overview, dict) else None
    backends = [b for p in (pools or {}).values() for b in _list(p, "backends")]
    healthy = sum(1 for b in backends if b.get("state") == "healthy")
    if backends and not healthy:
        return False, f"none of the {len(backends)} backends is healthy"
    return True, (
        f"serving: {len(listeners)} listener{'s' * (len(listeners) != 1)} up, "
        f"{healthy} of {len(backends)} backends healthy"
    )


def _read(url: str, headers: dict[str, str]) -> bytes:
    request = urllib.request.Request(url, headers=headers)
    with _OPENER.open(request, timeout=TIMEOUT) as response:
        body: bytes = response.read()
        return body


def _list(data: Any, key: str) -> list[dict[str, Any]]:
    found = data.get(key) if isinstance(data, dict) else None
    return [item for item in found if isinstance(item, dict)] if isinstance(found, list) else []


def _host_port(url: str) -> tuple[str, int]:
    """Where to connect to reach a listener bound at `url` (a wildcard means this host)."""
    netloc = url.split("://", 1)[1]
    host, _, port = netloc.rpartition(":")
    host = host.strip("[]")
    host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)
    return host, int(port)
