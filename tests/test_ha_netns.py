"""An HA pair for real, in network namespaces: two usher nodes, each with its demo backend and
its keepalived (from `usher ha keepalived`, unicast VRRP), a client namespace, all on a bridge.
Under a request loop to the VIP, the master's usher is stopped: the backup takes the VIP and
serves. The switch time and the requests lost are measured and printed (-s shows them).

Needs root (CI runs as root), `ip` (iproute2) and keepalived; skips, saying why, elsewhere.
Nothing is created in the test's own network namespace: the bridge lives in a namespace of its
own, and deleting the namespaces at the end removes every link.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

IP = shutil.which("ip") or shutil.which("ip", path="/usr/sbin:/sbin")
KEEPALIVED = shutil.which("keepalived") or shutil.which("keepalived", path="/usr/sbin:/sbin")
USHER = [sys.executable, "-m", "usher"]
SUBNET = "10.77.0"
VIP = f"{SUBNET}.10"
NODES = {"a": (f"{SUBNET}.2", 150), "b": (f"{SUBNET}.3", 100)}
CLIENT = f"{SUBNET}.100"
# Bounds: the whole test is over within about a minute, whatever happens.
ELECTION_TIMEOUT = 40.0
SWITCH_TIMEOUT = 20.0
REQUEST_TIMEOUT = 0.5
REQUEST_INTERVAL = 0.05

LOOP = textwrap.dedent(
    """
    import http.client, json, sys, time
    host, port, until, timeout, interval = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4]), float(sys.argv[5])
    while time.monotonic() < until:
        at = time.monotonic()
        try:
            conn = http.client.HTTPConnection(host, port, timeout=timeout)
            conn.request("GET", "/", headers={"Connection": "close"})
            body = conn.getresponse().read().decode().strip()
            conn.close()
            print(json.dumps({"at": at, "ok": True, "by": body}), flush=True)
        except OSError as exc:
            print(json.dumps({"at": at, "ok": False, "error": str(exc)}), flush=True)
        time.sleep(max(0.0, interval - (time.monotonic() - at)))
    """
)

CONFIG = """
listeners:
  - {name: web, bind: "0.0.0.0:8080", pool: app}
admin: {bind: "127.0.0.1:9900"}
pools:
  app:
    health_check: {type: http, path: /health, interval: 500ms}
    backends: [{address: "127.0.0.1:9001"}]
"""


def _why_not() -> str | None:
    if sys.platform != "linux":
        return "network namespaces are Linux only"
    if os.geteuid() != 0:
        return "creating network namespaces needs root (CI runs as root)"
    if IP is None:
        return "the ip command (iproute2) is not installed"
    if KEEPALIVED is None:
        return "keepalived is not installed (Debian keepalived)"
    probe = f"ushprobe{os.getpid()}"
    made = subprocess.run([IP, "netns", "add", probe], capture_output=True, text=True)
    if made.returncode != 0:
        return f"cannot create a network namespace here: {made.stderr.strip()}"
    subprocess.run([IP, "netns", "del", probe], capture_output=True)
    return None


WHY_NOT = _why_not()
pytestmark = pytest.mark.skipif(WHY_NOT is not None, reason=WHY_NOT or "")


def ip(*args: str) -> None:
    assert IP is not None
    subprocess.run([IP, *args], check=True, capture_output=True, text=True, timeout=30)


class Lab:
    """The namespaces, links and processes of one test; `close()` undoes all of it."""

    def __init__(self, tmp: Path) -> None:
        tag = str(os.getpid() % 100000)
        self.tmp = tmp
        self.ns = {name: f"ush{name}{tag}" for name in ("br", "a", "b", "c")}
        self.procs: list[subprocess.Popen[Any]] = []
        self.files: list[Any] = []

    def build(self) -> None:
        for name in self.ns.values():
            ip("netns", "add", name)
        br = self.ns["br"]
        ip("-n", br, "link", "add", "br0", "type", "bridge")
        ip("-n", br, "link", "set", "br0", "up")
        addresses = {"a": NODES["a"][0], "b": NODES["b"][0], "c": CLIENT}
        for name, address in addresses.items():
            ns = self.ns[name]
            ip(
                "link",
                "add",
                "eth0",
                "netns",
                ns,
                "type",
                "veth",
                "peer",
                "name",
                f"p{name}",
                "netns",
                br,
            )
            ip("-n", br, "link", "set", f"p{name}", "master", "br0", "up")
            ip("-n", ns, "addr", "add", f"{address}/24", "dev", "eth0")
            ip("-n", ns, "link", "set", "eth0", "up")
            ip("-n", ns, "link", "set", "lo", "up")

    def spawn(self, ns: str, *cmd: str, out: Any = subprocess.DEVNULL) -> subprocess.Popen[Any]:
        assert IP is not None
        proc = subprocess.Popen(
            [IP, "netns", "exec", self.ns[ns], *cmd],
            stdout=out,
            stderr=subprocess.STDOUT if out is not subprocess.DEVNULL else subprocess.DEVNULL,
            text=True,
        )
        self.procs.append(proc)
        return proc

    def node(self, name: str) -> subprocess.Popen[Any]:
        """Start node `name`: its demo backend, its usher and its keepalived; returns usher."""
        _, priority = NODES[name]
        peer = next(a for n, (a, _) in NODES.items() if n != name)
        here = self.tmp / name
        here.mkdir()
        (here / "usher.yaml").write_text(CONFIG)
        conf = subprocess.run(
            [
                *USHER,
                "ha",
                "keepalived",
                "--vip",
                f"{VIP}/24",
                "--interface",
                "eth0",
                "--priority",
                str(priority),
                "--peer",
                peer,
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        ).stdout
        (here / "keepalived.conf").write_text(conf)
        self.spawn(name, *USHER, "backend", "--port", "9001", "--name", name.upper())
        lb = self.spawn(
            name, *USHER, "run", "-c", str(here / "usher.yaml"), "--workers", "1", "--no-access-log"
        )
        assert KEEPALIVED is not None
        log = (here / "keepalived.log").open("w")
        self.files.append(log)
        self.spawn(
            name,
            KEEPALIVED,
            "--dont-fork",
            "--log-console",
            "--log-detail",
            "--vrrp",
            "-f",
            str(here / "keepalived.conf"),
            "-p",
            str(here / "keepalived.pid"),
            "-r",
            str(here / "vrrp.pid"),
            "-c",
            str(here / "checkers.pid"),
            out=log,
        )
        return lb

    def close(self) -> None:
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in reversed(self.procs):
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        for proc in self.procs:
            if proc.stdout is not None:
                proc.stdout.close()
        for file in self.files:
            file.close()
        for name in self.ns.values():
            subprocess.run([IP or "ip", "netns", "del", name], capture_output=True)


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    lab = Lab(tmp_path)
    try:
        lab.build()
        yield lab
    finally:
        lab.close()


class Loop:
    """The client's request loop in its namespace; its results read as they come."""

    def __init__(self, lab: Lab, seconds: float) -> None:
        until = time.monotonic() + seconds
        self.proc = lab.spawn(
            "c",
            sys.executable,
            "-c",
            LOOP,
            VIP,
            "8080",
            str(until),
            str(REQUEST_TIMEOUT),
            str(REQUEST_INTERVAL),
            out=subprocess.PIPE,
        )
        self.results: list[dict[str, Any]] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with contextlib.suppress(ValueError):
                self.results.append(json.loads(line))

    def wait_for(self, check: Any, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if check(self.results):
                return
            time.sleep(0.05)
        tail = self.results[-5:]
        raise AssertionError(f"no {what} within {timeout:g}s; last results: {tail}")


def test_the_backup_takes_the_vip_when_the_masters_usher_stops(lab: Lab) -> None:
    usher_a = lab.node("a")
    lab.node("b")
    loop = Loop(lab, ELECTION_TIMEOUT + SWITCH_TIMEOUT + 10)
    # The priority 150 node wins the election and serves the VIP.
    loop.wait_for(
        lambda r: sum(1 for x in r[-5:] if x.get("by") == "A") == 5,
        ELECTION_TIMEOUT,
        "answers from node A through the VIP",
    )
    stopped = time.monotonic()
    usher_a.send_signal(signal.SIGTERM)
    usher_a.wait(timeout=30)
    loop.wait_for(
        lambda r: sum(1 for x in r[-5:] if x.get("by") == "B") == 5,
        SWITCH_TIMEOUT,
        "answers from node B through the VIP",
    )
    after = [x for x in loop.results if x["at"] >= stopped]
    first_b = next(x for x in after if x.get("by") == "B")
    lost = [x for x in after if not x["ok"] and x["at"] < first_b["at"]]
    switch = first_b["at"] - stopped
    print(
        f"\nHA failover: node B served {switch:.2f}s after node A's usher was stopped; "
        f"{len(lost)} of {len([x for x in after if x['at'] <= first_b['at']])} requests lost "
        f"meanwhile (one every {REQUEST_INTERVAL * 1000:.0f} ms, {REQUEST_TIMEOUT:g}s timeout)"
    )
    assert all(x.get("by") != "A" for x in after if x["at"] > first_b["at"])
    assert switch < SWITCH_TIMEOUT
