"""The lenient reader (shared/unreadable.py) on batches a hostile client could write, without a
broker: what each record is handed out as."""

from __future__ import annotations

from types import SimpleNamespace
from typing import cast

import pytest
from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from aiokafka.record.default_records import _DefaultRecordBatchBuilderPy

import shared.worker.runtime as runtime_module
from services.billing.store import BillingAdapter
from shared.crypto import IdentifierSeal, new_identifier_key
from shared.fetching import fetch_in_order
from shared.settings import KafkaSettings
from shared.unreadable import UNREADABLE, _LenientRecords, last_offset, unreadable
from shared.worker.attempts import Attempts
from shared.worker.policy import ActOnEverything
from shared.worker.runtime import WorkerRuntime
from shared.worker.settings import RetrySettings

SEAL = IdentifierSeal(new_identifier_key())


def batch(values: list[bytes], corrupt: int | None = None, length: int = 0x7E) -> bytes:
    """A batch of these values under key b"k", the length of record `corrupt` (if any) set to
    `length` (a zigzag varint: 0x7E is 63 bytes, past the end of these small records)."""
    builder = _DefaultRecordBatchBuilderPy(
        magic=2,
        compression_type=0,
        is_transactional=False,
        producer_id=-1,
        producer_epoch=-1,
        base_sequence=-1,
        batch_size=1 << 20,
    )
    starts = []
    for offset, value in enumerate(values):
        starts.append(len(builder._buffer))
        builder.append(offset, timestamp=1000 + offset, key=b"k", value=value, headers=[])
    if corrupt is not None:
        builder._buffer[starts[corrupt]] = length
    return bytes(builder.build())


def read(data: bytes) -> list[tuple[int, bytes | None, bool]]:
    records = _LenientRecords(data)
    out = []
    while records.has_next():
        for record in records.next_batch():
            out.append((record.offset, record.value, unreadable(record)))
    return out


def test_a_readable_batch_is_read_as_it_is() -> None:
    assert read(batch([b"a", b"b"])) == [(0, b"a", False), (1, b"b", False)]


def test_a_record_whose_length_runs_past_the_batch_ends_the_batch_in_one_letter() -> None:
    """Past that record the framing cannot be followed: one record stands for it and the rest,
    however many the batch's header claims, and says which offsets; the consumer steps past
    them (it had taken the step for a gap and fetched the batch again fifty times)."""
    records = _LenientRecords(batch([b"a", b"b", b"c"], corrupt=1, length=0x7E))
    got = [r for r in records.next_batch()]
    assert [(r.offset, r.value, unreadable(r)) for r in got] == [(0, b"a", False), (1, None, True)]
    why = b"it and the batch's records after it, to offset 2, could not be read"
    assert got[1].headers[0] == (UNREADABLE, why)
    assert [last_offset(r) for r in got] == [0, 2]  # type: ignore[arg-type]


async def test_the_step_past_a_lost_batch_is_no_gap_unless_a_client_wrote_the_marker() -> None:
    """A client can write the marker's headers, but not the process's prefix: its record would
    otherwise have the consumer step over records that are there."""
    [lost] = [r for r in _LenientRecords(batch([b"a", b"b", b"c"], corrupt=0)).next_batch()]
    forged = (lost.headers[0], (lost.headers[1][0], b"2"))
    tp = TopicPartition("t", 0)

    class Consumer:
        _group_id = None

        def __init__(self, fetched: list[object]) -> None:
            self.fetched = fetched
            self.seeks: list[int] = []

        async def getmany(self, timeout_ms: int) -> dict[TopicPartition, list[object]]:
            return {tp: self.fetched}

        def seek(self, at: TopicPartition, offset: int) -> None:
            self.seeks.append(offset)

    def record(offset: int, headers: tuple[object, ...] = ()) -> object:
        return SimpleNamespace(offset=offset, headers=headers)

    stepped = Consumer([record(0, tuple(lost.headers)), record(3)])
    assert [r.offset for r in (await fetch_in_order(cast(AIOKafkaConsumer, stepped), 10))[tp]] == [0, 3]
    kept = Consumer([record(0, forged), record(3)])
    assert [r.offset for r in (await fetch_in_order(cast(AIOKafkaConsumer, kept), 10))[tp]] == [0]
    assert kept.seeks == [1]  # what a forged marker claims to stand for is fetched again


async def test_a_worker_dead_letters_a_record_that_could_not_be_read_and_handles_the_rest(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A worker reads its commands with a loop of its own (shared/worker/runtime.py), not
    consume_forever: a command that could not be read is not carried out, headers dropped."""
    runtime = WorkerRuntime(
        BillingAdapter("postgresql://unused/x"), ActOnEverything(), SEAL, KafkaSettings(), RetrySettings()
    )
    letters: list[tuple[int, str, bool]] = []

    class Letters:
        async def dead_letter(
            self, record: ConsumerRecord[bytes, bytes], error: str, body: bool = True
        ) -> None:
            letters.append((record.offset, error, body))

    runtime.attempts = cast(Attempts, SimpleNamespace(publisher=Letters()))
    topic = TopicPartition("lethe.commands.billing.v1", 0)
    fetched = {
        topic: [
            ConsumerRecord(topic.topic, 0, n, 0, 0, b"k", b"{}", None, 1, 2, tuple(headers))
            for n, headers in enumerate([[], [(UNREADABLE, b"its headers could not be read")], []])
        ]
    }

    async def poll(consumer: object, what: str) -> dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]]:
        runtime.stopping.set()  # one batch
        return fetched

    handled: list[int] = []

    async def batch(records: list[ConsumerRecord[bytes, bytes]], handle: object, together: bool) -> None:
        handled.extend(r.offset for r in records)

    async def commit(consumer: object, fetched_at: int) -> None:
        return None

    monkeypatch.setattr(runtime_module, "poll", poll)
    monkeypatch.setattr(runtime_module, "commit", commit)
    monkeypatch.setattr(runtime, "_batch", batch)

    class Consumer:  # fetching's bookkeeping keeps it by weak reference
        pass

    await runtime._consume(cast(AIOKafkaConsumer, Consumer()), runtime._first_try)
    assert handled == [0, 2]
    assert letters == [(1, "a record that could not be read: its headers could not be read", True)]
