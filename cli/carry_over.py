"""The dead letters across a shed of the embedded broker (cli/shedding.py).

Nobody reads the dead-letter topic in a group, so no "all of it was read" makes dropping it
safe: each letter is an engineer's to look at, and a `lethe dlq replay` away from being sent
back. Before the old broker is killed they are read, with how far the replay group got, and
kept in a file in the stack's state directory (bodies sealed, headers ids and errors only:
shared/dead_letters.py); after the new one is up they are written back, each to its
partition in its order, and the replay group's progress is carried by where the letters
landed, not by the offsets they had (a service may dead-letter into the new broker meanwhile,
or tansu skip an offset). A restore that fails is tried again from the file.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from cli.dlq import read_topic
from shared import topics
from shared.kafka import client_options
from shared.settings import KafkaSettings


def _text(data: bytes | None) -> str | None:
    return None if data is None else base64.b64encode(data).decode()


def _bytes(text: str | None) -> bytes | None:
    return None if text is None else base64.b64decode(text)


@dataclass(frozen=True)
class Letter:
    partition: int
    offset: int
    key: str | None  # base64
    value: str | None
    headers: list[tuple[str, str]] = field(default_factory=list)


@dataclass
class Carried:
    letters: list[Letter]
    replayed: dict[int, int]  # partition -> the replay group's committed offset, in the old broker

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(".partial")
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            json.dump(asdict(self), out)
        os.replace(partial, path)

    @classmethod
    def load(cls, path: Path) -> Carried:
        data = json.loads(path.read_text())
        letters = [
            Letter(**{**letter, "headers": [tuple(h) for h in letter["headers"]]})
            for letter in data["letters"]
        ]
        return cls(letters, {int(p): int(o) for p, o in data["replayed"].items()})


async def keep(kafka: KafkaSettings) -> Carried:
    records = await read_topic(kafka, topics.DEAD_LETTERS)
    letters = [
        Letter(
            r.partition, r.offset, _text(r.key), _text(r.value), [(k, _text(v) or "") for k, v in r.headers]
        )
        for r in records
    ]
    partitions = sorted({letter.partition for letter in letters})
    committed = await committed_offsets(
        kafka, topics.DLQ_REPLAY_GROUP, [TopicPartition(topics.DEAD_LETTERS, p) for p in partitions]
    )
    return Carried(letters, {p: c for p, c in zip(partitions, committed, strict=True) if c})


async def restore(kafka: KafkaSettings, carried: Carried) -> None:
    """Write the letters into the new broker; the replay group resumes at the new offset of the
    first letter it had not passed (past the last of its partition if it had passed them all)."""
    landed: dict[tuple[int, int], int] = {}  # (partition, old offset) -> new offset
    producer = AIOKafkaProducer(**client_options(kafka), acks="all")
    await producer.start()
    try:
        for letter in carried.letters:
            headers = [(k, _bytes(v) or b"") for k, v in letter.headers]
            sent = await producer.send_and_wait(
                topics.DEAD_LETTERS,
                _bytes(letter.value),
                key=_bytes(letter.key),
                partition=letter.partition,
                headers=headers,
            )
            landed[(letter.partition, letter.offset)] = sent.offset
    finally:
        await producer.stop()
    resume = resume_offsets(carried, landed)
    if resume:
        await commit_offsets(
            kafka,
            topics.DLQ_REPLAY_GROUP,
            {TopicPartition(topics.DEAD_LETTERS, p): o for p, o in resume.items()},
        )


def resume_offsets(carried: Carried, landed: dict[tuple[int, int], int]) -> dict[int, int]:
    resume: dict[int, int] = {}
    for partition, passed in carried.replayed.items():
        mine = sorted((old, new) for (p, old), new in landed.items() if p == partition)
        waiting = [new for old, new in mine if old >= passed]
        if waiting:
            resume[partition] = waiting[0]
        elif mine:
            resume[partition] = mine[-1][1] + 1
    return resume


async def committed_offsets(
    kafka: KafkaSettings, group: str, partitions: list[TopicPartition]
) -> list[int | None]:
    if not partitions:
        return []
    consumer = AIOKafkaConsumer(**client_options(kafka), group_id=group, enable_auto_commit=False)
    try:
        await consumer.start()  # not subscribed: asks the group's coordinator, joins nothing
        return list(await asyncio.gather(*(consumer.committed(tp) for tp in partitions)))
    finally:
        await consumer.stop()


async def commit_offsets(kafka: KafkaSettings, group: str, offsets: dict[TopicPartition, int]) -> None:
    consumer = AIOKafkaConsumer(**client_options(kafka), group_id=group, enable_auto_commit=False)
    await consumer.start()
    try:
        consumer.assign(list(offsets))
        await consumer.commit(offsets)
    finally:
        await consumer.stop()
