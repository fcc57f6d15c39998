"""The exchange's side of the edge filters: run the route's filters (usher.http.filters) and
act on their verdicts, and keep what a verdict leaves for later in the request's `EdgeState`:
headers to add, a body under inspection, a body-rate meter."""

from __future__ import annotations

from typing import TYPE_CHECKING

from usher.acl import forwarded_client
from usher.errors import ClientError
from usher.http.filters import (
    AddHeaders,
    InspectBody,
    MeterBody,
    RequestView,
    Respond,
    Verdict,
    check_body,
)
from usher.limits import BodyRateMeter

if TYPE_CHECKING:
    import asyncio

    from usher.http.codec import Headers
    from usher.http.edge import ListenerGuard
    from usher.http.exchange import Exchange
    from usher.routing import Route


class EdgeState:
    """The per-request part: the client address, headers to add, a body under inspection."""

    __slots__ = (
        "client_ip",
        "floor",
        "head",
        "inspect",
        "inspecting",
        "meter",
        "request_headers",
        "response_headers",
        "timer",
    )

    def __init__(self, client_ip: bytes) -> None:
        self.client_ip = client_ip
        self.request_headers: Headers = []
        self.response_headers: Headers = []
        self.inspecting: InspectBody | None = None
        self.inspect: bytearray | None = None  # the body so far, while the rules wait for it
        self.head: tuple[bytes, bytes, Headers] | None = None
        self.meter: BodyRateMeter | None = None
        # The min_body_rate this body must keep, once the body clock opens.
        self.floor: MeterBody | None = None
        self.timer: asyncio.TimerHandle | None = None

    def body_data(self, exchange: Exchange, data: bytes) -> None:
        if self.meter is not None:
            self.meter.add(len(data))
        inspect = self.inspect
        if inspect is not None:
            assert self.inspecting is not None
            room = self.inspecting.rules.body_limit - len(inspect)
            inspect += data[:room]
            if len(data) >= room:
                self.decide(exchange)

    def decide(self, exchange: Exchange) -> None:
        """Enough of the body (or all of it) is here: run the body rules, then go on or refuse."""
        inspect, self.inspect = self.inspect, None
        if inspect is None or exchange.finished:
            return
        assert self.inspecting is not None and self.head is not None
        verdict = check_body(self.inspecting, bytes(inspect))
        if isinstance(verdict, Respond):
            refuse(exchange, verdict)
            return
        if isinstance(verdict, AddHeaders):
            method, target, headers = self.head  # self.request_headers are in it already
            self.request_headers += verdict.request
            exchange.reencode_head(method, target, [*headers, *verdict.request])
        exchange.resume_after_inspection()

    def start_meter(self, exchange: Exchange) -> None:
        """The client may send the body now: the rate floor counts from here, not while it
        waits, as Expect: 100-continue tells it to, for a 100 Continue."""
        floor = self.floor
        assert floor is not None
        self.floor = None
        client = exchange.client
        self.meter = BodyRateMeter(floor.rate, floor.window, client.listener.clock.now())
        self.timer = client.loop.call_later(floor.window, _check_body_rate, exchange, floor)

    def cancel(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None


def screen(exchange: Exchange, guard: ListenerGuard, route: Route | None) -> bool:
    """Run the filters of the request's route; True when it was answered here (refused)."""
    conn = exchange.client
    request = exchange.request
    peer = conn.client_ip
    state = exchange.edge = EdgeState(peer)
    ip = peer.decode("latin-1")
    trusted = guard.trusted
    if trusted is not None and trusted.contains(ip):
        ip = forwarded_client(ip, request.headers, trusted)
        state.client_ip = ip.encode("latin-1")
        if exchange.record is not None:  # None when the access log is off
            exchange.record.client = state.client_ip
        if guard.forwarded_ips is not None:
            view = RequestView(request, ip, 0.0)
            verdict = guard.forwarded_ips.check(view)
            if isinstance(verdict, Respond):
                return refuse(exchange, verdict)
    if guard.max_requests is not None:
        conn.served += 1
        if conn.served >= guard.max_requests:
            exchange.keep_alive = False
    view = RequestView(request, ip, guard.clock.now())
    return any(apply(exchange, state, f.check(view)) for f in guard.pipeline(route))


def apply(exchange: Exchange, state: EdgeState, verdict: Verdict) -> bool:
    """Act on one filter's verdict; True when the request was answered (refused)."""
    if isinstance(verdict, Respond):
        return refuse(exchange, verdict)
    if isinstance(verdict, AddHeaders):
        request = exchange.request
        if verdict.replaces is not None:
            name = verdict.replaces
            request.headers = [(n, v) for n, v in request.headers if n.lower() != name]
        state.request_headers += verdict.request
        state.response_headers += verdict.response
        if verdict.request_id is not None and exchange.record is not None:
            exchange.record.request_id = verdict.request_id
    elif isinstance(verdict, InspectBody):
        state.inspecting = verdict
        state.inspect = bytearray()
    elif isinstance(verdict, MeterBody):
        state.floor = verdict  # metered from Exchange.open_body_clock
    return False


def refuse(exchange: Exchange, verdict: Respond) -> bool:
    if verdict.close or not exchange.request_done:
        exchange.keep_alive = False  # the body is still coming: no way to skip it safely
    headers = list(verdict.headers) if verdict.headers else None
    exchange.respond_error(verdict.status, verdict.detail, reason=verdict.reason, headers=headers)
    return True


def _check_body_rate(exchange: Exchange, floor: MeterBody) -> None:
    state = exchange.edge
    if state is None or state.meter is None or exchange.finished or exchange.request_done:
        return
    client = exchange.client
    if not state.meter.check(client.listener.clock.now(), paused=client.reading_blocked):
        state.timer = None
        exchange.client_refused(ClientError(408, "the request body arrived too slowly"))
        return
    state.timer = client.loop.call_later(floor.window, _check_body_rate, exchange, floor)
