"""Routing: a listener's routes compiled once, matched per request, first match wins."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING
from urllib.parse import parse_qsl

from usher.http.headers import HeaderRules
from usher.http.upgrades import ANY, DEFAULT_POLICY, UpgradePolicy

if TYPE_CHECKING:
    from usher.config import Route as RouteConfig
    from usher.config import RouteMatch
    from usher.http.codec import Request
    from usher.http.hook_phases import ListenerHooks, RouteHooks
    from usher.pool import Pool


def split_target(target: bytes) -> tuple[bytes, bytes]:
    """`/a/b?x=1` -> (`/a/b`, `x=1`). An absolute-form target keeps only its path."""
    if not target.startswith(b"/") and b"://" in target:
        rest = target.split(b"://", 1)[1]
        ends = [i for i in (rest.find(b"/"), rest.find(b"?")) if i >= 0]
        target = rest[min(ends) :] if ends else b""
    path, _, query = target.partition(b"?")
    return path or b"/", query


def host_of(request: Request) -> str:
    """The request's host, lower-cased, without port."""
    host = request.host.decode("latin-1").lower()
    if host.startswith("["):
        return host[: host.find("]") + 1]
    return host.rsplit(":", 1)[0] if ":" in host else host


class Matcher:
    """One route's `match`: every condition given must hold."""

    __slots__ = ("headers", "host", "host_suffix", "methods", "path_prefix", "path_regex", "query")

    def __init__(self, match: RouteMatch) -> None:
        self.host: str | None = None
        self.host_suffix: str | None = None
        if match.host is not None:
            if match.host.startswith("*."):
                self.host_suffix = match.host[1:].lower()
            else:
                self.host = match.host.lower()
        self.path_prefix = match.path_prefix.encode() if match.path_prefix else None
        self.path_regex = re.compile(match.path_regex.encode()) if match.path_regex else None
        self.methods = frozenset(m.encode() for m in match.methods) if match.methods else None
        self.headers = [
            (k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in match.headers.items()
        ]
        self.query = dict(match.query)

    def matches(self, request: Request, path: bytes, query: bytes) -> bool:
        if self.methods is not None and request.method not in self.methods:
            return False
        if self.path_prefix is not None and not path.startswith(self.path_prefix):
            return False
        if self.path_regex is not None and self.path_regex.search(path) is None:
            return False
        if self.host is not None or self.host_suffix is not None:
            host = host_of(request)
            if self.host is not None and host != self.host:
                return False
            if self.host_suffix is not None and not host.endswith(self.host_suffix):
                return False
        for name, value in self.headers:
            if not any(n.lower() == name and v == value for n, v in request.headers):
                return False
        if self.query:
            params = dict(parse_qsl(query.decode("latin-1"), keep_blank_values=True))
            for key, wanted in self.query.items():
                if params.get(key) != wanted:
                    return False
        return True


class Redirect:
    __slots__ = ("location", "status")

    def __init__(self, location: str, status: int) -> None:
        self.location = location.encode("latin-1")
        self.status = status


class Route:
    """A compiled route: where matching requests go and how their headers change."""

    __slots__ = (
        "_current",
        "_split",
        "hooks",
        "index",
        "matcher",
        "pool",
        "prefix_from",
        "prefix_to",
        "redirect",
        "request_rules",
        "response_rules",
        "upgrades",
    )

    def __init__(self, index: int, config: RouteConfig, pools: Mapping[str, Pool]) -> None:
        self.index = index
        self.matcher = Matcher(config.match) if config.match is not None else None
        self.pool: Pool | None = pools[config.pool] if config.pool is not None else None
        self._split: list[tuple[Pool, int]] = [
            (pools[t.pool], t.weight) for t in (config.split or ())
        ]
        self._current = [0] * len(self._split)
        self.redirect = (
            Redirect(config.redirect.to, config.redirect.status) if config.redirect else None
        )
        self.prefix_from = b""
        self.prefix_to: bytes | None = None
        if config.prefix_rewrite is not None and config.match and config.match.path_prefix:
            self.prefix_from = config.match.path_prefix.encode()
            self.prefix_to = config.prefix_rewrite.encode()
        rh, sh = config.request_headers, config.response_headers
        self.request_rules = HeaderRules(rh.set, rh.remove) if rh else None
        self.response_rules = HeaderRules(sh.set, sh.remove) if sh else None
        self.upgrades = (
            DEFAULT_POLICY if config.upgrades == [ANY] else UpgradePolicy(config.upgrades)
        )
        self.hooks: RouteHooks | None = None  # set by the Router when the route has hooks

    def rewrite_target(self, target: bytes) -> bytes:
        """The target to forward: the matched prefix replaced when the route says so."""
        to = self.prefix_to
        if to is None or not target.startswith(self.prefix_from):
            return target
        rest = target[len(self.prefix_from) :]
        if to.endswith(b"/") and rest.startswith(b"/"):
            rest = rest[1:]
        new = to + rest
        return new if new.startswith(b"/") else b"/" + new

    def pick_pool(self) -> Pool | None:
        """The pool for one request; a split spreads requests by weight, smoothly."""
        if self.pool is not None or not self._split:
            return self.pool
        current = self._current
        total = 0
        best = 0
        for i, (_, weight) in enumerate(self._split):
            current[i] += weight
            total += weight
            if current[i] > current[best]:
                best = i
        current[best] -= total
        return self._split[best][0]


class Router:
    """A listener's routes in order; `route()` returns the first that matches, or None."""

    __slots__ = ("pools", "routes")

    def __init__(
        self,
        routes: Sequence[RouteConfig],
        pools: Mapping[str, Pool],
        hooks: ListenerHooks | None = None,
        *,
        shorthand: bool = False,
    ) -> None:
        self.routes = [Route(i, r, pools) for i, r in enumerate(routes)]
        if hooks is not None:  # the user's hooks (usher.hooks); `shorthand`: a listener's pool:
            for route in self.routes:
                if route.redirect is None:
                    route.hooks = hooks.for_route(route.index, shorthand)
        self.pools = pools  # every pool by name: a dns listener's records name them

    def route(self, request: Request) -> Route | None:
        path = query = b""
        split_done = False
        for route in self.routes:
            matcher = route.matcher
            if matcher is None:
                return route
            if not split_done:
                path, query = split_target(request.target)
                split_done = True
            if matcher.matches(request, path, query):
                return route
        return None
