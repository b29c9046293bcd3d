"""A batch fetched from a log the broker has since forgotten is not committed: a consumer that
reads by assignment commits with no group generation, so its old places would be taken by the
new broker, and would tell the shedder that its group had read what it had not."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from aiokafka import TopicPartition

from shared import fetching
from shared.delivery import commit

TP = TopicPartition("lethe.commands.billing.v1", 0)


class Committing:
    def __init__(self) -> None:
        self.commits = 0
        self.seeks: list[int] = []

    async def commit(self) -> None:
        self.commits += 1

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self.seeks.append(offset)


async def test_a_batch_is_committed_unless_the_consumer_was_rewound_after_fetching_it() -> None:
    consumer = Committing()
    fetched_at = fetching.rewinds(consumer)
    await commit(consumer, fetched_at)
    assert consumer.commits == 1

    fetched_at = fetching.rewinds(consumer)
    fetching.read_from_start(consumer, [TP])  # the broker forgot meanwhile
    await commit(consumer, fetched_at)
    assert (consumer.commits, consumer.seeks) == (1, [0])

    # The next batch, fetched from the new log, is committed.
    await commit(consumer, fetching.rewinds(consumer))
    assert consumer.commits == 2


class Record:
    def __init__(self, offset: int) -> None:
        self.offset = offset
        self.headers = ()


class Gappy(Committing):
    """Serves one fetch with a gap (offset 11 missing); asked what its group committed."""

    _group_id = "lethe-worker-billing"

    def __init__(self, on_committed: Callable[[Gappy], int | None]) -> None:
        super().__init__()
        self.on_committed = on_committed
        self.asked = 0

    async def getmany(self, timeout_ms: int) -> dict[TopicPartition, list[Record]]:
        return {TP: [Record(10), Record(12)]}

    async def committed(self, tp: TopicPartition) -> int | None:
        self.asked += 1
        return self.on_committed(self)

    def assignment(self) -> set[TopicPartition]:
        return {TP}


async def test_a_consumer_reading_by_assignment_takes_no_commit_as_leave_to_skip_a_gap() -> None:
    """Its group has no other reader: a place committed past the gap is of a forgotten log."""
    consumer = Gappy(lambda _: 500)
    consumer.reads_by_assignment = True  # type: ignore[attr-defined]
    batches = await fetching.fetch_in_order(consumer, 10)
    assert [r.offset for r in batches[TP]] == [10]  # 12 waits for 11
    assert (consumer.asked, consumer.seeks) == (0, [11])

    member = Gappy(lambda _: 500)  # a group member: another member read past it
    assert [r.offset for r in (await fetching.fetch_in_order(member, 10))[TP]] == [10, 12]
    assert member.asked == 1


async def test_a_rewind_while_a_gap_is_looked_into_drops_the_batch_without_seeking_back() -> None:
    def broker_forgot(consumer: Gappy) -> None:
        fetching.read_from_start(consumer, [TP])  # rewind_all meanwhile

    consumer = Gappy(broker_forgot)
    assert await fetching.fetch_in_order(consumer, 10) == {}
    assert consumer.seeks == [0]  # the rewind's, not back to 11 of the forgotten log


async def test_a_consumer_assigned_soon_after_a_rewind_reads_from_the_start(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(fetching, "_last_rewind_at", None)  # put back after: other tests' consumers
    await fetching.rewind_all()
    consumer = Gappy(lambda _: None)
    fetching.assigned(consumer, [TP])
    await fetching.fetch_in_order(consumer, 10)
    assert consumer.seeks[0] == 0
