"""The consume loops every system worker runs.

At-least-once, nothing lost, nothing stuck:
- offsets are committed only after each message's outcome, retry or dead letter was
  acknowledged by the broker;
- a poison message (not JSON, wrong schema version, another system's, identifiers that do not
  open) goes to the dead-letter topic at once and the consumer moves on;
- a command whose store fails goes to the system's retry topic with a due time; a second
  consumer takes it when due and tries again with exponential backoff; after the last try it is
  dead-lettered with the error and reported `failed` to the tracker.
The main topic never waits for a failing store: other subjects' commands keep flowing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import cast

from aiokafka import AIOKafkaConsumer, ConsumerRecord

from shared import fetching, topics
from shared.broker_memory import BrokerMemory, until_next_check
from shared.crypto import IdentifierSeal
from shared.delivery import TRANSIENT, Publisher, by_key_in_order, commit, retry_state, set_aside_unreadable
from shared.fetching import poll
from shared.kafka import make_consumer, make_producer, start_with_retry
from shared.service import mark_ready
from shared.settings import KafkaSettings
from shared.telemetry import metrics
from shared.telemetry.messaging import consuming
from shared.worker.attempts import HOLDS_WAIT_S, OPENING_ERRORS, Attempts
from shared.worker.batching import carry_out_together
from shared.worker.handler import Clock
from shared.worker.holds import HoldsBehind, HoldsView
from shared.worker.policy import Policy
from shared.worker.ports import BatchingAdapter, StoreAdapter
from shared.worker.settings import RetrySettings

log = logging.getLogger(__name__)
Handler = Callable[[ConsumerRecord[bytes, bytes]], Awaitable[None]]
HOLDS_REFRESH_ERRORS: tuple[type[BaseException], ...] = (*TRANSIENT, HoldsBehind)
# How long a batch waits for the holds announcement when none has been read (a broker that came
# back empty: intake announces them again moments after the commands start flowing again).
ANNOUNCEMENT_WAIT_S = 2.0
HOLDS_LOOK_S = 0.1


class _Stopping(Exception):
    pass


def utc_clock() -> datetime:
    return datetime.now(UTC)


class WorkerRuntime:
    def __init__(
        self,
        adapter: StoreAdapter,
        policy: Policy,
        seal: IdentifierSeal,
        kafka: KafkaSettings,
        retry: RetrySettings,
        clock: Clock = utc_clock,
        holds: HoldsView | None = None,
        broker_check_s: float = 5.0,
    ) -> None:
        self.adapter = adapter
        self.policy = policy
        self.seal = seal
        self.kafka = kafka
        self.retry = retry
        self.clock = clock
        self.holds = holds
        self.broker_check_s = broker_check_s
        self.topic = topics.command_topic(adapter.system)
        self.retry_topic = topics.retry_topic(adapter.system)
        self.group_id = topics.worker_group(adapter.system)
        self.concurrency = retry.concurrency
        self.stopping = asyncio.Event()
        self.ready = False
        self.attempts: Attempts | None = None

    def stop(self) -> None:
        self.stopping.set()

    async def readiness(self) -> dict[str, bool]:
        """For /readyz: consuming, and the store answers (its journal, and its own ping)."""
        checks = {"consumers": self.ready, "store": False}
        if self.holds is not None:  # erasures wait while the holds read cannot be trusted
            checks["holds"] = self.holds.incomplete() is None
        with contextlib.suppress(Exception):
            async with self.adapter.session() as store:
                await store.load_journal(uuid.uuid4())
            ping = getattr(self.adapter, "ping", None)
            checks["store"] = bool(await ping()) if ping else True
        return checks

    async def run(self) -> None:
        await self.adapter.start()
        producer = make_producer(self.kafka)
        await start_with_retry(producer, "producer")
        publisher = Publisher(producer, self.seal, self.stopping)
        self.attempts = Attempts(
            self.adapter, self.policy, self.seal, publisher, self.clock, self.holds, self.retry
        )
        main = make_consumer(self.kafka, [self.topic], self.group_id)
        retry_group = topics.worker_retry_group(self.adapter.system)
        retries = make_consumer(self.kafka, [self.retry_topic], retry_group, cold=True)
        await start_with_retry(main, "consumer")
        await start_with_retry(retries, "retry-consumer")
        if self.holds is not None:
            await self.holds.start()
        log.info("worker started", extra={"system": self.adapter.system, "topic": self.topic})
        self.ready = True
        mark_ready()
        try:
            await asyncio.gather(
                self._consume(main, self._first_try, together=True),
                self._consume(retries, self._retry),
                self._watch_holds(),
                self._watch_broker(BrokerMemory(None, producer, self.kafka, f"worker-{self.adapter.system}")),
            )
        finally:
            self.ready = False
            for client in (main, retries, producer):
                with contextlib.suppress(Exception):
                    await client.stop()
            if self.holds is not None:
                await self.holds.stop()
            await self.adapter.close()

    async def _watch_holds(self) -> None:
        """Keep the holds read (and what /readyz and the metric say of it) current while idle."""
        while self.holds is not None and not self.stopping.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), HOLDS_WAIT_S * 5)
            await self._refresh_holds()

    async def _watch_broker(self, memory: BrokerMemory) -> None:
        """A broker that restarted empty leaves this worker's consumers at places past the end of
        the new partitions: noticed by a sentinel, they are sent back to the start."""
        while not self.stopping.is_set():
            try:
                if await memory.forgotten():
                    await fetching.rewind_all()
                    await memory.remember()
            except TRANSIENT as exc:
                log.warning("broker check skipped", extra={"error": type(exc).__name__})
            await until_next_check(self.stopping, self.broker_check_s)

    async def _refresh_holds(self) -> None:
        """Before each batch and every few seconds. A broker that cannot be asked leaves the
        view marked as not current: the batch's erasures wait, the rest goes on."""
        if self.holds is None:
            return
        try:
            await self.holds.refresh()
        except HOLDS_REFRESH_ERRORS as exc:
            log.warning("holds refresh failed", extra={"error": type(exc).__name__})
        metrics.holds_complete.set(int(self.holds.incomplete() is None), {"system": self.adapter.system})

    async def _await_announcement(self) -> None:
        """After a broker loss the first commands can arrive before intake's announcement of the
        holds (its recovery and its relay race). Waiting a moment for it costs the batch less
        than sending its erasures round the retry topic; past ANNOUNCEMENT_WAIT_S (intake
        down) they go there as before."""
        deadline = time.monotonic() + ANNOUNCEMENT_WAIT_S
        while (
            self.holds is not None
            and not self.holds.announced
            and time.monotonic() < deadline
            and not self.stopping.is_set()
        ):
            await asyncio.sleep(HOLDS_LOOK_S)
            await self._refresh_holds()

    async def _consume(self, consumer: AIOKafkaConsumer, handle: Handler, together: bool = False) -> None:
        while not self.stopping.is_set():
            fetched_at = fetching.rewinds(consumer)  # before: a rewind during the fetch counts
            batches = await poll(consumer, self.group_id)
            if batches:
                try:
                    fetched = [r for partition in batches.values() for r in partition]
                    assert self.attempts is not None
                    records = await set_aside_unreadable(fetched, self.attempts.publisher, self.group_id)
                    if records:
                        await self._batch(records, handle, together)
                except _Stopping:
                    return  # the batch is not committed: it is processed again after the restart
                await commit(consumer, fetched_at)

    async def _batch(
        self, records: Sequence[ConsumerRecord[bytes, bytes]], handle: Handler, together: bool
    ) -> None:
        """Order matters per subject, not across subjects: records with the same key (the
        subject reference) run in order, different keys run concurrently, up to a bound. With
        `together`, a store that can carries out up to `batch_max` of them in one transaction
        (shared/worker/batching.py), one chunk after another."""
        await self._refresh_holds()  # the decision point of the whole batch (see holds.py)
        await self._await_announcement()

        async def in_order(group: list[ConsumerRecord[bytes, bytes]]) -> None:
            for record in group:
                with consuming(record, self.group_id) as span:
                    span.set_attribute("lethe.system", self.adapter.system)
                    await handle(record)

        store = self._batching() if together else None
        if store is None:
            await by_key_in_order(records, self.concurrency, in_order)
            return
        assert self.attempts is not None
        size = self.retry.batch_max
        for chunk in (records[n : n + size] for n in range(0, len(records), size)):
            left = await carry_out_together(self.attempts, store, chunk, self.group_id)
            await by_key_in_order(left, self.concurrency, in_order)

    def _batching(self) -> BatchingAdapter | None:
        """The store, if it can carry out several commands in one unit and this batch had
        better: more than one to a unit allowed, and the holds known (erasures would otherwise
        all go to the retry topic: one by one, each says so)."""
        if self.retry.batch_max < 2 or not getattr(self.adapter, "batching", False):
            return None
        if self.holds is not None and self.holds.incomplete() is not None:
            return None
        return cast(BatchingAdapter, self.adapter)

    async def _first_try(self, record: ConsumerRecord[bytes, bytes]) -> None:
        assert self.attempts is not None
        try:
            command, identities = self.attempts.open(record)
        except OPENING_ERRORS as exc:
            await self.attempts.poison(record, exc)
            return
        await self.attempts.attempt(record, command, identities, attempt=1)

    async def _retry(self, record: ConsumerRecord[bytes, bytes]) -> None:
        assert self.attempts is not None
        attempt, due = retry_state(record)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.stopping.wait(), max(0.0, due - time.time()))
        if self.stopping.is_set():
            raise _Stopping
        try:
            command, identities = self.attempts.open(record)
        except OPENING_ERRORS as exc:
            await self.attempts.poison(record, exc)
            return
        await self.attempts.attempt(record, command, identities, attempt)
