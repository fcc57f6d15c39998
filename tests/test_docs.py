"""Config examples in the README and docs/ are valid configs: the docs cannot drift."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from usher.config import parse_config

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCK = re.compile(r"```ya?ml\n(.*?)```", re.S)


def whole_configs() -> list[tuple[str, str]]:
    found = []
    for page in PAGES:
        for i, block in enumerate(BLOCK.findall(page.read_text())):
            # A whole config (both top-level keys), not an excerpt of one.
            if re.search(r"^listeners:", block, re.M) and re.search(r"^pools:", block, re.M):
                found.append((f"{page.name}#{i}", block))
    return found


@pytest.mark.parametrize(("where", "text"), whole_configs(), ids=[w for w, _ in whole_configs()])
def test_config_example_is_valid(where: str, text: str) -> None:
    parse_config(text, where)


def test_readme_opens_with_the_two_commands() -> None:
    text = (ROOT / "README.md").read_text()
    first_block = text.split("```")[1]
    assert [line.split("#")[0].strip() for line in first_block.strip().splitlines()[1:]] == [
        "make demo",
        "make test",
    ]
