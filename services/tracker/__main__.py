"""The tracker's process: consume acceptances and outcomes, keep sagas, relay status events."""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime

import asyncpg
from aiokafka import ConsumerRecord

from services.tracker import store
from shared import topics
from shared.codec import PoisonMessage, decode
from shared.contracts import OutcomeReported, RequestAccepted
from shared.db import apply_schema, create_pool, ensure_database
from shared.kafka import ensure_topics, make_consumer, make_producer, start_with_retry
from shared.outbox import OutboxRelay
from shared.service import mark_ready, run_service
from shared.settings import DatabaseSettings, KafkaSettings

log = logging.getLogger("lethe.tracker")


async def handle(pool: asyncpg.Pool, record: ConsumerRecord[bytes, bytes]) -> None:
    if record.topic == topics.REQUESTS_ACCEPTED:
        await store.start_saga(pool, decode(record.value, RequestAccepted), datetime.now(UTC))
    else:
        await store.record_outcome(pool, decode(record.value, OutcomeReported))


async def main(stop: asyncio.Event) -> None:
    kafka = KafkaSettings()
    db = DatabaseSettings()
    await ensure_database(db.database_url)
    pool = await create_pool(db.database_url, db.db_pool_max)
    await apply_schema(pool, *store.SCHEMA)
    await ensure_topics(kafka, topics.all_topics())
    producer = make_producer(kafka)
    consumer = make_consumer(kafka, [topics.REQUESTS_ACCEPTED, topics.OUTCOMES], "lethe-tracker")
    await start_with_retry(producer, "producer")
    await start_with_retry(consumer, "consumer")
    relay = asyncio.create_task(OutboxRelay(pool, producer).run())
    log.info("tracker started")
    mark_ready()
    try:
        while not stop.is_set():
            batches = await consumer.getmany(timeout_ms=200)
            for records in batches.values():
                for record in records:
                    try:
                        await handle(pool, record)
                    except PoisonMessage as exc:
                        log.warning(
                            "poison message dead-lettered",
                            extra={"topic": record.topic, "offset": record.offset, "error": str(exc)},
                        )
                        await producer.send_and_wait(
                            topics.DEAD_LETTERS,
                            value=record.value or b"",
                            key=record.key,
                            headers=[
                                ("lethe-error", str(exc).encode()[:1000]),
                                ("lethe-source-topic", record.topic.encode()),
                            ],
                        )
            if batches:
                await consumer.commit()
    finally:
        relay.cancel()
        await asyncio.gather(relay, return_exceptions=True)
        await consumer.stop()
        await producer.stop()
        await pool.close()


if __name__ == "__main__":
    run_service("lethe-tracker", main)
