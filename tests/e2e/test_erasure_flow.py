"""Seed two people, erase one through the HTTP API, and check every store itself."""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
import httpx
import pytest

from cli.seed import SeedFile
from cli.stack import Stack
from services.directory.ldap import Directory
from shared import topics
from shared.kafka import make_consumer
from tests.demo_expected import DEMO_ERASURE
from tests.e2e.conftest import seed, wait_final

pytestmark = pytest.mark.e2e
ALICE_SUBJECT = {
    "customer_id": "C-1001",
    "emails": ["ALICE.Hartley@example.co.uk"],
    "phones": ["+44 7700 900123"],
    "ldap_uid": "ahartley",
}
ALICE_PLAINTEXT = ["alice.hartley@example.co.uk", "Alice.Hartley", "7700900123", "7700 900123", "Hartley"]


@pytest.fixture(scope="module")
def erased_alice(stack: Stack, api: httpx.Client, demo_seed: SeedFile) -> dict[str, Any]:
    seed(stack, demo_seed.only("alice", "ben"))
    response = api.post(
        "/v1/requests",
        json={
            "request_id": "e2e-alice-1",
            "type": "erasure",
            "identity_verified": True,
            "subject": ALICE_SUBJECT,
        },
    )
    assert response.status_code == 202, response.text
    final = wait_final(api, "e2e-alice-1")
    report: dict[str, Any] = api.get("/v1/requests/e2e-alice-1/report").json()
    return {"status": final, "report": report}


def test_request_completes_with_a_report_for_all_five_systems(erased_alice: dict[str, Any]) -> None:
    report = erased_alice["report"]
    # Tax records and CDRs still in their dispute window are kept under the policy.
    assert report["status"] == "completed_with_exceptions"
    assert sorted(s["system"] for s in report["systems"]) == sorted(topics.SYSTEMS)
    assert all(s["state"] == "done" and s["verification"]["passed"] for s in report["systems"])
    counts = {s["system"]: (s["records_found"], s["erased"], s["retained"]) for s in report["systems"]}
    assert counts == {**DEMO_ERASURE["alice"], "directory": (1, 1, 0)}
    assert report["deadline_met"] is True


async def _sql(stack: Stack, system: str, query: str) -> int:
    conn = await asyncpg.connect(stack.database_url(system))
    try:
        return int(await conn.fetchval(query))
    finally:
        await conn.close()


# (system, what is left of Alice: only what the report says is retained, stripped; Ben's rows)
@pytest.mark.parametrize(
    ("system", "alice", "left", "ben"),
    [
        (
            "billing",
            "SELECT count(*) FROM accounts WHERE customer_id IN ('C-1001','C-2044')",
            0,
            "SELECT count(*) FROM accounts WHERE customer_id = 'C-1002'",
        ),
        (
            "billing",
            "SELECT count(*) FROM invoices WHERE account_id IN ('ACC-1001','ACC-2044')",
            2,
            "SELECT count(*) FROM invoices WHERE account_id = 'ACC-1002' AND billing_email IS NOT NULL",
        ),
        (
            "billing",
            "SELECT count(*) FROM invoices WHERE account_id IN ('ACC-1001','ACC-2044')"
            " AND billing_email IS NOT NULL",
            0,
            "SELECT 1",
        ),
        (
            "billing",
            "SELECT count(*) FROM payments WHERE account_id IN ('ACC-1001','ACC-2044')",
            2,
            "SELECT count(*) FROM payments WHERE account_id = 'ACC-1002'",
        ),
        (
            "billing",
            "SELECT count(*) FROM cdrs WHERE account_id = 'ACC-1001'",
            2,
            "SELECT count(*) FROM cdrs WHERE account_id = 'ACC-1002'",
        ),
        (
            "billing",
            "SELECT count(*) FROM radius_sessions WHERE account_id = 'ACC-1001'",
            0,
            "SELECT count(*) FROM radius_sessions WHERE account_id = 'ACC-1002'",
        ),
        (
            "crm",
            "SELECT count(*) FROM contacts WHERE contact_id = 'CRM-501'",
            0,
            "SELECT count(*) FROM contacts WHERE contact_id = 'CRM-502'",
        ),
        (
            "crm",
            "SELECT count(*) FROM interactions WHERE contact_id = 'CRM-501'",
            0,
            "SELECT count(*) FROM interactions WHERE contact_id = 'CRM-502'",
        ),
        (
            "crm",
            "SELECT count(*) FROM purchases WHERE contact_id = 'CRM-501' AND buyer_name IS NULL",
            1,
            "SELECT count(*) FROM purchases WHERE contact_id = 'CRM-502' AND buyer_name IS NOT NULL",
        ),
        ("crm", "SELECT count(*) FROM forum_memberships WHERE contact_id = 'CRM-501'", 0, "SELECT 1"),
        (
            "mailing",
            "SELECT count(*) FROM subscribers WHERE lower(email) LIKE 'alice%'",
            0,
            "SELECT count(*) FROM subscribers WHERE email LIKE 'ben%'",
        ),
        (
            "mailing",
            "SELECT count(*) FROM consents WHERE consent_id = 'CON-1'",
            0,
            "SELECT count(*) FROM consents WHERE consent_id = 'CON-3'",
        ),
        (
            "recordings",
            "SELECT count(*) FROM recordings WHERE customer_id = 'C-1001'",
            0,
            "SELECT count(*) FROM recordings WHERE customer_id = 'C-1002'",
        ),
    ],
)
def test_stores_keep_only_what_the_report_retains_of_alice_and_all_of_ben(
    erased_alice: dict[str, Any], stack: Stack, system: str, alice: str, left: int, ben: str
) -> None:
    assert asyncio.run(_sql(stack, system, alice)) == left
    assert asyncio.run(_sql(stack, system, ben)) >= 1


def test_intake_drops_the_identifiers_once_the_request_is_final(
    erased_alice: dict[str, Any], stack: Stack
) -> None:
    assert (
        asyncio.run(
            _sql(
                stack,
                "intake",
                "SELECT count(*) FROM requests WHERE request_id = 'e2e-alice-1'"
                " AND sealed_identifiers IS NULL",
            )
        )
        == 1
    )


def test_audio_files_of_alice_are_gone(erased_alice: dict[str, Any], stack: Stack) -> None:
    names = {p.name for p in stack.recordings_dir.rglob("REC-100*.wav")}  # others are other tests'
    assert names == {"REC-1002-01.wav"}


def test_directory_holds_ben_and_not_alice(erased_alice: dict[str, Any], stack: Stack) -> None:
    from cli.main import seed_targets

    ldap = seed_targets(stack).ldap
    found = Directory(ldap).search_all("(|(uid=ahartley)(uid=bokafor))")
    assert sorted(uid for _, attributes in found for uid in attributes["uid"]) == ["bokafor"]


async def _all_messages(stack: Stack) -> list[tuple[str, bytes, bytes]]:
    consumer = make_consumer(stack.kafka_settings(), topics.all_topics(), "e2e-pii-scan")
    await consumer.start()
    seen: list[tuple[str, bytes, bytes]] = []
    try:
        for _ in range(20):
            batch = await consumer.getmany(timeout_ms=500)
            for records in batch.values():
                for r in records:
                    headers = b"".join(k.encode() + v for k, v in r.headers or ())
                    seen.append((r.topic, (r.key or b"") + headers, r.value or b""))
            if not batch and seen:
                break
    finally:
        await consumer.stop()
    return seen


def test_no_topic_carries_alices_identifiers_in_plaintext(erased_alice: dict[str, Any], stack: Stack) -> None:
    messages = asyncio.run(_all_messages(stack))
    assert {t for t, _, _ in messages} >= {
        topics.command_topic("billing"),
        topics.OUTCOMES,
        topics.REQUESTS_ACCEPTED,
        topics.REQUEST_STATUS,
    }
    for topic, key_and_headers, value in messages:
        blob = (key_and_headers + value).decode(errors="replace").lower()
        for needle in [*ALICE_PLAINTEXT, "c-1001", "ahartley"]:
            assert needle.lower() not in blob, f"{needle!r} in clear on {topic}"
