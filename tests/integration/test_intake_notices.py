"""Intake's notices table under the rules the reviewer asked for: a command sent again reports
what became of a settled notice; acknowledging or closing again reports again (200, not 409);
a notice never sent cannot be acknowledged; compliance's note is sealed; identifiers kept for
compliance are dropped after a bounded time."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from uuid import UUID, uuid4

import asyncpg
import httpx
import pytest

from services.intake import notices
from services.intake.notice_sender import NoticeSender, Retries
from shared.contracts.base import RequestType
from shared.contracts.notices import NoticeCategory, NotifyRecipient
from shared.crypto import IdentifierSeal, new_identifier_key
from shared.db import apply_schema, create_pool, ensure_database
from shared.identity import Identities
from shared.outbox import OUTBOX_DDL
from shared.recipients.register import RegisterFile

pytestmark = pytest.mark.integration
NOW = datetime(2026, 12, 1, tzinfo=UTC)
SEAL = IdentifierSeal(new_identifier_key())
REGISTER = RegisterFile.model_validate(
    {
        "version": "t",
        "recipients": [
            {
                "id": "mailer",
                "name": "Bulk mailer",
                "role": "processor",
                "receives": {"mailing": ["subscribers"]},
                "identifiers": ["emails"],
                "notify": {
                    "channel": "webhook",
                    "url": "https://m.example/h",
                    "secret_env": "LETHE_RECIPIENT_M",
                },
                "must_acknowledge": True,
            },
            {
                "id": "printer",
                "name": "Printer",
                "role": "controller",
                "receives": {"mailing": ["subscribers"]},
                "notify": {"channel": "manual", "contact": "desk"},
            },
        ],
    }
)


@pytest.fixture
async def pool(fresh_db: str) -> AsyncIterator[asyncpg.Pool]:
    await ensure_database(fresh_db)
    db = await create_pool(fresh_db)
    await apply_schema(db, OUTBOX_DDL, *notices.SCHEMA)
    yield db
    await db.close()


def command(recipient: str = "mailer") -> NotifyRecipient:
    notice_id = uuid4()
    return NotifyRecipient(
        message_id=notice_id,
        request_id="r1",
        notice_id=notice_id,
        recipient_id=recipient,
        request_type=RequestType.ERASURE,
        categories=[NoticeCategory(system="mailing", category="subscribers")],
        sealed_identifiers=SEAL.seal(Identities(emails=["a@example.com"])),
        must_acknowledge=recipient == "mailer",
    )


async def reports(pool: asyncpg.Pool) -> list[dict[str, object]]:
    rows = await pool.fetch("SELECT value FROM outbox ORDER BY id")
    return [json.loads(bytes(r["value"])) for r in rows]


async def test_acknowledged_notice_is_reported_again_on_resend_ack_and_close(pool: asyncpg.Pool) -> None:
    sent = command()
    await notices.take(pool, REGISTER, sent, NOW)
    # Never sent: it cannot be acknowledged, and its identifiers stay for compliance.
    with pytest.raises(notices.NotAcknowledgeable, match="notice: is pending with 0 tries"):
        await notices.acknowledge(pool, sent.notice_id, "mailer", "tok-r", NOW)
    stored = await notices.get(pool, sent.notice_id, None)
    assert stored is not None and stored["sealed_identifiers"] and stored["delivered_at"] is None
    await pool.execute(
        "UPDATE notices SET state = 'delivered', attempts = 1 WHERE notice_id = $1", sent.notice_id
    )
    assert await notices.acknowledge(pool, sent.notice_id, "printer", "tok-p", NOW) is None  # another's
    acked = await notices.acknowledge(pool, sent.notice_id, "mailer", "tok-r", NOW)
    assert acked is not None and acked["state"] == "acknowledged" and acked["closed_by"] == "tok-r"
    first = await reports(pool)
    assert [(r["state"], r["closed_by"]) for r in first] == [("acknowledged", "tok-r")]

    # Each repeat reports the same evidence again (the first report may be lost with a broker).
    await notices.take(pool, REGISTER, sent, NOW + timedelta(hours=1))
    again = await notices.acknowledge(pool, sent.notice_id, "mailer", "tok-r", NOW + timedelta(hours=2))
    closed = await notices.close(pool, sent.notice_id, "phoned", "tok-c", NOW + timedelta(hours=3), SEAL)
    assert again is not None and closed is not None and closed["acknowledged_via"] == "recipient"
    later = (await reports(pool))[1:]
    assert len(later) == 3 and {(r["state"], r["at"], r["closed_by"]) for r in later} == {
        ("acknowledged", first[0]["at"], "tok-r")
    }


async def test_a_failed_notice_cannot_be_acknowledged(pool: asyncpg.Pool) -> None:
    sent = command()
    await notices.take(pool, REGISTER, sent, NOW)
    await pool.execute(
        "UPDATE notices SET state = 'failed', attempts = 10 WHERE notice_id = $1", sent.notice_id
    )
    with pytest.raises(notices.NotAcknowledgeable, match="notice: is failed"):
        await notices.acknowledge(pool, sent.notice_id, "mailer", "tok-r", NOW)
    await notices.take(pool, REGISTER, sent, NOW)  # resent: its failure is reported again
    assert [r["state"] for r in await reports(pool)] == ["failed"]


async def test_the_note_is_sealed_and_task_identifiers_are_dropped_in_time(pool: asyncpg.Pool) -> None:
    task, kept = command("printer"), command("printer")
    await notices.take(pool, REGISTER, task, NOW)
    await notices.take(pool, REGISTER, kept, NOW + timedelta(days=20))
    closed = await notices.close(pool, task.notice_id, "phoned Alice at home", "tok-c", NOW, SEAL)
    assert (
        closed is not None
        and "Alice" not in closed["note"]
        and SEAL.open_text(closed["note"]) == "phoned Alice at home"
    )
    await pool.execute("UPDATE notices SET created_at = $2 WHERE notice_id = $1", kept.notice_id, NOW)
    await notices.take(pool, REGISTER, command("printer"), NOW)
    sender = NoticeSender(pool, REGISTER, {}, SEAL, Retries(), keep_task_identifiers=timedelta(days=30))
    assert await sender.forget_task_identifiers(datetime.now(UTC) + timedelta(days=31)) == 2
    assert await pool.fetchval("SELECT count(*) FROM notices WHERE sealed_identifiers IS NOT NULL") == 0


async def test_a_recipient_may_acknowledge_from_its_webhook_before_the_sender_records_the_try(
    pool: asyncpg.Pool,
) -> None:
    """A recipient that acknowledges while handling the webhook (or as soon as it returns) must
    not be told 409: the sender counts the try when it leases the notice, before sending."""
    sent = command()
    await notices.take(pool, REGISTER, sent, NOW)
    answers: list[object] = []

    async def recipient(request: httpx.Request) -> httpx.Response:
        notice_id = UUID(json.loads(request.content)["notice_id"])
        answers.append(await notices.acknowledge(pool, notice_id, "mailer", "tok-r", datetime.now(UTC)))
        return httpx.Response(204)

    sender = NoticeSender(pool, REGISTER, {"mailer": "s" * 32}, SEAL, Retries())
    sender.client = httpx.AsyncClient(transport=httpx.MockTransport(recipient))
    assert await sender.send_due(datetime.now(UTC) + timedelta(seconds=1)) == 1
    stored = await notices.get(pool, sent.notice_id, None)
    assert stored is not None and len(answers) == 1 and answers[0] is not None
    assert (stored["state"], stored["attempts"], stored["acknowledged_via"]) == (
        "acknowledged",
        1,
        "recipient",
    )
    assert [r["state"] for r in await reports(pool)] == ["acknowledged"]  # the sender's late record: none


async def test_a_notice_that_can_never_be_sent_counts_no_try(pool: asyncpg.Pool) -> None:
    sent = command()
    await notices.take(pool, REGISTER, sent, NOW)
    sender = NoticeSender(pool, REGISTER, {}, SEAL, Retries())  # no secret for the mailer
    assert await sender.send_due(datetime.now(UTC) + timedelta(seconds=1)) == 0
    stored = await notices.get(pool, sent.notice_id, None)
    assert stored is not None and (stored["state"], stored["attempts"]) == ("failed", 0)


async def test_a_requests_notices_taken_together_are_each_taken_as_alone(pool: asyncpg.Pool) -> None:
    """The notices of one change arrive together and are stored in one transaction: a new one
    waits to be sent, one for a recipient this register lacks fails (and is reported), and one
    sent again after it failed is reported again; nothing is taken twice."""
    resent, new, unknown = command(), command("printer"), command("nobody")
    await notices.take(pool, REGISTER, resent, NOW)
    await pool.execute("UPDATE notices SET state = 'failed' WHERE notice_id = $1", resent.notice_id)
    await notices.take_many(pool, REGISTER, [resent, new, unknown], NOW)
    states = {r["notice_id"]: r["state"] for r in await pool.fetch("SELECT notice_id, state FROM notices")}
    assert states == {resent.notice_id: "failed", new.notice_id: "pending", unknown.notice_id: "failed"}
    assert sorted(r["state"] for r in await reports(pool)) == ["failed", "failed"]
    await notices.take_many(pool, REGISTER, [new, unknown], NOW)  # redelivered: each stored once
    assert await pool.fetchval("SELECT count(*) FROM notices") == 3


async def test_a_group_of_commands_is_stored_once_each_and_reports_what_it_must(pool: asyncpg.Pool) -> None:
    """A request's commands arrive together and are stored in one statement: twins once (and
    reported once), a recipient intake's register lacks failed and reported, one sent again
    reported again if settled, and nothing reported for new pending ones."""
    settled, fresh, task = command(), command(), command("printer")
    await notices.take(pool, REGISTER, settled, NOW)
    await pool.execute("UPDATE notices SET state = 'failed' WHERE notice_id = $1", settled.notice_id)
    await notices.take_many(pool, REGISTER, [fresh, task, fresh], NOW)
    assert await reports(pool) == []  # new and pending: nothing to report yet
    unknown = command("stranger")
    await notices.take_many(pool, REGISTER, [settled, unknown, task, unknown], NOW + timedelta(hours=1))
    rows = {r["notice_id"]: r for r in await pool.fetch("SELECT * FROM notices")}
    assert len(rows) == 4 and rows[fresh.notice_id]["state"] == rows[task.notice_id]["state"] == "pending"
    assert rows[unknown.notice_id]["state"] == "failed"
    assert rows[unknown.notice_id]["last_error"] == "recipient not in intake's register"
    assert sorted((r["notice_id"], r["state"]) for r in await reports(pool)) == sorted(
        [(str(settled.notice_id), "failed"), (str(unknown.notice_id), "failed")]
    )
