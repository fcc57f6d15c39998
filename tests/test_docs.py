"""Config examples in the README and docs/ are valid configs, local links and anchors resolve,
and the docs index lists every page: the docs cannot drift."""

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


def test_docs_index_lists_every_page() -> None:
    index = (ROOT / "docs" / "README.md").read_text()
    listed = set(re.findall(r"\]\(([\w.-]+\.md)\)", index))
    pages = {p.name for p in (ROOT / "docs").glob("*.md")} - {"README.md"}
    assert pages - listed == set(), "pages missing from docs/README.md"
    assert listed - pages == set(), "docs/README.md lists pages that do not exist"


FENCE = re.compile(r"^```.*?^```", re.S | re.M)


def _anchors(markdown: str) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens."""
    found = set()
    for heading in re.findall(r"^#{1,6} (.+)$", FENCE.sub("", markdown), re.M):
        found.add(re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-"))
    return found


def local_links() -> list[tuple[str, str]]:
    found = []
    for page in PAGES:
        for target in re.findall(r"\]\(([^)\s]+)\)", FENCE.sub("", page.read_text())):
            if not target.startswith(("http://", "https://", "mailto:")):
                found.append((page.relative_to(ROOT).as_posix(), target))
    return found


@pytest.mark.parametrize(("page", "target"), local_links())
def test_local_links_and_anchors_resolve(page: str, target: str) -> None:
    path, _, anchor = target.partition("#")
    linked = (ROOT / page).parent / path if path else ROOT / page
    assert linked.exists(), f"{page}: link to missing {target}"
    if anchor and linked.suffix == ".md":
        assert anchor in _anchors(linked.read_text()), f"{page}: no heading for #{anchor}"


def test_configuration_reference_shows_the_default_strip_list() -> None:
    """The generated reference said `[]` for every list default; usher strips these two."""
    row = next(
        line
        for line in (ROOT / "docs" / "configuration.md").read_text().splitlines()
        if line.startswith("| `strip_response_headers` |")
    )
    assert "`[Server, X-Powered-By]`" in row
    assert "Server and X-Powered-By are removed" in row
    listener = parse_config(
        "listeners: [{name: w, bind: '127.0.0.1:1', pool: p}]\n"
        "pools: {p: {backends: [{address: '127.0.0.1:2'}]}}"
    ).listeners[0]
    assert listener.strip_response_headers == ["Server", "X-Powered-By"]
