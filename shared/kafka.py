"""Kafka clients configured the one way Lethe uses them.

Consumers commit by hand after their work is durable (at-least-once); every timing that
matters on the embedded broker comes from `KafkaSettings`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaConnectionError, TopicAlreadyExistsError
from opentelemetry import propagate

from shared import fetching
from shared.settings import KafkaSettings

log = logging.getLogger(__name__)
Headers = list[tuple[str, bytes]]


def trace_headers() -> Headers:
    """W3C trace context of the current span, for the message about to be sent."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return [(k, v.encode()) for k, v in carrier.items()]


def make_producer(settings: KafkaSettings) -> AIOKafkaProducer:
    return AIOKafkaProducer(
        bootstrap_servers=settings.bootstrap,
        enable_idempotence=settings.idempotent_producer,
        acks="all",
        linger_ms=2,
    )


# Consumers off the hot path (retry topics, the holds view) wait longer between empty fetches:
# an idle consumer polling every 10 ms costs the broker CPU that the hot path needs.
COLD_FETCH_WAIT_MS = 250


def make_consumer(
    settings: KafkaSettings, topics: Sequence[str], group_id: str, cold: bool = False
) -> AIOKafkaConsumer:
    busy_ms = max(settings.fetch_max_wait_ms, COLD_FETCH_WAIT_MS) if cold else settings.fetch_max_wait_ms
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.bootstrap,
        group_id=group_id,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        fetch_max_wait_ms=busy_ms,
        session_timeout_ms=settings.session_timeout_ms,
        heartbeat_interval_ms=settings.heartbeat_interval_ms,
        max_poll_records=200,
    )
    consumer.subscribe(list(topics), listener=fetching.RewindLater(consumer))
    idle_ms = max(busy_ms, settings.idle_fetch_max_wait_ms or busy_ms)
    fetching.register(consumer, busy_ms, idle_ms)
    return consumer


async def start_with_retry(client: AIOKafkaProducer | AIOKafkaConsumer, what: str) -> None:
    """The broker may come up after us (or restart): keep trying with backoff."""
    delay = 0.2
    while True:
        try:
            await client.start()
            return
        except KafkaConnectionError:
            log.warning("kafka not reachable, retrying", extra={"component": what, "delay_s": delay})
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)


async def ensure_topics(settings: KafkaSettings, names: Sequence[str]) -> None:
    """Create topics explicitly: auto-created ones get the broker's default partition count."""
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.bootstrap)
    delay = 0.2
    for _ in range(50):
        try:
            await admin.start()
            break
        except KafkaConnectionError:
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)
    else:
        raise RuntimeError(f"LETHE_KAFKA_BOOTSTRAP: no broker at {settings.bootstrap}")
    try:
        existing = set(await admin.list_topics())
        missing = [n for n in names if n not in existing]
        if missing:
            try:
                await admin.create_topics(
                    [NewTopic(n, settings.topic_partitions, settings.replication_factor) for n in missing]
                )
            except TopicAlreadyExistsError:
                pass  # another service created it first
    finally:
        await admin.close()
