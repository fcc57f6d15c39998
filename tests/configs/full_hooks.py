"""The hook tests/configs/full.yaml names (its `python_path` is this directory)."""

from __future__ import annotations

from typing import Any


class Audit:
    def __init__(self, options: dict[str, Any]) -> None:
        self.tag = options.get("tag", "a")

    def on_log(self, record: dict[str, Any]) -> None:
        record["tag"] = self.tag
