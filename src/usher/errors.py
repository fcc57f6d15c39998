"""The one exception tree of usher.

    UsherError
    ├── ConfigError              a config file (or part of one) is invalid; carries every issue
    ├── BindError                a listener could not bind its address
    ├── UpstreamError            talking to a backend failed (502)
    │   ├── ConnectError         could not connect (refused, unreachable, connect timeout) (502)
    │   ├── UpstreamTimeout      connected, but the backend did not answer in time (504)
    │   └── UpstreamProtocolError  the backend spoke something that is not HTTP/1.x (502)
    ├── ClientError              the client sent something we refuse; carries an HTTP status
    ├── MalformedRequest         an HTTP/2 stream whose request HTTP/1.1 cannot carry (stream reset)
    ├── ProxyProtocolError       a PROXY protocol header is invalid (also a ValueError)
    ├── ChangeError              a runtime change (admin API) is refused; carries an HTTP status
    ├── ChannelClosed            the other end of a control<->worker channel went away
    ├── GroupsUnreachable        TLS groups cannot be set on this Python (also a RuntimeError)
    ├── StatusError              `usher status` could not read the admin API; carries its exit code
    ├── HaError                  an argument of `usher ha keepalived` is wrong (also a ValueError)
    ├── UpgradeFailed            the new process of a `kill -USR2` upgrade did not take over
    ├── SourceError              a discovery source cannot say which backends there are
    ├── NoRecords                a DNS name has no records of the type asked (an empty answer)
    ├── MalformedClientHello     a TLS ClientHello that cannot be read for its server name
    ├── LocalProtocolError       a codec writer was asked for what HTTP/1.1 does not allow (a bug)
    └── RuntimeFailure           ends the `usher` command with exit code 2

Each error says whether retrying the request on another backend is safe (`retry_safe`):
a connect error is, because nothing reached the backend; the others are not in general.
Each upstream error also says which status usher answers the client with (`status_hint`)
and what that answer says (`client_detail`: the message itself may name backends).

The modules that raise these re-export them where they were defined first
(`usher.server.BindError`, `usher.process.channel.ChannelClosed`, ...), so either import works.
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


class BindError(UsherError):
    """A listener could not bind its address (in use, not permitted, no such address)."""


class UpstreamError(UsherError):
    """Talking to a backend failed."""

    status_hint: int = 502
    client_detail: str = "the backend sent an invalid or incomplete response"


class ConnectError(UpstreamError):
    """The backend could not be reached: nothing was sent, so another backend may be tried."""

    retry_safe = True
    client_detail = "no backend could be reached"


class UpstreamTimeout(UpstreamError):
    """The backend was reached but did not answer (or accept data) in time."""

    status_hint = 504
    client_detail = "the backend did not answer in time"


class UpstreamProtocolError(UpstreamError):
    """The backend answered with bytes that are not a valid HTTP/1.x response."""


class ClientError(UsherError):
    """The client sent something usher refuses; `status` is the HTTP answer to give."""

    def __init__(self, status: int, detail: str) -> None:
        self.status = status
        self.detail = detail
        super().__init__(f"{status}: {detail}")


class MalformedRequest(UsherError):
    """An HTTP/2 stream's request that HTTP/1.1 cannot carry (RFC 9113 §8.1.1: malformed): its
    stream is reset with PROTOCOL_ERROR, the connection goes on."""


class ProxyProtocolError(UsherError, ValueError):
    """The bytes are not a valid PROXY protocol header; the message says what is wrong."""


class ChangeError(UsherError):
    """A runtime change is refused: unknown pool or backend (404), a duplicate (409), or a bad
    value (400). `status` is the HTTP answer the admin API gives."""

    def __init__(self, status: int, detail: str) -> None:
        self.status = status
        self.detail = detail
        super().__init__(detail)


class ChannelClosed(UsherError):
    """The other end of a control<->worker channel went away."""


class GroupsUnreachable(UsherError, RuntimeError):
    """This Python's contexts cannot be given a list of groups (not CPython, or its layout
    is not the one expected)."""


class StatusError(UsherError):
    """The admin API could not be read; `exit_code` is what `usher status` ends with."""

    def __init__(self, exit_code: int, message: str) -> None:
        self.exit_code = exit_code
        super().__init__(message)


class HaError(UsherError, ValueError):
    """An argument of `usher ha keepalived` is wrong; the message names it."""


class RuntimeFailure(UsherError):
    """Ends the program with exit code 2 (usage errors, which the parser reports, end with 1)."""


class UpgradeFailed(UsherError):
    """A new process started by `kill -USR2` did not take over; the message says why."""


class SourceError(UsherError):
    """A discovery source could not say which backends there are (resolver down, NXDOMAIN,
    etcd unreachable, a file missing or invalid): its last good set stands."""


class NoRecords(UsherError):
    """A DNS discovery name exists but has no records of the type asked: no backends from it,
    which is an answer, not a failure (caught where it is raised)."""


class MalformedClientHello(UsherError):
    """A TLS ClientHello that cannot be read for its server name; the message says why
    (caught where it is raised, and answered as a malformed handshake)."""


class LocalProtocolError(UsherError):
    """usher asked a codec writer for something HTTP/1.1 does not allow: a bug in the caller."""
