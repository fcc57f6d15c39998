"""The scenario file of `usher simulate`: arrivals, modelled backends and the algorithms to
replay, validated whole with every error at its path (as the config file is)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Self

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    model_validator,
)

from usher.balancing import custom as custom_algorithms
from usher.balancing import registered_names
from usher.config import Config, Duration, Rate, parse_address, render_path
from usher.errors import ConfigError, ConfigIssue

# Longest scenario: a replay keeps every latency in memory.
MAX_DURATION = 3600.0
DEFAULT_CLIENTS = 100
DEFAULT_BUCKET = 1.0
DEFAULT_FAIL_STATUS = 500
WHAT = "scenario"  # errors say "2 problems in the scenario"
LATENCY_KINDS = ("fixed", "normal", "lognormal", "exponential")

Fraction = Annotated[float, Field(ge=0.0, le=1.0)]


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Normal(_Model):
    mean: Duration = Field(gt=0)
    stddev: Duration = Field(ge=0, description="Draws below 0 are redrawn (truncated).")


class LogNormal(_Model):
    median: Duration = Field(gt=0)
    sigma: float = Field(
        gt=0, le=5, description="Spread of ln(latency); 0.5 gives p99 ≈ 3.2 x median."
    )


class Exponential(_Model):
    mean: Duration = Field(gt=0)


def _latency_shorthand(value: object) -> object:
    # `latency: 2ms` is a fixed latency.
    return {"fixed": value} if isinstance(value, str | int | float) else value


class Latency(_Model):
    """One of: `2ms` (fixed), `{fixed: 2ms}`, `{normal: {mean, stddev}}`,
    `{lognormal: {median, sigma}}`, `{exponential: {mean}}`."""

    fixed: Duration | None = Field(default=None, ge=0)
    normal: Normal | None = None
    lognormal: LogNormal | None = None
    exponential: Exponential | None = None

    @model_validator(mode="after")
    def _one_kind(self) -> Self:
        chosen = [kind for kind in LATENCY_KINDS if getattr(self, kind) is not None]
        if len(chosen) != 1:
            raise ValueError(f"give exactly one of {', '.join(LATENCY_KINDS)}")
        return self


LatencySpec = Annotated[Latency, BeforeValidator(_latency_shorthand)]


class BackendEvent(_Model):
    """From `at` until `until` (or the end) the backend behaves otherwise."""

    at: Duration = Field(ge=0)
    until: Duration | None = Field(default=None, gt=0)
    down: bool = Field(default=False, description="Refuses connections (a dead process).")
    latency: LatencySpec | None = None
    fail_rate: Fraction | None = None

    @model_validator(mode="after")
    def _sane(self) -> Self:
        if self.until is not None and self.until <= self.at:
            raise ValueError("until must be after at")
        if not self.down and self.latency is None and self.fail_rate is None:
            raise ValueError("an event changes something: down, latency or fail_rate")
        return self


class BackendModel(_Model):
    latency: LatencySpec = Field(default=Latency(fixed=0.001))
    concurrency: int | None = Field(
        default=None, gt=0, description="Requests served at once; more wait in its queue."
    )
    fail_rate: Fraction = Field(default=0.0, description="Share of requests answered 5xx.")
    fail_status: int = Field(default=DEFAULT_FAIL_STATUS, ge=500, le=599)
    events: list[BackendEvent] = []


class Arrivals(_Model):
    """Closed loop (`concurrency`: that many clients, each sending again once answered, as wrk
    does) or open loop (`rate`: Poisson arrivals, answered or not)."""

    concurrency: int | None = Field(default=None, gt=0, le=100_000)
    rate: Rate | None = Field(default=None, gt=0, le=1_000_000)
    think: Duration = Field(default=0.0, ge=0, description="Closed loop: pause between requests.")

    @model_validator(mode="after")
    def _one_kind(self) -> Self:
        if (self.concurrency is None) == (self.rate is None):
            raise ValueError("give either concurrency (closed loop) or rate (open loop)")
        return self


class Machine(_Model):
    """Everything (clients, balancer, backends) shares these cores, as on one test machine: each
    attempt also needs `cpu_per_request` of CPU, waiting its turn for a free core (FIFO), inside
    the time the balancer measures for the backend."""

    cores: int = Field(gt=0, le=1024)
    cpu_per_request: Duration = Field(gt=0)


def _algorithm(value: str) -> str:
    if custom_algorithms.is_import_path(value):
        custom_algorithms.load(value)
    elif value not in registered_names():
        raise ValueError(f"unknown algorithm {value!r} (known: {', '.join(registered_names())})")
    return value


class Scenario(_Model):
    duration: Duration = Field(gt=0, le=MAX_DURATION)
    seed: int = 0
    pool: str | None = Field(
        default=None, description="The config's pool; needed if it has several."
    )
    arrivals: Arrivals
    clients: int = Field(
        default=DEFAULT_CLIENTS, gt=0, description="Distinct client addresses (wrk has one)."
    )
    backends: dict[str, BackendModel] = Field(min_length=1)
    machine: Machine | None = Field(default=None, description="A CPU shared by everything.")
    algorithms: list[Annotated[str, AfterValidator(_algorithm)]] | None = Field(
        default=None, min_length=1, description="Replayed one after the other; default: the pool's."
    )
    bucket: Duration = Field(default=DEFAULT_BUCKET, gt=0, description="Time-series resolution.")


def _issues(exc: ValidationError) -> list[ConfigIssue]:
    issues = []
    for error in exc.errors():
        message = error["msg"].removeprefix("Value error, ")
        issues.append(ConfigIssue(render_path(error["loc"]), message))
    return issues


def parse_scenario(text: str, source: str = "<scenario>") -> Scenario:
    """Validate a scenario given as YAML; raise ConfigError listing every problem."""
    try:
        data: Any = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError([ConfigIssue("", f"not valid YAML: {exc}")], source, what=WHAT) from None
    if not isinstance(data, dict):
        raise ConfigError([ConfigIssue("", "the scenario must be a mapping")], source, what=WHAT)
    try:
        return Scenario.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_issues(exc), source, what=WHAT) from None


def load_scenario(path: str | Path) -> Scenario:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(
            [ConfigIssue("", f"cannot read {path}: {exc}")], str(path), what=WHAT
        ) from None
    return parse_scenario(text, str(path))


def check_against(scenario: Scenario, config: Config, source: str = "<scenario>") -> str:
    """The name of the pool the scenario replays; ConfigError when the two do not fit (an
    unknown pool, a backend of the scenario not in the pool, one of the pool not modelled)."""
    issues: list[ConfigIssue] = []
    if scenario.pool is not None:
        name = scenario.pool
        if name not in config.pools:
            known = ", ".join(sorted(config.pools)) or "none"
            raise ConfigError(
                [ConfigIssue("pool", f"no pool {name!r} in the config (known: {known})")],
                source,
                what=WHAT,
            )
    elif len(config.pools) == 1:
        name = next(iter(config.pools))
    else:
        known = ", ".join(sorted(config.pools)) or "none"
        raise ConfigError(
            [ConfigIssue("pool", f"name the pool to replay (the config has: {known})")],
            source,
            what=WHAT,
        )
    pool = config.pools[name]
    configured = {str(b.address) for b in pool.backends}
    for key in scenario.backends:
        try:
            address = str(parse_address(key))
        except ValueError as exc:
            issues.append(ConfigIssue(render_path(("backends", key)), str(exc)))
            continue
        if address not in configured:
            issues.append(
                ConfigIssue(
                    render_path(("backends", key)),
                    f"not a backend of pool {name} (its backends: {', '.join(sorted(configured))})",
                )
            )
    modelled = {_normal(key) for key in scenario.backends}
    for address in sorted(configured - modelled):
        issues.append(ConfigIssue("backends", f"pool {name}'s backend {address} is not modelled"))
    if issues:
        raise ConfigError(issues, source, what=WHAT)
    return name


def _normal(key: str) -> str:
    try:
        return str(parse_address(key))
    except ValueError:
        return key
