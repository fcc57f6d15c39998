"""The compiled hot path: which mode a process settles on, and that it loads what it says."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from importlib.machinery import EXTENSION_SUFFIXES
from pathlib import Path

import usher
from usher import native

MODULES = ("usher.fast", "usher.pkg.inner")


def lay_out(root: Path, *, built: bool) -> None:
    """A fake tree: the sources of MODULES, and their extensions when `built`."""
    for module in MODULES:
        source = native.source_of(module, root)
        source.parent.mkdir(parents=True, exist_ok=True)
        source.write_text("X = 1\n")
        if built:
            source.with_name(source.stem + EXTENSION_SUFFIXES[0]).write_bytes(b"\x7fELF")


def test_fresh_extensions_settle_compiled(tmp_path: Path):
    lay_out(tmp_path, built=True)
    mode = native.settle({}, MODULES, tmp_path)
    assert mode.compiled
    assert str(mode).startswith("compiled (mypyc")


def test_usher_pure_wins_over_a_fresh_build(tmp_path: Path):
    lay_out(tmp_path, built=True)
    mode = native.settle({"USHER_PURE": "1"}, MODULES, tmp_path)
    assert not mode.compiled
    assert str(mode) == "pure Python (USHER_PURE=1)"


def test_a_missing_extension_settles_pure(tmp_path: Path):
    lay_out(tmp_path, built=True)
    extension = native.extension_of("usher.pkg.inner", tmp_path)
    assert extension is not None
    extension.unlink()
    mode = native.settle({}, MODULES, tmp_path)
    assert not mode.compiled
    assert "not built" in mode.reason


def test_a_source_newer_than_its_extension_settles_pure_naming_it(tmp_path: Path):
    lay_out(tmp_path, built=True)
    source = native.source_of("usher.fast", tmp_path)
    later = source.stat().st_mtime + 10
    os.utime(source, (later, later))  # edited after the build
    mode = native.settle({}, MODULES, tmp_path)
    assert not mode.compiled
    assert "stale build: usher.fast changed" in mode.reason


def test_the_finder_takes_the_source_over_an_extension_it_may_not_load(tmp_path: Path):
    lay_out(tmp_path, built=True)
    package = str(tmp_path / "usher")
    spec = native.SourceFinder(frozenset()).find_spec("usher.fast", [package])
    assert spec is not None and spec.origin == str(tmp_path / "usher" / "fast.py")
    # A listed module in compiled mode is left to the ordinary finders (which pick the .so).
    assert native.SourceFinder(frozenset({"usher.fast"})).find_spec("usher.fast", [package]) is None
    # Other packages are none of its business.
    assert native.SourceFinder(frozenset()).find_spec("fast", [package]) is None


def test_package_sources_are_their_init(tmp_path: Path):
    (tmp_path / "usher" / "balancing").mkdir(parents=True)
    assert native.source_of("usher.balancing", tmp_path) == tmp_path / "usher/balancing/__init__.py"
    assert native.source_of("usher.acl", tmp_path) == tmp_path / "usher/acl.py"


def loaded_in_subprocess(environ: dict[str, str]) -> dict[str, object]:
    """What a fresh interpreter with `environ` reports: its mode and each listed module's file."""
    code = (
        "import importlib, json, usher\n"
        "from usher import native\n"
        "files = {m: importlib.import_module(m).__file__ for m in native.COMPILED_MODULES}\n"
        "print(json.dumps({'compiled': usher.compiled(), 'mode': usher.build_mode(), "
        "'files': files}))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], env=environ, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    report: dict[str, object] = json.loads(result.stdout)
    return report


def without_pure() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != "USHER_PURE"}


def test_usher_pure_loads_every_listed_module_from_its_source():
    report = loaded_in_subprocess({**without_pure(), "USHER_PURE": "1"})
    assert report["compiled"] is False
    assert report["mode"] == "pure Python (USHER_PURE=1)"
    files = report["files"]
    assert isinstance(files, dict)
    assert all(path.endswith(".py") for path in files.values()), files


def test_without_usher_pure_the_build_on_disk_decides_and_is_what_loads():
    # `make test` builds first, so this runs compiled there; a plain `pip install -e .` has no
    # build, and then the same process must say pure and load the sources.
    expected = native.settle(without_pure())
    report = loaded_in_subprocess(without_pure())
    assert report["compiled"] is expected.compiled
    assert report["mode"] == str(expected)
    files = report["files"]
    assert isinstance(files, dict) and set(files) == set(native.COMPILED_MODULES)
    for module, path in files.items():
        assert path.endswith(".py") is not expected.compiled, (module, path)


def test_this_process_reports_the_mode_it_settled():
    assert usher.compiled() is native.settle().compiled
    assert usher.build_mode() == str(native.settle())
