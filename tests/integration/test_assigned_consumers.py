"""Consumers that read by assignment (LETHE_KAFKA_GROUP_MEMBERSHIP=assign, the embedded
stack's setting), against the embedded broker: every partition of their topics, as the broker
has them, with no group join, and their commits still kept for the group."""

from __future__ import annotations

import asyncio
from uuid import uuid4

import pytest
from aiokafka import TopicPartition

from shared.kafka import ensure_topics, make_consumer, make_producer, start_with_retry
from shared.settings import KafkaSettings

pytestmark = pytest.mark.integration


async def _read(settings: KafkaSettings, topic: str, group: str, count: int) -> list[bytes]:
    consumer = make_consumer(settings, [topic], group)
    await start_with_retry(consumer, "consumer")
    try:
        # Given every partition the broker has, at once: no group formed to share them out.
        assert consumer.assignment() == {TopicPartition(topic, p) for p in range(3)}
        values: list[bytes] = []
        while len(values) < count:
            batches = await consumer.getmany(timeout_ms=500)
            values += [r.value for records in batches.values() for r in records if r.value is not None]
        await consumer.commit()
        return values
    finally:
        await consumer.stop()


async def test_an_assigned_consumer_reads_every_partition_and_the_next_resumes_from_its_commit(
    broker: KafkaSettings,
) -> None:
    topic, group = f"assigned-{uuid4().hex[:8]}", f"g-{uuid4().hex[:8]}"
    await ensure_topics(broker.model_copy(update={"topic_partitions": 3}), [topic])
    # Settings that say one partition: the assignment is what the broker has, all three.
    assigned = broker.model_copy(update={"group_membership": "assign", "topic_partitions": 1})
    producer = make_producer(broker)
    await start_with_retry(producer, "producer")
    try:
        for n in range(6):
            await producer.send_and_wait(topic, f"a{n}".encode(), partition=n % 3)
        assert sorted(await _read(assigned, topic, group, 6)) == [f"a{n}".encode() for n in range(6)]
        for n in range(3):
            await producer.send_and_wait(topic, f"b{n}".encode(), partition=n)
        # Another consumer of the group starts where the first committed: only what came after.
        assert sorted(await _read(assigned, topic, group, 3)) == [b"b0", b"b1", b"b2"]
    finally:
        await producer.stop()


async def test_an_assigned_consumer_waits_for_its_topic_to_be_made(broker: KafkaSettings) -> None:
    topic = f"assigned-{uuid4().hex[:8]}"
    settings = broker.model_copy(update={"group_membership": "assign"})
    consumer = make_consumer(settings, [topic], f"g-{topic}")
    starting = asyncio.create_task(start_with_retry(consumer, "consumer"))
    try:
        await asyncio.sleep(0.5)
        assert not starting.done()
        await ensure_topics(broker, [topic])
        await asyncio.wait_for(starting, 10)
        assert consumer.assignment() == {TopicPartition(topic, p) for p in range(broker.topic_partitions)}
    finally:
        starting.cancel()
        await consumer.stop()
