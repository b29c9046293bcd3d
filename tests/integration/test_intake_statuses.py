"""Intake folding the tracker's snapshots on a real PostgreSQL: a request that turns from
failed to completed calls upstream back again; an older snapshot changes nothing, reviews
included; after a broker loss, what the snapshots do not show the tracker took is sent again."""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from uuid import uuid4

import pytest
from aiokafka import ConsumerRecord

from services.intake import auth, callbacks, operations, reviews, store
from services.intake.models import SubmitRequest
from services.intake.service import IntakeContext, accept
from services.intake.statuses import fold_statuses
from services.tracker.saga import Saga, SystemSlot
from shared import topics
from shared.codec import encode
from shared.contracts import OutcomeReported, RequestStatus, RequestStatusChanged, RequestType, SystemState
from shared.contracts.outcomes import CategoryOutcome, ReviewItem
from shared.contracts.report import ReviewDecision
from shared.crypto import IdentifierSeal, new_identifier_key
from shared.db import apply_schema, create_pool, ensure_database
from shared.outbox import OUTBOX_DDL

pytestmark = pytest.mark.integration
T0 = datetime.now(UTC)


@pytest.fixture
async def ctx(fresh_db: str) -> AsyncIterator[IntakeContext]:
    await ensure_database(fresh_db)
    pool = await create_pool(fresh_db)
    await apply_schema(pool, *store.SCHEMA, *callbacks.SCHEMA, *auth.SCHEMA, *reviews.SCHEMA, OUTBOX_DDL)
    yield IntakeContext(pool, ["billing"], IdentifierSeal(new_identifier_key()), os.urandom(32).hex())
    await pool.close()


async def submitted(ctx: IntakeContext, request_id: str) -> Saga:
    body = {"request_id": request_id, "type": "erasure", "identity_verified": True}
    row = await accept(
        ctx, SubmitRequest.model_validate(body | {"subject": {"emails": ["a@example.com"]}}), "t"
    )
    await ctx.pool.execute(
        "UPDATE requests SET callback_url = 'https://upstream.example/cb' WHERE request_id = $1", request_id
    )
    saga = Saga(
        request_id, RequestType.ERASURE, row["subject_ref"], row["received_at"], row["deadline"], None
    )
    saga.slots["billing"] = SystemSlot("billing", SystemState.DISPATCHED, 1, T0, uuid4())
    return saga


def snapshot(saga: Saga, version: int) -> ConsumerRecord[bytes, bytes]:
    event = RequestStatusChanged(
        request_id=saga.request_id,
        version=version,
        status=saga.status,
        systems=[s.progress() for s in saga.slots.values()],
        report=saga.report(),
    )
    value = encode(event)
    return ConsumerRecord(topics.REQUEST_STATUS, 0, version, 0, 0, None, value, None, 0, len(value), ())


def answer(saga: Saga, status: str, reviews: list[ReviewItem] | None = None) -> OutcomeReported:
    slot = saga.slots["billing"]
    return OutcomeReported(
        request_id=saga.request_id,
        system="billing",
        command_id=slot.command_id,
        attempt=1,
        status=status,
        categories=[CategoryOutcome(category="accounts", found=1, erased=1)],
        reviews=reviews or [],
        started_at=T0,
        finished_at=T0 + timedelta(minutes=1),
    )


def review_item() -> ReviewItem:
    return ReviewItem(
        review_id=uuid4(),
        groups=[("accounts", "A-2")],
        records={"accounts": 1},
        reason="shared_phone",
        matched=["phones"],
        conflicting=["customer_ids"],
    )


async def test_a_request_failed_then_completed_by_a_late_answer_calls_upstream_again(
    ctx: IntakeContext,
) -> None:
    saga = await submitted(ctx, "st-late")
    saga.record(answer(saga, "failed"))
    await fold_statuses(ctx.pool, [snapshot(saga, 1)])
    assert saga.record(answer(saga, "done")) and saga.status is RequestStatus.COMPLETED
    await fold_statuses(ctx.pool, [snapshot(saga, 2)])
    sent = await ctx.pool.fetch("SELECT status_version, body->>'status' AS s FROM callbacks ORDER BY 1")
    assert [(r["status_version"], r["s"]) for r in sent] == [(1, "failed"), (2, "completed")]
    await fold_statuses(ctx.pool, [snapshot(saga, 2)])  # a repeat: nothing more
    assert await ctx.pool.fetchval("SELECT count(*) FROM callbacks") == 2


async def test_an_older_snapshot_read_again_does_not_put_reviews_back(ctx: IntakeContext) -> None:
    saga = await submitted(ctx, "st-old")
    item = review_item()
    saga.record(answer(saga, "done", [item]))
    first = snapshot(saga, 1)
    saga.decide(item.review_id, ReviewDecision.KEEP, "tok", "compliance", "a" * 64, T0)
    await fold_statuses(ctx.pool, [snapshot(saga, 2)])
    assert await ctx.pool.fetchval("SELECT state FROM reviews") == "kept"
    await fold_statuses(ctx.pool, [first])  # the broker's partition read again from its start
    assert await ctx.pool.fetchval("SELECT state FROM reviews") == "kept"
    assert await ctx.pool.fetchval("SELECT status_version FROM requests") == 2


async def sent_ids(ctx: IntakeContext, topic: str) -> list[str]:
    rows = await ctx.pool.fetch("SELECT value FROM outbox WHERE topic = $1 ORDER BY id", topic)
    return [json.loads(bytes(r["value"]))["message_id"] for r in rows]


async def test_after_a_broker_loss_extensions_and_decisions_the_tracker_has_not_shown_are_sent_again(
    ctx: IntakeContext,
) -> None:
    """Lost with the broker, they would leave the request waiting for ever (a second decision
    or extension is refused); sent again under the same id, a repeat changes nothing."""
    saga = await submitted(ctx, "st-lost")
    item = review_item()
    saga.record(answer(saga, "done", [item]))
    await fold_statuses(ctx.pool, [snapshot(saga, 1)])
    await operations.extend(ctx.pool, "st-lost", 2, "Records span five systems", T0)
    assert await reviews.decide(
        ctx.pool, item.review_id, ReviewDecision.KEEP, "not theirs", "tok", "compliance"
    )
    first = await sent_ids(ctx, topics.DEADLINES) + await sent_ids(ctx, topics.REVIEWS)

    assert await operations.resend_extensions(ctx.pool) == 1
    assert await reviews.resend_decisions(ctx.pool) == 1
    again = (await sent_ids(ctx, topics.DEADLINES))[1:] + (await sent_ids(ctx, topics.REVIEWS))[1:]
    assert again == first  # the same ids: the tracker's journal takes them as repeats

    # Once the tracker's snapshot shows both, nothing is sent again.
    saga.extend(2, T0 + timedelta(days=90), T0)
    saga.decide(item.review_id, ReviewDecision.KEEP, "tok", "compliance", "a" * 64, T0)
    await fold_statuses(ctx.pool, [snapshot(saga, 2)])
    assert await operations.resend_extensions(ctx.pool) == 0
    assert await reviews.resend_decisions(ctx.pool) == 0
