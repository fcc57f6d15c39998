"""Builds usher, compiling the hot-path modules listed in src/usher/native.py with mypyc.

The compiled build is an option, never a requirement: without mypyc (pip's isolated build
environment has none), or with USHER_PURE=1, this builds the plain package, and a C compiler
error leaves the modules uncompiled (the extensions are optional). `make` compiles after the
dependencies are installed (`python setup.py build_ext --inplace`), because mypyc type-checks
the modules against them.
"""

from __future__ import annotations

import ast
import os
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

SRC = Path(__file__).parent / "src"


def compiled_modules() -> list[str]:
    """COMPILED_MODULES from src/usher/native.py, read without importing usher."""
    tree = ast.parse((SRC / "usher" / "native.py").read_text(encoding="utf-8"))
    for node in tree.body:
        if isinstance(node, ast.AnnAssign | ast.Assign):
            targets = [node.target] if isinstance(node, ast.AnnAssign) else node.targets
            if any(isinstance(t, ast.Name) and t.id == "COMPILED_MODULES" for t in targets):
                assert node.value is not None
                return list(ast.literal_eval(node.value))
    raise SystemExit("src/usher/native.py defines no COMPILED_MODULES")


def module_path(name: str) -> str:
    """The source of a module: a package's is its __init__.py."""
    path = SRC / name.replace(".", "/")
    return str(path / "__init__.py" if path.is_dir() else path.with_suffix(".py"))


def extensions() -> list[Extension]:
    if os.environ.get("USHER_PURE") == "1":
        return []
    try:
        from mypyc.build import mypycify
    except ImportError:
        return []
    paths = [module_path(name) for name in compiled_modules()]
    modules: list[Extension] = mypycify(paths, group_name="usher", opt_level="3")
    for module in modules:
        module.optional = True  # no compiler or headers: a warning, and usher runs pure
    return modules


class BuildExt(build_ext):
    """build_ext that dates the in-place copies now: the copy keeps the time of the build/
    file, which an up-to-date check may have left older than a source whose C did not change,
    and usher runs pure when an extension is older than its source (src/usher/native.py)."""

    def copy_extensions_to_source(self) -> None:
        super().copy_extensions_to_source()
        for ext in self.extensions:
            path = Path(self.get_ext_fullpath(ext.name))
            if path.exists():
                path.touch()


setup(ext_modules=extensions(), cmdclass={"build_ext": BuildExt})
