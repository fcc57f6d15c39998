"""Tests of the error tree: its shape, retry safety and messages."""

from __future__ import annotations

import dataclasses

import pytest

from usher.errors import (
    ClientError,
    ConfigError,
    ConfigIssue,
    ConnectError,
    UpstreamError,
    UpstreamProtocolError,
    UpstreamTimeout,
    UsherError,
)


@pytest.mark.parametrize(
    ("cls", "parent"),
    [
        (UsherError, Exception),
        (ConfigError, UsherError),
        (UpstreamError, UsherError),
        (ConnectError, UpstreamError),
        (UpstreamTimeout, UpstreamError),
        (UpstreamProtocolError, UpstreamError),
        (ClientError, UsherError),
    ],
)
def test_tree(cls: type[Exception], parent: type[Exception]) -> None:
    assert issubclass(cls, parent)


def test_client_and_config_errors_are_not_upstream_errors() -> None:
    assert not issubclass(ClientError, UpstreamError)
    assert not issubclass(ConfigError, UpstreamError)


@pytest.mark.parametrize(
    ("error", "safe"),
    [
        (ConnectError("refused"), True),
        (UpstreamTimeout("slow"), False),
        (UpstreamProtocolError("garbage"), False),
        (UpstreamError("?"), False),
        (ClientError(400, "bad"), False),
        (ConfigError([]), False),
    ],
)
def test_only_a_connect_error_is_safe_to_retry(error: UsherError, safe: bool) -> None:
    assert error.retry_safe is safe


def test_client_error_carries_its_status() -> None:
    error = ClientError(413, "request body is larger than 10 bytes")
    assert error.status == 413
    assert error.detail == "request body is larger than 10 bytes"
    assert str(error) == "413: request body is larger than 10 bytes"
    with pytest.raises(UsherError):
        raise error


def test_config_issue_text() -> None:
    assert str(ConfigIssue("pools.web.backends[1].weight", "must be > 0")) == (
        "pools.web.backends[1].weight: must be > 0"
    )
    assert str(ConfigIssue("listeners", "required", 3)) == "line 3: listeners: required"
    assert str(ConfigIssue("", "the config is empty")) == "the config is empty"
    assert str(ConfigIssue("", "invalid YAML", 7)) == "line 7: invalid YAML"


def test_config_issue_is_frozen_and_comparable() -> None:
    issue = ConfigIssue("a", "b", 1)
    assert issue == ConfigIssue("a", "b", 1)
    assert len({issue, ConfigIssue("a", "b", 1)}) == 1
    with pytest.raises(dataclasses.FrozenInstanceError):
        issue.path = "c"  # type: ignore[misc]


def test_config_error_lists_every_issue() -> None:
    issues = [
        ConfigIssue("pools.web.backends[1].weight", "must be > 0", 9),
        ConfigIssue("listeners[0].bind", "required", 2),
    ]
    error = ConfigError(issues, "usher.yaml")
    assert error.issues == issues
    assert error.source == "usher.yaml"
    assert str(error) == (
        "usher.yaml: 2 problems in the config\n"
        "  line 9: pools.web.backends[1].weight: must be > 0\n"
        "  line 2: listeners[0].bind: required"
    )


def test_config_error_with_one_issue_and_no_source() -> None:
    error = ConfigError([ConfigIssue("pools", "unknown key")])
    assert error.source is None
    assert str(error) == "1 problem in the config\n  pools: unknown key"
