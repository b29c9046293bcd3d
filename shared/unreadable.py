"""Records aiokafka cannot read, read as far as they can be, so that a consumer goes past them.

A record header's name is a string on the wire, and aiokafka's reader decodes it as UTF-8. A
client that is not one of Kafka's (a hostile one) can write other bytes: the reader then raised
from every fetch of the partition, and took the readable records fetched with it along, so the
consumer stood still on that record for good (the dead-letter path never saw it).

Installed when shared.kafka is imported, this keeps each fetched partition's bytes; where
the fast reader fails on a header name, the partition's records are read again from that one by
aiokafka's own pure-Python reader, where a record whose header names cannot be decoded keeps its
key, value, offset and time and has one header instead of its own: `UNREADABLE_HEADERS`. The
consume loop dead-letters it (shared.delivery), its body sealed as any other's, so an operator
can replay it. aiokafka's names replaced here are private: the poison-message tests pin them to
the installed version."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import aiokafka.consumer.fetcher as fetcher
from aiokafka import ConsumerRecord
from aiokafka.record.default_records import _DefaultRecordBatchPy, _DefaultRecordPy
from aiokafka.record.memory_records import MemoryRecords, _MemoryRecordsPy
from aiokafka.record.util import decode_varint

UNREADABLE_HEADERS = "lethe-unreadable-headers"
ERROR = "a record header's name is not UTF-8"


class _LenientBatch(_DefaultRecordBatchPy):  # type: ignore[misc]
    def _read_msg(self, *args: Any) -> _DefaultRecordPy:
        try:
            return super()._read_msg(*args)
        except UnicodeDecodeError:
            return self._without_headers()

    def _without_headers(self) -> _DefaultRecordPy:
        """The record at the reader's place, but for its headers; the place moved past it."""
        buffer: bytearray = self._buffer
        pos: int = getattr(self, "_pos")  # noqa: B009 (mypy cannot type the base's)
        length, pos = decode_varint(buffer, pos)
        end = pos + length
        _, pos = decode_varint(buffer, pos)  # attributes
        time_delta, pos = decode_varint(buffer, pos)
        offset_delta, pos = decode_varint(buffer, pos)
        key, pos = _nullable_bytes(buffer, pos)
        value, pos = _nullable_bytes(buffer, pos)
        self._pos = end
        timestamp = self.max_timestamp if self.timestamp_type else self.first_timestamp + time_delta
        return _DefaultRecordPy(
            self.base_offset + offset_delta,
            timestamp,
            self.timestamp_type,
            key,
            value,
            [(UNREADABLE_HEADERS, b"")],
        )


def _nullable_bytes(buffer: bytearray, pos: int) -> tuple[bytes | None, int]:
    size, pos = decode_varint(buffer, pos)
    return (None, pos) if size < 0 else (bytes(buffer[pos : pos + size]), pos + size)


class _LenientRecords(_MemoryRecordsPy):  # type: ignore[misc]
    def next_batch(self, *args: Any) -> Any:
        raw = self._next_slice
        batch = super().next_batch(*args)
        if batch is None or raw is None or raw[self.MAGIC_OFFSET] < 2:  # before Kafka 0.11: no headers
            return batch
        return _LenientBatch(raw)


class _KeptRecords:
    """aiokafka's fast reader over a fetched partition's bytes, which keeps the bytes."""

    __slots__ = ("_records", "data")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self._records = MemoryRecords(data)

    def has_next(self) -> bool:
        return bool(self._records.has_next())

    def next_batch(self) -> Any:
        return self._records.next_batch()

    def size_in_bytes(self) -> int:
        return int(self._records.size_in_bytes())


class _PartitionRecords(fetcher.PartitionRecords):  # type: ignore[misc]
    def _unpack_records(self) -> Iterator[ConsumerRecord[bytes, bytes]]:
        try:
            yield from super()._unpack_records()
        except UnicodeDecodeError:
            kept: object = getattr(self, "_records")  # noqa: B009 (mypy cannot type the base's)
            if not isinstance(kept, _KeptRecords):
                raise
            # From the start of the fetched bytes again: what was handed out already is below
            # next_fetch_offset and skipped (read, not given twice).
            self._records = _LenientRecords(kept.data)
            yield from super()._unpack_records()


def unreadable(record: ConsumerRecord[bytes, bytes]) -> bool:
    return bool(record.headers) and record.headers[0][0] == UNREADABLE_HEADERS


def install() -> None:
    fetcher.MemoryRecords = _KeptRecords
    fetcher.PartitionRecords = _PartitionRecords
