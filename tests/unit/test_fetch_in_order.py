"""fetch_in_order against a consumer that skips an offset, as tansu does under concurrent
producers: nothing past the gap is handed out, the consumer is sent back to the missing offset,
and the next fetch delivers it; a gap that never fills is given up on, not waited on for ever."""

from __future__ import annotations

from typing import Any

import pytest
from aiokafka import TopicPartition

from shared import fetching
from shared.fetching import fetch_in_order

TP = TopicPartition("lethe.outcomes.v1", 0)


class Record:
    def __init__(self, offset: int, headers: tuple[tuple[str, bytes], ...] = ()) -> None:
        self.offset = offset
        self.headers = headers


class GappyConsumer:
    """Serves scripted fetches; records seeks. No group, like the holds view's reader."""

    _group_id = None

    def __init__(self, fetches: list[list[int]]) -> None:
        self.fetches = fetches
        self.seeks: list[int] = []

    async def getmany(self, timeout_ms: int) -> dict[TopicPartition, list[Any]]:
        offsets = self.fetches.pop(0) if self.fetches else []
        return {TP: [Record(o) for o in offsets]} if offsets else {}

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self.seeks.append(offset)


async def offsets_of(consumer: Any) -> list[int]:
    return [r.offset for records in (await fetch_in_order(consumer, 10)).values() for r in records]


async def test_records_after_a_skipped_offset_wait_until_it_is_fetched() -> None:
    consumer = GappyConsumer([[10, 11, 13, 14], [12, 13, 14], [15]])
    assert await offsets_of(consumer) == [10, 11]  # 12 is missing: 13 and 14 must wait
    assert consumer.seeks == [12]
    assert await offsets_of(consumer) == [12, 13, 14]
    assert await offsets_of(consumer) == [15]
    assert not fetching._refetches.get(consumer)  # the filled gap is forgotten


async def test_a_fetch_that_starts_past_the_next_offset_is_made_again() -> None:
    consumer = GappyConsumer([[1, 2], [4, 5], [3, 4, 5]])
    assert await offsets_of(consumer) == [1, 2]
    assert await offsets_of(consumer) == []
    assert consumer.seeks == [3]
    assert await offsets_of(consumer) == [3, 4, 5]


async def test_redelivered_offsets_are_not_a_gap() -> None:
    consumer = GappyConsumer([[7, 8, 9], [8, 9, 10]])  # a rebalance went back to the commit
    assert await offsets_of(consumer) == [7, 8, 9]
    assert await offsets_of(consumer) == [8, 9, 10]
    assert consumer.seeks == []


async def test_a_gap_that_never_fills_is_given_up_on(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fetching, "MAX_REFETCHES", 3)
    consumer = GappyConsumer([[1]] + [[3]] * 4)  # offset 2 never comes (compacted away, say)
    assert await offsets_of(consumer) == [1]
    for _ in range(3):
        assert await offsets_of(consumer) == []
    assert await offsets_of(consumer) == [3]
    assert consumer.seeks == [2, 2, 2]


class RejoiningConsumer(GappyConsumer):
    """A group member whose assignment the group hands over again after a rewind."""

    def __init__(self, fetches: list[list[int]]) -> None:
        super().__init__(fetches)
        self.assigned = {TP}

    def assignment(self) -> set[TopicPartition]:
        return self.assigned


async def test_partitions_assigned_soon_after_a_rewind_are_rewound_too() -> None:
    # The rejoin that completes after the rewind restores offsets committed before the loss was
    # noticed, past the new partitions' end: the consume loop must send them to their start.
    consumer: Any = RejoiningConsumer([[], []])
    listener = fetching.RewindLater(consumer)
    fetching.register(consumer, 10, 10)
    try:
        await fetching.rewind_all()
        assert consumer.seeks == [0]
        await listener.on_partitions_assigned([TP])
        await offsets_of(consumer)
        assert consumer.seeks == [0, 0]
        await offsets_of(consumer)
        assert consumer.seeks == [0, 0]  # once
    finally:
        fetching._pacing.pop(consumer, None)


async def test_an_assignment_long_after_a_rewind_keeps_its_committed_offsets(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    consumer: Any = RejoiningConsumer([[]])
    listener = fetching.RewindLater(consumer)
    fetching._rewound_at[consumer] = 0.0
    monkeypatch.setattr(fetching.time, "monotonic", lambda: fetching.REWIND_WINDOW_S + 1)
    await listener.on_partitions_assigned([TP])  # an ordinary rebalance, e.g. scale-out
    await offsets_of(consumer)
    assert consumer.seeks == []
