"""Tests of the error tree: its shape, retry safety and messages."""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import pkgutil

import pytest

import usher
from usher import errors
from usher.errors import (
    BindError,
    ChangeError,
    ChannelClosed,
    ClientError,
    ConfigError,
    ConfigIssue,
    ConnectError,
    GroupsUnreachable,
    HaError,
    ProxyProtocolError,
    RuntimeFailure,
    StatusError,
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
        (ChangeError, UsherError),
        (BindError, UsherError),
        (ProxyProtocolError, UsherError),
        (ProxyProtocolError, ValueError),
        (ChannelClosed, UsherError),
        (GroupsUnreachable, UsherError),
        (GroupsUnreachable, RuntimeError),
        (StatusError, UsherError),
        (HaError, UsherError),
        (HaError, ValueError),
        (RuntimeFailure, UsherError),
    ],
)
def test_tree(cls: type[Exception], parent: type[Exception]) -> None:
    assert issubclass(cls, parent)


def _package_modules() -> list[str]:
    names = [usher.__name__]
    for module in pkgutil.walk_packages(usher.__path__, f"{usher.__name__}."):
        if not module.name.endswith("__main__"):  # importing it runs the command
            names.append(module.name)
    return names


def _public_exceptions() -> set[type[BaseException]]:
    """Every exception class that any usher module defines or holds, private ones too."""
    found: set[type[BaseException]] = set()
    for name in _package_modules():
        module = importlib.import_module(name)
        for value in vars(module).values():
            if (
                inspect.isclass(value)
                and issubclass(value, BaseException)
                and value.__module__.split(".")[0] == usher.__name__
            ):
                found.add(value)
    return found


def test_every_exception_of_the_package_is_rooted_in_errors() -> None:
    found = _public_exceptions()
    assert RuntimeFailure in found and ProxyProtocolError in found  # the walk sees the package
    stray = {
        f"{cls.__module__}.{cls.__qualname__}" for cls in found if cls.__module__ != "usher.errors"
    }
    assert not stray, f"exception classes defined outside usher.errors: {sorted(stray)}"
    unrooted = {cls.__qualname__ for cls in found if not issubclass(cls, UsherError)}
    assert not unrooted, f"exception classes outside the UsherError tree: {sorted(unrooted)}"


def test_the_docstring_draws_every_class_of_the_tree() -> None:
    defined = {
        name
        for name, value in vars(errors).items()
        if inspect.isclass(value) and issubclass(value, UsherError)
    }
    assert errors.__doc__ is not None
    drawn = {
        line.split("── ", 1)[1].split()[0] for line in errors.__doc__.splitlines() if "── " in line
    }
    assert drawn | {"UsherError"} == defined


@pytest.mark.parametrize(
    ("old_home", "name"),
    [
        ("usher.server", "BindError"),
        ("usher.cli", "RuntimeFailure"),
        ("usher.status", "StatusError"),
        ("usher.process.channel", "ChannelClosed"),
        ("usher.proxy_protocol", "ProxyProtocolError"),
        ("usher.tls_profile", "GroupsUnreachable"),
        ("usher.ha", "HaError"),
    ],
)
def test_old_import_locations_still_work(old_home: str, name: str) -> None:
    assert getattr(importlib.import_module(old_home), name) is getattr(errors, name)


@pytest.mark.parametrize(
    ("error", "status", "detail"),
    [
        (ConnectError("connect to a:1 failed: refused"), 502, "no backend could be reached"),
        (UpstreamTimeout("slow"), 504, "the backend did not answer in time"),
        (
            UpstreamProtocolError("invalid response"),
            502,
            "the backend sent an invalid or incomplete response",
        ),
        (
            UpstreamError("the backend closed the connection before answering"),
            502,
            "the backend sent an invalid or incomplete response",
        ),
    ],
)
def test_each_upstream_error_hints_its_answer(
    error: UpstreamError, status: int, detail: str
) -> None:
    assert error.status_hint == status
    assert error.client_detail == detail


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
        (BindError("in use"), False),
        (ProxyProtocolError("bad"), False),
        (ChannelClosed("gone"), False),
        (StatusError(3, "down"), False),
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
