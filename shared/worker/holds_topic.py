"""The holds topic as a holds view reads it (shared/worker/holds.py): which partitions it has,
where they end, whether the marker the view trusts is still where it was read, and reading up
to the end. What the messages mean, and when the view is complete, is the view's."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterator, Mapping
from uuid import UUID

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition

from shared import fetching, topics
from shared.codec import PoisonMessage, decode
from shared.contracts.holds import HOLDS_MESSAGE
from shared.kafka import client_options
from shared.settings import KafkaSettings

log = logging.getLogger(__name__)
CATCH_UP_S = 3.0  # a refresh that cannot reach the end in this long fails (erasures wait)
HOLE_AFTER_S = 10.0  # an offset unreadable this long, while the broker answers, is a hole
METADATA_MAX_AGE_MS = 5_000
MarkerPlace = tuple[TopicPartition, int, UUID]  # where a marker was read, and its message id


class HoldsBehind(Exception):
    """A refresh could not read the holds topic to its end; the view is not current."""


class HoldsTopic:
    def __init__(self, kafka: KafkaSettings) -> None:
        self.kafka = kafka
        self.consumer: AIOKafkaConsumer | None = None
        self.partitions: list[TopicPartition] = []
        self.ends: dict[TopicPartition, int] = {}
        self._stuck: dict[TopicPartition, tuple[int, float]] = {}

    async def start(self, consumer: AIOKafkaConsumer | None = None) -> None:
        """Connect (tests may hand in a consumer of their own) and read from the start."""
        if consumer is None:
            # How soon a holds topic given more partitions is read in all of them (see
            # follow_partitions): one small metadata request each time, off the hot path.
            age = min(self.kafka.metadata_max_age_ms, METADATA_MAX_AGE_MS)
            consumer = AIOKafkaConsumer(
                **client_options(self.kafka.model_copy(update={"metadata_max_age_ms": age})),
                group_id=None,
                enable_auto_commit=False,
                auto_offset_reset="earliest",
                # Paused between refreshes (see _reading), so a short wait costs no idle polling.
                fetch_max_wait_ms=self.kafka.fetch_max_wait_ms,
            )
        await consumer.start()
        self.consumer = consumer
        await self.assign()

    async def stop(self) -> None:
        if self.consumer is not None:
            await self.consumer.stop()

    def _started(self) -> AIOKafkaConsumer:
        if self.consumer is None:
            raise RuntimeError("HoldsView used before start()")
        return self.consumer

    async def assign(self) -> None:
        """Every partition of the holds topic, read from its start. A topic that does not exist
        yet (a broker that came back empty) has none: looked up again at the next refresh."""
        consumer = self._started()
        await consumer.topics()  # fresh metadata
        partitions = consumer.partitions_for_topic(topics.HOLDS) or set()
        self.partitions = [TopicPartition(topics.HOLDS, p) for p in sorted(partitions)]
        if self.partitions:
            consumer.assign(self.partitions)
            consumer.pause(*self.partitions)
            await consumer.seek_to_beginning(*self.partitions)

    def follow_partitions(self) -> bool:
        """Every partition the topic has now, as the consumer's metadata says (refreshed every
        metadata max age). A topic with other partitions than the view reads was made again or
        given more: a hold sent to a partition the view does not read would never be read, so
        every partition is read from its start (True: the view must wait for a new marker)."""
        consumer = self._started()
        now = consumer.partitions_for_topic(topics.HOLDS) or set()
        if not now or now == {tp.partition for tp in self.partitions}:
            return False
        log.warning(
            "holds topic has other partitions than the view read: reading them all again",
            extra={"had": len(self.partitions), "now": len(now)},
        )
        self.ends = {}
        self.partitions = [TopicPartition(topics.HOLDS, p) for p in sorted(now)]
        consumer.assign(self.partitions)
        consumer.pause(*self.partitions)
        self._from_start()
        return True

    async def end_offsets(self) -> dict[TopicPartition, int]:
        return dict(await self._started().end_offsets(self.partitions))

    def went_back(self, end: Mapping[TopicPartition, int]) -> list[int]:
        """The partitions whose end is before where it was at the last refresh."""
        return [tp.partition for tp in self.partitions if end[tp] < self.ends.get(tp, 0)]

    async def rewind(self) -> bool:
        """Read every partition from its start again, the topic having been forgotten. Made
        again, it may have other partitions: asked now, not at the next periodic refresh of the
        metadata, or the view could count itself complete meanwhile on a marker in a partition
        it reads, blind to a hold sent to another. True if the partitions changed."""
        self._from_start()
        client = getattr(self.consumer, "_client", None)  # a stand-in consumer in tests has none
        if client is not None and not await client.force_metadata_update():
            raise HoldsBehind("the holds topic's partitions could not be looked up")
        return self.follow_partitions()

    def _from_start(self) -> None:
        consumer = self._started()
        for tp in self.partitions:
            fetching.forget(consumer, tp)
            consumer.seek(tp, 0)

    async def read_to(
        self, end: Mapping[TopicPartition, int], apply: Callable[[ConsumerRecord[bytes, bytes]], None]
    ) -> None:
        """Every record up to `end`, in order, to `apply`; HoldsBehind if the end cannot be
        reached in CATCH_UP_S (what was read by then has been applied)."""
        consumer = self._started()
        self.ends = dict(end)
        deadline = time.monotonic() + CATCH_UP_S
        while behind := [tp for tp in self.partitions if await consumer.position(tp) < end[tp]]:
            with _reading(consumer, behind):
                batches = await fetching.fetch_in_order(consumer, timeout_ms=100)
            for records in batches.values():
                for record in records:
                    apply(record)
            if not batches and time.monotonic() >= deadline:
                await self._note_stuck(consumer, behind)
                raise HoldsBehind(f"holds topic not read to its end in {CATCH_UP_S:.0f} s")
        self._stuck.clear()

    async def _note_stuck(self, consumer: AIOKafkaConsumer, behind: list[TopicPartition]) -> None:
        """An offset that stays unreadable while the broker answers is a hole: tansu assigns an
        offset to a produce it then fails (two first writes to a new partition race after a
        restart) and reports an end past it, so a reader would wait there for ever. One that
        has not moved through refreshes HOLE_AFTER_S apart, each of which got the end offsets
        (a paused broker answers none), is stepped over. Safe: whatever it held, the view is
        complete only once it holds every hold a marker lists, and intake re-announces holds
        the topic is missing."""
        now = time.monotonic()
        for tp in behind:
            position = await consumer.position(tp)
            seen_at, since = self._stuck.get(tp, (position, now))
            if seen_at != position:
                self._stuck[tp] = (position, now)
            elif now - since >= HOLE_AFTER_S:
                log.error("holds topic: offset never readable, stepping over it", extra={"offset": position})
                fetching.forget(consumer, tp)
                consumer.seek(tp, position + 1)
                del self._stuck[tp]
            else:
                self._stuck[tp] = (position, since)

    async def marker_still_there(self, marker: MarkerPlace | None, end: Mapping[TopicPartition, int]) -> bool:
        """Whether the marker the view read is still where it read it. The end offsets alone
        cannot tell: a broker that came back empty and took a few messages since can report the
        same ends. The marker is what made the view complete, so it is what is checked: one
        small fetch. No answer while the partition reaches past it: we cannot tell (HoldsBehind)."""
        if marker is None:
            return True
        consumer = self._started()
        tp, offset, message_id = marker
        fetching.forget(consumer, tp)
        consumer.seek(tp, offset)
        for _ in range(10):
            with _reading(consumer, [tp]):
                records = (await consumer.getmany(tp, timeout_ms=100)).get(tp, [])
            if records:
                fetching.forget(consumer, tp)
                consumer.seek(tp, offset + 1)  # what follows is read by the catch-up, in order
                try:
                    same = decode(records[0].value, HOLDS_MESSAGE).message_id == message_id
                except PoisonMessage:
                    same = False
                return records[0].offset == offset and same
        if end[tp] <= offset:
            return False  # the partition no longer reaches it
        fetching.forget(consumer, tp)
        consumer.seek(tp, offset + 1)
        raise HoldsBehind("the holds marker could not be read back")


@contextlib.contextmanager
def _reading(consumer: AIOKafkaConsumer, partitions: list[TopicPartition]) -> Iterator[None]:
    """The holds partitions are fetched only while a refresh reads them. Left fetchable, the
    consumer keeps a long poll waiting on its connection, and the broker answers a connection's
    requests in order: each refresh's end-offsets request waited behind it (83 ms at the median
    on tansu in a soak, before every batch of every worker)."""
    consumer.resume(*partitions)
    try:
        yield
    finally:
        consumer.pause(*partitions)
