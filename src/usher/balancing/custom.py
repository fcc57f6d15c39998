"""User algorithms named by import path (`algorithm: "myalgos:Pinned"`): load, check, reload.
Hooks (usher.hooks) are found by the same `resolve`.

A user class implements the selection interface of `usher.balancing.Algorithm` (subclassing it
is the easy way, not a requirement): built as `cls(backends, seed=, clock=, options=)`, it
answers `candidates(ctx)` and hears `on_start` / `on_finish`. The config loader imports it
afresh on every load and reload (so an edited module takes effect, and a broken one is a config
error); a process that receives an already validated config (a worker) re-imports with
`refresh` before building its pools.
"""

from __future__ import annotations

import importlib
import re
import sys
from collections.abc import Iterable
from types import ModuleType
from typing import cast

from usher.balancing import Algorithm

# `package.module:Name`, as the config file writes it.
IMPORT_PATH = re.compile(r"[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*:[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*")
REQUIRED_METHODS = ("candidates", "on_start", "on_finish")

_loaded: dict[str, type[Algorithm]] = {}
# Modules imported by this process's last load: the next fresh load re-imports them.
_fresh_modules: set[str] = set()


def is_import_path(value: str) -> bool:
    return ":" in value


def load(path: str, *, fresh: bool = False) -> type[Algorithm]:
    """The class named by `path`; with `fresh`, its module is re-imported first. Raises
    ValueError saying what is wrong (bad path, import error, missing method)."""
    if not fresh and path in _loaded:
        return _loaded[path]
    found = resolve(path, fresh=fresh)
    if not isinstance(found, type):
        raise ValueError(f"{path}: is not a class but {type(found).__name__}")
    missing = [m for m in REQUIRED_METHODS if not callable(getattr(found, m, None))]
    if missing:
        raise ValueError(
            f"{path}: not a balancing algorithm: missing {', '.join(missing)} "
            f"(implement usher.balancing.Algorithm)"
        )
    cls = cast("type[Algorithm]", found)
    _loaded[path] = cls
    return cls


def resolve(path: str, *, fresh: bool = False) -> object:
    """The object named by `path` (`package.module:Name`); with `fresh`, its module is
    re-imported first (once per load). Shared by user algorithms and hooks (usher.hooks).
    Raises ValueError saying what is wrong (bad path, import error, missing name)."""
    if not IMPORT_PATH.fullmatch(path):
        raise ValueError(f"invalid import path {path!r} (expected package.module:Name)")
    module_name, _, qualname = path.partition(":")
    module = _import(module_name, path, fresh=fresh)
    found: object = module
    for part in qualname.split("."):
        try:
            found = getattr(found, part)
        except AttributeError:
            raise ValueError(f"{path}: module {module_name!r} has no {part!r}") from None
    return found


def _import(module_name: str, path: str, *, fresh: bool) -> ModuleType:
    try:
        module = sys.modules.get(module_name)
        # usher's own modules are never re-imported: only the user's code changes on a reload.
        own = module_name == "usher" or module_name.startswith("usher.")
        if module is not None and fresh and not own and module_name not in _fresh_modules:
            module = importlib.reload(module)
        elif module is None:
            module = importlib.import_module(module_name)
    except Exception as exc:  # the user's module may raise anything while it is imported
        raise ValueError(f"cannot import {path}: {type(exc).__name__}: {exc}") from None
    if fresh:
        _fresh_modules.add(module_name)
    return module


def begin_load() -> None:
    """A new config is being loaded: each module a user algorithm names is imported afresh
    once during this load (not once per pool that names it)."""
    _fresh_modules.clear()
    importlib.invalidate_caches()  # the finders' cached directory listings miss new files


def add_python_path(dirs: Iterable[str]) -> None:
    """Put the config's `python_path` directories first on sys.path (once each)."""
    for directory in reversed(list(dirs)):
        if directory not in sys.path:
            sys.path.insert(0, directory)
