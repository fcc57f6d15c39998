"""Request filtering (a small WAF): per-route rules on method, path, query, a header or the body,
compiled once; a match denies the request (403) or tags it for the backend."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING
from urllib.parse import unquote_to_bytes

if TYPE_CHECKING:
    from usher.config import FilterRule
    from usher.http.codec import Request

Test = Callable[[bytes], bool]


def _test(rule: FilterRule) -> Test:
    if rule.regex is not None:
        search = re.compile(rule.regex.encode("utf-8")).search
        return lambda value: search(value) is not None
    if rule.contains is not None:
        needle = rule.contains.encode("utf-8")
        return lambda value: needle in value
    assert rule.equals is not None
    exact = rule.equals.encode("utf-8")
    return lambda value: value == exact


class Rule:
    __slots__ = ("deny", "field", "header", "name", "test")

    def __init__(self, rule: FilterRule) -> None:
        self.name = rule.name
        self.deny = rule.action == "deny"
        self.field, _, header = rule.on.partition(":")
        self.header = header.lower().encode("latin-1")
        self.test = _test(rule)

    def matches_head(self, request: Request, path: bytes, query: bytes) -> bool:
        field = self.field
        # Percent-decoded: an encoding must not be a way around a rule.
        if field == "path":
            return self.test(unquote_to_bytes(path))
        if field == "query":
            return self.test(unquote_to_bytes(query.replace(b"+", b" ")))
        if field == "method":
            return self.test(request.method)
        header = self.header
        return any(self.test(v) for n, v in request.headers if n.lower() == header)


class Verdict:
    """What the rules said: the first deny, if any, and the names of the tag rules that matched."""

    __slots__ = ("denied_by", "tags")

    def __init__(self) -> None:
        self.denied_by: str | None = None
        self.tags: list[str] = []

    def add(self, rule: Rule) -> bool:
        """Record a match; True when it ends the filtering (a deny)."""
        if rule.deny:
            self.denied_by = rule.name
            return True
        self.tags.append(rule.name)
        return False


class RequestFilter:
    """A route's rules. Head rules run as soon as the request is routed; body rules (if any)
    on the first `body_limit` bytes of the body, which wait for the decision."""

    __slots__ = ("body_limit", "body_rules", "head_rules", "tag_header")

    def __init__(self, rules: Sequence[FilterRule], body_limit: int, tag_header: str) -> None:
        compiled = [Rule(r) for r in rules]
        self.head_rules = [r for r in compiled if r.field != "body"]
        self.body_rules = [r for r in compiled if r.field == "body"]
        self.body_limit = body_limit
        self.tag_header = tag_header.encode("latin-1")

    def check_head(self, request: Request, path: bytes, query: bytes) -> Verdict:
        verdict = Verdict()
        for rule in self.head_rules:
            if rule.matches_head(request, path, query) and verdict.add(rule):
                break
        return verdict

    def check_body(self, body: bytes, verdict: Verdict) -> Verdict:
        for rule in self.body_rules:
            if rule.test(body) and verdict.add(rule):
                break
        return verdict
