"""What the tracker does with each message it consumes: decoded by the topic it came from,
handled by its type. Every handler is idempotent (a redelivery changes nothing)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

import asyncpg
from aiokafka import ConsumerRecord
from pydantic import BaseModel, TypeAdapter

from services.tracker import notices, schedule, store
from shared import topics
from shared.codec import decode
from shared.contracts import OutcomeReported, RequestAccepted
from shared.contracts.events import DeadlineExtended, RetrySystem, ReviewDecided
from shared.contracts.holds import HOLDS_MESSAGE, HoldsAnnounced, HoldUpdated
from shared.contracts.notices import NoticeUpdated
from shared.crypto import IdentifierSeal
from shared.db import BATCH_LOCK_WAIT_MS, Db
from shared.together import GroupHandler


@dataclass(frozen=True)
class Tracker:
    """What the handlers work with: the database (a pool, or a batch's connection in its
    transaction), the key that opens what systems learnt (for the identity search's next
    round; None searches no further than round 1), its bound."""

    db: Db
    seal: IdentifierSeal | None = None
    max_rounds: int = 3


CONSUMED: dict[str, type[BaseModel] | TypeAdapter[Any]] = {
    topics.REQUESTS_ACCEPTED: RequestAccepted,
    topics.OUTCOMES: OutcomeReported,
    topics.HOLDS: HOLDS_MESSAGE,
    topics.DEADLINES: DeadlineExtended,
    topics.RETRIES: RetrySystem,
    topics.REVIEWS: ReviewDecided,
    topics.NOTICE_UPDATES: NoticeUpdated,
}


async def _ignore(tracker: Tracker, message: BaseModel) -> None:
    """A holds marker is for workers: the tracker needs only each hold's end."""


def _now() -> datetime:
    return datetime.now(UTC)


HANDLERS: dict[type[BaseModel], Callable[[Tracker, Any], Awaitable[object]]] = {
    RequestAccepted: lambda t, e: store.start_saga(t.db, e, _now(), t.seal, t.max_rounds),
    OutcomeReported: lambda t, e: store.record_outcome(t.db, e, t.seal, t.max_rounds),
    HoldUpdated: lambda t, e: schedule.record_hold(t.db, e),
    HoldsAnnounced: _ignore,
    DeadlineExtended: lambda t, e: store.extend_deadline(t.db, e),
    RetrySystem: lambda t, e: store.retry_system(t.db, e, _now()),
    ReviewDecided: lambda t, e: store.decide_review(t.db, e, _now(), t.seal),
    NoticeUpdated: lambda t, e: notices.notice_updated(t.db, e),
}


async def handle(tracker: Tracker, record: ConsumerRecord[bytes, bytes]) -> None:
    message: BaseModel = decode(record.value, CONSUMED[record.topic])
    await HANDLERS[type(message)](tracker, message)


async def handle_group(tracker: Tracker, records: list[ConsumerRecord[bytes, bytes]]) -> None:
    """The messages of one request in a batch, in order: runs of outcomes in one transaction."""
    outcomes: list[OutcomeReported] = []
    for record in records:
        if record.topic == topics.OUTCOMES:
            outcome = decode(record.value, OutcomeReported)
            if outcomes and outcomes[0].request_id != outcome.request_id:  # a key that lied
                await store.record_outcomes(tracker.db, outcomes, tracker.seal, tracker.max_rounds)
                outcomes = []
            outcomes.append(outcome)
            continue
        if outcomes:
            await store.record_outcomes(tracker.db, outcomes, tracker.seal, tracker.max_rounds)
            outcomes = []
        await handle(tracker, record)
    if outcomes:
        await store.record_outcomes(tracker.db, outcomes, tracker.seal, tracker.max_rounds)


@asynccontextmanager
async def together(tracker: Tracker) -> AsyncIterator[GroupHandler]:
    """Several requests' messages of a batch in one transaction (shared/delivery.py): one
    BEGIN and COMMIT for all, not one pair a request. Each handler runs in it as in its own
    (`shared.db.transaction`); a saga two of them touch is changed in turn, as it would be."""
    if not isinstance(tracker.db, asyncpg.Pool):
        raise TypeError("a batch's transaction is opened from the pool")
    async with tracker.db.acquire() as conn, conn.transaction():
        # A saga locked elsewhere (another instance, a timer): shared.db.BATCH_LOCK_WAIT_MS.
        await conn.execute(f"SET LOCAL lock_timeout = {BATCH_LOCK_WAIT_MS}")
        in_it = replace(tracker, db=conn)
        yield lambda records: handle_group(in_it, records)
