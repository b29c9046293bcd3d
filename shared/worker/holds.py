"""The holds a worker must honour, read from the holds topic.

The guarantee: a hold that intake acknowledged (201) before a worker takes up a batch of
commands is honoured by every decision in that batch. Intake answers only after the hold's
message is on the topic; before each batch the worker reads the topic's end offsets and catches
up to them, so every acknowledged hold is at an offset it has read. A hold acknowledged while a
batch is being processed (milliseconds to seconds) applies from the next batch on.

The topic is not the source of truth (intake's holds table is), and a broker can forget it: an
embedded broker restarts empty, a topic is recreated or restored from an old backup. So the view
erases nothing until it can tell that what it read is complete: intake publishes every hold and
then a `HoldsAnnounced` marker listing them with their versions; until the view has read a
marker and every hold it lists (at that version or later), `active` refuses (fail closed), as it
does while a hold message it cannot read stands. A worker that keeps running through a broker
restart keeps what it read (holds are never forgotten by a reader), and re-reads the topic from
its start when the marker it read is gone (checked at every refresh) or its end offsets go back;
from then on it needs a new marker, which intake publishes once it notices the loss, so erasures
wait a few seconds rather than miss a hold acknowledged just before the broker forgot it."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from uuid import UUID

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition

from shared import fetching, topics
from shared.codec import PoisonMessage, decode
from shared.contracts.holds import HOLDS_MESSAGE, HoldsAnnounced, HoldUpdated
from shared.crypto import IdentifierSeal, IdentifierSealError
from shared.identity import Identities
from shared.kafka import client_options
from shared.settings import KafkaSettings

log = logging.getLogger(__name__)
CATCH_UP_S = 3.0  # a refresh that cannot reach the end in this long fails (erasures wait)
HOLE_AFTER_S = 10.0  # an offset unreadable this long, while the broker answers, is a hole
METADATA_MAX_AGE_MS = 5_000


@dataclass(frozen=True)
class ActiveHold:
    case_reference: str
    identities: Identities
    categories: frozenset[str] | None


class HoldsUnavailable(RuntimeError):
    """Holds cannot be established, so nothing may be erased."""


class HoldsBehind(Exception):
    """A refresh could not read the holds topic to its end; the view is not current."""


class HoldsView:
    def __init__(self, kafka: KafkaSettings, seal: IdentifierSeal) -> None:
        self.kafka = kafka
        self.seal = seal
        self._holds: dict[UUID, tuple[HoldUpdated, Identities]] = {}
        self._announced: HoldsAnnounced | None = None
        # By message key: a later readable message with the same key (the same hold, a later
        # version, on the same partition) supersedes an unreadable one.
        self._unreadable: dict[bytes | None, int] = {}
        self._lock = asyncio.Lock()
        self._consumer: AIOKafkaConsumer | None = None
        self._partitions: list[TopicPartition] = []
        self._ends: dict[TopicPartition, int] = {}
        self._marker_at: tuple[TopicPartition, int, UUID] | None = None
        self._refreshed = False
        self._stuck: dict[TopicPartition, tuple[int, float]] = {}
        self._complete: bool | None = None  # as last logged (_say_if_changed)

    async def start(self, consumer: AIOKafkaConsumer | None = None) -> None:
        """Connect (tests may hand in a consumer of their own) and read from the start."""
        if consumer is None:
            # How soon a holds topic given more partitions is read in all of them (see
            # _follow_partitions): one small metadata request each time, off the hot path.
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
        self._consumer = consumer
        await self._assign(consumer)

    async def _assign(self, consumer: AIOKafkaConsumer) -> None:
        """Every partition of the holds topic, read from its start. A topic that does not exist
        yet (a broker that came back empty) has none: looked up again at the next refresh."""
        await consumer.topics()  # fresh metadata
        partitions = consumer.partitions_for_topic(topics.HOLDS) or set()
        self._partitions = [TopicPartition(topics.HOLDS, p) for p in sorted(partitions)]
        if self._partitions:
            consumer.assign(self._partitions)
            consumer.pause(*self._partitions)
            await consumer.seek_to_beginning(*self._partitions)

    async def stop(self) -> None:
        if self._consumer is not None:
            await self._consumer.stop()

    async def refresh(self) -> None:
        """Catch up with the holds topic to its end offsets as of now. The worker calls this
        before each batch of commands: it is the decision point of every command in it."""
        async with self._lock:
            # While it runs, what the last refresh read stands: another batch's decisions, made
            # after that refresh, are still covered by it (a hold acknowledged meanwhile applies
            # from the next batch on). Marking the view not current for the duration held back
            # every erasure running beside a refresh (3,621 of 5,000 commands in one benchmark).
            try:
                await self._catch_up()
            except BaseException:
                self._refreshed = False  # not read to the end: nothing may be erased until it is
                raise
            self._refreshed = True

    def incomplete(self) -> str | None:
        """Why the holds read so far cannot be trusted to be all of them; None if they can."""
        if not self._refreshed:
            return "the holds topic could not be read up to its end (broker unreachable?)"
        if self._unreadable:
            return f"{len(self._unreadable)} unreadable hold message(s)"
        if self._announced is None:
            return "no holds announcement read yet (intake publishes one at start and after a broker loss)"
        missing = self.missing(self._announced.versions)
        if missing:
            return f"{len(missing)} announced hold(s) not read"
        return None

    def missing(self, versions: Mapping[UUID, int]) -> list[UUID]:
        """The holds of `versions` this view does not have at that version or later."""
        return [
            hold_id
            for hold_id, version in versions.items()
            if hold_id not in self._holds or self._holds[hold_id][0].version < version
        ]

    @property
    def announced(self) -> bool:
        return self._announced is not None

    async def active(self, system: str, moment: datetime) -> list[ActiveHold]:
        """The holds in force at `moment`, as of the last refresh; refuses while incomplete."""
        reason = self.incomplete()
        self._say_if_changed(reason)
        if reason is not None:
            raise HoldsUnavailable(reason)
        return [
            ActiveHold(
                h.case_reference, identities, None if h.categories is None else frozenset(h.categories)
            )
            for h, identities in self._holds.values()
            if h.active_at(moment) and h.covers(system) and h.sealed_identifiers is not None
        ]

    def _say_if_changed(self, reason: str | None) -> None:
        """Log each change between complete and not at a decision: what the view trusted is
        then in the worker's log when a decision has to be explained (no identifiers in it)."""
        if (reason is None) == self._complete:
            return
        self._complete = reason is None
        if reason is not None:
            log.warning("holds view not complete: erasures wait", extra={"reason": reason})
            return
        marker = self._marker_at
        log.info(
            "holds view complete",
            extra={
                "holds": len(self._holds),
                "announced": len(self._announced.versions) if self._announced else 0,
                "marker": f"{marker[0].partition}/{marker[1]}" if marker else "",
                "partitions": len(self._partitions),
            },
        )

    async def _catch_up(self) -> None:
        consumer = self._consumer
        if consumer is None:
            raise RuntimeError("HoldsView used before start()")
        if not self._partitions:
            await self._assign(consumer)
            if not self._partitions:
                return
        self._follow_partitions(consumer)
        end = await consumer.end_offsets(self._partitions)
        went_back = [tp.partition for tp in self._partitions if end[tp] < self._ends.get(tp, 0)]
        if went_back or not await self._marker_still_there(consumer, end):
            # The broker forgot the topic, or it was recreated. What we read stays (a hold is
            # never forgotten here), but only a marker read from now on says it is all of them.
            log.warning("holds topic forgotten: reading it again", extra={"partitions": went_back})
            self._forget_announcement()
            for tp in self._partitions:
                fetching.forget(consumer, tp)
                consumer.seek(tp, 0)
            # Made again, it may have other partitions: asked now, not at the next periodic
            # refresh of the metadata, or the view could count itself complete meanwhile on a
            # marker in the partition it reads, blind to a hold sent to another.
            if not await _fresh_metadata(consumer):
                raise HoldsBehind("the holds topic's partitions could not be looked up")
            if self._follow_partitions(consumer):
                end = await consumer.end_offsets(self._partitions)
        self._ends = dict(end)
        deadline = time.monotonic() + CATCH_UP_S
        while behind := [tp for tp in self._partitions if await consumer.position(tp) < end[tp]]:
            with _reading(consumer, behind):
                batches = await fetching.fetch_in_order(consumer, timeout_ms=100)
            for records in batches.values():
                for record in records:
                    self._apply(record)
            if not batches and time.monotonic() >= deadline:
                await self._note_stuck(consumer, behind)
                raise HoldsBehind(f"holds topic not read to its end in {CATCH_UP_S:.0f} s")
        self._stuck.clear()

    def _forget_announcement(self) -> None:
        """Before reading every partition from its start: only a marker read from then on says
        the view has every hold. What was unreadable is forgotten too: read again, a message
        still there is found again, and one gone (a topic made anew) no longer stands."""
        self._announced = self._marker_at = None
        self._unreadable.clear()

    def _follow_partitions(self, consumer: AIOKafkaConsumer) -> bool:
        """Every partition the topic has now, as the consumer's metadata says (refreshed every
        metadata max age). A topic with other partitions than the view reads was made again or
        given more: a hold sent to a partition the view does not read would never be read, and
        its key may now lead elsewhere, so every partition is read from its start and only a
        marker read from then on makes the view complete."""
        now = consumer.partitions_for_topic(topics.HOLDS) or set()
        if not now or now == {tp.partition for tp in self._partitions}:
            return False
        log.warning(
            "holds topic has other partitions than the view read: reading them all again",
            extra={"had": len(self._partitions), "now": len(now)},
        )
        self._forget_announcement()
        self._ends = {}
        self._partitions = [TopicPartition(topics.HOLDS, p) for p in sorted(now)]
        consumer.assign(self._partitions)
        consumer.pause(*self._partitions)
        for tp in self._partitions:
            fetching.forget(consumer, tp)
            consumer.seek(tp, 0)
        return True

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

    async def _marker_still_there(
        self, consumer: AIOKafkaConsumer, end: Mapping[TopicPartition, int]
    ) -> bool:
        """Whether the marker we read is still where we read it. The end offsets alone cannot
        tell: a broker that came back empty and took a few messages since can report the same
        ends. The marker is what made this view complete, so it is what is checked: one small
        fetch. No answer while the partition reaches past it: we cannot tell (HoldsBehind)."""
        if self._marker_at is None:
            return True
        tp, offset, message_id = self._marker_at
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

    def _apply(self, record: ConsumerRecord[bytes, bytes]) -> None:
        try:
            message = decode(record.value, HOLDS_MESSAGE)
            if isinstance(message, HoldUpdated):
                # Once per hold, not per command; a hold over for a day has none (it covers nothing).
                sealed = message.sealed_identifiers
                identities = Identities() if sealed is None else self.seal.open(sealed)
        except (PoisonMessage, IdentifierSealError) as exc:
            # Fail closed: a hold we cannot read might cover the records we are about to erase.
            log.error("unreadable hold message", extra={"offset": record.offset, "error": str(exc)})
            self._unreadable[record.key] = record.offset
            return
        self._unreadable.pop(record.key, None)
        if isinstance(message, HoldsAnnounced):
            self._announced = message
            self._marker_at = (
                TopicPartition(record.topic, record.partition),
                record.offset,
                message.message_id,
            )
            return
        current = self._holds.get(message.hold_id)
        if current is None or message.version > current[0].version:
            self._holds[message.hold_id] = (message, identities)


async def _fresh_metadata(consumer: AIOKafkaConsumer) -> bool:
    """Ask the broker for the topics' metadata now; False if it did not answer (a stand-in
    consumer in tests has none to ask)."""
    client = getattr(consumer, "_client", None)
    return client is None or bool(await client.force_metadata_update())


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
