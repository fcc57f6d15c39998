"""The import graph of usher has no cycles: read from the source (ast), without importing it.

Imports under `if TYPE_CHECKING:` are left out: they never run. The first test takes the
imports at module level, which must have no cycle at all. The second also takes the imports
deferred into a function, which hide a cycle rather than remove it; the few such cycles
left are listed in `DEFERRED_CYCLES`, each with why it is there.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import usher

PACKAGE = Path(usher.__file__).parent

Graph = dict[str, set[str]]

# Cycles closed only by an import inside a function, as sets of the modules they go through.
DEFERRED_CYCLES: list[frozenset[str]] = [
    # The registry: the package loads the built-in algorithms when first asked for one (and a
    # user's through balancing.custom); each of them imports the package for `register` and the
    # interface. To break: the interface and registry into a module of their own (compiled).
    frozenset(
        {
            "usher.balancing",
            "usher.balancing.custom",
            "usher.balancing.hashing",
            "usher.balancing.latency",
            "usher.balancing.least",
            "usher.balancing.random",
            "usher.balancing.resource",
            "usher.balancing.round_robin",
        }
    ),
]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_type_checking(test: ast.expr) -> bool:
    if isinstance(test, ast.Name):
        return test.id == "TYPE_CHECKING"
    return isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"


def imports(node: ast.AST, *, deferred: bool) -> Iterator[ast.Import | ast.ImportFrom]:
    """The import statements that run when `node` does: not those under TYPE_CHECKING, and
    those inside functions only when `deferred`."""
    if isinstance(node, ast.Import | ast.ImportFrom):
        yield node
        return
    if isinstance(node, ast.If) and _is_type_checking(node.test):
        children: list[ast.AST] = list(node.orelse)
    elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda) and not deferred:
        return
    else:
        children = list(ast.iter_child_nodes(node))
    for child in children:
        yield from imports(child, deferred=deferred)


def import_graph(*, deferred: bool) -> Graph:
    """Each usher module and the usher modules it imports."""
    paths = {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}
    graph: Graph = {}
    for name, path in paths.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        targets: set[str] = set()
        for node in imports(tree, deferred=deferred):
            if isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names)
                continue
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parts, *([node.module] if node.module else [])])
            for alias in node.names:
                submodule = f"{base}.{alias.name}"
                targets.add(submodule if submodule in paths else base)
        graph[name] = {target for target in targets if target in paths and target != name}
    return graph


def cycles(graph: Graph) -> list[frozenset[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[frozenset[str]] = []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        for target in sorted(graph[module]):
            if target not in index:
                visit(target)
                low[module] = min(low[module], low[target])
            elif target in stack:
                low[module] = min(low[module], index[target])
        if low[module] == index[module]:
            component = {stack.pop()}
            while module not in component:
                component.add(stack.pop())
            if len(component) > 1:
                found.append(frozenset(component))

    for module in sorted(graph):
        if module not in index:
            visit(module)
    return found


def path_around(graph: Graph, component: frozenset[str]) -> str:
    """One cycle through `component`, written `a -> b -> a`, to name it in a failure."""
    start = min(component)
    paths = {start: [start]}
    queue = [start]
    while queue:
        module = queue.pop(0)
        for target in sorted(graph[module] & component):
            if target == start:
                return " -> ".join([*paths[module], start])
            if target not in paths:
                paths[target] = [*paths[module], target]
                queue.append(target)
    return ", ".join(sorted(component))


def test_module_level_imports_have_no_cycle() -> None:
    graph = import_graph(deferred=False)
    assert "usher.config.load" in graph  # the walk sees the packages' modules
    found = [path_around(graph, component) for component in cycles(graph)]
    assert found == [], "import cycles: " + "; ".join(found)


def test_deferred_imports_close_no_cycle_but_the_listed_ones() -> None:
    graph = import_graph(deferred=True)
    found = [
        path_around(graph, component)
        for component in cycles(graph)
        if component not in DEFERRED_CYCLES
    ]
    assert found == [], "import cycles through a deferred import: " + "; ".join(found)


def test_a_cycle_is_found_and_named() -> None:
    graph: Graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == [frozenset({"a", "b", "c"})]
    assert path_around(graph, frozenset({"a", "b", "c"})) == "a -> b -> c -> a"
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_type_checking_and_function_imports_are_told_apart() -> None:
    tree = ast.parse(
        "import usher.a\n"
        "if TYPE_CHECKING:\n    import usher.b\nelse:\n    import usher.c\n"
        "def f():\n    import usher.d\n"
    )
    names = [
        [alias.name for node in imports(tree, deferred=deferred) for alias in node.names]
        for deferred in (False, True)
    ]
    assert names == [["usher.a", "usher.c"], ["usher.a", "usher.c", "usher.d"]]


# Packages that must not import another at all, not even for types: (importer, imported, why).
FORBIDDEN = [
    ("usher.balancing", "usher.pool", "an algorithm reads a BackendView, not the pool's Backend"),
    ("usher.balancing", "usher.http", "an algorithm balances bytes keys, not HTTP requests"),
    (
        "usher.pool",
        "usher.http",
        "the pool serves HTTP and L4 alike: http plugs its connections in (pool.connections)",
    ),
]


def every_import(path: Path) -> set[str]:
    """The modules a file names in any import statement (TYPE_CHECKING and functions too)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
    return names


def test_no_package_imports_one_it_must_not() -> None:
    broken = [
        f"{module_name(path)} imports {name}: {why}"
        for importer, imported, why in FORBIDDEN
        for path in sorted(PACKAGE.rglob("*.py"))
        if module_name(path) == importer or module_name(path).startswith(importer + ".")
        for name in sorted(every_import(path))
        if name == imported or name.startswith(imported + ".")
    ]
    assert broken == []


def test_a_forbidden_import_is_seen_under_type_checking(tmp_path: Path) -> None:
    source = tmp_path / "m.py"
    source.write_text("if TYPE_CHECKING:\n    from usher.pool import Backend\n")
    assert every_import(source) == {"usher.pool"}
