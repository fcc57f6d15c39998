"""A reload in two halves: `plan` compares the running config with the new one and says what
changes (no I/O: it is tested without sockets), then `apply` does it to a running data plane
(its owner then drains what it dropped: usher.runtime.controlplane, usher.process.worker).

`apply` keeps the order that makes a reload safe: the TLS files load and new sockets bind before
anything else changes (so a bad certificate or a port in use changes nothing), pools change
before listeners (every listener's router points at them), and old sockets close last.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from usher.config import Config, HostPort, Listener
from usher.errors import BindError
from usher.http.hook_phases import build_hooks
from usher.routing import Router
from usher.runtime.dataplane import load_tls
from usher.surface import ReloadReport

if TYPE_CHECKING:
    from usher.listeners import AnyListener, Serving
    from usher.pool import Backend, Pool
    from usher.runtime.dataplane import Bound, DataPlane
    from usher.tls import ServerTls

CLUSTER_NOTE = "cluster: changed; it takes effect on restart"
ADMIN_NOTE = "admin settings change at the next restart"


@dataclass(frozen=True, slots=True)
class ReloadPlan:
    """What a reload from one config to another changes, by name, each tuple in config order."""

    # The config the balancer runs afterwards: the new one, with the admin section that runs
    # (it changes at the next restart, so the next reload notes it again).
    config: Config
    listeners_keep: tuple[str, ...]  # same socket: it keeps its connections, takes new settings
    listeners_bind: tuple[str, ...]  # a new socket: a new listener, or one at a new address
    listeners_close: tuple[str, ...]  # old sockets that close: removed, or rebound elsewhere
    pools_add: tuple[str, ...]
    pools_reconfigure: tuple[str, ...]  # kept pools: their backends' live state stays
    pools_retire: tuple[str, ...]  # their backends drain, then the pool goes
    checkers_restart: tuple[str, ...]  # each starts from its backends' current health
    notes: tuple[str, ...]

    @property
    def listeners_removed(self) -> tuple[str, ...]:
        """The closed listeners that no new socket replaces."""
        return tuple(name for name in self.listeners_close if name not in self.listeners_bind)


def plan(old: Config, new: Config, bound: Mapping[str, int]) -> ReloadPlan:
    """The reload from `old` to `new`; `bound` is the port each listener actually got (what
    port 0 became), by listener name."""
    before = {lc.name: lc for lc in old.listeners}
    keep = tuple(
        lc.name
        for lc in new.listeners
        if lc.name in before
        and (
            same_socket(as_bound(before[lc.name], bound.get(lc.name)), lc)  # the port it got
            or same_socket(before[lc.name], lc)  # port 0 again: keep it
        )
    )
    notes: list[str] = []
    if new.cluster != old.cluster:
        notes.append(CLUSTER_NOTE)  # the link (and the nodes' keys) is made once, at start
    config = new
    if new.admin != old.admin:
        notes.append(ADMIN_NOTE)
        config = new.model_copy(update={"admin": old.admin})
    return ReloadPlan(
        config=config,
        listeners_keep=keep,
        listeners_bind=tuple(lc.name for lc in new.listeners if lc.name not in keep),
        listeners_close=tuple(name for name in before if name not in keep),
        pools_add=tuple(name for name in new.pools if name not in old.pools),
        pools_reconfigure=tuple(name for name in new.pools if name in old.pools),
        pools_retire=tuple(name for name in old.pools if name not in new.pools),
        checkers_restart=tuple(new.pools),
        notes=tuple(notes),
    )


def same_socket(old: Listener, new: Listener) -> bool:
    """Whether `new` can serve on `old`'s socket."""
    # An http listener that takes PROXY headers accepts raw sockets: another kind of server.
    return (
        old.bind == new.bind
        and old.protocol == new.protocol
        and old.accept_proxy_protocol == new.accept_proxy_protocol
    )


def as_bound(lc: Listener, port: int | None) -> Listener:
    """A listener config with the port it actually got, when it asked for port 0."""
    if lc.bind.port != 0 or port is None:
        return lc
    return lc.model_copy(update={"bind": HostPort(lc.bind.host, port)})


def overwritten(changes: Iterable[tuple[str, str, str]], config: Config) -> list[str]:
    """Runtime changes, (pool, address, what), that `config` does not keep (it is the new
    truth)."""
    lost: list[str] = []
    for pool_name, address, what in changes:
        pool_config = config.pools.get(pool_name)
        in_file = None
        if pool_config is not None:
            in_file = next((b for b in pool_config.backends if str(b.address) == address), None)
        if what == "added" and in_file is None:
            lost.append(f"{pool_name}/{address}: added at runtime, not in the file: removed")
        elif what == "removed" and in_file is not None:
            lost.append(f"{pool_name}/{address}: removed at runtime, in the file: back")
        elif (
            what.startswith("weight ")
            and in_file is not None
            and in_file.weight != int(what.split()[1])
        ):
            lost.append(f"{pool_name}/{address}: {what} at runtime, {in_file.weight} in the file")
    return lost


@dataclass(slots=True)
class Applied:
    """What `apply` did, and what it leaves to the data plane's owner: the backends the new
    config dropped (still in their pools) and the pools it removed (no longer in them)."""

    plan: ReloadPlan
    report: ReloadReport
    dropped: list[tuple[str, Backend]] = field(default_factory=list)
    retired: list[Pool] = field(default_factory=list)


async def reload_to(plane: DataPlane, config: Config) -> Applied:
    """Plan the reload of `plane` from the config it runs to `config`, and apply it."""
    ports = {name: bound.port for name, bound in plane.bound.items()}
    # The user's hooks are built before anything changes: one that fails refuses the reload.
    old_hooks, plane.hooks = plane.hooks, build_hooks(config, fresh=True)
    try:
        return await apply(plane, plan(plane.config, config, ports))
    except BaseException:
        plane.hooks = old_hooks
        raise


async def apply(plane: DataPlane, plan: ReloadPlan) -> Applied:
    """Do `plan` to the data plane `plane`. Raises ConfigError when a TLS file does not load
    and BindError when a new socket cannot bind: either way nothing has changed."""
    config = plan.config
    applied = Applied(plan, ReloadReport(notes=list(plan.notes)))
    report = applied.report
    new_tls, upstream_tls = load_tls(config)
    by_name = {lc.name: lc for lc in config.listeners}
    fresh: dict[str, tuple[AnyListener, Serving, Bound]] = {}
    old_tls, plane.tls = plane.tls, {**plane.tls, **new_tls}
    try:
        for name in plan.listeners_bind:
            listener = plane.new_listener(by_name[name], Router([], {}))
            server, bound = await plane.bind(listener)
            fresh[name] = (listener, server, bound)
    except BindError:
        plane.tls = old_tls
        for _, server, _ in fresh.values():
            server.close()
        raise
    pools = plane.pools
    for name in plan.pools_add:
        pools[name] = plane.new_pool(name, config.pools[name])
        pools[name].use_tls_context(upstream_tls.get(name))
        report.pools_added.append(name)
    for name in plan.pools_reconfigure:
        pool = pools[name]
        before = {b.label for b in pool.backends}
        dropped = pool.reconfigure(config.pools[name])
        pool.use_tls_context(upstream_tls.get(name))
        for backend in dropped:
            report.backends_draining.append(f"{name}/{backend.label}")
            applied.dropped.append((name, backend))
        report.backends_added += [
            f"{name}/{b.label}" for b in pool.backends if b.label not in before
        ]
    for name in [n for n in pools if n in plan.pools_retire]:  # in the order they were added
        report.pools_removed.append(name)
        applied.retired.append(pools.pop(name))
    _swap_listeners(plane, plan, fresh, old_tls, report)
    plane.config = config
    return applied


def _swap_listeners(
    plane: DataPlane,
    plan: ReloadPlan,
    fresh: dict[str, tuple[AnyListener, Serving, Bound]],
    old_tls: dict[str, ServerTls],
    report: ReloadReport,
) -> None:
    """Kept listeners take their new settings, fresh ones take their place, old sockets close."""
    config = plan.config
    old_listeners, plane.listeners = plane.listeners, {}
    for index, lc in enumerate(config.listeners):
        router = plane.router(lc, plane.pools)
        if lc.name in plan.listeners_keep:
            listener = old_listeners.pop(lc.name)
            listener.apply(lc, router)
            if lc.tls is not None and lc.name in old_tls:
                old_tls[lc.name].update(lc.tls, f"listeners[{index}].tls", http2=lc.serves_http2)
                plane.tls[lc.name] = old_tls[lc.name]
            report.listeners_kept.append(lc.name)
        else:
            listener = fresh[lc.name][0]
            listener.apply(lc, router)
            report.listeners_added.append(lc.name)
        plane.listeners[lc.name] = listener
    for name in plan.listeners_close:
        old_server = plane.servers.pop(name, None)
        if old_server is not None:
            old_server.close()
        plane.bound.pop(name, None)
        old_listeners.pop(name).drain()
    report.listeners_removed += plan.listeners_removed
    for name, (_, server, bound) in fresh.items():
        plane.servers[name] = server
        plane.bound[name] = bound
    plane.tls = {name: tls for name, tls in plane.tls.items() if name in plane.listeners}
