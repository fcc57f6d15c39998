"""`usher ha keepalived`: the printed keepalived.conf passes `keepalived --config-test`, its
track script is `usher status --check` and works, and bad arguments get clear errors."""

from __future__ import annotations

import asyncio
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import pool_of, simple_config
from tests.test_status import usher

USHER = [sys.executable, "-m", "usher"]
KEEPALIVED = shutil.which("keepalived") or shutil.which("keepalived", path="/usr/sbin:/sbin")


def generate(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*USHER, "ha", "keepalived", *args], capture_output=True, text=True, timeout=60
    )


CASES = {
    "multicast": ["--vip", "192.0.2.10/24", "--interface", "eth0", "--priority", "150"],
    "unicast": [
        "--vip",
        "192.0.2.10/24",
        "--interface",
        "eth0",
        "--priority",
        "100",
        "--peer",
        "192.0.2.2",
    ],
    "active-active": [
        "--vip",
        "192.0.2.10/24",
        "--priority",
        "150",
        "--vip",
        "192.0.2.11/24",
        "--priority",
        "100",
        "--interface",
        "eth0",
        "--router-id",
        "60",
        "--peer",
        "192.0.2.2",
    ],
    "ipv6": [
        "--vip",
        "2001:db8::10/64",
        "--interface",
        "eth0",
        "--priority",
        "150",
        "--peer",
        "2001:db8::2",
    ],
}


@pytest.mark.parametrize("case", list(CASES))
def test_the_config_passes_keepalived_config_test(case: str, tmp_path: Path) -> None:
    result = generate(*CASES[case])
    assert result.returncode == 0, result.stderr
    if KEEPALIVED is None:
        pytest.skip("keepalived is not installed (Debian keepalived): the config is not checked")
    path = tmp_path / "keepalived.conf"
    path.write_text(result.stdout)
    check = subprocess.run(
        [KEEPALIVED, "--config-test", "-f", str(path)], capture_output=True, text=True, timeout=60
    )
    assert check.returncode == 0, check.stderr + check.stdout


def test_what_the_config_says() -> None:
    text = generate(*CASES["active-active"]).stdout
    instances = re.findall(r"vrrp_instance (\S+) \{(.*?)\n\}", text, re.S)
    assert [name for name, _ in instances] == ["usher_1", "usher_2"]
    first, second = (body for _, body in instances)
    assert "virtual_router_id 60" in first and "priority 150" in first
    assert "virtual_router_id 61" in second and "priority 100" in second
    assert "192.0.2.10/24 dev eth0" in first and "192.0.2.11/24 dev eth0" in second
    for body in (first, second):
        assert re.search(r"unicast_peer \{\s+192\.0\.2\.2\s+\}", body)
        assert re.search(r"track_script \{\s+usher_serves\s+\}", body)
        assert "state BACKUP" in body
    assert "unicast_peer" not in generate(*CASES["multicast"]).stdout
    (script,) = re.findall(r'script "(.*)"', text)
    assert shlex.split(script)[-4:] == ["status", "--check", "--admin", "http://127.0.0.1:9900"]
    usher_bin = generate(
        *CASES["multicast"], "--usher", "/usr/local/bin/usher", "--admin", "10.0.0.1:9900"
    ).stdout
    assert 'script "/usr/local/bin/usher status --check --admin 10.0.0.1:9900"' in usher_bin


async def test_the_track_script_runs_usher_status_check(balancer: Any, backends: Any) -> None:
    servers = await backends(1)
    config = simple_config({"web": pool_of(*servers)})
    config["admin"] = {"bind": "127.0.0.1:0"}
    running = await balancer(config)
    code, out, err = await usher(
        "ha", "keepalived", *CASES["multicast"], "--admin", running.balancer.admin_url
    )
    assert code == 0, err
    (script,) = re.findall(r'script "(.*)"', out)
    # Run as keepalived would (the test's loop serves the admin API meanwhile).
    proc = await asyncio.create_subprocess_exec(
        *shlex.split(script),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "NO_COLOR": "1"},
    )
    stdout, stderr = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, stderr.decode()
    assert stdout.decode().startswith("serving: 1 listener up")


BAD = {
    "no prefix": (
        ["--vip", "192.0.2.10", "--interface", "eth0", "--priority", "1"],
        "--vip 192.0.2.10: give the prefix length too, e.g. 192.0.2.10/24",
    ),
    "not an address": (
        ["--vip", "vip/24", "--interface", "eth0", "--priority", "1"],
        "--vip vip/24: not an address with a prefix",
    ),
    "network address": (
        ["--vip", "192.0.2.0/24", "--interface", "eth0", "--priority", "1"],
        "the network's own or broadcast address",
    ),
    "loopback": (
        ["--vip", "127.0.0.5/8", "--interface", "eth0", "--priority", "1"],
        "must be a unicast address",
    ),
    "priority range": (
        ["--vip", "192.0.2.10/24", "--interface", "eth0", "--priority", "255"],
        "--priority 255: must be 1..254",
    ),
    "priority count": (
        [
            "--vip",
            "192.0.2.10/24",
            "--vip",
            "192.0.2.11/24",
            "--interface",
            "eth0",
            "--priority",
            "100",
        ],
        "--priority: give one per --vip",
    ),
    "interface": (
        ["--vip", "192.0.2.10/24", "--interface", "eth 0", "--priority", "100"],
        "--interface 'eth 0': not a network interface name",
    ),
    "peer": (
        [
            "--vip",
            "192.0.2.10/24",
            "--interface",
            "eth0",
            "--priority",
            "100",
            "--peer",
            "peer.example",
        ],
        "--peer peer.example: not an IP address",
    ),
    "peer family": (
        [
            "--vip",
            "192.0.2.10/24",
            "--interface",
            "eth0",
            "--priority",
            "100",
            "--peer",
            "2001:db8::2",
        ],
        "the virtual addresses are IPv4, the peer is not",
    ),
    "peer is the vip": (
        [
            "--vip",
            "192.0.2.10/24",
            "--interface",
            "eth0",
            "--priority",
            "100",
            "--peer",
            "192.0.2.10",
        ],
        "that is a virtual address",
    ),
    "mixed families": (
        [
            "--vip",
            "192.0.2.10/24",
            "--vip",
            "2001:db8::1/64",
            "--interface",
            "eth0",
            "--priority",
            "1",
            "--priority",
            "2",
        ],
        "must be IPv4, or all IPv6",
    ),
    "router id": (
        [
            "--vip",
            "192.0.2.10/24",
            "--vip",
            "192.0.2.11/24",
            "--interface",
            "eth0",
            "--priority",
            "1",
            "--priority",
            "2",
            "--router-id",
            "255",
        ],
        "--router-id 255: ids 255..256 must be 1..255",
    ),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_arguments_get_clear_errors(case: str) -> None:
    args, message = BAD[case]
    result = generate(*args)
    assert result.returncode == 1 and result.stdout == ""
    assert message in " ".join(result.stderr.split()), result.stderr


def test_missing_arguments_are_usage_errors() -> None:
    result = generate("--vip", "192.0.2.10/24")
    assert result.returncode == 1 and "--interface" in result.stderr
