"""Hooks: your own Python at each phase of an HTTP request (docs/hooks.md).

A hook is a class named in the config by import path (`hooks: ["myhooks:Tenant"]` on a
listener or a route, or `{use: "myhooks:AB", options: {...}}`). usher builds it once per load
and reload as `Tenant(options)` and calls whichever of these methods it defines, each either a
plain function or an `async def` (awaited within the hook's `timeout`):

    on_request(request) -> Response | None      answer at once, or change the request
    select(request, candidates) -> list         the backends this request may go to, best first
    on_response(request, response) -> None      change the status and headers sent
    on_log(record) -> None                      the finished access-log record, a dict

A hook that raises, returns something else, or overruns its timeout answers the request with
its `error_status` (500 by default); usher logs it once per burst and counts it in
`usher_hook_errors_total{hook,phase}`. The classes below are what the methods receive.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

if TYPE_CHECKING:
    from usher.http.codec import Headers
    from usher.pool import Backend

__all__ = ["Candidate", "HeaderView", "Request", "Response", "ResponseHead"]

# Framing belongs to usher: a hook that could rewrite these could unframe the body
# (request smuggling), so setting or removing them is refused.
FRAMING_HEADERS = frozenset({"content-length", "transfer-encoding", "connection", "upgrade"})


class Response:
    """An answer a hook's `on_request` returns to stop the request there: usher sends it to
    the client and forwards nothing. `body` is bytes (or text, sent as UTF-8); `headers` are
    added as given (Content-Length is usher's)."""

    __slots__ = ("body", "headers", "status")

    def __init__(
        self, status: int, body: bytes | str = b"", headers: Mapping[str, str] | None = None
    ) -> None:
        if not isinstance(status, int) or not 200 <= status <= 599:
            raise ValueError(f"a hook's Response needs a status 200..599, not {status!r}")
        self.status = status
        self.body = body.encode() if isinstance(body, str) else bytes(body)
        self.headers = dict(headers or {})
        for name, value in self.headers.items():
            check_header(name, value)

    def __repr__(self) -> str:
        return f"Response({self.status}, {len(self.body)} bytes)"


def check_header(name: str, value: str | None = None) -> None:
    """Refuse a header a hook may not write: framing, or a name or value that would break
    the head (CR, LF, NUL, or a name that is not an HTTP token)."""
    if not isinstance(name, str) or not name or any(c in name for c in " \t\r\n\0:"):
        raise ValueError(f"invalid header name {name!r}")
    if name.lower() in FRAMING_HEADERS:
        raise ValueError(f"{name} is managed by usher and cannot be set by a hook")
    if value is not None and (not isinstance(value, str) or any(c in value for c in "\r\n\0")):
        raise ValueError(f"invalid value for header {name}: {value!r}")


class HeaderView:
    """Read access to a list of HTTP headers, names case-insensitive."""

    __slots__ = ("_headers",)

    def __init__(self, headers: Headers) -> None:
        self._headers = headers

    def get(self, name: str, default: str | None = None) -> str | None:
        """The first value of header `name`, or `default`."""
        wanted = name.lower().encode("latin-1")
        for key, value in self._headers:
            if key.lower() == wanted:
                return value.decode("latin-1")
        return default

    def get_all(self, name: str) -> list[str]:
        """Every value of header `name`, in order."""
        wanted = name.lower().encode("latin-1")
        return [v.decode("latin-1") for k, v in self._headers if k.lower() == wanted]

    def items(self) -> Iterator[tuple[str, str]]:
        """Every (name, value), in order."""
        for key, value in self._headers:
            yield key.decode("latin-1"), value.decode("latin-1")

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self.get(name) is not None


def _set(headers: Headers, name: str, value: str) -> None:
    check_header(name, value)
    _remove(headers, name)
    headers.append((name.encode("latin-1"), value.encode("latin-1")))


def _remove(headers: Headers, name: str) -> None:
    check_header(name)
    wanted = name.lower().encode("latin-1")
    headers[:] = [(k, v) for k, v in headers if k.lower() != wanted]


class Request:
    """The request as a hook sees it. Changes made in `on_request` (headers, path) are what
    the backend receives; `state` is a dict of the hook's own, kept for this request from
    `on_request` to `on_log`."""

    __slots__ = ("_request", "client_ip", "headers", "route", "state")

    def __init__(self, request: Any, client_ip: str, route: str) -> None:
        self._request = request  # usher.http.codec.Request
        self.client_ip = client_ip
        self.route = route  # "listener/index", e.g. "web/0"
        self.headers = HeaderView(request.headers)
        self.state: dict[str, Any] = {}

    @property
    def method(self) -> str:
        return str(self._request.method.decode("latin-1"))

    @property
    def path(self) -> str:
        """The path, without the query."""
        return str(self._request.target.partition(b"?")[0].decode("latin-1"))

    @path.setter
    def path(self, value: str) -> None:
        if not isinstance(value, str) or not value.startswith("/"):
            raise ValueError(f"a path must start with '/', not {value!r}")
        if any(c <= " " or c >= "\x7f" or c in "?#" for c in value):
            raise ValueError(f"invalid characters in path {value!r} (percent-encode them)")
        _, sep, query = self._request.target.partition(b"?")
        self._request.target = value.encode("ascii") + sep + query

    @property
    def query(self) -> str:
        """The raw query string (after `?`), or ""."""
        return str(self._request.target.partition(b"?")[2].decode("latin-1"))

    def query_params(self) -> dict[str, list[str]]:
        """The query, decoded: each name with its values."""
        return parse_qs(self.query, keep_blank_values=True)

    @property
    def host(self) -> str:
        """The Host header's value (with its port, if any), or ""."""
        return str(self._request.host.decode("latin-1"))

    def cookie(self, name: str) -> str | None:
        """The value of cookie `name` in the Cookie header, or None."""
        for header in self.headers.get_all("cookie"):
            for part in header.split(";"):
                key, sep, value = part.strip().partition("=")
                if sep and key == name:
                    return value
        return None

    def set_header(self, name: str, value: str) -> None:
        """Replace header `name` (every value) with `value` in the forwarded request."""
        _set(self._request.headers, name, value)

    def remove_header(self, name: str) -> None:
        """Remove header `name` from the forwarded request."""
        _remove(self._request.headers, name)

    def __repr__(self) -> str:
        return f"<Request {self.method} {self.path} from {self.client_ip}>"


class ResponseHead:
    """The response's status and headers as a hook's `on_response` sees them, before they
    are sent. `status` may be set (200..599); headers may be set and removed."""

    __slots__ = ("_headers", "_status", "headers")

    def __init__(self, status: int, headers: Headers) -> None:
        self._status = status
        self._headers = headers
        self.headers = HeaderView(headers)

    @property
    def status(self) -> int:
        return self._status

    @status.setter
    def status(self, value: int) -> None:
        if value == self._status:
            return
        # 1xx, 204 and 304 frame the body differently: changing to or from them would unframe it.
        fixed = (204, 304)
        if not isinstance(value, int) or not 200 <= value <= 599 or value in fixed:
            raise ValueError(
                f"a response's status can become 200..599 but 204 and 304, not {value!r}"
            )
        if self._status < 200 or self._status in fixed:
            raise ValueError(f"the status of a {self._status} answer cannot be changed")
        self._status = value

    def set_header(self, name: str, value: str) -> None:
        """Replace header `name` (every value) with `value`."""
        _set(self._headers, name, value)

    def add_header(self, name: str, value: str) -> None:
        """Add a header, keeping any of the same name (e.g. a second Set-Cookie)."""
        check_header(name, value)
        self._headers.append((name.encode("latin-1"), value.encode("latin-1")))

    def remove_header(self, name: str) -> None:
        _remove(self._headers, name)


class Candidate:
    """A backend of the pool, with its live state, as a hook's `select` sees it. Return the
    candidates (these objects) the request may go to."""

    __slots__ = ("_now", "backend")

    def __init__(self, backend: Backend, now: float) -> None:
        self.backend = backend
        self._now = now

    @property
    def address(self) -> str:
        """host:port."""
        return self.backend.label

    @property
    def name(self) -> str:
        """What the pool calls it: its address."""
        return self.backend.label

    @property
    def weight(self) -> int:
        return self.backend.weight

    @property
    def active(self) -> int:
        """Requests in flight to it now (in every worker)."""
        return self.backend.in_flight()

    @property
    def healthy(self) -> bool:
        """Takes new requests now: enabled, passing its checks and not ejected."""
        return self.backend.ready(self._now)

    @property
    def latency(self) -> float:
        """Its recent response time in seconds (a moving average; 0.0 before any)."""
        return self.backend.latency_ewma

    @property
    def backup(self) -> bool:
        return self.backend.backup

    def __repr__(self) -> str:
        return f"<Candidate {self.address} active={self.active} healthy={self.healthy}>"
