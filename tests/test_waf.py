"""Request filter rules, compiled from the config."""

from __future__ import annotations

from usher.config import FilterRule
from usher.http.codec import Request
from usher.waf import RequestFilter


def request(method: bytes = b"GET", headers: list[tuple[bytes, bytes]] | None = None) -> Request:
    return Request(
        method,
        b"/",
        b"1.1",
        headers or [],
        host=b"a",
        keep_alive=True,
        chunked=False,
        content_length=None,
        upgrade=None,
    )


def rules(*specs: dict[str, str]) -> RequestFilter:
    return RequestFilter([FilterRule.model_validate(s) for s in specs], 1024, "X-Usher-Filter")


def test_first_deny_wins_and_tags_collect() -> None:
    f = rules(
        {"name": "ua", "on": "header:User-Agent", "regex": "(?i)curl", "action": "tag"},
        {"name": "admin", "on": "path", "contains": "/admin"},
        {"name": "never", "on": "path", "contains": "/"},
    )
    verdict = f.check_head(request(headers=[(b"user-agent", b"Curl/8")]), b"/x", b"")
    assert (verdict.denied_by, verdict.tags) == ("never", ["ua"])
    verdict = f.check_head(request(), b"/admin/x", b"")
    assert verdict.denied_by == "admin"


def test_method_equals_and_query_regex() -> None:
    f = rules(
        {"name": "no-delete", "on": "method", "equals": "DELETE"},
        {"name": "sqli", "on": "query", "regex": "(?i)union\\s+select"},
    )
    assert f.check_head(request(b"DELETE"), b"/", b"").denied_by == "no-delete"
    assert f.check_head(request(), b"/", b"q=1 UNION  SELECT x").denied_by == "sqli"
    assert f.check_head(request(), b"/", b"q=union").denied_by is None


def test_body_rules_are_kept_apart() -> None:
    f = rules({"name": "script", "on": "body", "contains": "<script"})
    assert f.head_rules == [] and len(f.body_rules) == 1
    verdict = f.check_head(request(), b"/", b"")
    assert f.check_body(b"a<script>", verdict).denied_by == "script"
