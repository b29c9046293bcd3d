"""What the embedded stack asks the broker before it sheds it (cli/shedding.py), against the
embedded broker: a group's unread messages count until it commits them, and a group that
committed nothing has all of its topics' messages to read."""

from __future__ import annotations

from uuid import uuid4

import pytest

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
