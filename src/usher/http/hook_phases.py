"""Running the user's hooks (usher.hooks) in a request's phases.

`build_hooks(config)` constructs every hook once per load, in each serving process, and gives
each listener its `ListenerHooks`; the router asks it for each route's `RouteHooks` (None for
a route without hooks: the exchange then takes the path it takes without this module). A
route's `start` makes a `HookRun` for the exchange, which runs `on_request` and `select`
(awaiting async ones within their hook's timeout) and then hands the request back to the
exchange to forward; the response head and the log record meet the run again on their way.
A hook that fails answers `error_status`, is counted, and is logged once per burst."""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Final

from usher.bursts import BurstLog
from usher.config import PHASES, hook_class, spec_of
from usher.errors import ConfigError, ConfigIssue
from usher.hooks import Candidate, Request, Response, ResponseHead
from usher.http.answers import CONNECTION_CLOSE, answer_writer
from usher.http.codec import Data, EndOfMessage, Headers
from usher.http.codec import Response as ResponseEvent

if TYPE_CHECKING:
    from usher.config import Config, HookSpec
    from usher.http.exchange import Exchange
    from usher.logs import AccessRecord
    from usher.pool import Backend

log = logging.getLogger("usher.hooks")

# A hook's failures are logged at most once per this many seconds (each hook and phase),
# with the count of those in between: a hook failing on every request must not flood the log.
QUIET: Final = 10.0


class Hook:
    """One constructed hook and the phases it defines (those it leaves out are not in
    `phases`)."""

    __slots__ = ("error_status", "instance", "name", "phases", "timeout")

    def __init__(self, cls: type, spec: HookSpec, where: str) -> None:
        try:
            self.instance: Any = cls(dict(spec.options))
        except Exception as exc:  # the user's constructor may raise anything
            issue = ConfigIssue(where, f"{spec.use}({spec.options}) raised {_describe(exc)}")
            raise ConfigError([issue]) from None
        self.name = spec.use
        self.timeout = spec.timeout
        self.error_status = spec.error_status
        self.phases: dict[str, Callable[..., Any]] = {
            phase: method
            for phase in PHASES
            if callable(method := getattr(self.instance, phase, None))
        }


def build_hooks(config: Config, *, fresh: bool = False) -> dict[str, ListenerHooks]:
    """Every http listener's hooks, constructed now (once per load and reload). Raises
    ConfigError naming the config path of each hook that cannot be imported or built."""
    built: dict[str, ListenerHooks] = {}
    issues: list[ConfigIssue] = []
    for li, lc in enumerate(config.listeners):
        entries = [(f"listeners[{li}].hooks[{i}]", e) for i, e in enumerate(lc.hooks)]
        for ri, route in enumerate(lc.routes):
            entries += [
                (f"listeners[{li}].routes[{ri}].hooks[{i}]", e) for i, e in enumerate(route.hooks)
            ]
        if not entries:
            continue
        hooks: dict[str, Hook] = {}
        for where, entry in entries:
            spec = spec_of(entry)
            try:
                hooks[where] = Hook(hook_class(spec.use, fresh=fresh), spec, where)
            except ValueError as exc:
                issues.append(ConfigIssue(where, str(exc)))
            except ConfigError as exc:
                issues += exc.issues
        built[lc.name] = ListenerHooks(lc.name, li, hooks)
    if issues:
        raise ConfigError(issues)
    return built


class ListenerHooks:
    """One listener's hooks by config path; `for_route` gives a route its phases."""

    __slots__ = ("by_path", "index", "name")

    def __init__(self, name: str, index: int, by_path: dict[str, Hook]) -> None:
        self.name = name
        self.index = index
        self.by_path = by_path

    def for_route(self, route_index: int, shorthand: bool) -> RouteHooks | None:
        """The hooks of route `route_index` (the listener's first); None when there are none.
        `shorthand`: the route is the listener's `pool:`, which has no hooks of its own."""
        own = f"listeners[{self.index}].hooks["
        mine = f"listeners[{self.index}].routes[{route_index}].hooks["
        hooks = [h for p, h in self.by_path.items() if p.startswith(own)]
        if not shorthand:
            hooks += [h for p, h in self.by_path.items() if p.startswith(mine)]
        return RouteHooks(f"{self.name}/{route_index}", hooks) if hooks else None


class RouteHooks:
    """The hooks of one route, phase by phase, in the order they run."""

    __slots__ = ("name", "on_log", "on_request", "on_response", "select")

    def __init__(self, name: str, hooks: list[Hook]) -> None:
        self.name = name
        self.on_request = [(h, h.phases["on_request"]) for h in hooks if "on_request" in h.phases]
        self.select = [(h, h.phases["select"]) for h in hooks if "select" in h.phases]
        self.on_response = [
            (h, h.phases["on_response"]) for h in hooks if "on_response" in h.phases
        ]
        self.on_log = [(h, h.phases["on_log"]) for h in hooks if "on_log" in h.phases]

    def start(self, exchange: Exchange) -> None:
        """Run the request's hooks; the exchange forwards it when they let it through."""
        client = exchange.client
        edge = exchange.edge
        client_ip = (client.client_ip if edge is None else edge.client_ip).decode()
        view = Request(exchange.request, client_ip, self.name)
        run = exchange.hook_run = HookRun(self, exchange, view)
        run.request_phases(0)


class HookRun:
    """The hooks of one exchange: its request view, and how far its phases have come."""

    __slots__ = ("allowed", "exchange", "hooks", "logs", "request")

    def __init__(self, hooks: RouteHooks, exchange: Exchange, request: Request) -> None:
        self.hooks = hooks
        self.exchange = exchange
        self.request = request
        self.allowed: list[Backend] | None = None  # select's narrowing, best first
        self.logs = bool(hooks.on_log)  # the finished record is wanted (even with no access log)

    # on_request, then select, then forward

    def request_phases(self, step: int) -> None:
        """Run the request's phases from `step` (on_request hooks first, then select) until
        one answers, fails, or awaits; the last one forwards the request."""
        steps = self.hooks.on_request
        selects = self.hooks.select
        ex = self.exchange
        while step < len(steps) + len(selects):
            if ex.finished:
                return  # the client left while a hook awaited
            phase = "on_request" if step < len(steps) else "select"
            hook, method = steps[step] if step < len(steps) else selects[step - len(steps)]
            args: tuple[Any, ...] = (self.request,)
            if phase == "select":
                args = (self.request, self._candidates())
            started = time.perf_counter()
            try:
                result = method(*args)
            except Exception as exc:  # the user's code may raise anything
                self.failed(hook, phase, exc, started)
                return
            if result is not None and inspect.isawaitable(result):
                _keep(ex.client.loop.create_task(self._awaited(hook, phase, result, started, step)))
                return
            if not self._took(hook, phase, result, started):
                return
            step += 1
        self._forward()

    async def _awaited(
        self, hook: Hook, phase: str, pending: Awaitable[Any], started: float, step: int
    ) -> None:
        try:
            result = await asyncio.wait_for(pending, hook.timeout)
        except Exception as exc:  # raised by the hook, or its timeout
            if not self.exchange.finished:
                self.failed(hook, phase, exc, started)
            return
        if not self.exchange.finished and self._took(hook, phase, result, started):
            self.request_phases(step + 1)

    def _took(self, hook: Hook, phase: str, result: Any, started: float) -> bool:
        """Apply what a phase returned; False when the exchange goes no further here."""
        if phase == "on_request":
            if isinstance(result, Response):
                self.exchange.client.listener.metrics.hook(hook.name, phase, _since(started))
                answer(self.exchange, result)
                return False
            if result is not None:
                return self.failed(hook, phase, _returned(result, "a Response or None"), started)
        else:
            backends = self._narrowed(result)
            if backends is None:
                return self.failed(hook, phase, _returned(result, "a list of candidates"), started)
            self.allowed = backends
        self.exchange.client.listener.metrics.hook(hook.name, phase, _since(started))
        return True

    def _candidates(self) -> list[Candidate]:
        ex = self.exchange
        pool = ex.pool
        assert pool is not None
        backends = self.allowed if self.allowed is not None else pool.backends
        now = pool.clock.now()
        return [Candidate(b, now) for b in backends]

    def _narrowed(self, result: Any) -> list[Backend] | None:
        if not isinstance(result, (list, tuple)):
            return None
        pool = self.exchange.pool
        assert pool is not None
        members = set(pool.backends)
        backends = [c.backend for c in result if isinstance(c, Candidate)]
        if len(backends) != len(result) or not members.issuperset(backends):
            return None
        return backends

    def _forward(self) -> None:
        ex = self.exchange
        go = ex.forward()
        allowed = self.allowed
        if allowed is not None and ex.attempts is not None:
            # In the pool's order, the pool's algorithm chooses among them; in another, the
            # hook's order is the preference. (A backend removed while an async select ran
            # is not chosen: Pool.select takes only the pool's own backends.)
            rank = {b: i for i, b in enumerate(ex.attempts.pool.backends)}
            allowed = [b for b in allowed if b in rank]
            ranks = [rank[b] for b in allowed]
            ex.attempts.selection.narrow(allowed, preferred=ranks != sorted(ranks))
        if go:
            ex.attempt()

    # The response head and the log record

    def refuses(self, response: ResponseEvent) -> bool:
        """Let on_response hooks change the status and headers of the backend's answer before
        usher frames and sends it. A hook that fails replaces the answer with its error
        status (True: the exchange has been answered)."""
        if not self.hooks.on_response:
            return False
        head = ResponseHead(response.status, response.headers)
        metrics = self.exchange.client.listener.metrics
        for hook, method in self.hooks.on_response:
            started = time.perf_counter()
            try:
                result = method(self.request, head)
                if result is not None:
                    if inspect.isawaitable(result) and hasattr(result, "close"):
                        result.close()  # never awaited: config validation refuses async ones
                    raise _returned(result, "None")
            except Exception as exc:  # the user's code may raise anything
                self.counted_failure(hook, "on_response", exc, started)
                ex = self.exchange
                ex.link.drop()
                if ex.attempts is not None:
                    ex.attempts.finish(True)  # the backend answered; the hook failed
                ex.link.cancel_timers()
                ex.respond_error(hook.error_status, f"hook {hook.name} failed", reason="hook")
                return True
            metrics.hook(hook.name, "on_response", _since(started))
        response.status = head.status
        return False

    def record(self, record: AccessRecord) -> None:
        """Show on_log hooks the finished record (each its own copy, as a dict)."""
        metrics = self.exchange.client.listener.metrics
        for hook, method in self.hooks.on_log:
            started = time.perf_counter()
            try:
                result = method(record.as_dict())
                if result is not None and inspect.isawaitable(result):
                    _keep(
                        self.exchange.client.loop.create_task(self._logged(hook, result, started))
                    )
                    continue
            except Exception as exc:  # the user's code may raise anything
                self.counted_failure(hook, "on_log", exc, started)
                continue
            metrics.hook(hook.name, "on_log", _since(started))

    async def _logged(self, hook: Hook, pending: Awaitable[Any], started: float) -> None:
        try:
            await asyncio.wait_for(pending, hook.timeout)
        except Exception as exc:  # the user's code may raise anything, or overrun
            self.counted_failure(hook, "on_log", exc, started)
            return
        self.exchange.client.listener.metrics.hook(hook.name, "on_log", _since(started))

    # Failures

    def failed(self, hook: Hook, phase: str, exc: BaseException, started: float) -> bool:
        """A request phase failed: count it, log it (once per burst), answer the error."""
        self.counted_failure(hook, phase, exc, started)
        self.exchange.respond_error(hook.error_status, f"hook {hook.name} failed", reason="hook")
        return False

    def counted_failure(self, hook: Hook, phase: str, exc: BaseException, started: float) -> None:
        metrics = self.exchange.client.listener.metrics
        metrics.hook(hook.name, phase, _since(started))
        metrics.hook_error(hook.name, phase)
        report(hook, phase, exc)


def answer(exchange: Exchange, response: Response) -> None:
    """Send the answer a hook's on_request returned, and end the exchange."""
    client = exchange.client
    if not exchange.request_done:
        exchange.keep_alive = False  # the unread body is not forwarded
    keep_alive = exchange.keep_alive = exchange.keep_alive and not client.listener.draining
    headers: Headers = [
        (k.encode("latin-1"), v.encode("latin-1")) for k, v in response.headers.items()
    ]
    headers.append((b"Content-Length", b"%d" % len(response.body)))
    if client.listener.hsts is not None:
        headers.append(client.listener.hsts)
    if not keep_alive:
        headers.append(CONNECTION_CLOSE)
    writer = answer_writer(exchange.request)
    out = writer.send(ResponseEvent(response.status, b"", b"1.1", headers))
    body = response.body if writer.body_allowed else b""
    client.write(out + writer.send(Data(body)) + writer.send(EndOfMessage()))
    exchange.status = response.status
    exchange.bytes_out = len(body)
    exchange.response_started = exchange.response_done = True
    exchange.finish(True, close=not keep_alive)


# The tasks of async phases: the loop holds tasks only weakly, and one must not vanish midway.
_running: set[asyncio.Task[None]] = set()


def _keep(task: asyncio.Task[None]) -> None:
    _running.add(task)
    task.add_done_callback(_running.discard)


_bursts = BurstLog(QUIET)


def report(hook: Hook, phase: str, exc: BaseException) -> None:
    """Log a hook's failure at most once per QUIET seconds for each hook and phase, with the
    count of the failures in between."""
    also = _bursts.admit((hook.name, phase))
    if also is not None:
        log.error("hook %s failed in %s: %s%s", hook.name, phase, _describe(exc), also)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "it took longer than its timeout"
    return f"{type(exc).__name__}: {exc}"


def _returned(result: Any, wanted: str) -> TypeError:
    return TypeError(f"returned {type(result).__name__}, expected {wanted}")


def _since(started: float) -> float:
    return time.perf_counter() - started
