"""Response-rate limiting: a token bucket per /24 and /56, on the caller's time, with slip."""

from __future__ import annotations

from usher.dns.rrl import RateLimiter, subnet_of


def test_subnets_are_24_and_56() -> None:
    assert subnet_of("192.0.2.77") == "192.0.2.0/24"
    assert subnet_of("2001:db8:aa:bbcc::1") == "2001:db8:aa:bb00::/56"


def test_the_bucket_refills_with_time_and_limits_per_subnet() -> None:
    rrl = RateLimiter(rate=5, burst=5, slip=0)
    verdicts = [rrl.check("192.0.2.1", 100.0) for _ in range(8)]
    assert verdicts == ["answer"] * 5 + ["drop"] * 3
    assert rrl.check("192.0.2.200", 100.0) == "drop"  # the same /24 shares the bucket
    assert rrl.check("192.0.3.1", 100.0) == "answer"  # another /24 does not
    assert rrl.check("192.0.2.1", 100.1) == "drop"  # half a token
    assert rrl.check("192.0.2.1", 100.2) == "answer"  # 0.2 s at 5/s: one token
    assert [rrl.check("192.0.2.1", 200.0) for _ in range(6)] == ["answer"] * 5 + ["drop"]


def test_slip_sends_every_nth_limited_answer_truncated() -> None:
    rrl = RateLimiter(rate=1, burst=1, slip=2)
    verdicts = [rrl.check("2001:db8::1", 0.0) for _ in range(7)]
    assert verdicts == ["answer", "drop", "slip", "drop", "slip", "drop", "slip"]
    assert RateLimiter(rate=1, slip=1).check("10.0.0.1", 0.0) == "answer"
