"""examples/hooks: each hook example's config, run as docs/hooks.md says (`usher run` and
`usher backend` processes), with only its ports changed to free ones."""

from __future__ import annotations

import re
import subprocess
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import free_port
from tests.test_workers import USHER, wait_until

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "hooks"


class Running:
    def __init__(self, url: str, backends: dict[str, str]) -> None:
        self.url = url
        self.backends = backends  # the example's address -> the name its backend answers with


def run_example(name: str, tmp_path: Path) -> Iterator[Running]:
    """Start the example's backends (named by their example address) and `usher run` on it."""
    text = (EXAMPLES / f"{name}.yaml").read_text()
    lb_port = free_port()
    text = text.replace("python_path: [.]", f"python_path: [{EXAMPLES}]")
    text = text.replace("127.0.0.1:8080", f"127.0.0.1:{lb_port}")
    ports = {
        address: free_port() for address in sorted(set(re.findall(r"127\.0\.0\.1:90\d\d", text)))
    }
    for address, port in ports.items():
        text = text.replace(address, f"127.0.0.1:{port}")
    config = tmp_path / f"{name}.yaml"
    config.write_text(text)
    procs = [
        subprocess.Popen(
            [*USHER, "backend", "--port", str(port), "--name", address],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for address, port in ports.items()
    ]
    procs.append(
        subprocess.Popen(
            [*USHER, "run", "-c", str(config), "--no-access-log"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            cwd="/",  # python_path alone must find the example
        )
    )
    url = f"http://127.0.0.1:{lb_port}"
    try:
        for port in ports.values():
            wait_until(lambda p=port: _serves(f"http://127.0.0.1:{p}/"), 30, f"backend {port}")
        wait_until(lambda: _serves(url + "/health"), 30, "usher to serve")
        yield Running(url, {a: a for a in ports})
    finally:
        for proc in procs:
            proc.kill()
            proc.communicate(timeout=15)


def _serves(url: str) -> bool:
    try:
        httpx.get(url, timeout=2)
    except httpx.HTTPError:
        return False
    return True


@pytest.fixture
def example(tmp_path: Path) -> Iterator[object]:
    started: list[Iterator[Running]] = []

    def start(name: str) -> Running:
        runner = run_example(name, tmp_path)
        started.append(runner)
        return next(runner)

    yield start
    for runner in started:
        runner.close()


def names(url: str, count: int, **kwargs: object) -> Counter[str]:
    with httpx.Client() as client:
        return Counter(client.get(url, **kwargs).text.strip() for _ in range(count))  # type: ignore[arg-type]


def test_tenant_routes_each_tenant_to_its_backends(example) -> None:
    lb = example("tenant")
    acme = names(lb.url + "/", 20, headers={"X-Tenant": "acme"})
    assert set(acme) == {"127.0.0.1:9001", "127.0.0.1:9002"}  # balanced between its two
    by_host = names(lb.url + "/", 5, headers={"Host": "globex.example.com"})
    assert by_host == Counter({"127.0.0.1:9003": 5})
    unknown = httpx.get(lb.url + "/", headers={"X-Tenant": "initech"}, timeout=5)
    assert (unknown.status_code, unknown.text) == (404, "unknown tenant\n")
    echoed = httpx.get(lb.url + "/headers", headers={"Host": "acme.example.com"}, timeout=5)
    assert ["X-Tenant", "acme"] in echoed.json()["headers"]  # the backend is told the tenant


def test_auth_answers_401_unless_the_key_matches(example) -> None:
    lb = example("auth")
    missing = httpx.get(lb.url + "/", timeout=5)
    wrong = httpx.get(lb.url + "/", headers={"X-Api-Key": "s3cret-x"}, timeout=5)
    good = httpx.get(lb.url + "/headers", headers={"X-Api-Key": "s3cret-b"}, timeout=5)
    assert missing.status_code == wrong.status_code == 401
    assert missing.headers["www-authenticate"] == 'ApiKey realm="api", header="X-Api-Key"'
    assert good.status_code == 200
    forwarded = dict(good.json()["headers"])
    assert forwarded["X-Client"] == "bob"
    assert "X-Api-Key" not in forwarded  # the key never reaches the backend


def test_ab_sets_a_cookie_and_keeps_each_group_on_its_backends(example) -> None:
    lb = example("ab")
    groups: Counter[str] = Counter()
    for _ in range(200):  # new visitors: no cookie
        answer = httpx.get(lb.url + "/", timeout=5)
        group = answer.headers["x-ab-group"]
        groups[group] += 1
        assert answer.headers["set-cookie"].startswith(f"ab={group}; Path=/; Max-Age=")
        assert (answer.text.strip() == "127.0.0.1:9003") == (group == "b")
    # About 10% to b: none in 200 has p = 0.9**200 < 1e-9 (in 60 it was 0.002, and it happened).
    assert groups["a"] > groups["b"] > 0
    b = names(lb.url + "/", 10, headers={"Cookie": "ab=b"})
    a = names(lb.url + "/", 10, headers={"Cookie": "ab=a"})
    assert b == Counter({"127.0.0.1:9003": 10})
    assert set(a) == {"127.0.0.1:9001", "127.0.0.1:9002"}
    kept = httpx.get(lb.url + "/", headers={"Cookie": "ab=a"}, timeout=5)
    assert "set-cookie" not in kept.headers  # a known visitor is not reassigned
