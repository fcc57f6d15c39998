"""The one exception tree of usher.

    UsherError
    ├── ConfigError              a config file (or part of one) is invalid; carries every issue
    ├── UpstreamError            talking to a backend failed
    │   ├── ConnectError         could not connect (refused, unreachable, connect timeout)
    │   ├── UpstreamTimeout      connected, but the backend did not answer in time
    │   └── UpstreamProtocolError  the backend spoke something that is not HTTP/1.x
    ├── ClientError              the client sent something we refuse; carries an HTTP status
    └── ChangeError              a runtime change (admin API) is refused; carries an HTTP status

Each error says whether retrying the request on another backend is safe (`retry_safe`):
a connect error is, because nothing reached the backend; the others are not in general.
"""

from __future__ import annotations

from dataclasses import dataclass


class UsherError(Exception):
    """Root of every error usher raises on purpose."""

    retry_safe: bool = False


@dataclass(frozen=True, slots=True)
class ConfigIssue:
    """One problem in a config file: where it is and what is wrong."""

    path: str
    message: str
    line: int | None = None

    def __str__(self) -> str:
        where = f"line {self.line}: " if self.line is not None else ""
        return f"{where}{self.path}: {self.message}" if self.path else f"{where}{self.message}"


class ConfigError(UsherError):
    """A config is invalid. `issues` lists every problem found, each with its path."""

    def __init__(
        self, issues: list[ConfigIssue], source: str | None = None, *, what: str = "config"
    ) -> None:
        self.issues = issues
        self.source = source
        head = f"{source}: " if source else ""
        noun = "problem" if len(issues) == 1 else "problems"
        lines = [f"{head}{len(issues)} {noun} in the {what}"]
        lines += [f"  {issue}" for issue in issues]
        super().__init__("\n".join(lines))


class UpstreamError(UsherError):
    """Talking to a backend failed."""


class ConnectError(UpstreamError):
    """The backend could not be reached: nothing was sent, so another backend may be tried."""

    retry_safe = True


class UpstreamTimeout(UpstreamError):
    """The backend was reached but did not answer (or accept data) in time."""


class UpstreamProtocolError(UpstreamError):
    """The backend answered with bytes that are not a valid HTTP/1.x response."""


class ClientError(UsherError):
    """The client sent something usher refuses; `status` is the HTTP answer to give."""

    def __init__(self, status: int, detail: str) -> None:
        self.status = status
        self.detail = detail
        super().__init__(f"{status}: {detail}")


class ChangeError(UsherError):
    """A runtime change is refused: unknown pool or backend (404), a duplicate (409), or a bad
    value (400). `status` is the HTTP answer the admin API gives."""

    def __init__(self, status: int, detail: str) -> None:
        self.status = status
        self.detail = detail
        super().__init__(detail)
