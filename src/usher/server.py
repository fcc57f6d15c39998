"""The running balancer of one process, under the name tests, benches and embedders know.

`Balancer` is the control plane (usher.runtime.controlplane) over a data plane that serves in
this process (usher.runtime.dataplane); both are built by composition. The names below are
kept importable from here.
"""

from __future__ import annotations

from usher.config import DEFAULT_DRAIN_TIMEOUT as DEFAULT_DRAIN_TIMEOUT
from usher.errors import BindError as BindError
from usher.runtime.controlplane import ControlPlane
from usher.runtime.dataplane import Bound as Bound
from usher.surface import ReloadReport as ReloadReport

Balancer = ControlPlane

__all__ = ["DEFAULT_DRAIN_TIMEOUT", "Balancer", "BindError", "Bound", "ReloadReport"]
