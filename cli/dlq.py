"""`lethe dlq list` and `lethe dlq replay`: what was dead-lettered, why, and sending it back.

Listing reads the whole topic without joining a group. Replaying commits its progress under the
group id `lethe-dlq-replay`, so `--all` sends each dead letter back once; a message replayed and
failing again comes back as a new dead letter with its new error."""

from __future__ import annotations

import json
from dataclasses import dataclass

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition

from shared import topics
from shared.delivery import ATTEMPT, DUE_MS, ERROR, SOURCE_TOPIC
from shared.kafka import client_options
from shared.settings import KafkaSettings

REPLAY_GROUP = "lethe-dlq-replay"
DROPPED_ON_REPLAY = {ATTEMPT, DUE_MS, ERROR, SOURCE_TOPIC, "lethe-source-partition", "lethe-source-offset"}


@dataclass(frozen=True)
class DeadLetter:
    partition: int
    offset: int
    source_topic: str
    error: str
    request_id: str | None
    message_id: str | None

    @classmethod
    def of(cls, record: ConsumerRecord[bytes, bytes]) -> DeadLetter:
        headers = {k: v.decode(errors="replace") for k, v in (record.headers or ())}
        ids: dict[str, str] = {}
        try:  # ids only: never print a payload, it may be anything
            body = json.loads(record.value or b"")
            if isinstance(body, dict):
                ids = {k: str(body[k])[:128] for k in ("request_id", "message_id") if k in body}
        except (ValueError, UnicodeDecodeError):
            pass
        return cls(
            record.partition,
            record.offset,
            headers.get(SOURCE_TOPIC, "?"),
            headers.get(ERROR, "?"),
            ids.get("request_id"),
            ids.get("message_id"),
        )


async def _partitions(consumer: AIOKafkaConsumer) -> list[TopicPartition]:
    await consumer.topics()
    return [
        TopicPartition(topics.DEAD_LETTERS, p)
        for p in sorted(consumer.partitions_for_topic(topics.DEAD_LETTERS) or ())
    ]


async def list_dead_letters(kafka: KafkaSettings) -> list[DeadLetter]:
    consumer = AIOKafkaConsumer(
        **client_options(kafka), enable_auto_commit=False, fetch_max_wait_ms=kafka.fetch_max_wait_ms
    )
    await consumer.start()
    try:
        partitions = await _partitions(consumer)
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        end = await consumer.end_offsets(partitions)
        found: list[DeadLetter] = []
        while [tp for tp in partitions if await consumer.position(tp) < end[tp]]:
            for records in (await consumer.getmany(timeout_ms=500)).values():
                found += [
                    DeadLetter.of(r) for r in records if r.offset < end[TopicPartition(r.topic, r.partition)]
                ]
        return sorted(found, key=lambda d: (d.partition, d.offset))
    finally:
        await consumer.stop()


def replay_target(source: str) -> str:
    """A command that died on a retry topic goes back to its main topic (a fresh first try)."""
    return source.replace(".retry.v1", ".v1") if source.startswith("lethe.commands.") else source


async def replay(kafka: KafkaSettings, only: tuple[int, int] | None = None) -> list[DeadLetter]:
    """Send back every letter not replayed before, up to the end of the topic as it is now (a
    letter that fails again comes back after that end, and waits for the next replay), or
    only the one at (partition, offset)."""
    producer = AIOKafkaProducer(**client_options(kafka), enable_idempotence=kafka.idempotent_producer)
    consumer = AIOKafkaConsumer(
        **client_options(kafka),
        group_id=REPLAY_GROUP,
        enable_auto_commit=False,
        fetch_max_wait_ms=kafka.fetch_max_wait_ms,
    )
    await producer.start()
    await consumer.start()
    replayed: list[DeadLetter] = []
    try:
        partitions = await _partitions(consumer)
        consumer.assign(partitions)
        end = await consumer.end_offsets(partitions)
        for tp in partitions:
            if only is not None:
                consumer.seek(tp, only[1] if tp.partition == only[0] else end[tp])
            elif (done := await consumer.committed(tp)) is not None:
                consumer.seek(tp, done)
            else:
                await consumer.seek_to_beginning(tp)
        if only is not None:
            end = {tp: (only[1] + 1 if tp.partition == only[0] else end[tp]) for tp in partitions}
        while [tp for tp in partitions if await consumer.position(tp) < end[tp]]:
            for tp, records in (await consumer.getmany(timeout_ms=500)).items():
                for record in (r for r in records if r.offset < end[tp]):
                    letter = DeadLetter.of(record)
                    headers = [(k, v) for k, v in (record.headers or ()) if k not in DROPPED_ON_REPLAY]
                    headers.append(("lethe-replayed-from", f"{record.partition}:{record.offset}".encode()))
                    await producer.send_and_wait(
                        replay_target(letter.source_topic), record.value, key=record.key, headers=headers
                    )
                    replayed.append(letter)
                    if only is None:
                        await consumer.commit({tp: record.offset + 1})
        return replayed
    finally:
        await consumer.stop()
        await producer.stop()
