"""The report and the dashboard in a real headless Chromium (Debian's), driven by Playwright;
screenshots land in test-output/screenshots for a person to look at."""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Browser, expect, sync_playwright

from cli import synthetic
from cli.stack import Stack
from tests.conftest import OUTPUT
from tests.e2e.conftest import seed, submit_erasure, wait_final

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
    expect(page.locator("text=Deadline met")).to_be_visible()
    for system in ("billing", "crm", "directory", "mailing", "recordings"):
        expect(page.locator(f"h2#{system}")).to_be_visible()
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
    expect(page.locator("#by-status")).to_be_visible()
    assert page.locator("#ttc-chart rect").count() >= 1
    expect(page.locator("text=Export CSV")).to_be_visible()
    page.fill("input[name=received_from]", "2020-01-01")
    page.click("button[type=submit]")  # received_to left empty, as people do
    assert "received_from=2020-01-01" in page.url
    assert page.locator("h1").inner_text() == "Compliance dashboard"
    expect(page.locator("#latest")).to_be_visible()

    page.screenshot(path=str(SCREENSHOTS / "dashboard.png"), full_page=True)


def test_a_reviewer_decides_in_the_browser_and_the_report_says_so(
    browser: Browser, api: httpx.Client, stack: Stack
) -> None:
    household = synthetic.people(2, prefix="browserhh")
    shared = household.people[0].subject.phones[0]  # type: ignore[union-attr]
    neighbour = household.people[1].model_copy(
        update={"billing": [a.model_copy(update={"phone": shared}) for a in household.people[1].billing]}
    )
    two = household.model_copy(update={"people": [household.people[0], neighbour]})
    with ThreadPoolExecutor(1) as other:  # Playwright's loop runs in this thread: seed in another
        other.submit(seed, stack, two).result()
    subject = household.people[0].subject.model_dump(exclude_none=True)  # type: ignore[union-attr]
    submit_erasure(api, "browser-review", subject)
    deadline = time.monotonic() + 60
    while api.get("/v1/requests/browser-review").json()["status"] != "awaiting_review":
        assert time.monotonic() < deadline
        time.sleep(0.2)
    page = browser.new_page()
    page.goto(f"{api.base_url}/login?next=/dashboard")
    page.fill("input[name=token]", stack.secrets.admin_token)
    page.click("button[type=submit]")  # returns once the next page is committed, not yet parsed
    page.wait_for_url("**/dashboard")
    expect(page.locator("#reviews-waiting a")).to_be_visible()
    page.click("#reviews-waiting a")
    assert page.locator("h1").inner_text() == "Records awaiting a decision"
    row = page.locator("#open-reviews tr", has_text="browser-review")
    assert row.count() == 1 and "1 accounts" in row.inner_text()
    assert "+447" in row.inner_text() and shared.replace(" ", "")[-6:] not in row.inner_text()  # masked
    page.screenshot(path=str(SCREENSHOTS / "reviews.png"), full_page=True)
    row.locator("input[value=keep]").check()
    row.locator("textarea[name=reason]").fill("the neighbour's account: same landline")
    row.locator("button[type=submit]").click()
    assert page.locator("#message").inner_text() == "decided"
    expect(page.locator("#decided-reviews", has_text="the neighbour's account")).to_be_visible()
    assert wait_final(api, "browser-review")["status"] == "completed_with_exceptions"
    page.goto(f"{api.base_url}/v1/requests/browser-review/report")
    expect(page.locator("#report-reviews", has_text="kept")).to_be_visible()
    assert page.locator("td.found-by", has_text="by customer id (given, round 1)").count() >= 1
    page.screenshot(path=str(SCREENSHOTS / "report-with-review.png"), full_page=True)


def test_recipients_in_the_report_and_a_task_on_the_dashboard(
    browser: Browser, api: httpx.Client, stack: Stack
) -> None:
    """The shipped register names the bulk mailer, told by hand: the erasure opens a task that the
    dashboard lists and the report shows, until compliance closes it."""
    people = synthetic.people(1, prefix="browser-recip")
    with ThreadPoolExecutor(1) as other:  # Playwright's loop runs in this thread: seed in another
        other.submit(seed, stack, people).result()
    subject = people.people[0].subject
    assert subject is not None
    submit_erasure(api, "browser-recip", subject.model_dump(exclude_none=True))
    wait_final(api, "browser-recip")
    context = browser.new_context(extra_http_headers={"Authorization": f"Bearer {stack.secrets.admin_token}"})
    page = context.new_page()
    page.goto(f"{api.base_url}/dashboard")
    task = page.locator("#notices tr", has_text="browser-recip").filter(has_text="bulk-mailer")
    expect(task).to_be_visible()
    assert "task open" in task.inner_text()
    expect(page.locator("#notices-summary")).to_be_visible()
    page.screenshot(path=str(SCREENSHOTS / "dashboard-recipients.png"), full_page=True)

    page.goto(f"{api.base_url}/v1/requests/browser-recip/report")
    told = page.locator("#report-recipients tr", has_text="bulk-mailer")
    expect(told).to_be_visible()
    assert "pending" in told.inner_text() and "mailing/subscribers" in told.inner_text()
    assert subject.emails[0] not in page.content()
    notice_id = next(
        n["id"]
        for n in api.get("/v1/notices", params={"request_id": "browser-recip"}).json()
        if n["recipient_id"] == "bulk-mailer"
    )
    assert (
        api.post(f"/v1/notices/{notice_id}/close", json={"note": "sent by the processor form"}).status_code
        == 200
    )
    deadline = time.monotonic() + 20
    while "compliance" not in told.inner_text():
        assert time.monotonic() < deadline, told.inner_text()
        time.sleep(0.3)
        page.reload()
    assert "acknowledged" in told.inner_text()
    page.screenshot(path=str(SCREENSHOTS / "report-recipients.png"), full_page=True)
