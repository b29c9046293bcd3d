"""The tracker's process: consume acceptances, outcomes and hold changes, keep sagas, dispatch
deferred erasures when they fall due, re-send what a forgetful broker lost, relay status events."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta

import asyncpg

from services.tracker import forgetting, recipients, recovery, schedule, store, sweep
from services.tracker.handlers import CONSUMED, Tracker, handle, handle_group, together
from services.tracker.settings import TrackerSettings
from shared import fetching, topics
from shared.broker_memory import SENTINEL_DDL, BrokerMemory, since_shed_notice, until_next_check
from shared.crypto import IdentifierSeal
from shared.db import apply_schema, create_pool, ensure_database
from shared.delivery import TRANSIENT, Publisher, consume_forever
from shared.kafka import ensure_topics, make_consumer, make_producer, start_with_retry, warn_if_unencrypted
from shared.outbox import OutboxRelay
from shared.recipients.plan import Planner
from shared.recipients.settings import RegisterSettings
from shared.service import mark_ready, run_service, set_readiness
from shared.settings import (
    DatabaseSettings,
    DeploymentSettings,
    KafkaSettings,
    RecoverySettings,
    SecretsSettings,
)
from shared.telemetry import metrics
from shared.telemetry.messaging import quiet

log = logging.getLogger("lethe.tracker")
FORGET_EVERY_S = 60.0
SHED_SETTLE_S = 2.0  # about the time the submissions held during a shed take to go through


async def pause(stopping: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stopping.wait(), seconds)


async def every(
    seconds: float,
    stopping: asyncio.Event,
    what: str,
    work: Callable[[], Awaitable[None]],
    wait: Callable[[asyncio.Event, float], Awaitable[None]] = pause,
) -> None:
    """Run `work` now and every `seconds` (or when `wait` returns sooner); a database or broker
    that is away skips a turn."""
    while not stopping.is_set():
        try:
            with quiet():
                await work()
        except TRANSIENT as exc:
            log.warning(f"{what} skipped", extra={"error": type(exc).__name__})
        except Exception:  # never die quietly: timeouts and recovery depend on this loop
            log.exception(f"{what} failed")
        await wait(stopping, seconds)


async def tick(pool: asyncpg.Pool, settings: TrackerSettings, seal: IdentifierSeal | None = None) -> None:
    """Timeouts, due deferred erasures, and answers kept as early for a saga that exists."""
    now = datetime.now(UTC)
    await sweep.check_timeouts(pool, now, settings.timeouts())
    await schedule.dispatch_due(pool, now)
    await store.take_stranded(pool, seal, settings.max_rounds)
    overdue = await pool.fetchval(
        "SELECT count(*) FROM sagas WHERE completed_at IS NULL AND deadline < $1", now
    )
    metrics.overdue_requests.set(overdue)


async def forget(pool: asyncpg.Pool, settings: TrackerSettings) -> None:
    """Identifiers nothing can need any more (forgetting.py): no hurry, so once a minute."""
    kept = timedelta(days=settings.failed_identifiers_kept_days)
    await forgetting.forget_identifiers(pool, datetime.now(UTC), kept)


async def check_broker(
    memory: BrokerMemory, pool: asyncpg.Pool, kafka: KafkaSettings, settings: TrackerSettings
) -> None:
    if await memory.forgotten():
        log.warning("the broker forgot what it was sent: re-sending what the sagas wait for")
        await ensure_topics(kafka, topics.all_topics())
        await fetching.rewind_all()
        since = since_shed_notice()
        # After a shed, what finished before it was read: its few completions can wait until
        # the submissions held during the shed are through.
        settle = None if since is None else (lambda: asyncio.sleep(SHED_SETTLE_S))
        await recovery.recover(pool, datetime.now(UTC), recovery.window(settings, since), settle=settle)
        await memory.remember()


async def main(stop: asyncio.Event) -> None:
    kafka = KafkaSettings()
    warn_if_unencrypted(kafka, DeploymentSettings().development)
    db = DatabaseSettings()
    settings = TrackerSettings()
    watch = RecoverySettings()
    seal = SecretsSettings().seal()
    recipients.install(Planner(RegisterSettings().load()), seal)  # a bad register stops it here
    await ensure_database(db.database_url)
    pool = await create_pool(db.database_url, db.db_pool_max)
    await apply_schema(pool, *store.SCHEMA, SENTINEL_DDL)
    await ensure_topics(kafka, topics.all_topics())
    producer = make_producer(kafka)
    consumer = make_consumer(kafka, list(CONSUMED), topics.TRACKER_GROUP)
    await start_with_retry(producer, "producer")
    await start_with_retry(consumer, "consumer")
    publisher = Publisher(producer, seal, stop)
    memory = BrokerMemory(pool, producer, kafka, "tracker")
    tracker = Tracker(pool, seal, settings.max_rounds)
    tasks = [
        asyncio.create_task(OutboxRelay(pool, producer, service="tracker").run()),
        asyncio.create_task(every(settings.tick_s, stop, "tick", lambda: tick(pool, settings, seal))),
        asyncio.create_task(every(FORGET_EVERY_S, stop, "forgetting", lambda: forget(pool, settings))),
        asyncio.create_task(
            every(
                watch.broker_check_s,
                stop,
                "broker check",
                lambda: check_broker(memory, pool, kafka, settings),
                until_next_check,  # or at once when the embedded stack restarted the broker
            )
        ),
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
            lambda record: handle(tracker, record),
            publisher,
            topics.TRACKER_GROUP,
            handle_group=lambda records: handle_group(tracker, records),
            together=lambda: together(tracker),
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
