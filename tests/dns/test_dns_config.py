"""The dns listener's config: every problem reported at once, with its path; `usher check`."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from usher.config import parse_config
from usher.errors import ConfigError

BAD = """
listeners:
  - name: gslb
    bind: 127.0.0.1:5353
    protocol: dns
    pool: us
    dns:
      zones: [example.com]
      records:
        - {name: www.example.com, policy: weighted, pools: [us, nowhere]}
        - {name: www.example.org, pools: [us]}
        - {name: eu.example.com, policy: geo}
        - {name: geo2.example.com, policy: geo, geo: [{clients: [10.0.0.0/33], pool: mars}]}
        - {name: lat.example.com, policy: latency}
        - {name: www.example.com, policy: all, pools: [us], geo: [{clients: [10.0.0.0/8], pool: us}]}
        - {name: cap.example.com, pools: [named], answers: 0}
  - name: web
    bind: 127.0.0.1:8080
    pool: us
    dns: {zones: [example.com]}
pools:
  us: {backends: [{address: 192.0.2.1:80}]}
  named: {backends: [{address: "backend.internal:80"}]}
"""

EXPECTED = [
    "listeners[0]: protocol dns takes `dns.records`, not pool or routes",
    "listeners[0].dns.records[0].pools[1]: unknown pool 'nowhere' (known: named, us)",
    "listeners[0].dns.records[1].name: www.example.org is in none of the zones (example.com)",
    "listeners[0].dns.records[2].geo: policy geo needs geo rules (clients -> pool)",
    "listeners[0].dns.records[3].geo[0].clients[0]: invalid network '10.0.0.0/33'",
    "listeners[0].dns.records[3].geo[0].pool: unknown pool 'mars'",
    "listeners[0].dns.records[4].pools: policy latency needs at least one pool",
    "listeners[0].dns.records[5].geo: only for policy geo (this record is all)",
    "listeners[0].dns.records[5].name: duplicate record www.example.com (also records[0])",
    "listeners[0].dns.records[6].answers: must be > 0",
    "listeners[1].dns: only for protocol dns",
    "pools.named.backends[0].address: backend.internal is not an IP address: record "
    "cap.example.com answers it as A/AAAA",
]


def test_every_problem_is_reported_with_its_path() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(BAD, "bad.yaml")
    text = str(caught.value)
    for expected in EXPECTED:
        assert expected in text, f"{expected!r} not in:\n{text}"


def test_a_dns_listener_needs_its_settings() -> None:
    with pytest.raises(ConfigError, match=r"listeners\[0\].dns: required for protocol dns"):
        parse_config("listeners: [{name: d, bind: '127.0.0.1:0', protocol: dns}]\n", "x.yaml")
    with pytest.raises(ConfigError, match=r"zones: .*at least 1"):
        parse_config(
            "listeners: [{name: d, bind: '127.0.0.1:0', protocol: dns, dns: {zones: []}}]\n", "x"
        )


def test_the_contract_example_is_valid() -> None:
    config = parse_config(
        """
listeners:
  - name: gslb
    bind: 127.0.0.1:5353
    protocol: dns
    dns:
      zones: [example.com]
      ttl: 30s
      records:
        - {name: www.example.com, policy: weighted, pools: [us-east, eu-west]}
        - {name: api.example.com, policy: failover, pools: [us-east, eu-west], when_all_down: all}
        - name: eu.example.com
          policy: geo
          geo:
            - {clients: [10.1.0.0/16, "2001:db8:1::/48"], pool: eu-west}
            - {clients: [0.0.0.0/0, "::/0"], pool: us-east}
        - {name: fast.example.com, policy: latency, pools: [us-east, eu-west], answers: 2}
pools:
  us-east: {backends: [{address: 192.0.2.1:80}]}
  eu-west: {backends: [{address: "[2001:db8::1]:80"}]}
""",
        "contract.yaml",
    )
    dns = config.listeners[0].dns
    assert dns is not None and dns.ttl == 30.0 and dns.records[3].answers == 2
    assert dns.rate_limit is not None and dns.rate_limit.responses_per_second == 100


def test_usher_check_reports_them(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(BAD)
    result = subprocess.run(
        [sys.executable, "-m", "usher", "check", "-c", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert "unknown pool 'nowhere'" in result.stderr
    assert "www.example.org is in none of the zones" in result.stderr
