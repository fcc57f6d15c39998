"""Active health checks of a pool, and the backends' load reports (agent)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BeforeValidator, Field

from usher.config.base import _get, _Model, _Problem
from usher.config.defaults import (
    DEFAULT_AGENT_INTERVAL,
    DEFAULT_AGENT_PATH,
    DEFAULT_EXPECT_STATUS,
    DEFAULT_HEALTH_INTERVAL,
    DEFAULT_HEALTH_JITTER,
    DEFAULT_HEALTH_PATH,
    DEFAULT_HEALTH_TIMEOUT,
    DEFAULT_HEALTH_TYPE,
    DEFAULT_HEALTHY_THRESHOLD,
    DEFAULT_UDP_SEND,
    DEFAULT_UNHEALTHY_THRESHOLD,
)
from usher.config.validators import _method, _no_line_breaks, _Port, _request_path
from usher.config.values import Duration, Percent, _status_ranges


class AgentOptions(_Model):
    """The backend's own load report (as HAProxy's agent-check), polled over HTTP.

    The answer is a number from 0 (idle) to 1 (full), optionally with `%`, or JSON such as
    `{"load": 0.42}` or `{"cpu": 0.42}`.
    """

    path: str = Field(default=DEFAULT_AGENT_PATH, description="Path of the load report.")
    port: _Port | None = Field(default=None, description="Port to ask; null: the backend's.")
    interval: Duration = Field(default=DEFAULT_AGENT_INTERVAL, gt=0, description="How often.")
    timeout: Duration = Field(default=DEFAULT_HEALTH_TIMEOUT, gt=0, description="Per request.")


_HTTP_ONLY = (
    "method",
    "path",
    "host",
    "expect_status",
    "expect_body",
    "tls",
    "tls_verify",
    "tls_ca",
    "tls_server_name",
)
_UDP_ONLY = ("send", "expect")


class HealthCheck(_Model):
    """Active health checks: one task per backend, run once for all workers (in the control
    process when there are several)."""

    type: Literal["tcp", "http", "udp", "agent"] = Field(
        default=DEFAULT_HEALTH_TYPE,
        description=(
            "tcp: a connect succeeds; http: a request gets an expected answer; udp: a datagram "
            "gets a matching reply; agent: the backend's load report (the pool's `agent`) answers."
        ),
    )
    interval: Duration = Field(default=DEFAULT_HEALTH_INTERVAL, gt=0, description="Between checks.")
    unhealthy_interval: Duration | None = Field(
        default=None, gt=0, description="Between checks while a backend is down; null: interval."
    )
    timeout: Duration = Field(default=DEFAULT_HEALTH_TIMEOUT, gt=0, description="Of one check.")
    healthy_threshold: int = Field(
        default=DEFAULT_HEALTHY_THRESHOLD, ge=1, description="Passes in a row to be healthy again."
    )
    unhealthy_threshold: int = Field(
        default=DEFAULT_UNHEALTHY_THRESHOLD, ge=1, description="Failures in a row to be unhealthy."
    )
    jitter: Percent = Field(
        default=DEFAULT_HEALTH_JITTER,
        description="Random spread of each interval, so checks of many backends do not align.",
    )
    port: _Port | None = Field(default=None, description="Check this port; null: the backend's.")
    method: Annotated[str, AfterValidator(_method)] = Field(
        default="GET", description="http: request method."
    )
    path: Annotated[str, AfterValidator(_request_path)] = Field(
        default=DEFAULT_HEALTH_PATH, description="http: request path."
    )
    host: Annotated[str, AfterValidator(_no_line_breaks)] | None = Field(
        default=None, description="http: Host header; null: the address."
    )
    expect_status: Annotated[str, BeforeValidator(_status_ranges)] = Field(
        default=DEFAULT_EXPECT_STATUS, description="http: statuses that pass, e.g. `200-399,404`."
    )
    expect_body: str | None = Field(
        default=None, description="http: a substring the body must contain."
    )
    tls: bool = Field(default=False, description="http: check over HTTPS.")
    tls_verify: bool = Field(default=True, description="http: verify the backend's certificate.")
    tls_ca: str | None = Field(default=None, description="http: CA file to verify with.")
    tls_server_name: str | None = Field(default=None, description="http: SNI and name to verify.")
    send: str = Field(default=DEFAULT_UDP_SEND, description="udp: the payload to send.")
    expect: str | None = Field(
        default=None, description="udp: a regex the reply must match; null: any reply passes."
    )

    @classmethod
    def _rules(cls, data: Mapping[str, Any]) -> list[_Problem]:
        problems: list[_Problem] = []
        kind = _get(data, "type") or DEFAULT_HEALTH_TYPE
        if kind == "agent":
            # An agent check polls the pool's `agent` section: its own timing keys do nothing.
            for key in ("interval", "timeout", "port"):
                if key in data and data[key] != cls.model_fields[key].default:
                    problems.append(((key,), "for type agent, set it in the pool's agent section"))
        # A default value is harmless (a dumped config has them all); a chosen one is a mistake.
        for keys, wanted in ((_HTTP_ONLY, "http"), (_UDP_ONLY, "udp")):
            for key in keys:
                if kind != wanted and key in data and data[key] != cls.model_fields[key].default:
                    problems.append(((key,), f"only for type {wanted}"))
        expect = _get(data, "expect")
        if isinstance(expect, str):
            try:
                re.compile(expect)
            except re.error as exc:
                problems.append((("expect",), f"invalid regex {expect!r}: {exc}"))
        return problems
