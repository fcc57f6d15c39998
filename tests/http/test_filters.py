"""The edge filters on their own: each returns a verdict for a request view, and touches
nothing else (the exchange's side is tested through sockets in test_edge.py)."""

from __future__ import annotations

from typing import Any

import pytest

from usher.acl import IpList
from usher.config import FilterRule
from usher.http.codec import Headers, Request
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
from usher.limits import LocalRateStore
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
