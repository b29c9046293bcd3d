"""The consume loop every system worker runs.

At-least-once: offsets are committed only after each message's outcome (or dead letter) was
acknowledged by the broker. A message that can never succeed (poison) is dead-lettered at
once; a message whose store keeps failing is retried with backoff, then reported `failed` to
the tracker and dead-lettered with the error, so nothing is dropped and nothing hangs.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from datetime import UTC, datetime

from aiokafka import AIOKafkaProducer, ConsumerRecord
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from shared import topics
from shared.codec import PoisonMessage, decode, encode
from shared.contracts import SUBJECT_COMMAND, OutcomeReported, SubjectCommand
from shared.crypto import IdentifierSeal, IdentifierSealError
from shared.identity import Identities
from shared.kafka import make_consumer, make_producer, start_with_retry, trace_headers
from shared.service import mark_ready
from shared.settings import KafkaSettings
from shared.worker.handler import Clock, execute, outcome_id
from shared.worker.holds import HoldsView
from shared.worker.policy import Policy
from shared.worker.ports import StoreAdapter

log = logging.getLogger(__name__)


class RetrySettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LETHE_WORKER_", extra="ignore")

    attempts: int = Field(5, ge=1, le=50, description="Tries of one command before it is reported failed.")
    backoff_initial_s: float = Field(0.2, gt=0, le=60, description="First retry delay; doubles each try.")
    backoff_max_s: float = Field(5.0, gt=0, le=600, description="Longest retry delay.")


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
    ) -> None:
        self.adapter = adapter
        self.policy = policy
        self.seal = seal
        self.kafka = kafka
        self.retry = retry
        self.clock = clock
        self.holds = holds
        self.topic = topics.command_topic(adapter.system)
        self.group_id = f"lethe-worker-{adapter.system}"
        self._stopping = asyncio.Event()
        self._producer: AIOKafkaProducer | None = None

    def stop(self) -> None:
        self._stopping.set()

    async def run(self) -> None:
        await self.adapter.start()
        producer = self._producer = make_producer(self.kafka)
        consumer = make_consumer(self.kafka, [self.topic], self.group_id)
        await start_with_retry(producer, "producer")
        await start_with_retry(consumer, "consumer")
        if self.holds is not None:
            await self.holds.start()
        log.info("worker started", extra={"system": self.adapter.system, "topic": self.topic})
        mark_ready()
        try:
            while not self._stopping.is_set():
                batches = await consumer.getmany(timeout_ms=200)
                if not batches:
                    continue
                # Partitions are independent: work on them concurrently, in order within each.
                await asyncio.gather(*(self._handle_partition(b) for b in batches.values()))
                await consumer.commit()
        finally:
            await consumer.stop()
            await producer.stop()
            if self.holds is not None:
                await self.holds.stop()
            await self.adapter.close()

    async def _handle_partition(self, records: Sequence[ConsumerRecord[bytes, bytes]]) -> None:
        for record in records:
            await self.handle(record)

    async def handle(self, record: ConsumerRecord[bytes, bytes]) -> None:
        try:
            command = decode(record.value, SUBJECT_COMMAND)
            if command.system != self.adapter.system:
                raise PoisonMessage("system", f"{command.system!r} is not handled by this worker")
            identities = self.seal.open(command.sealed_identifiers)
        except (PoisonMessage, IdentifierSealError) as exc:
            log.warning("poison message dead-lettered", extra={"offset": record.offset, "error": str(exc)})
            await self.dead_letter(record, str(exc))
            return
        outcome = await self._execute_with_retry(command, identities, record)
        await self._send(topics.OUTCOMES, command.request_id, encode(outcome))
        log.info(
            "command handled",
            extra={
                "request_id": command.request_id,
                "system": self.adapter.system,
                "status": outcome.status,
                "attempt": command.attempt,
            },
        )

    async def _execute_with_retry(
        self, command: SubjectCommand, identities: Identities, record: ConsumerRecord[bytes, bytes]
    ) -> OutcomeReported:
        delay = self.retry.backoff_initial_s
        for attempt in range(1, self.retry.attempts + 1):
            try:
                return await execute(command, identities, self.adapter, self.policy, self.clock, self.holds)
            except Exception as exc:  # store errors of every driver; the type is what we report
                error = type(exc).__name__
                log.warning(
                    "command failed", extra={"request_id": command.request_id, "try": attempt, "error": error}
                )
                if attempt == self.retry.attempts:
                    await self.dead_letter(record, f"gave up after {attempt} tries: {error}")
                    now = self.clock()
                    return OutcomeReported(
                        message_id=outcome_id(command),
                        request_id=command.request_id,
                        system=self.adapter.system,
                        command_id=command.message_id,
                        attempt=command.attempt,
                        status="failed",
                        error=f"{error} after {attempt} tries",
                        started_at=now,
                        finished_at=now,
                    )
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.retry.backoff_max_s)
        raise AssertionError("unreachable")

    async def dead_letter(self, record: ConsumerRecord[bytes, bytes], error: str) -> None:
        headers = [
            ("lethe-error", error.encode()[:1000]),
            ("lethe-source-topic", record.topic.encode()),
            ("lethe-source-partition", str(record.partition).encode()),
            ("lethe-source-offset", str(record.offset).encode()),
        ]
        assert self._producer is not None
        await self._producer.send_and_wait(
            topics.DEAD_LETTERS, value=record.value or b"", key=record.key, headers=headers
        )

    async def _send(self, topic: str, key: str, value: bytes) -> None:
        assert self._producer is not None
        await self._producer.send_and_wait(topic, value=value, key=key.encode(), headers=trace_headers())
