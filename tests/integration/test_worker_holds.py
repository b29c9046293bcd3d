"""A worker that cannot confirm it knows every hold erases nothing: the erasure waits (on its
retry topic, without using up its tries) until intake's announcement arrives, then honours the
hold. The real worker runtime, broker, PostgreSQL and files."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from uuid import uuid4

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from services.recordings import seed as recordings_seed
from services.recordings.store import RecordingsAdapter
from shared import topics
from shared.codec import decode, encode
from shared.contracts import EraseSubject, OutcomeReported
from shared.contracts.holds import SNAPSHOT_KEY, HoldsAnnounced, HoldUpdated
from shared.crypto import IdentifierSeal, new_identifier_key, subject_ref
from shared.db import apply_schema, create_pool, ensure_database
from shared.identity import Identities
from shared.kafka import ensure_topics, make_producer
from shared.outbox import OUTBOX_DDL, OutboxRelay, enqueue_many
from shared.policy.evaluate import RetentionPolicy
from shared.policy.model import DEFAULT_POLICY_FILE, load_policy
from shared.settings import KafkaSettings
from shared.worker.holds import HoldsBehind, HoldsView
from shared.worker.runtime import WorkerRuntime
from shared.worker.settings import RetrySettings
from tests.conftest import delete_topics

pytestmark = pytest.mark.integration
SUBJECT = Identities(customer_ids=["C-7001"])
OWN_TOPICS = [topics.HOLDS, topics.command_topic("recordings"), topics.retry_topic("recordings")]


@pytest.fixture
async def empty_broker(broker: KafkaSettings) -> AsyncIterator[KafkaSettings]:
    """The session's broker with the topics this test reads emptied, as after a restart."""
    await ensure_topics(broker, topics.all_topics())
    await delete_topics(broker, *OWN_TOPICS)
    await ensure_topics(broker, OWN_TOPICS)
    yield broker


async def next_outcome(
    consumer: AIOKafkaConsumer, request_id: str, within_s: float
) -> OutcomeReported | None:
    deadline = asyncio.get_running_loop().time() + within_s
    while asyncio.get_running_loop().time() < deadline:
        for records in (await consumer.getmany(timeout_ms=200)).values():
            for record in records:
                outcome = decode(record.value, OutcomeReported)
                if outcome.request_id == request_id:
                    return outcome
    return None


async def test_an_erasure_waits_for_the_holds_announcement_then_keeps_what_is_held(
    empty_broker: KafkaSettings, fresh_db: str, tmp_path: Path
) -> None:
    seal = IdentifierSeal(new_identifier_key())
    adapter = RecordingsAdapter(fresh_db, tmp_path)
    await adapter.start()
    async with adapter.pool.acquire() as conn:
        await recordings_seed.write(
            conn,
            tmp_path,
            [
                recordings_seed.RecordingSeed(
                    recording_id="REC-7001",
                    customer_id="C-7001",
                    caller="07700900701",
                    callee="+441708000100",
                    recorded_at=datetime.now(UTC) - timedelta(days=3),
                    duration_s=5,
                )
            ],
        )
    await adapter.close()  # the runtime starts it again
    runtime = WorkerRuntime(
        adapter=RecordingsAdapter(fresh_db, tmp_path),
        policy=RetentionPolicy(load_policy(DEFAULT_POLICY_FILE)),
        seal=seal,
        kafka=empty_broker,
        retry=RetrySettings(attempts=2, backoff_initial_s=0.1, backoff_max_s=0.2),
        holds=HoldsView(empty_broker, seal),
    )
    outcomes = AIOKafkaConsumer(topics.OUTCOMES, bootstrap_servers=empty_broker.bootstrap, group_id=None)
    await outcomes.start()
    await outcomes.seek_to_end()
    producer: AIOKafkaProducer = make_producer(empty_broker)
    await producer.start()
    running = asyncio.create_task(runtime.run())
    try:
        ref = subject_ref("k", SUBJECT)
        command = EraseSubject(
            request_id="wh-1", system="recordings", subject_ref=ref, sealed_identifiers=seal.seal(SUBJECT)
        )
        await producer.send_and_wait(topics.command_topic("recordings"), encode(command), key=ref.encode())
        # No announcement on the topic: the worker cannot tell it knows every hold. More tries
        # than RetrySettings allows go by, and nothing is erased, nothing reported.
        assert await next_outcome(outcomes, "wh-1", within_s=6) is None
        assert list(tmp_path.rglob("REC-7001.wav"))
        assert (await runtime.readiness())["holds"] is False
        # Intake's announcement: the hold (placed before, lost by the broker), then the marker.
        hold = HoldUpdated(
            hold_id=uuid4(),
            version=1,
            case_reference="LIT-7001",
            subject_ref=ref,
            sealed_identifiers=seal.seal(SUBJECT),
            placed_at=datetime.now(UTC) - timedelta(days=1),
        )
        await producer.send_and_wait(topics.HOLDS, encode(hold), key=str(hold.hold_id).encode())
        marker = HoldsAnnounced(versions={hold.hold_id: 1})
        await producer.send_and_wait(topics.HOLDS, encode(marker), key=SNAPSHOT_KEY.encode())
        outcome = await next_outcome(outcomes, "wh-1", within_s=20)
        assert outcome is not None and outcome.status == "done"
        kept = outcome.categories[0]
        assert kept.erased == 0 and kept.retained[0].hold_reference == "LIT-7001"
        assert list(tmp_path.rglob("REC-7001.wav"))
        assert (await runtime.readiness())["holds"] is True
    finally:
        runtime.stop()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(running, 10)
        await producer.stop()
        await outcomes.stop()


def _hold(case: str, seal: IdentifierSeal) -> HoldUpdated:
    return HoldUpdated(
        hold_id=uuid4(),
        version=1,
        case_reference=case,
        subject_ref=subject_ref("k", SUBJECT),
        sealed_identifiers=seal.seal(SUBJECT),
        placed_at=datetime.now(UTC) - timedelta(days=1),
    )


async def _remake_holds_topic(settings: KafkaSettings, partitions: int) -> None:
    await delete_topics(settings, topics.HOLDS)
    await ensure_topics(settings.model_copy(update={"control_topic_partitions": partitions}), [topics.HOLDS])


async def test_a_holds_topic_made_again_with_more_partitions_is_read_in_all_of_them(
    empty_broker: KafkaSettings,
) -> None:
    """A broker restart where the holds topic came back with 3 partitions, not 1 (before Lethe's
    clients stopped asking for topics to be made, a producer's send made it with tansu's
    default): a view that kept reading its one partition found intake's new marker there and
    counted itself complete, while a hold sent since to another partition was never read."""
    seal = IdentifierSeal(new_identifier_key())
    settings = empty_broker.model_copy(update={"metadata_max_age_ms": 300})
    await _remake_holds_topic(settings, 1)
    producer = make_producer(settings)
    await producer.start()
    view = HoldsView(settings, seal)
    await view.start()
    try:
        a = _hold("LIT-A", seal)
        await producer.send_and_wait(topics.HOLDS, encode(a), key=b"a", partition=0)
        marker = HoldsAnnounced(versions={a.hold_id: 1})
        await producer.send_and_wait(topics.HOLDS, encode(marker), key=SNAPSHOT_KEY.encode(), partition=0)
        await view.refresh()
        assert view.incomplete() is None

        await _remake_holds_topic(settings, 3)
        await producer.stop()
        producer = make_producer(settings)  # one that knows the three partitions
        await producer.start()
        await producer.send_and_wait(topics.HOLDS, encode(a), key=b"a", partition=0)
        again = HoldsAnnounced(versions={a.hold_id: 1})  # intake's announcement after the loss
        await producer.send_and_wait(topics.HOLDS, encode(again), key=SNAPSHOT_KEY.encode(), partition=0)
        b = _hold("LIT-B", seal)  # placed after the announcement, acknowledged
        await producer.send_and_wait(topics.HOLDS, encode(b), key=b"b", partition=2)
        cases: set[str] = set()
        deadline = asyncio.get_running_loop().time() + 15
        while "LIT-B" not in cases and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.2)
            with contextlib.suppress(HoldsBehind):
                await view.refresh()
            if view.incomplete() is None:  # never complete without the hold on partition 2
                cases = {h.case_reference for h in await view.active("recordings", datetime.now(UTC))}
                assert cases == {"LIT-A", "LIT-B"}
        assert cases == {"LIT-A", "LIT-B"}
    finally:
        await view.stop()
        await producer.stop()
        await _remake_holds_topic(settings, 1)


async def test_intake_relay_sends_every_holds_message_to_partition_0_whatever_the_count(
    empty_broker: KafkaSettings, fresh_db: str
) -> None:
    """A reader learns of a partition added to a running topic only at its next metadata
    refresh: holds all on partition 0 cannot be sent where a view does not read yet."""
    seal = IdentifierSeal(new_identifier_key())
    await _remake_holds_topic(empty_broker, 3)
    await ensure_database(fresh_db)
    pool = await create_pool(fresh_db, 2)
    producer = make_producer(empty_broker)
    await producer.start()
    reader = AIOKafkaConsumer(bootstrap_servers=empty_broker.bootstrap, group_id=None)
    await reader.start()
    try:
        await apply_schema(pool, OUTBOX_DDL)
        held = [_hold(f"LIT-{n}", seal) for n in range(8)]
        async with pool.acquire() as conn, conn.transaction():
            await enqueue_many(
                conn,
                [(topics.HOLDS, str(h.hold_id), h) for h in held]
                + [(topics.HOLDS, SNAPSHOT_KEY, HoldsAnnounced(versions={h.hold_id: 1 for h in held}))],
            )
        assert await OutboxRelay(pool, producer).publish_batch() == 9
        every = [TopicPartition(topics.HOLDS, p) for p in range(3)]
        reader.assign(every)
        await reader.seek_to_beginning(*every)
        got: list[int] = []
        deadline = asyncio.get_running_loop().time() + 10
        while len(got) < 9 and asyncio.get_running_loop().time() < deadline:
            batches = await reader.getmany(timeout_ms=200)
            got += [r.partition for records in batches.values() for r in records]
        assert got == [0] * 9
    finally:
        await reader.stop()
        await producer.stop()
        await pool.close()
        await _remake_holds_topic(empty_broker, 1)
