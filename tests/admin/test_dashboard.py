"""The dashboard (src/usher/admin/dashboard/index.html) in a real browser against a real balancer.

Drives Debian's Chromium through Playwright; there is no `playwright install` here, so when
/usr/bin/chromium is missing these tests fail and say how to get it. Every wait is bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.async_api import Browser, ConsoleMessage, Page, async_playwright, expect

from tests.conftest import RunningBalancer, free_port, pool_of, simple_config
from usher.demo.origin import BackendServer

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
# The README's picture is refreshed only on request (`make screenshot`), so test runs leave the
# tree clean; otherwise the screenshot goes to the test's temporary directory.
README_SCREENSHOT = Path(__file__).resolve().parents[2] / "docs" / "dashboard.png"
WAIT_MS = 5000  # the longest any single expectation waits
TOKEN = "s3cret-token"

Start = Callable[..., Awaitable[Any]]


@dataclass
class Dashboard:
    lb: RunningBalancer
    page: Page
    servers: list[BackendServer]
    dead: str  # a backend address nothing listens on
    errors: list[str] = field(default_factory=list)  # console errors and uncaught exceptions

    @property
    def admin(self) -> str:
        url = self.lb.balancer.admin_url
        assert url is not None
        return url

    def address(self, index: int) -> str:
        return f"127.0.0.1:{self.servers[index].port}"

    def row(self, pool: str, address: str) -> Any:
        return self.page.locator(
            f'[data-testid="backend-row"][data-pool="{pool}"][data-address="{address}"]'
        )

    async def api_backend(self, pool: str, address: str, token: str | None = None) -> Any:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        async with httpx.AsyncClient(timeout=5) as client:
            response = await client.get(f"{self.admin}/api/pools", headers=headers)
        response.raise_for_status()
        backends = response.json()["pools"][pool]["backends"]
        return next(b for b in backends if b["address"] == address)

    async def traffic(self, count: int, path: str = "/") -> None:
        async with httpx.AsyncClient(timeout=5) as client:
            for _ in range(count):
                response = await client.get(self.lb.url(path))
                assert response.status_code == 200


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    if not CHROMIUM.exists():
        pytest.fail(
            f"{CHROMIUM} is missing: the dashboard tests drive Debian's Chromium; "
            "run `apt-get install -y chromium` (as root) and try again",
            pytrace=False,
        )
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, timeout=15_000
        )
        try:
            yield browser
        finally:
            await browser.close()


@pytest.fixture
async def dashboard(
    backends: Start, balancer: Start, browser: Browser
) -> Callable[..., Awaitable[Dashboard]]:
    """A balancer with two pools (one backend of "web" is dead), its admin, and a page on it."""

    async def open_dashboard(*, token: str | None = None, load: bool = True) -> Dashboard:
        servers = await backends(3)
        servers += await backends(1, latency=0.015)
        dead = f"127.0.0.1:{free_port()}"
        web = pool_of(servers[0], servers[1], dead)
        web["health_check"] = {"type": "http", "interval": "200ms", "unhealthy_threshold": 1}
        api = pool_of(servers[2], servers[3])
        api["backends"][0]["weight"] = 2
        config = simple_config(
            {"web": web, "api": api},
            routes=[
                {"match": {"path_prefix": "/api"}, "pool": "api", "prefix_rewrite": "/"},
                {"pool": "web"},
            ],
        )
        config["admin"] = {"bind": "127.0.0.1:0", **({"token": token} if token else {})}
        lb = await balancer(config)
        page = await browser.new_page(viewport={"width": 1440, "height": 900})
        page.set_default_timeout(WAIT_MS)
        dash = Dashboard(lb, page, servers, dead)

        def on_console(message: ConsoleMessage) -> None:
            if message.type == "error":
                dash.errors.append(f"console: {message.text}")

        page.on("console", on_console)
        page.on("pageerror", lambda exc: dash.errors.append(f"pageerror: {exc}"))
        if load:
            await page.goto(dash.admin + "/", timeout=WAIT_MS)
        return dash

    return open_dashboard


async def test_page_loads_clean_and_shows_listeners_pools_and_backends(
    dashboard: Callable[..., Awaitable[Dashboard]],
) -> None:
    dash = await dashboard()
    page = dash.page
    await expect(page).to_have_title("usher dashboard")
    listener = page.locator('[data-testid="listener-row"][data-name="web"]')
    await expect(listener).to_contain_text(dash.lb.url("").rstrip("/"))
    await expect(listener.get_by_test_id("connections")).to_have_text(re.compile(r"^\d+$"))
    pools = page.get_by_test_id("pool")
    await expect(pools).to_have_count(2)
    await expect(page.locator('[data-testid="pool"][data-pool="web"] h2')).to_have_text("Pool web")
    await expect(page.get_by_test_id("backend-row")).to_have_count(5)
    for index, pool in ((0, "web"), (1, "web"), (2, "api"), (3, "api")):
        row = dash.row(pool, dash.address(index))
        await expect(row.get_by_test_id("state")).to_have_text("healthy")
        await expect(row.get_by_test_id("state")).to_have_class(re.compile(r"\bhealthy\b"))
    await expect(dash.row("api", dash.address(2)).get_by_test_id("weight")).to_have_text("2")
    # The dead backend fails its checks: red badge, the reason and the check's detail shown.
    dead = dash.row("web", dash.dead)
    await expect(dead.get_by_test_id("state")).to_have_text("unhealthy")
    await expect(dead.get_by_test_id("state")).to_have_class(re.compile(r"\bunhealthy\b"))
    await expect(dead.get_by_test_id("reason")).not_to_be_empty()
    await expect(dead.get_by_test_id("last-check")).to_contain_text("failed")
    check = dash.row("web", dash.address(0)).get_by_test_id("last-check")
    await expect(check).to_contain_text("ok")
    await expect(check).to_have_attribute("title", re.compile(r"\S"))
    # Semantic markup: one table per listener list and pool, with column headers.
    await expect(page.locator("table")).to_have_count(3)
    await expect(page.locator('th[scope="col"]', has_text="Latency")).to_have_count(2)
    await expect(page.get_by_test_id("message")).to_be_hidden()
    # Each backend says where it came from: the file, the admin API, a discovery source.
    await expect(dash.row("api", dash.address(2)).get_by_test_id("source")).to_have_text("config")
    added = f"127.0.0.1:{free_port()}"
    dash.lb.balancer.add_backend("api", added)
    await expect(dash.row("api", added).get_by_test_id("source")).to_have_text("admin")
    assert dash.errors == []


async def test_counters_rates_and_sparklines_update_live(
    dashboard: Callable[..., Awaitable[Dashboard]],
) -> None:
    dash = await dashboard()
    row = dash.row("api", dash.address(2))
    await expect(row.get_by_test_id("requests")).to_have_text("0")
    await expect(row.get_by_test_id("rps")).to_have_text("0.0")
    await dash.traffic(30, "/api/")
    served = (await dash.api_backend("api", dash.address(2)))["requests_total"]
    assert served >= 15
    await expect(row.get_by_test_id("requests")).to_have_text(str(served))
    await expect(row.get_by_test_id("rps")).not_to_have_text(re.compile(r"^(0\.0|\u2013)$"))
    await expect(row.get_by_test_id("latency")).to_have_text(re.compile(r"^[\d.,]+ ms$"))
    latency_row = dash.row("api", dash.address(3))
    await expect(latency_row.get_by_test_id("latency")).not_to_have_text("0.0 ms")
    spark = row.get_by_test_id("spark-rps")
    await expect(spark).to_have_attribute("data-points", re.compile(r"^([2-9]|\d\d+)$"))
    points = await spark.locator("polyline").get_attribute("points")
    assert points and len(points.split()) >= 2
    assert dash.errors == []


async def test_drain_enable_reweight_and_errors_from_the_page(
    dashboard: Callable[..., Awaitable[Dashboard]],
) -> None:
    dash = await dashboard()
    address = dash.address(0)
    row = dash.row("web", address)
    await expect(row.get_by_test_id("state")).to_have_text("healthy")
    await expect(row.get_by_test_id("enable")).to_be_disabled()
    await row.get_by_test_id("drain").click()
    await expect(row.get_by_test_id("state")).to_have_text(re.compile(r"^(draining|disabled)$"))
    assert (await dash.api_backend("web", address))["state"] in ("draining", "disabled")
    await expect(row.get_by_test_id("drain")).to_be_disabled()
    await expect(row.get_by_test_id("state")).to_have_class(re.compile(r"\bdisabled\b"))

    await row.get_by_test_id("enable").click()
    await expect(row.get_by_test_id("state")).to_have_text("healthy")
    assert (await dash.api_backend("web", address))["state"] == "healthy"

    await row.get_by_test_id("disable").click()
    await expect(row.get_by_test_id("state")).to_have_text("disabled")
    assert (await dash.api_backend("web", address))["admin_state"] == "disabled"

    await row.get_by_test_id("weight-input").fill("5")
    await row.get_by_test_id("set-weight").click()
    await expect(row.get_by_test_id("weight")).to_have_text("5")
    assert (await dash.api_backend("web", address))["weight"] == 5
    message = dash.page.get_by_test_id("message")
    await expect(message).to_contain_text("weight 5")
    assert dash.errors == []

    # A backend gone between two polls: the API's error is shown as it says it.
    await dash.page.evaluate("change('web', '127.0.0.1:1', {state: 'draining'})")
    await expect(message).to_contain_text("no backend 127.0.0.1:1 in pool web")
    await expect(message).to_have_attribute("role", "alert")
    assert [e for e in dash.errors if "404" not in e] == []


async def test_asks_for_the_token_then_works(
    dashboard: Callable[..., Awaitable[Dashboard]],
) -> None:
    dash = await dashboard(token=TOKEN)
    page = dash.page
    form = page.get_by_test_id("token-form")
    await expect(form).to_be_visible()
    await expect(page.get_by_test_id("backend-row")).to_have_count(0)

    await page.get_by_test_id("token-input").fill("wrong")
    await page.get_by_test_id("token-submit").click()
    await expect(page.get_by_test_id("message")).to_contain_text("refused")
    await expect(form).to_be_visible()

    await page.get_by_test_id("token-input").fill(TOKEN)
    await page.get_by_test_id("token-submit").click()
    await expect(form).to_be_hidden()
    await expect(page.get_by_test_id("backend-row")).to_have_count(5)
    stored = await page.evaluate("sessionStorage.getItem('usher.admin.token')")
    assert stored == TOKEN
    # Changes carry the token too.
    row = dash.row("api", dash.address(3))
    await row.get_by_test_id("drain").click()
    await expect(row.get_by_test_id("state")).to_have_text(re.compile(r"^(draining|disabled)$"))
    backend = await dash.api_backend("api", dash.address(3), token=TOKEN)
    assert backend["state"] in ("draining", "disabled")
    # Only the refused calls left a trace in the console.
    assert [e for e in dash.errors if "401" not in e] == []


async def test_screenshot_with_traffic(
    dashboard: Callable[..., Awaitable[Dashboard]], tmp_path: Path
) -> None:
    """A full-page screenshot taken while uneven traffic flows so the sparklines have shape.

    With USHER_SCREENSHOT=1 it replaces docs/dashboard.png, the README's picture.
    """
    screenshot = README_SCREENSHOT if os.environ.get("USHER_SCREENSHOT") else tmp_path / "d.png"
    dash = await dashboard()
    await expect(dash.page.get_by_test_id("backend-row")).to_have_count(5)
    stop = asyncio.Event()

    async def uneven_traffic() -> None:
        for burst in itertools.cycle((4, 12, 6, 20, 9, 16, 3)):
            await asyncio.gather(dash.traffic(burst), dash.traffic(burst // 2, "/api/"))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.5)
            if stop.is_set():
                return

    traffic = asyncio.create_task(uneven_traffic())
    spark = dash.row("web", dash.address(0)).get_by_test_id("spark-rps")
    try:
        await expect(spark).to_have_attribute("data-points", re.compile(r"^([2-9]|\d\d+)$"))
        await dash.row("web", dash.address(1)).get_by_test_id("drain").click()
        await dash.page.get_by_test_id("message-close").click()
        await expect(dash.row("web", dash.dead).get_by_test_id("state")).to_have_text("unhealthy")
        await expect(spark).to_have_attribute("data-points", re.compile(r"^([5-9]|\d\d+)$"))
        await dash.page.screenshot(path=str(screenshot), full_page=True, animations="disabled")
    finally:
        stop.set()
        await asyncio.wait_for(traffic, 5)
    assert screenshot.stat().st_size > 10_000
    assert dash.errors == []


async def test_dns_records_and_their_sites_are_shown(balancer: Start, browser: Browser) -> None:
    from tests.dns.test_dns_e2e import dns_config

    config = dns_config()
    config["admin"] = {"bind": "127.0.0.1:0"}
    lb = await balancer(config)
    page = await browser.new_page()
    page.set_default_timeout(WAIT_MS)
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    await page.goto(f"{lb.balancer.admin_url}/", timeout=WAIT_MS)
    await expect(page.get_by_test_id("dns-record")).to_have_count(6)
    api = page.locator('[data-testid="dns-record"][data-name="api.example.com"]')
    await expect(api).to_contain_text("failover")
    eu = api.locator('[data-testid="dns-site"][data-pool="eu"]')
    await expect(eu).to_have_text("eu 2/2")
    pool = lb.balancer.pools["eu"]
    for backend in pool.backends:
        pool.set_healthy(backend, False, "test")
    await expect(eu).to_have_text("eu 0/2")  # the next poll shows the site down
    await expect(eu).to_have_class(re.compile(r"\bunhealthy\b"))
    assert errors == []
