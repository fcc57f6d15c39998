"""A dns listener under `usher run --workers 2`: the control process reserves one port for both
UDP and TCP, every worker answers on both, and SIGHUP gives them new records."""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path
from typing import Any

import dns.message
import dns.query
import dns.rcode

from tests.dns.helpers import addresses
from tests.test_workers import USHER, wait_until

CONFIG = """
listeners:
  - name: gslb
    bind: 127.0.0.1:0
    protocol: dns
    dns:
      zones: [example.com]
      rate_limit: null
      records:
        - {{name: api.example.com, policy: failover, pools: [{first}, {second}]}}
pools:
  us: {{backends: [{{address: 192.0.2.1:80}}]}}
  eu: {{backends: [{{address: 198.51.100.1:80}}]}}
"""


def ask(port: int, *, tcp: bool) -> list[str]:
    query = dns.message.make_query("api.example.com", "A")
    send: Any = dns.query.tcp if tcp else dns.query.udp
    response = send(query, "127.0.0.1", port=port, timeout=5)
    assert response.rcode() == dns.rcode.NOERROR
    return addresses(response)


def test_workers_answer_on_udp_and_tcp_and_reload(tmp_path: Path) -> None:
    config = tmp_path / "usher.yaml"
    config.write_text(CONFIG.format(first="us", second="eu"))
    lb = subprocess.Popen(
        [*USHER, "run", "-c", str(config), "--workers", "2", "--no-access-log"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert lb.stderr is not None
        port = 0
        while not port:
            line = lb.stderr.readline()
            assert line, "usher exited before its listener was up"
            if line.startswith("usher: listener gslb on dns://"):
                port = int(line.split()[-1].rsplit(":", 1)[1])
        wait_until(lambda: "workers serving" in lb.stderr.readline(), 30, "the workers")  # type: ignore[union-attr]
        for _ in range(6):  # new client sockets: SO_REUSEPORT spreads them over the workers
            assert ask(port, tcp=False) == ["192.0.2.1"]
            assert ask(port, tcp=True) == ["192.0.2.1"]
        config.write_text(CONFIG.format(first="eu", second="us"))
        lb.send_signal(signal.SIGHUP)
        wait_until(
            lambda: all(
                ask(port, tcp=t) == ["198.51.100.1"] for t in (False, True) for _ in range(4)
            ),
            20,
            "the workers to take the new records",
        )
        lb.send_signal(signal.SIGTERM)
        assert lb.wait(timeout=30) == 0
    finally:
        if lb.poll() is None:
            lb.kill()
        lb.communicate(timeout=15)
