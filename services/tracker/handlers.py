"""What the tracker does with each message it consumes: decoded by the topic it came from,
handled by its type. Every handler is idempotent (a redelivery changes nothing)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import asyncpg
from aiokafka import ConsumerRecord
from pydantic import BaseModel, TypeAdapter

from services.tracker import schedule, store
from shared import topics
from shared.codec import decode
from shared.contracts import OutcomeReported, RequestAccepted
from shared.contracts.events import DeadlineExtended, RetrySystem
from shared.contracts.holds import HOLDS_MESSAGE, HoldsAnnounced, HoldUpdated

CONSUMED: dict[str, type[BaseModel] | TypeAdapter[Any]] = {
    topics.REQUESTS_ACCEPTED: RequestAccepted,
    topics.OUTCOMES: OutcomeReported,
    topics.HOLDS: HOLDS_MESSAGE,
    topics.DEADLINES: DeadlineExtended,
    topics.RETRIES: RetrySystem,
}


async def _ignore(pool: asyncpg.Pool, message: BaseModel) -> None:
    """A holds marker is for workers: the tracker needs only each hold's end."""


HANDLERS: dict[type[BaseModel], Callable[[asyncpg.Pool, Any], Awaitable[object]]] = {
    RequestAccepted: lambda pool, event: store.start_saga(pool, event, datetime.now(UTC)),
    OutcomeReported: store.record_outcome,
    HoldUpdated: schedule.record_hold,
    HoldsAnnounced: _ignore,
    DeadlineExtended: store.extend_deadline,
    RetrySystem: lambda pool, event: store.retry_system(pool, event, datetime.now(UTC)),
}


async def handle(pool: asyncpg.Pool, record: ConsumerRecord[bytes, bytes]) -> None:
    message: BaseModel = decode(record.value, CONSUMED[record.topic])
    await HANDLERS[type(message)](pool, message)


async def handle_group(pool: asyncpg.Pool, records: list[ConsumerRecord[bytes, bytes]]) -> None:
    """The messages of one request in a batch, in order: runs of outcomes in one transaction."""
    outcomes: list[OutcomeReported] = []
    for record in records:
        if record.topic == topics.OUTCOMES:
            outcomes.append(decode(record.value, OutcomeReported))
            continue
        if outcomes:
            await store.record_outcomes(pool, outcomes)
            outcomes = []
        await handle(pool, record)
    if outcomes:
        await store.record_outcomes(pool, outcomes)
