"""Whether the broker still holds what it was given.

An embedded broker (tansu, memory storage) comes back from a restart with empty topics; a real
cluster can lose a topic to a recreation or a restore. Messages on the way are then gone: a
command no worker will see, an outcome the tracker waits for until its timeout, a hold marker.
Each service that can put things right (intake re-announces holds and unstarted requests, the
tracker re-sends what it waits for) places a sentinel record on a topic of its own and keeps
its offset and a random nonce in its own database. The record gone, or another one at its
offset, means the broker forgot; checked at start-up too, so a loss while the service was down
counts."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import signal
import time
from dataclasses import dataclass

import asyncpg
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaError, OffsetOutOfRangeError

from shared import topics
from shared.kafka import client_options
from shared.settings import KafkaSettings

log = logging.getLogger(__name__)

SENTINEL_DDL = """CREATE TABLE IF NOT EXISTS broker_sentinel (
    name text PRIMARY KEY,
    partition integer NOT NULL,
    "offset" bigint NOT NULL,
    nonce text NOT NULL,
    placed_at timestamptz NOT NULL DEFAULT now())"""
_PARTITION = 0  # one partition: a sentinel is one record, wherever it is


_nudge: asyncio.Event | None = None
_told_at: float | None = None  # time.monotonic() of the last SIGUSR2


def listen_for_nudges(loop: asyncio.AbstractEventLoop) -> None:
    """SIGUSR2 means "the broker is being shed: check it now". The embedded stack sends it
    before and after it starts its broker again on purpose, once everything produced has been
    read (cli/shedding.py), so that nobody waits out a check interval."""
    global _nudge
    _nudge = asyncio.Event()
    loop.add_signal_handler(signal.SIGUSR2, _nudged)


def _nudged() -> None:
    global _told_at
    _told_at = time.monotonic()
    if _nudge is not None:
        _nudge.set()


def since_shed_notice() -> float | None:
    """Seconds since the embedded stack last said it was shedding the broker; None if it never
    did. Everything produced before the shed had been read, so a recovery need publish again
    only what happened since (a busy hour's worth would refill the new broker as far as the old
    one). Kept, not used up: a check racing the shed, or a later crash, still counts from it."""
    return None if _told_at is None else time.monotonic() - _told_at


async def until_next_check(stopping: asyncio.Event, seconds: float) -> None:
    """Wait `seconds`, or less: until the service stops or is told to check now."""
    waits = [asyncio.ensure_future(stopping.wait())]
    if _nudge is not None:
        waits.append(asyncio.ensure_future(_nudge.wait()))
    try:
        await asyncio.wait(waits, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for wait in waits:
            wait.cancel()
        if _nudge is not None:
            _nudge.clear()


@dataclass(frozen=True)
class Sentinel:
    offset: int
    nonce: str


class BrokerMemory:
    """`pool` keeps the sentinel in the service's database, so that a loss while the service
    was down counts; without one (a worker, whose consumers start afresh anyway) it is kept in
    memory for the life of the process."""

    def __init__(
        self, pool: asyncpg.Pool | None, producer: AIOKafkaProducer, kafka: KafkaSettings, name: str
    ) -> None:
        self.pool = pool
        self.producer = producer
        self.kafka = kafka
        self.name = name
        self._tp = TopicPartition(topics.SENTINELS, _PARTITION)
        self._in_memory: Sentinel | None = None

    async def forgotten(self) -> bool:
        """Whether the sentinel is gone. It stays gone until `remember` places a new one, which
        the caller does once it has put right what was lost: a recovery that fails is tried
        again at the next check. A service's first start places one (nothing to have
        forgotten), unless the broker has no sentinel topic: it lost everything, topics
        included, and only a recovery makes them again. Raises KafkaError while the broker
        cannot be asked."""
        sentinel = await self._placed()
        if not await self._holds(sentinel):
            return True
        if sentinel is None:
            await self.remember()
        return False

    async def _placed(self) -> Sentinel | None:
        if self.pool is None:
            return self._in_memory
        row = await self.pool.fetchrow(
            'SELECT "offset", nonce FROM broker_sentinel WHERE name = $1', self.name
        )
        return None if row is None else Sentinel(row["offset"], row["nonce"])

    async def _holds(self, sentinel: Sentinel | None) -> bool:
        """Whether the broker still has the sentinel topic, and `sentinel` (if one was placed)."""
        # A consumer of its own each time: one that lived through a broker restart can keep
        # asking a connection that is gone, and a check every few seconds costs a connection.
        consumer = AIOKafkaConsumer(
            **client_options(self.kafka),
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="none",
            fetch_max_wait_ms=100,
        )
        await consumer.start()
        try:
            if topics.SENTINELS not in await consumer.topics():
                # Gone with the rest: nobody makes topics by naming them (shared.kafka), and
                # asking its end would wait for it to be made, which only the recovery does.
                return False
            if sentinel is None:
                return True
            consumer.assign([self._tp])
            end = (await consumer.end_offsets([self._tp]))[self._tp]
            if end <= sentinel.offset:
                return False
            consumer.seek(self._tp, sentinel.offset)
            for _ in range(20):  # a record that is there arrives on the first fetch or two
                for record in (await consumer.getmany(self._tp, timeout_ms=100)).get(self._tp, []):
                    if record.offset == sentinel.offset:
                        return bool(record.value == sentinel.nonce.encode())
                    if record.offset > sentinel.offset:
                        return False
        except OffsetOutOfRangeError:
            return False  # before the log's start: deleted
        finally:
            with contextlib.suppress(Exception):
                await consumer.stop()
        raise KafkaError("sentinel record not fetched")  # unknown: ask again next time

    async def remember(self) -> None:
        """Place a new sentinel: what the broker holds from now on is what is checked."""
        nonce = secrets.token_hex(16)
        metadata = await self.producer.send_and_wait(
            topics.SENTINELS, nonce.encode(), key=self.name.encode(), partition=_PARTITION
        )
        self._in_memory = Sentinel(metadata.offset, nonce)
        if self.pool is None:
            return
        await self.pool.execute(
            'INSERT INTO broker_sentinel (name, partition, "offset", nonce) VALUES ($1, $2, $3, $4)'
            ' ON CONFLICT (name) DO UPDATE SET partition = $2, "offset" = $3, nonce = $4, placed_at = now()',
            self.name,
            _PARTITION,
            metadata.offset,
            nonce,
        )
        log.info("broker sentinel placed", extra={"offset": metadata.offset})
