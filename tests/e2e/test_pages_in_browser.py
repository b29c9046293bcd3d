"""The report and the dashboard in a real headless Chromium (Debian's), driven by Playwright;
screenshots land in test-output/screenshots for a person to look at."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Browser, sync_playwright

from cli.stack import Stack
from tests.conftest import OUTPUT
from tests.e2e.conftest import submit_erasure, wait_final

pytestmark = pytest.mark.e2e
CHROMIUM = Path("/usr/bin/chromium")
SCREENSHOTS = OUTPUT / "screenshots"
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    assert CHROMIUM.exists(), "Debian's chromium is needed: make browser-deps"
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), args=FLAGS)
        yield launched
        launched.close()


def test_report_page_shows_the_report(browser: Browser, api: httpx.Client, stack: Stack) -> None:
    submit_erasure(api, "browser-1", {"emails": ["browser.subject@example.com"]})
    wait_final(api, "browser-1")
    context = browser.new_context(extra_http_headers={"Authorization": f"Bearer {stack.secrets.admin_token}"})
    page = context.new_page()
    page.goto(f"{api.base_url}/v1/requests/browser-1/report")  # a browser asks for text/html
    assert page.locator("h1").inner_text() == "Data-subject request report"
    assert "browser-1" in page.content()
    assert page.locator("text=Deadline met").is_visible()
    for system in ("billing", "crm", "directory", "mailing", "recordings"):
        assert page.locator(f"h2#{system}").is_visible()
    assert "browser.subject" not in page.content()
    page.screenshot(path=str(SCREENSHOTS / "report.png"), full_page=True)


def test_dashboard_after_signing_in_shows_statuses_chart_and_overdue(
    browser: Browser, api: httpx.Client, stack: Stack
) -> None:
    page = browser.new_page()
    page.goto(f"{api.base_url}/dashboard")
    assert "/login" in page.url  # no token yet: the sign-in page, not a JSON 401
    page.fill("input[name=token]", stack.secrets.admin_token)
    page.click("button[type=submit]")
    assert page.locator("h1").inner_text() == "Compliance dashboard"
    assert page.locator("#by-status").is_visible()
    assert page.locator("#ttc-chart rect").count() >= 1
    assert page.locator("text=Export CSV").is_visible()
    page.fill("input[name=received_from]", "2020-01-01")
    page.click("button[type=submit]")  # received_to left empty, as people do
    assert "received_from=2020-01-01" in page.url
    assert page.locator("h1").inner_text() == "Compliance dashboard"
    assert page.locator("#latest").is_visible()

    page.screenshot(path=str(SCREENSHOTS / "dashboard.png"), full_page=True)
