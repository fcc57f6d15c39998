"""Active health checks: a sans-IO verdict per backend, the probes, and the tasks that run them.

The face of the package; each job has its module:

    state    HealthState: check results in, healthy/unhealthy transitions and delays out
    probes   probe_tcp, probe_http, probe_udp, probe_agent: one bounded check each, never raising
    checker  HealthChecker: one task per backend of a pool, telling the pool of each new verdict
"""

from __future__ import annotations

from usher.health.checker import AGENT_JITTER, CheckedPool, HealthChecker, OnResult
from usher.health.probes import (
    BODY_LIMIT,
    USER_AGENT,
    parse_load,
    probe_agent,
    probe_http,
    probe_tcp,
    probe_udp,
    tls_context,
)
from usher.health.state import CheckResult, HealthState, Transition

__all__ = [
    "AGENT_JITTER",
    "BODY_LIMIT",
    "USER_AGENT",
    "CheckResult",
    "CheckedPool",
    "HealthChecker",
    "HealthState",
    "OnResult",
    "Transition",
    "parse_load",
    "probe_agent",
    "probe_http",
    "probe_tcp",
    "probe_udp",
    "tls_context",
]
