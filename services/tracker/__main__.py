"""The tracker's process: consume acceptances, outcomes and hold changes, keep sagas, dispatch
deferred erasures when they fall due, relay status events."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import UTC, datetime, timedelta

import asyncpg
from aiokafka import ConsumerRecord
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from services.tracker import schedule, store
from services.tracker.saga import Timeouts
from shared import topics
from shared.codec import decode
from shared.contracts import OutcomeReported, RequestAccepted
from shared.contracts.events import DeadlineExtended, RetrySystem
from shared.contracts.holds import HoldUpdated
from shared.db import apply_schema, create_pool, ensure_database
from shared.delivery import TRANSIENT, Publisher, consume_forever
from shared.kafka import ensure_topics, make_consumer, make_producer, start_with_retry
from shared.outbox import OutboxRelay
from shared.service import mark_ready, run_service, set_readiness
from shared.settings import DatabaseSettings, KafkaSettings
from shared.telemetry import metrics
from shared.telemetry.messaging import quiet

log = logging.getLogger("lethe.tracker")


class TrackerSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LETHE_TRACKER_", extra="ignore")

    tick_s: float = Field(
        30.0, gt=0, le=3600, description="How often timeouts and due deferred erasures are checked."
    )
    system_timeout_s: float = Field(
        900.0,
        gt=0,
        le=7 * 86400,
        description="How long a system may stay silent before its command is re-sent.",
    )
    max_attempts: int = Field(3, ge=1, le=20, description="Tries of a silent system before it is failed.")
    timeout_backoff: float = Field(
        2.0, ge=1.0, le=10.0, description="Each further try waits this much longer."
    )

    def timeouts(self) -> Timeouts:
        return Timeouts(timedelta(seconds=self.system_timeout_s), self.max_attempts, self.timeout_backoff)


async def handle(pool: asyncpg.Pool, record: ConsumerRecord[bytes, bytes]) -> None:
    if record.topic == topics.REQUESTS_ACCEPTED:
        await store.start_saga(pool, decode(record.value, RequestAccepted), datetime.now(UTC))
    elif record.topic == topics.HOLDS:
        await schedule.schedule_hold_release(pool, decode(record.value, HoldUpdated))
    elif record.topic == topics.DEADLINES:
        await store.extend_deadline(pool, decode(record.value, DeadlineExtended))
    elif record.topic == topics.RETRIES:
        await store.retry_system(pool, decode(record.value, RetrySystem), datetime.now(UTC))
    else:
        await store.record_outcome(pool, decode(record.value, OutcomeReported))


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


async def tick(pool: asyncpg.Pool, settings: TrackerSettings, stopping: asyncio.Event) -> None:
    """Timeouts and due deferred erasures, every tick_s; a database that is away skips a tick."""
    while not stopping.is_set():
        now = datetime.now(UTC)
        try:
            with quiet():
                await _tick_once(pool, settings, now)
        except TRANSIENT as exc:
            log.warning("tick skipped", extra={"error": type(exc).__name__})
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stopping.wait(), settings.tick_s)


async def _tick_once(pool: asyncpg.Pool, settings: TrackerSettings, now: datetime) -> None:
    await store.check_timeouts(pool, now, settings.timeouts())
    await schedule.dispatch_due(pool, now)
    overdue = await pool.fetchval(
        "SELECT count(*) FROM sagas WHERE completed_at IS NULL AND deadline < $1", now
    )
    metrics.overdue_requests.set(overdue)


async def main(stop: asyncio.Event) -> None:
    kafka = KafkaSettings()
    db = DatabaseSettings()
    settings = TrackerSettings()
    await ensure_database(db.database_url)
    pool = await create_pool(db.database_url, db.db_pool_max)
    await apply_schema(pool, *store.SCHEMA)
    await ensure_topics(kafka, topics.all_topics())
    producer = make_producer(kafka)
    consumer = make_consumer(
        kafka,
        [topics.REQUESTS_ACCEPTED, topics.OUTCOMES, topics.HOLDS, topics.DEADLINES, topics.RETRIES],
        "lethe-tracker",
    )
    await start_with_retry(producer, "producer")
    await start_with_retry(consumer, "consumer")
    publisher = Publisher(producer, stop)
    tasks = [
        asyncio.create_task(OutboxRelay(pool, producer, service="tracker").run()),
        asyncio.create_task(tick(pool, settings, stop)),
    ]

    async def readiness() -> dict[str, bool]:
        checks = {"database": False}
        with contextlib.suppress(*TRANSIENT):
            checks["database"] = await asyncio.wait_for(pool.fetchval("SELECT true"), 2) is True
        return checks

    set_readiness(readiness)
    log.info("tracker started")
    mark_ready()
    try:
        await consume_forever(
            consumer,
            lambda record: handle(pool, record),
            publisher,
            "lethe-tracker",
            handle_group=lambda records: handle_group(pool, records),
        )

    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await consumer.stop()
        await producer.stop()
        await pool.close()


if __name__ == "__main__":
    run_service("lethe-tracker", main)
