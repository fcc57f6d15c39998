"""The `file` source: a YAML or JSON list of backend entries, re-read when it changes.

It polls the file's identity (inode, modification time, size) every `interval`, so that both
editing in place and the atomic rename Prometheus file_sd recommends are seen."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path

import yaml

from usher.config import BackendConfig, FileDiscovery
from usher.discovery.source import SourceError, parse_entry, require_some, source_label


class FileSource:
    def __init__(self, config: FileDiscovery) -> None:
        self.path = Path(config.path)
        self.label = source_label(config)
        self.retry = config.interval
        self.interval = config.interval

    async def updates(self) -> AsyncIterator[list[BackendConfig]]:
        seen: tuple[int, int, int] | None = None
        while True:
            identity = self._identity()
            if identity != seen:
                found = self.read()
                seen = identity
                yield found
            await asyncio.sleep(self.interval)

    def _identity(self) -> tuple[int, int, int]:
        try:
            st = os.stat(self.path)
        except OSError as exc:
            raise SourceError(f"{self.path}: {exc.strerror or exc}") from None
        return (st.st_ino, st.st_mtime_ns, st.st_size)

    def read(self) -> list[BackendConfig]:
        try:
            text = self.path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise SourceError(f"{self.path}: {getattr(exc, 'strerror', None) or exc}") from None
        try:
            data = yaml.safe_load(text)  # JSON is YAML too
        except yaml.YAMLError as exc:
            raise SourceError(f"{self.path}: not valid YAML or JSON: {exc}") from None
        if not isinstance(data, list):
            raise SourceError(f"{self.path}: expected a list of backend entries")
        found = [parse_entry(item, f"{self.path}[{i}]") for i, item in enumerate(data)]
        return require_some(found, str(self.path))
