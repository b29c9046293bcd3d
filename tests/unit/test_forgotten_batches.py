"""A batch fetched from a log the broker has since forgotten is not committed: a consumer that
reads by assignment commits with no group generation, so its old places would be taken by the
new broker, and would tell the shedder that its group had read what it had not."""

from __future__ import annotations

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
