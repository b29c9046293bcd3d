"""Adaptive fetch wait against the embedded broker: aiokafka's private fetcher attribute is
pinned here, so an aiokafka upgrade that renames it fails this test instead of silently
leaving every consumer polling at the idle pace (or the busy pace, burning CPU)."""

from __future__ import annotations

from uuid import uuid4

import pytest

from shared.kafka import ensure_topics, make_consumer, make_producer, pace_fetches, start_with_retry
from shared.settings import KafkaSettings

pytestmark = pytest.mark.integration


async def test_an_idle_consumer_backs_off_and_snaps_back_when_messages_flow(broker: KafkaSettings) -> None:
    settings = broker.model_copy(update={"idle_fetch_max_wait_ms": 80})
    topic = f"pacing-{uuid4().hex[:8]}"
    await ensure_topics(settings, [topic])
    consumer = make_consumer(settings, [topic], f"g-{topic}")
    producer = make_producer(settings)
    await start_with_retry(consumer, "consumer")
    await start_with_retry(producer, "producer")
    try:
        fetcher = consumer._fetcher
        assert fetcher._fetch_max_wait_ms == 10
        waits = []
        for _ in range(4):
            pace_fetches(consumer, bool(await consumer.getmany(timeout_ms=100)))
            waits.append(fetcher._fetch_max_wait_ms)
        assert waits == [20, 40, 80, 80]  # doubling while idle, capped

        await producer.send_and_wait(topic, b"x", key=b"k")
        received = []
        while not received:  # still delivered at the idle pace; then back to the short wait
            batches = await consumer.getmany(timeout_ms=1000)
            pace_fetches(consumer, bool(batches))
            received = [r for records in batches.values() for r in records]
        assert received[0].value == b"x"
        assert fetcher._fetch_max_wait_ms == 10
    finally:
        await consumer.stop()
        await producer.stop()


async def test_without_an_idle_wait_the_fetch_wait_never_changes(broker: KafkaSettings) -> None:
    """Real Kafka answers a fetch as soon as data arrives: there, nothing is adapted."""
    consumer = make_consumer(broker, [f"pacing-{uuid4().hex[:8]}"], f"g-{uuid4().hex[:8]}")
    await start_with_retry(consumer, "consumer")
    try:
        for _ in range(3):
            pace_fetches(consumer, False)
        assert consumer._fetcher._fetch_max_wait_ms == broker.fetch_max_wait_ms
    finally:
        await consumer.stop()
