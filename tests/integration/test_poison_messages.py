"""A poison message of any size or shape is dead-lettered and its consumer goes on: one too
large to keep sealed (it could never be sent, and was retried for good) leaves a letter with
its size and no body; one nested deeper than a parser goes (whose ids were read again while
dead-lettering it, raising past every handler) leaves a letter as any other."""

from __future__ import annotations

import asyncio
from uuid import uuid4

import pytest
from aiokafka import AIOKafkaProducer, ConsumerRecord
from cryptography.fernet import Fernet

from cli.dlq import DeadLetter, read_topic
from shared import topics
from shared.codec import decode
from shared.contracts import OutcomeReported
from shared.crypto import IdentifierSeal
from shared.dead_letters import id_headers
from shared.delivery import Publisher, consume_forever
from shared.kafka import ensure_topics, make_consumer, make_producer
from shared.settings import KafkaSettings

pytestmark = pytest.mark.integration
GOOD = b'{"good": true}'


async def handled_after(
    broker: KafkaSettings, poison: bytes, key: bytes = b"k", headers: list[tuple[str, bytes]] | None = None
) -> tuple[list[bytes], list[DeadLetter]]:
    """What a consumer handles of [poison, a good message] on a topic of its own, and the dead
    letters that came from that topic."""
    topic = f"lethe.poison.{uuid4().hex[:8]}.v1"
    await ensure_topics(broker, [topic, topics.DEAD_LETTERS])
    # Any client may write up to the broker's limit, past the producer's default request size.
    hostile = AIOKafkaProducer(bootstrap_servers=broker.bootstrap, max_request_size=4 * 1024 * 1024)
    await hostile.start()
    await hostile.send_and_wait(topic, key=key, value=poison, headers=headers or [])
    await hostile.send_and_wait(topic, key=b"k", value=GOOD)
    await hostile.stop()
    handled: list[bytes] = []

    async def handle(record: ConsumerRecord[bytes, bytes]) -> None:
        if record.value != GOOD:
            decode(record.value, OutcomeReported)  # raises PoisonMessage
        handled.append(record.value)

    producer = make_producer(broker)
    await producer.start()
    consumer = make_consumer(broker, [topic], f"poison-{uuid4().hex[:8]}")
    await consumer.start()
    publisher = Publisher(producer, IdentifierSeal(Fernet.generate_key().decode()))
    task = asyncio.create_task(consume_forever(consumer, handle, publisher, "poison"))
    try:
        for _ in range(150):
            if handled or task.done():
                break
            await asyncio.sleep(0.1)
        assert not task.done(), f"the consumer died: {task.exception()!r}"
    finally:
        publisher.stopping.set()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await consumer.stop()
        await producer.stop()
    source = dict(headers or ()).get("lethe-source-topic", topic.encode())[:256].decode()
    letters = [DeadLetter.of(r) for r in await read_topic(broker, topics.DEAD_LETTERS)]
    return handled, [letter for letter in letters if letter.source_topic == source]


async def test_a_poison_message_too_large_to_keep_is_dead_lettered_without_its_body(
    broker: KafkaSettings,
) -> None:
    handled, [letter] = await handled_after(broker, b"x" * 700_000)
    assert handled == [GOOD]
    assert letter.body_dropped and "700001 bytes not kept" in letter.error


async def test_a_poison_message_nested_past_the_parser_is_dead_lettered(broker: KafkaSettings) -> None:
    assert id_headers(b"[" * 5000) == []
    # Not JSON throughout (a byte that is no UTF-8), its ids still named from its first bytes.
    assert id_headers(b'{"request_id": "req-1", "x": "\xff"}') == [("lethe-request-id", b"req-1")]
    handled, [letter] = await handled_after(broker, b"[" * 5000)
    assert handled == [GOOD]
    assert not letter.body_dropped and "RecursionError" in letter.error


async def test_a_poison_message_with_a_key_or_header_too_large_to_keep_is_dead_lettered(
    broker: KafkaSettings,
) -> None:
    """The upstream tool may write the ingress topic: a 600 kB key made a letter that could
    never be sent, and the consumer (then intake, stopped when a task ends) went down with it."""
    handled, [letter] = await handled_after(broker, b"not json", key=b"k" * 600_000)
    assert handled == [GOOD] and letter.body_dropped and "600008 bytes not kept" in letter.error
    claimed = f"lethe.{uuid4().hex}.".encode() + b"t" * 600_000  # a retried message's origin, says it
    handled, [letter] = await handled_after(broker, b"not json", headers=[("lethe-source-topic", claimed)])
    assert handled == [GOOD] and not letter.body_dropped and len(letter.source_topic) == 256


async def test_a_poison_message_under_the_limit_is_kept_and_named_by_its_request(
    broker: KafkaSettings,
) -> None:
    """400 kB of a message that is not what the topic holds: kept (sealed, it fits), and the
    letter names its request though the body is too large to parse for the headers."""
    body = b'{"request_id": "R-400", "x": "' + b"a" * 400_000 + b'"}'
    handled, [letter] = await handled_after(broker, body)
    assert handled == [GOOD] and not letter.body_dropped and letter.request_id == "R-400"
