"""Backends found at run time (pool `discovery:`): DNS, etcd and files.

Each source (`dns.py`, `etcd.py`, `file.py`) is an async iterator of complete backend sets;
the runner (`runner.py`) owns their tasks, keeps each one's last good set, and turns the
difference with the pool into adds and drains, in the process that owns the live pools (the
control process with several workers: the workers follow by the usual state sync).
"""

from usher.discovery.runner import DiscoveryRunner, build_source
from usher.discovery.source import Source, SourceError

__all__ = ["DiscoveryRunner", "Source", "SourceError", "build_source"]
