"""`usher status` shows a dns listener's records and their sites; `usher status --check` says
whether the balancer serves (keepalived's track script), as a real process."""

from __future__ import annotations

from typing import Any

from tests.conftest import free_port, pool_of, simple_config
from tests.dns.test_dns_e2e import dns_config
from tests.test_status import usher


async def test_status_shows_records_and_the_sites_they_point_at(balancer: Any) -> None:
    config = dns_config()
    config["admin"] = {"bind": "127.0.0.1:0"}
    running = await balancer(config)
    pool = running.pools["eu"]
    pool.set_state(pool.backends[0], "disabled")
    code, out, err = await usher("status", "--admin", running.balancer.admin_url)
    assert code == 0, err
    assert "gslb dns records of example.com" in out
    rows = {line.split()[0]: line for line in out.splitlines() if ".example.com" in line}
    assert rows["api.example.com"].split()[1:] == ["failover", "30s", "us", "2/2,", "eu", "1/2"]
    assert rows["geo.example.com"].split()[1:3] == ["geo", "30s"]
    assert rows["all.example.com"].split()[2] == "5s"
    code, out, err = await usher("status", "--admin", running.balancer.admin_url, "--json")
    assert code == 0, err
    assert '"dns": [{"listener": "gslb"' in out.replace("\n", "").replace("  ", "")


async def test_check_exits_0_when_serving_and_1_when_not(balancer: Any, backends: Any) -> None:
    servers = await backends(2)
    config = simple_config({"web": pool_of(*servers)})
    config["listeners"].append(dns_config()["listeners"][0])
    config["listeners"][1]["dns"]["records"] = [{"name": "www.example.com", "pools": ["web"]}]
    config["admin"] = {"bind": "127.0.0.1:0"}
    running = await balancer(config)
    admin = running.balancer.admin_url
    code, out, err = await usher("status", "--check", "--admin", admin)
    assert (code, out.strip()) == (0, "serving: 2 listeners up, 2 of 2 backends healthy"), err
    pool = running.pools["web"]
    for backend in pool.backends:
        pool.set_healthy(backend, False, "test")
    code, out, err = await usher("status", "--check", "--admin", admin)
    assert (code, err.strip()) == (1, "none of the 2 backends is healthy")
    pool.set_healthy(pool.backends[0], True, "test")
    assert (await usher("status", "--check", "--admin", admin))[0] == 0
    running.balancer.dataplane.servers["web"].close()  # the listener stops accepting
    code, out, err = await usher("status", "--check", "--admin", admin)
    assert code == 1 and err.startswith("listener web (127.0.0.1:") and "refuses" in err


async def test_check_exits_1_when_the_admin_api_is_gone() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    code, out, err = await usher("status", "--check", "--admin", url)
    assert code == 1 and out == ""
    assert f"admin API at {url} does not answer" in err
