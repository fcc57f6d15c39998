"""Routes of http listeners: matches, splits, redirects, header rewrites and request filters."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, ConfigDict, Field

from usher.config.base import _get, _items, _Loc, _Model, _Problem
from usher.config.defaults import (
    DEFAULT_FILTER_BODY_LIMIT,
    DEFAULT_FILTER_TAG_HEADER,
    DEFAULT_REDIRECT_STATUS,
    MAX_FILTER_BODY_LIMIT,
)
from usher.config.hooks import _HOOKS_DESCRIPTION, _HookEntry
from usher.config.limits import RouteLimits
from usher.config.validators import (
    _POOL_NAME,
    _has_control,
    _HeaderName,
    _Method,
    _no_line_breaks,
    _path_prefix,
    _regex,
    _ServerName,
    _UpgradeProtocol,
)
from usher.config.values import ByteSize


class RouteMatch(_Model):
    """Conditions a request must meet for a route to apply; all given ones must hold."""

    # YAML reads `X-Canary: 1` as a number; a header or query value is text.
    model_config = ConfigDict(coerce_numbers_to_str=True)

    host: _ServerName | None = Field(
        default=None,
        description="Host header, exact (`api.example.com`) or wildcard (`*.example.com`); "
        "case-insensitive.",
    )
    sni: _ServerName | None = Field(
        default=None,
        description="`tls_passthrough` only: the server name of the TLS ClientHello, exact or "
        "wildcard (`*.example.com`: one label); case-insensitive.",
    )
    path_prefix: Annotated[str, AfterValidator(_path_prefix)] | None = Field(
        default=None, description="The path starts with this; must start with `/`."
    )
    path_regex: Annotated[str, AfterValidator(_regex)] | None = Field(
        default=None, description="The path matches this Python regular expression (search)."
    )
    methods: list[_Method] | None = Field(
        default=None, min_length=1, description="One of these methods (upper-cased)."
    )
    headers: dict[_HeaderName, str] = Field(
        default={}, description="Each header has exactly this value (names case-insensitive)."
    )
    query: dict[str, str] = Field(
        default={}, description="Each query parameter has exactly this value."
    )


class SplitTarget(_Model):
    """One pool of a weighted traffic split."""

    pool: str = Field(description="Name of the pool.")
    weight: int = Field(gt=0, description="Share of the traffic, relative to the other targets.")


class Redirect(_Model):
    """Answer with a redirect instead of proxying."""

    to: Annotated[str, AfterValidator(_no_line_breaks)] = Field(
        min_length=1, description="The Location to redirect to."
    )
    status: Literal[301, 302, 303, 307, 308] = Field(
        default=DEFAULT_REDIRECT_STATUS, description="The redirect status code."
    )


class HeaderRewrite(_Model):
    """Headers to set or remove on a request (before forwarding) or a response (before sending)."""

    model_config = ConfigDict(coerce_numbers_to_str=True)

    set: dict[_HeaderName, str] = Field(
        default={}, description="Headers to set, replacing any present with the same name."
    )
    remove: list[_HeaderName] = Field(default=[], description="Headers to remove.")

    @classmethod
    def _rules(cls, data: Mapping[str, Any]) -> list[_Problem]:
        problems: list[_Problem] = []
        values = _get(data, "set")
        names: list[tuple[_Loc, object]] = [
            (("remove", i), n) for i, n in _items(_get(data, "remove"))
        ]
        if isinstance(values, Mapping):
            names += [(("set", name), name) for name in values]
            # A CR or LF in a value would let the config inject headers of its own.
            problems += [
                (("set", name), f"value of header {name!r} must not contain CR, LF or NUL")
                for name, value in values.items()
                if isinstance(name, str) and isinstance(value, str) and _has_control(value)
            ]
        # Framing belongs to usher: rewriting it would unframe the body (request smuggling).
        problems += [
            (loc, f"{name} is managed by usher and cannot be rewritten")
            for loc, name in names
            if isinstance(name, str) and name.lower() in _FRAMING_HEADERS
        ]
        return problems


_FRAMING_HEADERS = frozenset({"content-length", "transfer-encoding", "connection", "upgrade"})


def _filter_body_limit(value: int) -> int:
    if value > MAX_FILTER_BODY_LIMIT:
        raise ValueError(f"must be at most 1MiB ({MAX_FILTER_BODY_LIMIT} bytes)")
    return value


def _rule_name(value: str) -> str:
    if not _POOL_NAME.fullmatch(value):
        raise ValueError(f"invalid rule name {value!r} (letters, digits and _.- only)")
    return value


_FILTER_ON = re.compile(r"method|path|query|body|(header):[!#$%&'*+\-.^_`|~0-9A-Za-z]+")


def _filter_on(value: str) -> str:
    if not _FILTER_ON.fullmatch(value):
        raise ValueError(
            f"invalid filter field {value!r} (method, path, query, header:<Name>, body)"
        )
    return value


class FilterRule(_Model):
    """One request filter rule: a field, a pattern, and what to do on a match."""

    name: Annotated[str, AfterValidator(_rule_name)] = Field(
        description="Names the rule in logs, metrics and the tag header (letters, digits, _.-)."
    )
    on: Annotated[str, AfterValidator(_filter_on)] = Field(
        description="What to look at: `method`, `path`, `query` (both percent-decoded), "
        "`header:<Name>` "
        "(every value) or `body` (the first `filter_body_limit` bytes)."
    )
    equals: str | None = Field(default=None, description="Match when the field is exactly this.")
    contains: str | None = Field(default=None, description="Match when the field contains this.")
    regex: Annotated[str, AfterValidator(_regex)] | None = Field(
        default=None, description="Match when this Python regular expression is found (search)."
    )
    action: Literal["deny", "tag"] = Field(
        default="deny",
        description="`deny`: answer 403; `tag`: forward with the rule's name added to the "
        "`tag_header` of the upstream request.",
    )

    @classmethod
    def _rules(cls, data: Mapping[str, Any]) -> list[_Problem]:
        given = [k for k in ("equals", "contains", "regex") if _get(data, k) is not None]
        if len(given) != 1:
            return [((), "a filter rule needs exactly one of equals, contains, regex")]
        return []


class Route(_Model):
    """Where matching requests go: one pool, a weighted split, or a redirect."""

    match: RouteMatch | None = Field(
        default=None, description="Conditions to meet; none: every request matches."
    )
    pool: str | None = Field(default=None, description="Send matching requests to this pool.")
    split: list[SplitTarget] | None = Field(
        default=None, min_length=1, description="Spread matching requests over pools by weight."
    )
    redirect: Redirect | None = Field(default=None, description="Answer with a redirect.")
    request_headers: HeaderRewrite | None = Field(
        default=None, description="Rewrite the request's headers before forwarding it."
    )
    response_headers: HeaderRewrite | None = Field(
        default=None, description="Rewrite the response's headers before sending it."
    )
    prefix_rewrite: str | None = Field(
        default=None,
        description=(
            "Replace the matched `match.path_prefix` with this before forwarding "
            "(`/api` -> `/` sends `/api/users` as `/users`)."
        ),
    )
    limits: RouteLimits | None = Field(
        default=None, description="Rate limit and IP lists for this route (after the listener's)."
    )
    filters: list[FilterRule] = Field(
        default=[], description="Request filter rules, tried in order: the first deny wins."
    )
    filter_body_limit: Annotated[ByteSize, AfterValidator(_filter_body_limit)] = Field(
        default=DEFAULT_FILTER_BODY_LIMIT,
        gt=0,
        description="`body` rules read at most this much of a body (held back from the backend "
        "until decided); the rest is not inspected. At most 1MiB.",
    )
    filter_tag_header: _HeaderName = Field(
        default=DEFAULT_FILTER_TAG_HEADER,
        description="The request header `tag` rules add their names to.",
    )
    upgrades: list[_UpgradeProtocol] = Field(
        default=["*"],
        description="The protocols a request may upgrade to (`Upgrade` header, e.g. websocket): "
        '`*` is any protocol but h2c, which must be listed by name (`["*", h2c]`), because its '
        "tunnel would carry HTTP/2 requests past routing and filters. Other protocols are "
        "removed from the request, which is forwarded as plain HTTP/1.1; `[]`: no upgrades.",
    )
    hooks: list[_HookEntry] = Field(
        default=[], description=_HOOKS_DESCRIPTION + " After the listener's hooks."
    )

    @classmethod
    def _rules(cls, data: Mapping[str, Any]) -> list[_Problem]:
        problems: list[_Problem] = []
        actions = [key for key in ("pool", "split", "redirect") if _get(data, key) is not None]
        if len(actions) != 1:
            problems.append(((), "a route needs exactly one of pool, split, redirect"))
        rewrite = _get(data, "prefix_rewrite")
        if rewrite is not None:
            prefix = _get(_get(data, "match"), "path_prefix")
            if prefix is None:
                problems.append((("prefix_rewrite",), "needs match.path_prefix to replace"))
            elif not isinstance(rewrite, str) or not rewrite.startswith("/"):
                problems.append((("prefix_rewrite",), "must start with '/'"))
        if _get(data, "hooks") and _get(data, "redirect") is not None:
            problems.append((("hooks",), "a redirect route forwards nothing to run hooks on"))
        return problems
