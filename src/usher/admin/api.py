"""The admin REST API (design §4) over one balancer (a `ControlSurface`): pools and backends with
runtime changes, reload. Every error answers JSON with an `error` key.

`GET /metrics` is added by the metrics side; the token guard here covers it all the same.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hmac
import pathlib
from collections.abc import Mapping
from importlib import resources
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, Depends, FastAPI, Query, Request
from fastapi import Path as PathParam
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse, Response
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, WithJsonSchema
from starlette.exceptions import HTTPException
from starlette.routing import Match
from starlette.types import ASGIApp, Receive, Scope, Send

from usher import __version__
from usher.admin.views import describe_backend, describe_pool
from usher.config import (
    BackendConfig,
    PositiveInteger,
    backend_address_schema,
    duration_pattern,
    parse_address,
    parse_duration,
)
from usher.errors import BindError, ChangeError, ConfigError, UsherError
from usher.metrics import render
from usher.pool import State
from usher.surface import ControlSurface, ReloadReport

# --- Response bodies ---------------------------------------------------------------------------


class _View(BaseModel):
    # Fields the balancer's views gain later pass through instead of vanishing.
    model_config = ConfigDict(extra="allow")


class LastCheck(_View):
    ok: bool
    at: float = Field(description="When it ran, in Unix seconds.")
    detail: str


class BackendView(_View):
    """A backend's live state."""

    address: str = Field(description="host:port, or [v6]:port for IPv6.")
    weight: int
    effective_weight: float = Field(description="The weight in use now (lower in slow start).")
    backup: bool
    max_connections: int | None
    state: Literal["healthy", "unhealthy", "draining", "disabled"]
    admin_state: State = Field(description="What the operator (or a drain) set.")
    healthy: bool = Field(description="Takes traffic now.")
    reason: str = Field(description="Why the state is what it is.")
    active: int = Field(description="Requests in flight.")
    requests_total: int
    failures_total: int
    latency_ewma_ms: float
    load: float | None = Field(description="0..1 as the backend's agent last reported it.")
    last_check: LastCheck | None = Field(description="The last active health check, if any.")


class PoolView(_View):
    name: str
    algorithm: str
    panic: bool
    queued: int = Field(description="Requests waiting for a free backend.")
    backends: list[BackendView]


class ListenerView(_View):
    name: str
    protocol: str
    bind: str
    url: str | None = Field(description="Where it listens; null when not bound.")
    connections: int


class WorkerView(_View):
    number: int = Field(description="The worker's number, 0 to N-1; a restart keeps it.")
    pid: int


class Overview(_View):
    pools: dict[str, PoolView]
    listeners: list[ListenerView]
    workers: list[WorkerView] | None = Field(
        default=None,
        description="With `usher run --workers N` > 1: the worker processes serving now.",
    )


class DnsBackendView(_View):
    address: str
    healthy: bool = Field(description="Answered now (enabled, and its health checks pass).")
    weight: int
    rtt_ms: float | None = Field(
        description="The last passing health check's round trip from this node."
    )


class DnsSiteView(_View):
    pool: str
    backends: list[DnsBackendView]


class DnsGeoView(_View):
    clients: list[str]
    pool: str


class DnsRecordView(_View):
    name: str
    policy: str
    ttl: float
    answers: int | None = Field(description="Most addresses in one answer; null: no cap.")
    when_all_down: str
    geo: list[DnsGeoView]
    sites: list[DnsSiteView] = Field(description="The pools the record answers from.")


class DnsListenerView(_View):
    listener: str
    url: str | None
    zones: list[str]
    records: list[DnsRecordView]


class DnsOverview(_View):
    listeners: list[DnsListenerView]


class Removed(BaseModel):
    removed: str = Field(description="The address of the backend removed.")
    drained: bool = Field(description="Whether its requests in flight finished before the timeout.")


class Health(BaseModel):
    status: Literal["ok"]


class Issue(BaseModel):
    path: str
    message: str
    line: int | None = None


class ErrorBody(_View):
    error: str
    issues: list[Issue] | None = Field(
        default=None, description="Every problem found, for an invalid config or request."
    )


# --- Request bodies ----------------------------------------------------------------------------


class BackendChange(BaseModel):
    """A runtime change to one backend: its weight, its state, or both."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"minProperties": 1, "examples": [{"weight": 5}, {"state": "draining"}]},
    )

    weight: PositiveInteger | None = Field(
        default=None, description="Relative share of the traffic, as in the config file."
    )
    state: State | None = Field(
        default=None, description="draining: finish requests in flight, then disabled."
    )


# --- Routes ------------------------------------------------------------------------------------

_REFUSED: dict[int | str, dict[str, Any]] = {
    "4XX": {"model": ErrorBody, "description": "Refused; `error` says why."}
}


def get_balancer(request: Request) -> ControlSurface:
    balancer: ControlSurface = request.app.state.balancer
    return balancer


BalancerDep = Annotated[ControlSurface, Depends(get_balancer)]
PoolName = Annotated[
    str, PathParam(description="A pool's name, as in the config file.", examples=["web"])
]
# The default converter takes anything but "/", so host:port and [v6]:port (URL-encoded) pass.
# One that does not parse names no backend: 404, as for any other unknown backend.
BackendAddress = Annotated[
    str,
    WithJsonSchema(backend_address_schema()),
    PathParam(
        description="host:port of the backend; [v6]:port (URL-encoded) for IPv6.",
        examples=["127.0.0.1:9001"],
    ),
]


def _query_duration(value: object) -> float:
    # A query value is always text: exactly the schema's pattern, without the config file's
    # tolerance for surrounding spaces.
    if isinstance(value, str) and value != value.strip():
        raise ValueError(f"invalid duration {value!r} (use e.g. 250ms, 5s, 2m)")
    return parse_duration(value)


QueryDuration = Annotated[
    float,
    BeforeValidator(_query_duration),
    WithJsonSchema(
        {
            "type": "string",
            "pattern": duration_pattern(),
            "description": "A duration: 250ms, 5s, 2m, 1h, 1m30s, or a number of seconds.",
        }
    ),
]

public = APIRouter()
api = APIRouter(prefix="/api", responses=_REFUSED)


@public.get("/health", response_model=Health, summary="The balancer itself is up")
async def health() -> dict[str, str]:
    return {"status": "ok"}


@public.get("/", include_in_schema=False)
async def dashboard() -> Response:
    page = resources.files("usher.admin") / "dashboard" / "index.html"
    if not page.is_file():
        return _error(404, "no dashboard in this install")
    if isinstance(page, pathlib.Path):
        return FileResponse(page, media_type="text/html")
    return Response(page.read_bytes(), media_type="text/html")


@public.get(
    "/metrics",
    response_class=PlainTextResponse,
    summary="Prometheus metrics (text exposition format)",
    responses={200: {"content": {"text/plain": {}}}},
)
async def metrics(balancer: BalancerDep) -> Response:
    await balancer.before_scrape()
    body, content_type = render(balancer.registry)
    return Response(body, media_type=content_type)


@api.get("/pools", response_model=Overview, summary="Every pool, its backends and listeners")
async def list_pools(balancer: BalancerDep) -> dict[str, Any]:
    return balancer.describe()


@api.get("/dns", response_model=DnsOverview, summary="The dns listeners' records and their sites")
async def list_dns(balancer: BalancerDep) -> dict[str, Any]:
    return {"listeners": balancer.describe_dns()}


@api.get("/pools/{pool}", response_model=PoolView, summary="One pool")
async def get_pool(pool: PoolName, balancer: BalancerDep) -> dict[str, Any]:
    return describe_pool(balancer.pool(pool), balancer.wall_offset())


@api.get(
    "/pools/{pool}/backends",
    response_model=list[BackendView],
    summary="The backends of one pool",
)
async def list_backends(pool: PoolName, balancer: BalancerDep) -> list[dict[str, Any]]:
    backends: list[dict[str, Any]] = describe_pool(balancer.pool(pool), balancer.wall_offset())[
        "backends"
    ]
    return backends


@api.post(
    "/pools/{pool}/backends",
    status_code=201,
    response_model=BackendView,
    summary="Add a backend (until the next reload)",
)
async def add_backend(
    pool: PoolName,
    backend: Annotated[BackendConfig, Body(examples=[{"address": "127.0.0.1:9004", "weight": 1}])],
    balancer: BalancerDep,
) -> dict[str, Any]:
    added = balancer.add_backend(
        pool,
        str(backend.address),
        weight=backend.weight,
        backup=backend.backup,
        max_connections=backend.max_connections,
    )
    return describe_backend(balancer.pool(pool), added, balancer.wall_offset())


@api.patch(
    "/pools/{pool}/backends/{address}",
    response_model=BackendView,
    summary="Change a backend's weight or state",
)
async def change_backend(
    pool: PoolName, address: BackendAddress, change: BackendChange, balancer: BalancerDep
) -> dict[str, Any]:
    found_in, backend = balancer.backend(pool, _label(address))
    if change.weight is None and change.state is None:
        raise ChangeError(400, "nothing to change: give weight and/or state")
    balancer.update_backend(pool, backend.label, weight=change.weight, state=change.state)
    return describe_backend(found_in, backend, balancer.wall_offset())


@api.delete(
    "/pools/{pool}/backends/{address}",
    response_model=Removed,
    summary="Drain a backend, then remove it",
)
async def remove_backend(
    pool: PoolName,
    address: BackendAddress,
    request: Request,
    balancer: BalancerDep,
    timeout: Annotated[
        QueryDuration | None,
        Query(
            description="How long requests in flight may take (default: the pool's "
            "drain_timeout); the backend goes either way.",
            examples=["30s"],
        ),
    ] = None,
) -> dict[str, Any]:
    _, backend = balancer.backend(pool, _label(address))
    # A second DELETE of the same backend waits for the first removal rather than starting
    # another drain; a client that gives up does not leave the backend half-removed.
    removals: dict[tuple[str, str], asyncio.Future[bool]] = request.app.state.removals
    key = (pool, backend.label)
    removal = removals.get(key)
    if removal is None:
        removal = asyncio.ensure_future(
            balancer.remove_backend(pool, backend.label, timeout=timeout)
        )
        removals[key] = removal
        removal.add_done_callback(lambda _: removals.pop(key, None))
    drained = await asyncio.shield(removal)
    return {"removed": backend.label, "drained": drained}


@api.post(
    "/reload",
    response_model=ReloadReport,
    summary="Re-read the config file",
    description="An invalid file answers 400 with every issue and changes nothing.",
)
async def reload(request: Request, balancer: BalancerDep) -> dict[str, list[str]]:
    report = await balancer.reload()
    return report.as_dict()


# --- Errors and the token ----------------------------------------------------------------------


def _error(status: int, message: str, headers: Mapping[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


async def _usher_error(request: Request, exc: Exception) -> Response:
    if isinstance(exc, ChangeError):
        return _error(exc.status, exc.detail)
    if isinstance(exc, ConfigError):
        issues = [dataclasses.asdict(issue) for issue in exc.issues]
        return JSONResponse({"error": "invalid config", "issues": issues}, status_code=400)
    if isinstance(exc, BindError):
        return _error(409, str(exc))
    return _error(500, str(exc))


async def _invalid_request(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    issues = [_request_issue(error) for error in exc.errors()]
    if not issues:
        return _error(400, "invalid request")
    first = issues[0]
    return JSONResponse(
        {"error": f"{first['path']}: {first['message']}", "issues": issues}, status_code=400
    )


def _request_issue(error: Mapping[str, Any]) -> dict[str, Any]:
    if error.get("type") == "json_invalid":
        detail = error.get("ctx", {}).get("error")
        return {"path": "body", "message": f"invalid JSON: {detail}", "line": None}
    # ("body", "weight") names the field "weight"; a missing body is just ("body",).
    loc = [str(part) for part in error.get("loc", ())]
    path = ".".join(loc[1:] if len(loc) > 1 else loc)
    message = str(error.get("msg", "invalid")).removeprefix("Value error, ")
    return {"path": path, "message": message, "line": None}


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 405:
        # Starlette's Allow names the methods of the first route of the path only (PATCH, not
        # DELETE): list every route's, and answer OPTIONS with them.
        allow = ", ".join(_allowed_methods(request))
        if request.method == "OPTIONS":
            return Response(status_code=204, headers={"Allow": allow})
        return _error(405, str(exc.detail), {"Allow": allow})
    return _error(exc.status_code, str(exc.detail), exc.headers)


def _allowed_methods(request: Request) -> list[str]:
    """Every method some route of the app takes on the request's path, and OPTIONS."""
    methods = {"OPTIONS"}
    # The routers' own routes: the app's list holds them wrapped (FastAPI's include_router).
    for route in [*request.app.router.routes, *public.routes, *api.routes]:
        route_methods = getattr(route, "methods", None)
        if route_methods and route.matches(request.scope)[0] is not Match.NONE:
            methods.update(route_methods)
    return sorted(methods)


async def _internal_error(request: Request, exc: Exception) -> Response:
    return _error(500, f"internal error: {type(exc).__name__}")


def _guarded(path: str) -> bool:
    return path in ("/api", "/metrics") or path.startswith(("/api/", "/metrics/"))


class TokenGuard:
    """Asks `/api/*` and `/metrics` for `Authorization: Bearer <token>`. `/health` stays open
    for load balancers' probes, and `/` too: the page asks for the token and sends it itself."""

    def __init__(self, app: ASGIApp, token: str) -> None:
        self.app = app
        self.token = token.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and _guarded(scope["path"]):
            refusal = self._refusal(scope["headers"])
            if refusal is not None:
                await refusal(scope, receive, send)
                return
        await self.app(scope, receive, send)

    def _refusal(self, headers: list[tuple[bytes, bytes]]) -> Response | None:
        given = next((value for name, value in headers if name == b"authorization"), None)
        if given is None:
            return _error(
                401,
                "a token is needed: Authorization: Bearer <token>",
                {"WWW-Authenticate": "Bearer"},
            )
        scheme, _, credentials = given.partition(b" ")
        if scheme.lower() == b"bearer" and hmac.compare_digest(credentials.strip(), self.token):
            return None
        return _error(401, "wrong token", {"WWW-Authenticate": 'Bearer error="invalid_token"'})


# --- The app -----------------------------------------------------------------------------------


def create_app(balancer: ControlSurface) -> FastAPI:
    app = FastAPI(
        title="usher admin API",
        version=__version__,
        description="Pools and backends of a running usher, their live state, runtime changes "
        "and reload. Errors answer JSON with an `error` key.",
    )
    app.state.balancer = balancer
    app.state.removals = {}
    app.include_router(public)
    app.include_router(api)
    app.add_exception_handler(UsherError, _usher_error)
    app.add_exception_handler(RequestValidationError, _invalid_request)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(Exception, _internal_error)
    admin = balancer.config.admin
    if admin is not None and admin.token is not None:
        app.add_middleware(TokenGuard, token=admin.token)
    return app


def _label(address: str) -> str:
    """The label of the backend `address` names, however written (`[0::1]:80` is `[::1]:80`)."""
    try:
        return str(parse_address(address))
    except ValueError:
        return address  # names no backend: the lookup answers 404
