"""Records aiokafka cannot read, read as far as they can be, so that a consumer goes past them.

aiokafka raised from every fetch of a partition holding a record it could not read, and dropped
the readable records fetched with it: the consumer stood still on that record for good (the
dead-letter path never saw it). A client that is not one of Kafka's can write such records:
a header name that is not UTF-8, a length or count that is negative or past the record, a batch
whose checksum fails; the embedded broker (tansu) stores them as given.

Installed when shared.kafka is imported, this keeps each fetched partition's bytes. Where the
fast reader fails, the partition's records are read again, from the one it failed on, by
aiokafka's own pure-Python reader, which here hands out a record it cannot read as far as it
can (its offset and time; its key and value where they could be read) with one header in
place of its own: `UNREADABLE` (the header's value says why). Every record of a batch whose
checksum fails is handed out so, as read. The consume loops dead-letter each (shared.delivery):
its body, if read, sealed as any other's, so an operator can look and replay. aiokafka's names
replaced here are private: the poison-message tests pin them to the installed version."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from typing import Any

import aiokafka.consumer.fetcher as fetcher
from aiokafka import ConsumerRecord
from aiokafka.errors import CorruptRecordException
from aiokafka.record.default_records import _DefaultRecordBatchPy, _DefaultRecordPy
from aiokafka.record.memory_records import MemoryRecords, _MemoryRecordsPy
from aiokafka.record.util import decode_varint

UNREADABLE = "lethe-unreadable"
# On the one record that stands for the rest of a batch whose framing was lost: the batch's last
# offset, after this process's own prefix (a client could write the header; it cannot know
# the prefix, so it cannot have a consumer step over records that are there).
_REST_TO = "lethe-unreadable-to"
_PREFIX = secrets.token_hex(8).encode()


class _LenientBatch(_DefaultRecordBatchPy):  # type: ignore[misc]
    def __init__(self, buffer: memoryview) -> None:
        super().__init__(buffer)
        self._checksum_failed = not super().validate_crc()  # before the records are unpacked
        self._last = self.base_offset - 1  # the offset of the last record handed out
        self._lost = False  # the records' framing cannot be followed any more (_rest)
        self._done = False  # and the letter for the rest of the batch handed out

    def validate_crc(self) -> bool:
        return True  # a failing batch's records are each handed out as unreadable (__next__)

    def __iter__(self) -> _LenientBatch:
        try:
            super().__iter__()  # decompresses
        except Exception:  # a codec's own error, whichever it is
            self._lost = True
        return self

    def __next__(self) -> _DefaultRecordPy:
        if self._done:
            raise StopIteration
        if self._lost:
            return self._rest()
        try:
            record: _DefaultRecordPy = super().__next__()
        except CorruptRecordException:  # from any part of the record, or bytes left after all
            if self._next_record_index >= self._num_records:
                raise StopIteration from None
            record = self._salvaged()
        self._last = record.offset
        if self._checksum_failed and not unreadable(record):
            return _marked(record, b"its batch's checksum fails")
        return record

    def _salvaged(self) -> _DefaultRecordPy:
        """The record at the reader's place, as far as it can be read; the place moved past it."""
        buffer: bytearray = self._buffer
        start: int = getattr(self, "_pos")  # noqa: B009 (mypy cannot type the base's)
        try:
            length, pos = decode_varint(buffer, start)
            end = pos + length
            if length < 0 or end > len(buffer):
                raise ValueError("record length")
            _, pos = decode_varint(buffer, pos)  # attributes
            time_delta, pos = decode_varint(buffer, pos)
            _, pos = decode_varint(buffer, pos)  # offset delta (see below)
        except (ValueError, IndexError):
            return self._rest()
        index: int = getattr(self, "_next_record_index")  # noqa: B009 (as above)
        self._pos, self._next_record_index = end, index + 1
        try:
            key, pos = _nullable_bytes(buffer, pos, end)
            value, pos = _nullable_bytes(buffer, pos, end)
        except (ValueError, IndexError):
            key = value = None
        timestamp = self.max_timestamp if self.timestamp_type else self.first_timestamp + time_delta
        headers = [
            (UNREADABLE, b"its headers could not be read" if value is not None else b"it could not be read")
        ]
        # The next offset, not base + its delta: a delta that jumps ahead (a hostile one) had the
        # records after it in the batch skipped as read already.
        return _DefaultRecordPy(self._last + 1, timestamp, self.timestamp_type, key, value, headers)

    def _rest(self) -> _DefaultRecordPy:
        """Once the records' framing is lost: the batch's next offset, nothing of it read, for
        it and the rest of the batch (one letter, whatever the batch claims to hold)."""
        self._lost = self._done = True
        if self._last + 1 >= self.next_offset:
            raise StopIteration
        last = self.next_offset - 1
        why = f"it and the batch's records after it, to offset {last}, could not be read"
        headers = [(UNREADABLE, why.encode()), (_REST_TO, _PREFIX + str(last).encode())]
        return _DefaultRecordPy(self._last + 1, self.max_timestamp, self.timestamp_type, None, None, headers)


def _nullable_bytes(buffer: bytearray, pos: int, end: int) -> tuple[bytes | None, int]:
    size, pos = decode_varint(buffer, pos)
    if size >= 0 and pos + size > end:
        raise ValueError("past the record")
    return (None, pos) if size < 0 else (bytes(buffer[pos : pos + size]), pos + size)


def _marked(record: _DefaultRecordPy, why: bytes) -> _DefaultRecordPy:
    return _DefaultRecordPy(
        record.offset, record.timestamp, record.timestamp_type, record.key, record.value, [(UNREADABLE, why)]
    )


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
        except Exception:  # UnicodeDecodeError, CorruptRecordException, a codec's own
            kept: object = getattr(self, "_records")  # noqa: B009 (mypy cannot type the base's)
            if not isinstance(kept, _KeptRecords):
                raise
            # From the start of the fetched bytes again: what was handed out already is below
            # next_fetch_offset and skipped (read, not given twice).
            self._records = _LenientRecords(kept.data)
            yield from super()._unpack_records()


def unreadable(record: ConsumerRecord[bytes, bytes] | _DefaultRecordPy) -> bool:
    return bool(record.headers) and record.headers[0][0] == UNREADABLE


def last_offset(record: ConsumerRecord[bytes, bytes]) -> int:
    """The last offset `record` stands for: its own; for the one record standing for the rest of
    a batch whose framing was lost, the batch's last (fetching.fetch_in_order takes the step
    past those offsets as no gap: it had fetched the batch again until it gave up on it)."""
    headers: list[tuple[str, bytes | None]] = list(record.headers or ())
    if len(headers) == 2 and headers[0][0] == UNREADABLE and headers[1][0] == _REST_TO:
        value = headers[1][1] or b""
        if value.startswith(_PREFIX) and value[len(_PREFIX) :].isdigit():
            return int(value[len(_PREFIX) :])
    return int(record.offset)


def why(record: ConsumerRecord[bytes, bytes]) -> str:
    """The dead letter's error for a record `unreadable` says is one."""
    reason = (record.headers[0][1] or b"").decode(errors="replace")
    return f"a record that could not be read: {reason}"


def install() -> None:
    fetcher.MemoryRecords = _KeptRecords
    fetcher.PartitionRecords = _PartitionRecords
