"""The holds a worker must honour, read from the holds topic.

The guarantee: a hold that intake acknowledged (201) before a worker takes up a batch of
commands is honoured by every decision in that batch. Intake answers only after the hold's
message is on the topic; before each batch the worker reads the topic's end offsets and catches
up to them, so every acknowledged hold is at an offset it has read. A hold acknowledged while a
batch is being processed (milliseconds to seconds) applies from the next batch on.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from datetime import datetime
from uuid import UUID

from aiokafka import AIOKafkaConsumer, TopicPartition

from shared import topics
from shared.codec import PoisonMessage, decode
from shared.contracts.holds import HoldUpdated
from shared.crypto import IdentifierSeal, IdentifierSealError
from shared.fetching import fetch_in_order
from shared.identity import Identities
from shared.settings import KafkaSettings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ActiveHold:
    case_reference: str
    identities: Identities
    categories: frozenset[str] | None


class HoldsUnavailable(RuntimeError):
    """Holds cannot be established, so nothing may be erased."""


class HoldsView:
    def __init__(self, kafka: KafkaSettings, seal: IdentifierSeal) -> None:
        self.kafka = kafka
        self.seal = seal
        self._holds: dict[UUID, tuple[HoldUpdated, Identities]] = {}

        self._lock = asyncio.Lock()
        self._consumer: AIOKafkaConsumer | None = None
        self._partitions: list[TopicPartition] = []
        self._unreadable: set[int] = set()

    async def start(self) -> None:
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.kafka.bootstrap,
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            fetch_max_wait_ms=max(self.kafka.fetch_max_wait_ms, 100),  # cold: idle most of the time
        )
        await consumer.start()
        await consumer.topics()  # fetches metadata
        partitions = consumer.partitions_for_topic(topics.HOLDS) or set()
        self._partitions = [TopicPartition(topics.HOLDS, p) for p in sorted(partitions)]
        consumer.assign(self._partitions)
        await consumer.seek_to_beginning(*self._partitions)
        self._consumer = consumer

    async def stop(self) -> None:
        if self._consumer is not None:
            await self._consumer.stop()

    async def refresh(self) -> None:
        """Catch up with the holds topic to its end offsets as of now. The worker calls this
        before each batch of commands: it is the decision point of every command in it."""
        async with self._lock:
            await self._catch_up()

    async def active(self, system: str, moment: datetime) -> list[ActiveHold]:
        """The holds in force at `moment`, as of the last refresh."""
        if self._unreadable:
            raise HoldsUnavailable(f"{len(self._unreadable)} unreadable hold message(s)")
        return [
            ActiveHold(
                h.case_reference, identities, None if h.categories is None else frozenset(h.categories)
            )
            for h, identities in self._holds.values()
            if h.active_at(moment) and h.covers(system)
        ]

    async def _catch_up(self) -> None:
        consumer = self._consumer
        if consumer is None:
            raise RuntimeError("HoldsView used before start()")
        end = await consumer.end_offsets(self._partitions)
        while [tp for tp in self._partitions if await consumer.position(tp) < end[tp]]:
            for records in (await fetch_in_order(consumer, timeout_ms=100)).values():
                for record in records:
                    self._apply(record.value, record.offset)

    def _apply(self, raw: bytes | None, offset: int) -> None:
        try:
            hold = decode(raw, HoldUpdated)
            identities = self.seal.open(hold.sealed_identifiers)  # once, not per command
        except (PoisonMessage, IdentifierSealError) as exc:
            # Fail closed: a hold we cannot read might cover the records we are about to erase.
            log.error("unreadable hold message", extra={"offset": offset, "error": str(exc)})
            self._unreadable.add(offset)
            return
        current = self._holds.get(hold.hold_id)
        if current is None or hold.version > current[0].version:
            self._holds[hold.hold_id] = (hold, identities)
