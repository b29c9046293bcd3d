"""`lethe dlq list` and `lethe dlq replay`: what was dead-lettered, why, and sending it back.

Listing reads the whole topic without joining a group, and needs no key: a letter's ids are in
its headers. Replaying opens each sealed letter with the identifier key and sends the original
key and value back; it commits its progress under the group id `lethe-dlq-replay`, so `--all`
sends each dead letter back once; a message replayed and failing again comes back as a new dead
letter with its new error."""

from __future__ import annotations

import time
from dataclasses import dataclass

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord

from shared import topics
from shared.crypto import IdentifierSeal, IdentifierSealError
from shared.dead_letters import (
    BODY_DROPPED,
    ID_HEADERS,
    MESSAGE_ID,
    REPLAYED_FROM,
    REQUEST_ID,
    SEALED,
    id_headers,
    is_sealed,
    open_letter,
)
from shared.delivery import ATTEMPT, DUE_MS, ERROR, SOURCE_TOPIC
from shared.kafka import client_options, partitions_of
from shared.settings import KafkaSettings

REPLAY_GROUP = topics.DLQ_REPLAY_GROUP
DROPPED_ON_REPLAY = {
    ATTEMPT,
    DUE_MS,
    ERROR,
    SOURCE_TOPIC,
    SEALED,
    *ID_HEADERS.values(),
    "lethe-source-partition",
    "lethe-source-offset",
}


@dataclass(frozen=True)
class DeadLetter:
    partition: int
    offset: int
    source_topic: str
    error: str
    request_id: str | None
    message_id: str | None
    body_dropped: bool = False  # too large to keep: its size is in the error

    @classmethod
    def of(cls, record: ConsumerRecord[bytes, bytes]) -> DeadLetter:
        found = list(record.headers or ())
        if not is_sealed(record.headers):  # dead-lettered before sealing: its ids are in its body
            found += id_headers(record.value)
        headers = {k: v.decode(errors="replace") for k, v in found}  # ids only, never a payload
        return cls(
            record.partition,
            record.offset,
            headers.get(SOURCE_TOPIC, "?"),
            headers.get(ERROR, "?"),
            headers.get(REQUEST_ID),
            headers.get(MESSAGE_ID),
            BODY_DROPPED in headers,
        )


# A partition whose end no record has come from for this long has nothing more to give: tansu,
# in the burst after a restart, can count a message in a partition's end offset and then lose
# it (README, Delivery guarantees), and nothing ever fills that tail.
LOST_TAIL_S = 5.0


async def read_topic(kafka: KafkaSettings, topic: str) -> list[ConsumerRecord[bytes, bytes]]:
    """Every record of `topic` up to its end as it is now, by partition and offset, without
    joining a group (what `list` shows, and what a shed of the embedded broker carries over)."""
    consumer = AIOKafkaConsumer(
        **client_options(kafka), enable_auto_commit=False, fetch_max_wait_ms=kafka.fetch_max_wait_ms
    )
    await consumer.start()
    try:
        partitions = await partitions_of(consumer, [topic])
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        end = await consumer.end_offsets(partitions)
        found: list[ConsumerRecord[bytes, bytes]] = []
        last = time.monotonic()
        while time.monotonic() - last < LOST_TAIL_S and [
            tp for tp in partitions if await consumer.position(tp) < end[tp]
        ]:
            for tp, records in (await consumer.getmany(timeout_ms=500)).items():
                found += [r for r in records if r.offset < end[tp]]
                last = time.monotonic()
        return sorted(found, key=lambda r: (r.partition, r.offset))
    finally:
        await consumer.stop()


async def list_dead_letters(kafka: KafkaSettings) -> list[DeadLetter]:
    return [DeadLetter.of(r) for r in await read_topic(kafka, topics.DEAD_LETTERS)]


def _original(
    record: ConsumerRecord[bytes, bytes], seal: IdentifierSeal
) -> tuple[bytes | None, bytes | None]:
    if not is_sealed(record.headers):
        return record.key, record.value  # dead-lettered before letters were sealed
    try:
        return open_letter(seal, record.value)
    except IdentifierSealError as exc:
        raise IdentifierSealError(
            f"dead letter {record.partition}:{record.offset}: opened by no identifier key given"
        ) from exc


def replay_target(source: str) -> str:
    """A command that died on a retry topic goes back to its main topic (a fresh first try)."""
    return source.replace(".retry.v1", ".v1") if source.startswith("lethe.commands.") else source


async def replay(
    kafka: KafkaSettings, seal: IdentifierSeal, only: tuple[int, int] | None = None
) -> list[DeadLetter]:
    """Send back every letter not replayed before, up to the end of the topic as it is now (a
    letter that fails again comes back after that end, and waits for the next replay), or
    only the one at (partition, offset). `seal` opens what was sealed."""
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
        partitions = await partitions_of(consumer, [topics.DEAD_LETTERS])
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
                    if letter.body_dropped:  # nothing to send back: passed over, and listed so
                        if only is None:
                            await consumer.commit({tp: record.offset + 1})
                        continue
                    key, value = _original(record, seal)
                    headers = [(k, v) for k, v in (record.headers or ()) if k not in DROPPED_ON_REPLAY]
                    headers.append((REPLAYED_FROM, f"{record.partition}:{record.offset}".encode()))
                    await producer.send_and_wait(
                        replay_target(letter.source_topic), value, key=key, headers=headers
                    )
                    replayed.append(letter)
                    if only is None:
                        await consumer.commit({tp: record.offset + 1})
        return replayed
    finally:
        await consumer.stop()
        await producer.stop()
