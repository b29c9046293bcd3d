"""Identity resolution on the running stack, checked in the stores themselves: a request names
only an e-mail and the search finds the person's records everywhere, written differently in
each system, over three rounds; a held record found only through a learnt identifier stays
held; a namesake and a near-miss number are untouched; records that may be someone else's
(another sub-address, a number learnt not given, a household's shared landline) wait for a
person, and after 'erase' or 'keep' the stores and the report say exactly that."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from cli.seed import read
from cli.stack import Stack
from tests.e2e.conftest import seed, submit_erasure

pytestmark = pytest.mark.e2e
DATA = Path(__file__).parents[1] / "data" / "identity.json"
KIM = {"emails": ["kim.lee@example.com"]}
IAN = {"customer_id": "C-4001", "emails": ["ian.reed@example.org"], "phones": ["01632 960100"]}
WAITING = ("awaiting_review", "completed", "completed_with_exceptions", "failed")


def wait_for(
    api: httpx.Client, request_id: str, statuses: tuple[str, ...], timeout_s: float = 60
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        body: dict[str, Any] = api.get(f"/v1/requests/{request_id}").json()
        if body["status"] in statuses:
            return body
        time.sleep(0.2)
    raise AssertionError(f"{request_id} not in {statuses} after {timeout_s}s: {body['status']}")


async def _count(stack: Stack, system: str, sql: str) -> int:
    conn = await asyncpg.connect(stack.database_url(system))
    try:
        return int(await conn.fetchval(sql))
    finally:
        await conn.close()


def count(stack: Stack, system: str, sql: str) -> int:
    return asyncio.run(_count(stack, system, sql))


def category(report: dict[str, Any], system: str, name: str) -> dict[str, Any]:
    entry = next(s for s in report["systems"] if s["system"] == system)
    return next(c for c in entry["categories"] if c["category"] == name)


@pytest.fixture(scope="module")
def people(stack: Stack) -> None:
    seed(stack, read(DATA))


@pytest.fixture(scope="module")
def kim(people: None, api: httpx.Client) -> dict[str, Any]:
    hold = api.post(
        "/v1/holds",
        json={
            "subject": {"customer_id": "C-4100"},
            "systems": ["recordings"],
            "case_reference": "LIT-ID-1",
            "reason": "complaint about a call",
        },
    )
    assert hold.status_code == 201, hold.text
    assert submit_erasure(api, "id-kim", KIM).status_code == 202
    assert wait_for(api, "id-kim", WAITING)["status"] == "awaiting_review"
    report: dict[str, Any] = api.get("/v1/requests/id-kim/report").json()
    return report


def test_an_email_alone_finds_the_person_everywhere_over_three_rounds(
    kim: dict[str, Any], stack: Stack
) -> None:
    assert kim["rounds"] == 3
    assert category(kim, "billing", "accounts")["erased"] == 1
    assert category(kim, "directory", "directory_entries")["erased"] == 1
    crm = category(kim, "crm", "contacts")  # known to the CRM by customer id, and another address
    assert crm["erased"] == 1 and crm["found_by"] == [
        {"kind": "customer_ids", "source": "learnt", "round": 2, "count": 1}
    ]
    subscribers = category(kim, "mailing", "subscribers")  # filed under the CRM's address
    assert subscribers["erased"] == 1 and subscribers["found_by"][0] == {
        "kind": "emails",
        "source": "learnt",
        "round": 3,
        "count": 1,
    }
    assert count(stack, "billing", "SELECT count(*) FROM accounts WHERE account_id = 'ACC-4100'") == 0
    assert count(stack, "crm", "SELECT count(*) FROM contacts WHERE contact_id = 'CRM-4100'") == 0
    assert count(stack, "mailing", "SELECT count(*) FROM subscribers WHERE subscriber_id = 'SUB-4100'") == 0


def test_a_held_record_found_through_a_learnt_identifier_stays_held(
    kim: dict[str, Any], stack: Stack
) -> None:
    recordings = category(kim, "recordings", "call_recordings")
    assert recordings["retained"][0]["hold_reference"] == "LIT-ID-1" and recordings["erased"] == 0
    assert count(stack, "recordings", "SELECT count(*) FROM recordings WHERE recording_id = 'REC-4100'") == 1


def test_a_namesake_and_a_near_miss_number_are_untouched(kim: dict[str, Any], stack: Stack) -> None:
    assert count(stack, "billing", "SELECT count(*) FROM accounts WHERE account_id = 'ACC-4199'") == 1
    assert all(r["groups"] != [["accounts", "ACC-4199"]] for r in kim["reviews"])


def test_what_may_be_someone_elses_waits_for_a_person(kim: dict[str, Any], api: httpx.Client) -> None:
    reasons = {(r["system"], r["reason"]): r for r in kim["reviews"]}
    assert set(reasons) == {("recordings", "learnt_phone"), ("mailing", "mailbox_variant")}
    listed = {r["id"]: r for r in api.get("/v1/reviews", params={"request_id": "id-kim"}).json()}
    variant = listed[reasons[("mailing", "mailbox_variant")]["review_id"]]
    # The reviewer sees what matched, masked, and never the address in full.
    assert variant["state"] == "open" and variant["records"] == {"subscribers": 1}
    assert variant["matched"] == ["emails: k•••••e@example.com"]
    assert "kim.lee" not in str(listed)


@pytest.fixture(scope="module")
def kim_decided(kim: dict[str, Any], api: httpx.Client) -> dict[str, httpx.Response]:
    """Bad decisions first (refused, naming the field), then one 'keep' and one 'erase'."""
    reviews = {r["reason"]: r["review_id"] for r in kim["reviews"]}
    answers = {
        "no reason": api.post(f"/v1/reviews/{reviews['learnt_phone']}", json={"decision": "keep"}),
        "bad decision": api.post(
            f"/v1/reviews/{reviews['learnt_phone']}", json={"decision": "shred", "reason": "because"}
        ),
        "unknown": api.post(
            "/v1/reviews/00000000-0000-0000-0000-000000000000", json={"decision": "keep", "reason": "x y"}
        ),
        "keep": api.post(
            f"/v1/reviews/{reviews['learnt_phone']}",
            json={"decision": "keep", "reason": "a colleague's phone"},
        ),
    }
    answers["second"] = api.post(
        f"/v1/reviews/{reviews['learnt_phone']}", json={"decision": "erase", "reason": "changed my mind"}
    )
    answers["erase"] = api.post(
        f"/v1/reviews/{reviews['mailbox_variant']}", json={"decision": "erase", "reason": "her own mailbox"}
    )
    wait_for(api, "id-kim", ("completed", "completed_with_exceptions", "failed"))
    return answers


def test_decisions_are_carried_out_exactly_and_audited(
    kim_decided: dict[str, httpx.Response], api: httpx.Client, stack: Stack
) -> None:
    assert (
        kim_decided["no reason"].status_code == 422 and "reason" in kim_decided["no reason"].json()["detail"]
    )
    bad = kim_decided["bad decision"]
    assert bad.status_code == 422 and "decision" in bad.json()["detail"]
    assert kim_decided["unknown"].status_code == 404
    assert kim_decided["keep"].status_code == 202 and kim_decided["keep"].json()["decision"] == "keep"
    assert kim_decided["second"].status_code == 409
    assert kim_decided["erase"].status_code == 202
    report = api.get("/v1/requests/id-kim/report").json()
    assert report["status"] == "completed_with_exceptions"
    states = {r["reason"]: (r["state"], r["erased"]) for r in report["reviews"]}
    assert states == {"learnt_phone": ("kept", 0), "mailbox_variant": ("erased", 1)}
    assert count(stack, "mailing", "SELECT count(*) FROM subscribers WHERE subscriber_id = 'SUB-4101'") == 0
    assert count(stack, "recordings", "SELECT count(*) FROM recordings WHERE recording_id = 'REC-4101'") == 1
    trail = api.get("/v1/requests/id-kim/audit").json()
    decided = [e["detail"] for e in trail["entries"] if e["kind"] == "review_decided"]
    assert {d["decision"] for d in decided} == {"keep", "erase"} and all(
        d["role"] == "admin" for d in decided
    )
    assert trail["chain_valid"] is True


def test_a_household_landline_never_erases_the_other_customer(
    people: None, stack: Stack, api: httpx.Client
) -> None:
    assert submit_erasure(api, "id-ian", IAN).status_code == 202
    assert wait_for(api, "id-ian", WAITING)["status"] == "awaiting_review"
    report = api.get("/v1/requests/id-ian/report").json()
    held_back = {r["system"]: r for r in report["reviews"]}
    assert set(held_back) == {"billing", "crm", "recordings"}
    assert {(s, r["reason"], tuple(r["conflicting"])) for s, r in held_back.items()} == {
        ("billing", "shared_phone", ("customer_ids", "emails")),
        ("crm", "shared_phone", ("customer_ids", "emails")),
        ("recordings", "shared_phone", ("customer_ids",)),
    }
    # Jo's records are all still there; Ian's are gone.
    assert (
        count(stack, "billing", "SELECT count(*) FROM accounts WHERE account_id IN ('ACC-4001', 'ACC-4002')")
        == 1
    )
    assert count(stack, "crm", "SELECT count(*) FROM contacts WHERE contact_id = 'CRM-4002'") == 1
    assert count(stack, "recordings", "SELECT count(*) FROM recordings WHERE recording_id = 'REC-4002'") == 1
    for system, decision in (("billing", "keep"), ("recordings", "keep"), ("crm", "erase")):
        answer = api.post(
            f"/v1/reviews/{held_back[system]['review_id']}",
            json={"decision": decision, "reason": "checked with the household"},
        )
        assert answer.status_code == 202, answer.text
    wait_for(api, "id-ian", ("completed", "completed_with_exceptions", "failed"))
    assert count(stack, "billing", "SELECT count(*) FROM accounts WHERE account_id = 'ACC-4002'") == 1
    assert count(stack, "recordings", "SELECT count(*) FROM recordings WHERE recording_id = 'REC-4002'") == 1
    assert count(stack, "crm", "SELECT count(*) FROM contacts WHERE contact_id = 'CRM-4002'") == 0
    states = {r["system"]: r["state"] for r in api.get("/v1/requests/id-ian/report").json()["reviews"]}
    assert states == {"billing": "kept", "recordings": "kept", "crm": "erased"}


def test_the_cli_lists_and_decides_reviews(kim_decided: dict[str, httpx.Response], stack: Stack) -> None:
    from typer.testing import CliRunner

    from cli.main import app

    env = {"LETHE_API_URL": stack.api_url, "LETHE_TOKEN": stack.secrets.admin_token}
    runner = CliRunner()
    listed = runner.invoke(app, ["reviews", "list", "--request", "id-kim", "--state", "kept"], env=env)
    assert listed.exit_code == 0, listed.output
    assert "found by: phones: +447700••••10" in listed.output and "1 review item(s)" in listed.output
    review_id = listed.output.split()[0]
    again = runner.invoke(app, ["reviews", "decide", review_id, "--erase", "--reason", "no, erase"], env=env)
    assert again.exit_code == 1 and "already decided" in again.output
