"""What intake and the tracker notice when the broker forgets, and what intake puts back: every
hold with a marker, every request the tracker has not acknowledged, as the same messages. Real
PostgreSQL and broker; the loss is a topic deleted and created again (an embedded broker's
restart empties them all)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest
from aiokafka import AIOKafkaProducer

from services.intake import auth, callbacks, holds, store
from services.intake.recovery import BrokerWatch, holds_topic_complete
from shared import topics
from shared.broker_memory import SENTINEL_DDL, BrokerMemory
from shared.crypto import IdentifierSeal, new_identifier_key, subject_ref
from shared.db import apply_schema, create_pool, ensure_database
from shared.identity import Identities
from shared.kafka import ensure_topics, make_producer
from shared.outbox import OUTBOX_DDL, OutboxRelay
from shared.settings import KafkaSettings, RecoverySettings
from tests.conftest import delete_topics

pytestmark = pytest.mark.integration
SUBJECT = Identities(emails=["loss@example.com"])


async def forget(broker: KafkaSettings, *names: str) -> None:
    await delete_topics(broker, *names)
    await ensure_topics(broker, list(names))


@pytest.fixture
async def intake_db(fresh_db: str) -> AsyncIterator[asyncpg.Pool]:
    await ensure_database(fresh_db)
    pool = await create_pool(fresh_db)
    await apply_schema(
        pool, *store.SCHEMA, *holds.SCHEMA, *callbacks.SCHEMA, *auth.SCHEMA, OUTBOX_DDL, SENTINEL_DDL
    )
    yield pool
    await pool.close()


@pytest.fixture
async def producer(broker: KafkaSettings) -> AsyncIterator[AIOKafkaProducer]:
    await ensure_topics(broker, topics.all_topics())
    client = make_producer(broker)
    await client.start()
    yield client
    await client.stop()


async def test_the_sentinel_tells_a_loss_until_it_is_put_right_and_nothing_else(
    intake_db: asyncpg.Pool, producer: AIOKafkaProducer, broker: KafkaSettings
) -> None:
    memory = BrokerMemory(intake_db, producer, broker, "intake")
    assert await memory.forgotten() is False  # a first start has nothing to have forgotten
    assert await memory.forgotten() is False
    await producer.send_and_wait(topics.SENTINELS, b"someone else's", key=b"tracker", partition=0)
    assert await memory.forgotten() is False
    await forget(broker, topics.SENTINELS)
    # Others' sentinels at our offset, after the loss, are not ours.
    for _ in range(3):
        await producer.send_and_wait(topics.SENTINELS, b"other", key=b"other", partition=0)
    assert await memory.forgotten() is True
    assert await memory.forgotten() is True  # until what was lost is put right
    await memory.remember()
    assert await memory.forgotten() is False
    # A new instance (a restart) knows from the database what was placed.
    again = BrokerMemory(intake_db, producer, broker, "intake")
    assert await again.forgotten() is False


async def test_a_broker_without_the_sentinel_topic_has_forgotten_even_before_a_first_sentinel(
    intake_db: asyncpg.Pool, producer: AIOKafkaProducer, broker: KafkaSettings
) -> None:
    """Back empty, the broker has no topics, and no Lethe client makes one by naming it: the
    check must say so at once (only the recovery it starts makes them again), not wait on a
    send to a topic that nobody will make, whether or not a sentinel was placed before."""
    placed = BrokerMemory(intake_db, producer, broker, "intake")
    assert await placed.forgotten() is False  # places its first sentinel
    await delete_topics(broker, topics.SENTINELS)
    try:
        first_start = BrokerMemory(None, producer, broker, "worker")
        assert await asyncio.wait_for(first_start.forgotten(), 10) is True
        assert await asyncio.wait_for(placed.forgotten(), 10) is True
    finally:
        await ensure_topics(broker, [topics.SENTINELS])  # what the recovery does
    await placed.remember()
    assert await placed.forgotten() is False


async def test_intake_puts_every_hold_back_with_a_marker_when_the_topic_lost_them(
    intake_db: asyncpg.Pool, producer: AIOKafkaProducer, broker: KafkaSettings
) -> None:
    seal = IdentifierSeal(new_identifier_key())
    await forget(broker, topics.HOLDS)
    relay = OutboxRelay(intake_db, producer)
    now = datetime.now(UTC)
    placed = []
    for n in range(3):
        row, _ = await holds.place(
            intake_db,
            holds.NewHold(
                f"LIT-{n}", "reason", subject_ref("k", SUBJECT), seal.seal(SUBJECT), None, None, now, None
            ),
        )
        placed.append(row["hold_id"])
    await holds.release(intake_db, placed[0], now + timedelta(seconds=1))
    await relay.publish_batch()
    assert not await holds_topic_complete(intake_db, broker, seal)  # no marker ever published
    await holds.announce_all(intake_db)
    await relay.publish_batch()
    assert await holds_topic_complete(intake_db, broker, seal)
    await forget(broker, topics.HOLDS)
    assert not await holds_topic_complete(intake_db, broker, seal)
    await holds.announce_all(intake_db)
    await relay.publish_batch()
    assert await holds_topic_complete(intake_db, broker, seal)
    assert await holds.versions(intake_db) == {placed[0]: 2, placed[1]: 1, placed[2]: 1}


async def test_requests_the_tracker_never_acknowledged_are_announced_again_as_the_same_messages(
    intake_db: asyncpg.Pool,
) -> None:
    now = datetime.now(UTC)
    for request_id in ("a-1", "a-2"):
        await store.submit(
            intake_db,
            store.NewRequest(
                request_id=request_id,
                fingerprint="f",
                request_type="erasure",
                subject_ref=subject_ref("k", SUBJECT),
                sealed_identifiers="sealed",
                systems=["crm", "mailing"],
                received_at=now,
                deadline=now + timedelta(days=30),
                trace_id=None,
            ),
        )
    first = await intake_db.fetch("SELECT topic, key, value FROM outbox ORDER BY id")
    await intake_db.execute("DELETE FROM outbox")  # published, then lost by the broker
    await intake_db.execute("UPDATE requests SET status = 'in_progress' WHERE request_id = 'a-2'")
    assert await store.announce_unstarted(intake_db, now - timedelta(seconds=1)) == 0  # just announced
    assert await store.announce_unstarted(intake_db, datetime.now(UTC)) == 1
    again = await intake_db.fetch("SELECT topic, key, value FROM outbox ORDER BY id")
    assert [same(r) for r in again] == [same(r) for r in first if b'"a-1"' in r["value"]]


async def test_a_request_never_acknowledged_is_announced_again_less_and_less_often(
    intake_db: asyncpg.Pool,
) -> None:
    """A tracker that stops acknowledging (its status consumer stalled) must not be sent the
    whole backlog again at every check: each announcement again waits twice the one before."""
    now = datetime.now(UTC)
    await store.submit(
        intake_db,
        store.NewRequest(
            request_id="b-1",
            fingerprint="f",
            request_type="erasure",
            subject_ref=subject_ref("k", SUBJECT),
            sealed_identifiers="sealed",
            systems=["crm"],
            received_at=now,
            deadline=now + timedelta(days=30),
            trace_id=None,
        ),
    )

    async def periodic_check(announced_ago_s: float) -> int:
        await intake_db.execute(
            "UPDATE requests SET announced_at = now() - make_interval(secs => $1)", announced_ago_s
        )
        waiting = datetime.now(UTC) - timedelta(seconds=30)
        return await store.announce_unstarted(intake_db, waiting, backoff_s=30)

    assert await periodic_check(20) == 0
    assert await periodic_check(31) == 1  # the first time again: after the resend age
    assert await periodic_check(31) == 0  # the second waits twice as long
    assert await periodic_check(61) == 1
    assert await periodic_check(119) == 0
    assert await periodic_check(121) == 1
    for _ in range(5):
        assert await periodic_check(30 * 16 + 1) == 1  # and never longer than 16 times
    # After a broker loss every unacknowledged request goes again at once, whatever its count.
    await intake_db.execute("UPDATE requests SET announced_at = now() - interval '1 second'")
    assert await store.announce_unstarted(intake_db, datetime.now(UTC)) == 1


def same(row: asyncpg.Record) -> tuple[str, str, dict[str, object]]:
    """A message as consumers de-duplicate it: its id and content (not when it was sent)."""
    body = json.loads(row["value"])
    body.pop("occurred_at")
    return row["topic"], row["key"], body


async def test_a_hold_over_for_a_day_loses_its_identifiers_on_the_table_and_the_topic(
    intake_db: asyncpg.Pool, producer: AIOKafkaProducer, broker: KafkaSettings
) -> None:
    seal = IdentifierSeal(new_identifier_key())
    await forget(broker, topics.HOLDS)  # other tests' holds are sealed with other keys
    relay = OutboxRelay(intake_db, producer)
    now = datetime.now(UTC)
    ids = []
    for n, expires in enumerate([None, None, now + timedelta(days=3)]):
        row, _ = await holds.place(
            intake_db,
            holds.NewHold(
                f"END-{n}", "reason", subject_ref("k", SUBJECT), seal.seal(SUBJECT), None, None, now, expires
            ),
        )
        ids.append(row["hold_id"])
    await holds.release(intake_db, ids[0], now)
    assert await holds.forget_identifiers(intake_db, now + timedelta(hours=23)) == 0
    assert await holds.forget_identifiers(intake_db, now + timedelta(days=1, seconds=1)) == 1
    assert await holds.forget_identifiers(intake_db, now + timedelta(days=4, seconds=1)) == 1  # expired
    rows = {r["hold_id"]: r for r in await intake_db.fetch("SELECT * FROM holds")}
    assert rows[ids[0]]["sealed_identifiers"] is None and rows[ids[0]]["version"] == 3
    assert rows[ids[1]]["sealed_identifiers"] is not None  # no end: kept
    assert rows[ids[2]]["sealed_identifiers"] is None
    announced = [
        json.loads(r["value"]) for r in await intake_db.fetch("SELECT value FROM outbox ORDER BY id")
    ]
    assert [m["sealed_identifiers"] is None for m in announced if m.get("hold_id") == str(ids[0])] == [
        False,
        False,
        True,
    ]
    # A reader of the topic finds every hold, the ended ones as versions without identifiers.
    await holds.announce_all(intake_db)
    await relay.publish_batch()
    assert await holds_topic_complete(intake_db, broker, seal)


async def test_intake_makes_a_holds_topic_deleted_by_hand_before_announcing_into_it(
    intake_db: asyncpg.Pool, producer: AIOKafkaProducer, broker: KafkaSettings
) -> None:
    """The sentinel is still there, so no recovery runs; the read-back finds no holds topic.
    The announcement must not go to the relay alone: its sends would wait for a topic that no
    client makes by naming it (shared.kafka), and the whole outbox behind them."""
    seal = IdentifierSeal(new_identifier_key())
    now = datetime.now(UTC)
    await holds.place(
        intake_db,
        holds.NewHold(
            "LIT-D", "reason", subject_ref("k", SUBJECT), seal.seal(SUBJECT), None, None, now, None
        ),
    )
    relay = OutboxRelay(intake_db, producer)
    await relay.publish_batch()
    watch = BrokerWatch(intake_db, producer, broker, seal, ["crm"], RecoverySettings())
    memory = BrokerMemory(intake_db, producer, broker, "intake")
    await memory.forgotten()  # its sentinel placed: the broker has not forgotten
    await delete_topics(broker, topics.HOLDS)
    await watch.check(memory)  # the read-back is due: found incomplete, announced again
    assert await asyncio.wait_for(relay.publish_batch(), 10) >= 2
    assert await holds_topic_complete(intake_db, broker, seal)
