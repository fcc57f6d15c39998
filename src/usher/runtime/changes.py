"""Operator changes (the admin API's add, update and remove of a backend), checked before
anything changes: what names nothing or asks for nonsense becomes a `ChangeError` with the
HTTP status the admin API answers (404, 409 or 400)."""

from __future__ import annotations

from collections.abc import Mapping

from usher.config import BackendConfig
from usher.errors import ChangeError
from usher.pool import Backend, Pool, State

# What an operator may set a backend to (healthy or not is the checks' verdict).
OPERATOR_STATES: dict[str, State] = {
    "enabled": "enabled",
    "draining": "draining",
    "disabled": "disabled",
}


def find_pool(pools: Mapping[str, Pool], name: str) -> Pool:
    pool = pools.get(name)
    if pool is None:
        raise ChangeError(404, f"no pool {name!r} (known: {', '.join(sorted(pools))})")
    return pool


def find_backend(pools: Mapping[str, Pool], pool_name: str, address: str) -> tuple[Pool, Backend]:
    pool = find_pool(pools, pool_name)
    backend = pool.find(address)
    if backend is None:
        raise ChangeError(404, f"no backend {address} in pool {pool_name}")
    return pool, backend


def new_backend(
    pool: Pool, address: str, *, weight: int, backup: bool, max_connections: int | None
) -> BackendConfig:
    """The config of a backend to add to `pool`, validated as the file's would be."""
    try:
        config = BackendConfig.model_validate(
            {
                "address": address,
                "weight": weight,
                "backup": backup,
                "max_connections": max_connections,
            }
        )
    except ValueError as exc:
        raise ChangeError(400, first_error(exc)) from None
    if pool.find(str(config.address)) is not None:
        raise ChangeError(409, f"backend {config.address} is already in pool {pool.name}")
    return config


def checked_weight(weight: int) -> int:
    if weight <= 0:
        raise ChangeError(400, f"weight must be > 0 (got {weight})")
    return weight


def checked_state(state: str) -> State:
    checked = OPERATOR_STATES.get(state)
    if checked is None:
        raise ChangeError(400, f"state must be enabled, draining or disabled (got {state!r})")
    return checked


def removal_called_off(pool: Pool, backend: Backend) -> ChangeError:
    """A removal whose backend was set to another state while it drained: that call won."""
    return ChangeError(
        409,
        f"removal of backend {backend.label} from pool {pool.name} called off: "
        f"it was set to {backend.state} while it drained",
    )


def first_error(exc: ValueError) -> str:
    """The first of a pydantic error's messages, with where it is."""
    errors = getattr(exc, "errors", None)
    if callable(errors):
        for error in errors():
            where = ".".join(str(p) for p in error.get("loc", ()))
            return f"{where}: {error.get('msg', 'invalid')}" if where else str(error.get("msg"))
    return str(exc)
