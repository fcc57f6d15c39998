"""Custom algorithms by import path: loaded at config load, errors at their path, re-imported."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from textwrap import dedent
from typing import Any

import httpx
import pytest

from usher.balancing import ALGORITHMS, get_algorithm, registered_names
from usher.clock import ManualClock
from usher.config import load_config
from usher.errors import ConfigError
from usher.pool import Pool, Selection


@pytest.fixture(autouse=True)
def _clean_sys_path() -> Iterator[None]:
    registered_names()  # the built-in algorithms registered first, so the snapshot has them
    path, modules, registry = list(sys.path), set(sys.modules), dict(ALGORITHMS)
    yield
    ALGORITHMS.clear()
    ALGORITHMS.update(registry)
    added = [entry for entry in sys.path if entry and entry not in path]
    sys.path[:] = path
    # Forget only the modules the test imported from the directories it added (the user's
    # algorithms). usher or library modules first imported during the test stay: dropping them
    # would leave two copies of one module (its classes and registries) for later tests.
    for name in set(sys.modules) - modules:
        origin = getattr(sys.modules[name], "__file__", None) or ""
        if any(origin.startswith(entry) for entry in added):
            del sys.modules[name]


def write_config(tmp: Path, algorithm: str, python_path: str = "[algos]") -> Path:
    (tmp / "algos").mkdir(exist_ok=True)
    config = tmp / "usher.yaml"
    config.write_text(
        dedent(
            f"""\
            python_path: {python_path}
            listeners: [{{name: web, bind: 127.0.0.1:0, pool: web}}]
            pools:
              web:
                algorithm: "{algorithm}"
                backends: [{{address: 127.0.0.1:9001}}, {{address: 127.0.0.1:9002}}]
            """
        )
    )
    return config


def write_module(tmp: Path, name: str, source: str) -> None:
    (tmp / "algos").mkdir(exist_ok=True)
    (tmp / "algos" / f"{name}.py").write_text(dedent(source))


LAST = """\
    from usher.balancing import Algorithm

    class Last(Algorithm):
        def candidates(self, ctx):
            return iter(reversed(self.backends))
"""


def first_choice(config_path: Path) -> str:
    config = load_config(config_path)
    pool = Pool("web", config.pools["web"], ManualClock())
    chosen = pool.select(Selection("10.0.0.1", 0.0))
    assert chosen is not None
    return chosen.label


def test_a_class_named_by_import_path_balances_the_pool(tmp_path: Path) -> None:
    write_module(tmp_path, "mine", LAST)
    config = write_config(tmp_path, "mine:Last")
    assert load_config(config).python_path == [str(tmp_path / "algos")]
    assert first_choice(config) == "127.0.0.1:9002"
    assert get_algorithm("mine:Last").__name__ == "Last"


def test_a_reload_imports_the_edited_module_again(tmp_path: Path) -> None:
    write_module(tmp_path, "mine", LAST)
    config = write_config(tmp_path, "mine:Last")
    assert first_choice(config) == "127.0.0.1:9002"
    write_module(tmp_path, "mine", LAST.replace("reversed(self.backends)", "list(self.backends)"))
    assert first_choice(config) == "127.0.0.1:9001"


@pytest.mark.parametrize(
    ("source", "algorithm", "message"),
    [
        (None, "nowhere:Thing", "cannot import nowhere:Thing: ModuleNotFoundError: No module"),
        ("x = 1 +\n", "broken:Thing", "cannot import broken:Thing: SyntaxError"),
        ("raise RuntimeError('no db')\n", "angry:Thing", "RuntimeError: no db"),
        ("class Other: pass\n", "mod:Thing", "mod:Thing: module 'mod' has no 'Thing'"),
        ("Thing = 3\n", "mod:Thing", "mod:Thing: is not a class but int"),
        (
            "class Thing:\n    def candidates(self, ctx): return iter([])\n",
            "mod:Thing",
            "mod:Thing: not a balancing algorithm: missing on_start, on_finish",
        ),
        (None, "no colon:", "invalid import path 'no colon:'"),
    ],
)
def test_a_bad_algorithm_is_a_config_error_at_its_path(
    tmp_path: Path, source: str | None, algorithm: str, message: str
) -> None:
    if source is not None:
        write_module(tmp_path, algorithm.partition(":")[0], source)
    with pytest.raises(ConfigError) as caught:
        load_config(write_config(tmp_path, algorithm))
    (issue,) = caught.value.issues
    assert issue.path == "pools.web.algorithm"
    assert message in issue.message


def test_python_path_must_name_directories(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(write_config(tmp_path, "round_robin", "[missing]"))
    (issue,) = caught.value.issues
    assert issue.path == "python_path[0]"
    assert issue.message == f"no such directory: {tmp_path / 'missing'}"


async def test_a_serving_balancer_reloads_an_edited_algorithm(
    tmp_path: Path, backends: Any, balancer: Any
) -> None:
    a, b = await backends(2)
    write_module(tmp_path, "flip", LAST)
    config = tmp_path / "usher.yaml"
    config.write_text(
        f"python_path: [{tmp_path / 'algos'}]\n"
        "listeners: [{name: web, bind: 127.0.0.1:0, pool: web}]\n"
        f'pools: {{web: {{algorithm: "flip:Last", backends: [{{address: 127.0.0.1:{a.port}}},'
        f" {{address: 127.0.0.1:{b.port}}}]}}}}\n"
    )
    lb = await balancer(config.read_text(), config_path=config)

    async def names() -> set[str]:
        async with httpx.AsyncClient(timeout=5) as client:
            return {(await client.get(lb.url("/"))).text.strip() for _ in range(4)}

    assert await names() == {"B"}
    # Edited, then reloaded from the file (SIGHUP, POST /api/reload)...
    write_module(tmp_path, "flip", LAST.replace("reversed(self.backends)", "list(self.backends)"))
    await lb.balancer.reload()
    assert await names() == {"A"}
    # ...or handed a config validated elsewhere, as a worker is by its control process: the
    # module is imported again here too.
    handed = load_config(config)
    write_module(tmp_path, "flip", LAST + "    # edited after the validation\n")
    await lb.balancer.reload(handed)
    assert await names() == {"B"}


def test_a_module_that_registers_its_class_reloads_and_usher_classes_load_by_path(
    tmp_path: Path,
) -> None:
    write_module(
        tmp_path,
        "named",
        """\
        from usher.balancing import register
        from usher.balancing.round_robin import RoundRobin

        @register("test_named_rr")
        class NamedRoundRobin(RoundRobin):
            pass
        """,
    )
    config = write_config(tmp_path, "named:NamedRoundRobin")
    first_choice(config)
    first_choice(config)  # imported again: registering the same class again is no error
    assert first_choice(write_config(tmp_path, "usher.balancing.round_robin:RoundRobin"))
    with pytest.raises(ValueError, match="registered twice"):
        from usher.balancing import register
        from usher.balancing.round_robin import RoundRobin

        register("round_robin")(type("Other", (RoundRobin,), {}))
