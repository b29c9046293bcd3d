"""What the embedded stack asks the broker before it sheds it (cli/shedding.py), against the
embedded broker: a group's unread messages count until it commits them, and a group that
committed nothing has all of its topics' messages to read."""

from __future__ import annotations

from uuid import uuid4

import pytest
from aiokafka import TopicPartition

from cli.shedding import produced, unread
from shared.kafka import ensure_topics, make_consumer, make_producer, start_with_retry
from shared.settings import KafkaSettings

pytestmark = pytest.mark.integration


async def test_a_group_has_unread_what_it_has_not_committed(broker: KafkaSettings) -> None:
    topic, other = f"shed-{uuid4().hex[:8]}", f"shed-{uuid4().hex[:8]}"
    await ensure_topics(broker, [topic, other])
    groups = {f"g-{topic}": (topic,), f"idle-{topic}": (topic,), f"g-{other}": (other,)}
    producer = make_producer(broker)
    await start_with_retry(producer, "producer")
    try:
        for n in range(3):
            await producer.send_and_wait(topic, b"x", key=f"k{n}".encode())
    finally:
        await producer.stop()
    assert await produced(broker, [topic, other]) == 3
    assert await unread(broker, groups) == {f"g-{topic}": 3, f"idle-{topic}": 3, f"g-{other}": 0}

    consumer = make_consumer(broker, [topic], f"g-{topic}")
    await start_with_retry(consumer, "consumer")
    try:
        seen = 0
        while seen < 3:
            batches = await consumer.getmany(timeout_ms=500)
            seen += sum(len(records) for records in batches.values())
        await consumer.commit()
    finally:
        await consumer.stop()
    # The probe joined no group: the idle one still has committed nothing.
    assert await unread(broker, groups) == {f"g-{topic}": 0, f"idle-{topic}": 3, f"g-{other}": 0}


async def test_a_place_of_a_forgotten_log_counts_as_nothing_read(broker: KafkaSettings) -> None:
    """A consumer's place on the broker before it restarted, committed to the new one (one that
    reads by assignment commits with no generation to refuse it), is past the new partition's
    end as a fetch reports it: what the group read there is not known, so none of it counts as
    read (a shed then would lose it). A place within what a fetch reports is taken as it is."""
    topic = f"shed-{uuid4().hex[:8]}"
    await ensure_topics(broker, [topic])
    producer = make_producer(broker)
    await start_with_retry(producer, "producer")
    try:
        for n in range(2):
            await producer.send_and_wait(topic, b"x", partition=0, key=f"k{n}".encode())
    finally:
        await producer.stop()
    assigned = broker.model_copy(update={"group_membership": "assign"})
    for group, place, left in ((f"stale-{topic}", 500, 2), (f"read-{topic}", 2, 0)):
        consumer = make_consumer(assigned, [topic], group)
        await start_with_retry(consumer, "consumer")
        try:
            await consumer.commit({TopicPartition(topic, 0): place})
        finally:
            await consumer.stop()
        assert await unread(broker, {group: (topic,)}) == {group: left}
