"""An ingress submission that intake fails on goes to the dead-letter topic sealed: the e-mail in
its body (and in the key the submitter chose) is nowhere in clear, `lethe dlq list` still says
what it was, and the identifier key opens it, which is what `lethe dlq replay` does to send it
back as it came. Real broker and PostgreSQL: intake's database lacks its tables, a failure that
is not a dependency being away, so the message is dead-lettered rather than retried."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from uuid import uuid4

import asyncpg
import pytest
from aiokafka import ConsumerRecord

from cli import dlq
from services.intake import ingress
from services.intake.service import IntakeContext
from shared import topics
from shared.crypto import IdentifierSeal, IdentifierSealError, new_identifier_key
from shared.db import create_pool, ensure_database
from shared.dead_letters import REPLAYED_FROM, open_letter
from shared.delivery import Publisher, consume_forever
from shared.kafka import ensure_topics, make_consumer, make_producer
from shared.settings import KafkaSettings

pytestmark = pytest.mark.integration
SEAL = IdentifierSeal(new_identifier_key())
EMAIL = b"poison.person@example.com"


@pytest.fixture
async def tableless_db(fresh_db: str) -> AsyncIterator[asyncpg.Pool]:
    await ensure_database(fresh_db)
    pool = await create_pool(fresh_db)
    yield pool
    await pool.close()


async def dead_letter_of(broker: KafkaSettings, request_id: str) -> ConsumerRecord[bytes, bytes]:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        for record in await dlq.read_topic(broker, topics.DEAD_LETTERS):
            if dict(record.headers or ()).get("lethe-request-id") == request_id.encode():
                return record
        await asyncio.sleep(0.2)
    raise AssertionError(f"no dead letter for {request_id}")


async def test_a_failed_submission_is_dead_lettered_sealed_and_replayed_as_it_came(
    broker: KafkaSettings, tableless_db: asyncpg.Pool
) -> None:
    await ensure_topics(broker, [topics.INGRESS, topics.INGRESS_REPLIES, topics.DEAD_LETTERS])
    request_id = f"dlq-{uuid4().hex[:8]}"
    body = json.dumps(
        {
            "request_id": request_id,
            "type": "erasure",
            "identity_verified": True,
            "subject": {"emails": [EMAIL.decode()], "phones": ["+44 20 7946 0000"]},
        }
    ).encode()
    producer = make_producer(broker)
    await producer.start()
    publisher = Publisher(producer, SEAL)
    ctx = IntakeContext(tableless_db, list(topics.SYSTEMS), SEAL, "k" * 64)
    consumer = make_consumer(broker, [topics.INGRESS], f"dlq-test-{uuid4().hex[:6]}")
    await consumer.start()
    consuming = asyncio.create_task(
        consume_forever(consumer, lambda r: ingress.reply(ctx, publisher, r), publisher, "ingress")
    )
    try:
        await producer.send_and_wait(topics.INGRESS, body, key=EMAIL, headers=[("note", EMAIL)])
        letter = await dead_letter_of(broker, request_id)
    finally:
        publisher.stopping.set()
        await consuming
        await consumer.stop()
        await producer.stop()

    headers = dict(letter.headers or ())
    assert headers["lethe-error"] == b"UndefinedTableError while handling"
    assert headers["lethe-source-topic"] == topics.INGRESS.encode()
    assert letter.key is None and "note" not in headers  # the submitter's key and headers stay out
    everything = (letter.value or b"") + b"".join(k.encode() + v for k, v in letter.headers or ())
    assert EMAIL not in everything and b"7946" not in everything
    assert open_letter(SEAL, letter.value) == (EMAIL, body)
    with pytest.raises(IdentifierSealError):
        open_letter(IdentifierSeal(new_identifier_key()), letter.value)

    listed = [d for d in await dlq.list_dead_letters(broker) if d.request_id == request_id]
    assert [(d.source_topic, d.error) for d in listed] == [
        (topics.INGRESS, "UndefinedTableError while handling")
    ]

    replayed = await dlq.replay(broker, SEAL, only=(letter.partition, letter.offset))
    assert [d.request_id for d in replayed] == [request_id]
    back = [
        r
        for r in await dlq.read_topic(broker, topics.INGRESS)
        if dict(r.headers or ()).get(REPLAYED_FROM) == f"{letter.partition}:{letter.offset}".encode()
    ]
    assert [(r.key, r.value) for r in back] == [(EMAIL, body)]
