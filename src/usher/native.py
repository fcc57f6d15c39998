"""The compiled hot path: which modules mypyc compiles, and whether this process runs them.

`COMPILED_MODULES` is the one list: setup.py reads it (without importing usher) to know what to
compile, and this module reads it to know which extension modules it may load. The `.py` source
of each stays the source of truth; its extension module is a faster way to run the same code.

At import, usher (its `__init__`) calls `install()`, which settles the mode of the process once:
compiled when every listed module has an extension built from its current source, pure when
`USHER_PURE=1` is set or when any of them is missing or older than its source (a stale build is
never half used: compiled modules call each other directly, so they go together). A finder at
the front of `sys.meta_path` then loads the `.py` source of every usher module it may not load
compiled, including a leftover extension of a module no longer listed. Worker processes import
usher afresh and inherit the environment, so they settle the same way.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence
from importlib.machinery import (
    BYTECODE_SUFFIXES,
    EXTENSION_SUFFIXES,
    SOURCE_SUFFIXES,
    FileFinder,
    ModuleSpec,
    SourceFileLoader,
    SourcelessFileLoader,
)
from pathlib import Path
from types import ModuleType
from typing import Final

COMPILED_MODULES: Final = (
    "usher.http.codec",
    "usher.http.events",
    "usher.http.framing",
    "usher.http.request_reader",
    "usher.http.response_reader",
    "usher.http.writers",
    "usher.http.headers",
    "usher.http.target",
    "usher.http.upgrades",
    "usher.routing",
    "usher.http.proxy",
    "usher.http.flow",
    "usher.http.answers",
    "usher.http.listener",
    "usher.http.client_socket",
    "usher.http.downstream",
    "usher.http.h2_headers",
    "usher.http.h2_stream",
    "usher.http.h2_downstream",
    "usher.http.exchange",
    "usher.http.request_key",
    "usher.http.forwarding",
    "usher.http.recording",
    "usher.http.response",
    "usher.http.link",
    "usher.http.upstream",
    "usher.http.connection_pool",
    "usher.http.edge",
    "usher.http.filters",
    "usher.http.ratelimit",
    "usher.http.screening",
    "usher.limits",
    "usher.acl",
    "usher.metrics",
    "usher.logs",
    "usher.pool",
    "usher.pool.attempts",
    "usher.pool.backend",
    "usher.pool.outlier",
    "usher.pool.pool",
    "usher.pool.queue",
    "usher.pool.selection",
    "usher.pool.slow_start",
    "usher.state.local",
    "usher.clock",
    "usher.timers",
    "usher.l4.relay",
    "usher.balancing",
    "usher.balancing.hashing",
    "usher.balancing.latency",
    "usher.balancing.probes",
    "usher.balancing.least",
    "usher.balancing.random",
    "usher.balancing.resource",
    "usher.balancing.round_robin",
)
PURE_VARIABLE: Final = "USHER_PURE"
# The directory that holds the usher package (src/ in a checkout).
SOURCE_ROOT: Final = Path(__file__).parent.parent


class Mode:
    """How this process runs the listed modules, and why."""

    def __init__(self, compiled: bool, reason: str) -> None:
        self.compiled = compiled
        self.reason = reason

    def __str__(self) -> str:
        if self.compiled:
            return f"compiled (mypyc, {len(COMPILED_MODULES)} modules)"
        return f"pure Python ({self.reason})"


class SourceFinder:
    """Finds usher modules as `.py` source (or its bytecode) unless they may run compiled."""

    def __init__(self, allowed: frozenset[str]) -> None:
        self.allowed = allowed

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> ModuleSpec | None:
        if not fullname.startswith("usher.") or fullname in self.allowed:
            return None  # the ordinary finders decide
        for entry in path or ():
            spec = FileFinder(
                entry,
                (SourceFileLoader, SOURCE_SUFFIXES),
                (SourcelessFileLoader, BYTECODE_SUFFIXES),
            ).find_spec(fullname, target)
            if spec is not None and spec.loader is not None:
                return spec
        return None


def source_of(module: str, root: Path = SOURCE_ROOT) -> Path:
    """The `.py` file of a listed module (a package's is its `__init__.py`)."""
    path = root.joinpath(*module.split("."))
    return path / "__init__.py" if path.is_dir() else path.with_suffix(".py")


def extension_of(module: str, root: Path = SOURCE_ROOT) -> Path | None:
    """The built extension module next to a listed module's source, if there is one."""
    source = source_of(module, root)
    for suffix in EXTENSION_SUFFIXES:
        candidate = source.with_name(source.stem + suffix)
        if candidate.exists():
            return candidate
    return None


def settle(
    environ: Mapping[str, str] = os.environ,
    modules: Sequence[str] = COMPILED_MODULES,
    root: Path = SOURCE_ROOT,
) -> Mode:
    """The mode a process with this environment runs in, from the files on disk."""
    if environ.get(PURE_VARIABLE) == "1":
        return Mode(False, f"{PURE_VARIABLE}=1")
    for module in modules:
        extension = extension_of(module, root)
        if extension is None:
            return Mode(False, "not built: `make` compiles it, given a C compiler")
        if extension.stat().st_mtime < source_of(module, root).stat().st_mtime:
            return Mode(False, f"stale build: {module} changed since; `make` rebuilds it")
    return Mode(True, "built from the current sources")


_mode: Mode | None = None


def install() -> Mode:
    """Settle this process's mode once and put its finder in front of the others."""
    global _mode
    if _mode is None:
        _mode = settle()
        allowed = frozenset(COMPILED_MODULES) if _mode.compiled else frozenset()
        sys.meta_path.insert(0, SourceFinder(allowed))
    return _mode
