"""The edge filters on their own: each returns a verdict for a request view, and touches
nothing else (the exchange's side is tested through sockets in test_edge.py)."""

from __future__ import annotations

from textwrap import dedent, indent
from typing import Any

import pytest

from usher.acl import IpList
from usher.clock import MonotonicClock
from usher.config import FilterRule, parse_config
from usher.http.codec import Headers, Request
from usher.http.edge import ListenerGuard
from usher.http.filters import (
    CONTINUE,
    AddHeaders,
    AddressFilter,
    BodyRateFloor,
    InspectBody,
    MeterBody,
    RateFilter,
    RequestIdFilter,
    RequestView,
    Respond,
    RuleFilter,
    check_body,
)
from usher.http.ratelimit import RateLimiter
from usher.limits import ConnectionLimiter, LocalRateStore
from usher.metrics import Metrics
from usher.waf import RequestFilter


def view(
    headers: Headers | None = None,
    *,
    target: bytes = b"/",
    length: int | None = None,
    ip: str = "10.0.0.1",
    now: float = 0.0,
) -> RequestView:
    request = Request(b"POST", target, b"1.1", headers or [], content_length=length)
    return RequestView(request, ip, now)


def rules(*specs: dict[str, Any]) -> RequestFilter:
    return RequestFilter([FilterRule.model_validate(s) for s in specs], 4, "X-Usher-Filter")


def test_address_filter_refuses_what_the_lists_do_not_permit() -> None:
    ips = IpList.build(None, ["10.0.0.0/8"])
    assert ips is not None
    check = AddressFilter(ips)
    assert check.check(view(ip="192.0.2.1")) is CONTINUE
    assert check.check(view(ip="10.1.2.3")) == Respond(
        403, "your address is not allowed here", "ip_denied"
    )


def test_rate_filter_answers_429_with_retry_after_once_the_bucket_is_empty() -> None:
    check = RateFilter(RateLimiter("source_ip", LocalRateStore(1.0, 2.0, 16)))
    assert check.check(view()) is CONTINUE
    assert check.check(view()) is CONTINUE
    verdict = check.check(view())
    assert verdict == Respond(429, "too many requests", "rate_limited", ((b"Retry-After", b"1"),))
    assert check.check(view(ip="10.0.0.2")) is CONTINUE  # another key, another bucket
    assert check.check(view(now=1.0)) is CONTINUE  # refilled


def test_request_id_keeps_a_sane_one_and_replaces_the_client_copy() -> None:
    check = RequestIdFilter(b"X-Request-ID")
    verdict = check.check(view([(b"x-request-id", b"abc-1")]))
    header = ((b"X-Request-ID", b"abc-1"),)
    assert verdict == AddHeaders(header, header, replaces=b"x-request-id", request_id=b"abc-1")


@pytest.mark.parametrize("given", [b"", b"bad id", b"x" * 129])
def test_request_id_makes_a_new_one_for_a_missing_or_odd_one(given: bytes) -> None:
    verdict = RequestIdFilter(b"X-Request-ID").check(view([(b"X-Request-ID", given)]))
    assert isinstance(verdict, AddHeaders)
    assert verdict.request_id is not None and len(verdict.request_id) == 32
    assert verdict.request == verdict.response == ((b"X-Request-ID", verdict.request_id),)


def test_rule_filter_denies_tags_or_hands_the_body_on() -> None:
    check = RuleFilter(
        rules(
            {"name": "admin", "on": "path", "contains": "/admin"},
            {"name": "json", "on": "header:Content-Type", "contains": "json", "action": "tag"},
        )
    )
    assert check.check(view(target=b"/ok")) is CONTINUE
    denied = check.check(view(target=b"/admin"))
    assert denied == Respond(403, "the request was refused by a filter rule", "filtered")
    tagged = check.check(view([(b"Content-Type", b"application/json")]))
    assert tagged == AddHeaders(((b"X-Usher-Filter", b"json"),))


def test_body_rules_inspect_only_a_request_with_a_body() -> None:
    check = RuleFilter(rules({"name": "evil", "on": "body", "contains": "evil"}))
    assert check.check(view()) is CONTINUE
    held = check.check(view(length=10))
    assert isinstance(held, InspectBody)
    assert check_body(held, b"good") is CONTINUE
    assert check_body(held, b"evil") == Respond(
        403, "the request was refused by a filter rule", "filtered", close=True
    )


def test_body_rules_add_their_tags_to_the_head_rules() -> None:
    check = RuleFilter(
        rules(
            {"name": "post", "on": "method", "equals": "POST", "action": "tag"},
            {"name": "big", "on": "body", "contains": "big", "action": "tag"},
        )
    )
    held = check.check(view(length=10))
    assert isinstance(held, InspectBody)
    assert check_body(held, b"big!") == AddHeaders(((b"X-Usher-Filter", b"post,big"),))


def test_body_rate_floor_meters_only_bodies() -> None:
    check = BodyRateFloor(100.0, 2.0)
    assert check.check(view()) is CONTINUE
    assert check.check(view(length=1)) == MeterBody(100.0, 2.0)


def test_verdicts_are_frozen() -> None:
    verdict = Respond(403, "no", "ip_denied")
    with pytest.raises(AttributeError):
        verdict.status = 200  # type: ignore[misc]


# The pipelines a listener's guard builds at config load


def guard(routes: str, previous: ListenerGuard | None = None, **limits: str) -> ListenerGuard:
    given = ", ".join(f"{k}: {v}" for k, v in limits.items())
    text = (
        "listeners:\n  - name: web\n    bind: 127.0.0.1:0\n"
        f"    limits: {{{given}}}\n    routes:\n{indent(dedent(routes), '      ')}"
        "pools:\n  p:\n    backends: [{address: 127.0.0.1:9}]\n"
    )
    config = parse_config(text).listeners[0]
    return ListenerGuard(
        config,
        clock=MonotonicClock(),
        metrics=Metrics(),
        connections=ConnectionLimiter(None, None),
        workers=1,
        previous=previous,
    )


ROUTES = """\
- {match: {path_prefix: /plain}, pool: p}
- match: {path_prefix: /guarded}
  pool: p
  limits: {rate: 5, deny: [10.0.0.0/8]}
  filters: [{name: bad, on: path, contains: bad}]
"""


def kinds(filters: tuple[object, ...]) -> list[type]:
    return [type(f) for f in filters]


def test_a_route_passes_only_the_filters_configured_for_it() -> None:
    built = guard(ROUTES)
    plain, guarded = built.pipelines
    assert plain == ()
    assert kinds(guarded) == [AddressFilter, RateFilter, RuleFilter]
    assert built.unrouted == ()


def test_listener_filters_come_first_and_the_body_floor_last() -> None:
    built = guard(ROUTES, rate="100", min_body_rate="1KiB/s")
    plain, guarded = built.pipelines
    assert kinds(plain) == [RateFilter, BodyRateFloor]
    assert kinds(guarded) == [RateFilter, AddressFilter, RateFilter, RuleFilter, BodyRateFloor]
    assert kinds(built.unrouted) == [RateFilter, BodyRateFloor]


def test_a_reload_keeps_the_rate_limiters_it_did_not_change() -> None:
    before = guard(ROUTES, rate="100")
    after = guard(ROUTES, before, rate="100")
    assert after.rate is before.rate
    assert after.route_rates[1] is before.route_rates[1] is not None
    changed = guard(ROUTES.replace("rate: 5", "rate: 6"), after, rate="100")
    assert changed.route_rates[1] is not after.route_rates[1]
