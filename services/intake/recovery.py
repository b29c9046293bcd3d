"""Intake's side of surviving a broker that forgot: the holds topic must always let a worker
confirm it knows every hold, and a request whose announcement was lost must be announced again.

Holds: at start-up and every `LETHE_HOLDS_VERIFY_S`, intake reads the holds topic back from its
start and compares it with its holds table (the source of truth); anything missing, unreadable
or no marker at all, and it re-announces every hold and a marker (`holds.announce_all`).
Requests: every `LETHE_BROKER_CHECK_S` it checks its broker sentinel (`shared/broker_memory.py`);
when the broker forgot, it creates the topics again, re-announces the holds at once, and
announces again every request the tracker has not acknowledged (same message ids: repeats are
de-duplicated downstream). The tracker re-sends what it was waiting for."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import asyncpg
from aiokafka import AIOKafkaProducer

from services.intake import holds, operations, reviews, store
from shared import fetching, topics
from shared.broker_memory import BrokerMemory, until_next_check
from shared.crypto import IdentifierSeal
from shared.delivery import TRANSIENT
from shared.kafka import ensure_topics
from shared.settings import KafkaSettings, RecoverySettings
from shared.worker.holds import HoldsBehind, HoldsView

log = logging.getLogger(__name__)
RECHECK_AFTER_RECOVERY_S = 2.0


async def holds_topic_complete(pool: asyncpg.Pool, kafka: KafkaSettings, seal: IdentifierSeal) -> bool:
    """Whether a reader starting now would find every hold of the table, and a marker."""
    expected = await holds.versions(pool)  # before the topic: a hold placed meanwhile is extra
    view = HoldsView(kafka, seal)
    await view.start()
    try:
        for _ in range(5):  # a slow broker: keep reading (holes are stepped over in time)
            with contextlib.suppress(HoldsBehind):
                await view.refresh()
                break
    finally:
        await view.stop()
    return view.announced and view.incomplete() is None and not view.missing(expected)


@dataclass
class BrokerWatch:
    pool: asyncpg.Pool
    producer: AIOKafkaProducer
    kafka: KafkaSettings
    seal: IdentifierSeal
    systems: list[str]
    settings: RecoverySettings
    verify_at: float = float("-inf")  # when the holds topic is next read back (monotonic)

    async def run(self, stopping: asyncio.Event) -> None:
        memory = BrokerMemory(self.pool, self.producer, self.kafka, "intake")
        while not stopping.is_set():
            try:
                await self.check(memory)
            except TRANSIENT as exc:
                log.warning("broker check skipped", extra={"error": type(exc).__name__})
            except Exception:  # never die quietly: a dead check would leave a loss unrepaired
                log.exception("broker check failed")
            await until_next_check(stopping, self.settings.broker_check_s)

    async def check(self, memory: BrokerMemory) -> None:
        if await memory.forgotten():
            await self.recover()
            await memory.remember()  # only once what was lost is put right
            return
        resend_s = self.settings.unacknowledged_resend_s
        waiting = datetime.now(UTC) - timedelta(seconds=resend_s)
        if announced := await store.announce_unstarted(self.pool, waiting, resend_s):
            log.warning("announced again: never acknowledged by the tracker", extra={"requests": announced})
        if self.verification_due(time.monotonic()):
            if forgotten := await holds.forget_identifiers(self.pool, datetime.now(UTC)):
                log.info("identifiers of ended holds dropped", extra={"holds": forgotten})
            if not await holds_topic_complete(self.pool, self.kafka, self.seal):
                log.warning("holds topic incomplete: announcing every hold again")
                # A topic deleted by hand, the sentinel's still there, is not made by the
                # relay's sends (shared.kafka): they would wait, and the outbox behind them.
                await ensure_topics(self.kafka, topics.all_topics(tuple(self.systems)))
                await holds.announce_all(self.pool)
            self.schedule_verification(time.monotonic())

    def verification_due(self, now: float) -> bool:
        return now >= self.verify_at

    def schedule_verification(self, now: float, after_recovery: bool = False) -> None:
        """The next read-back of the holds topic: a period on, or soon after a recovery, whose
        announcement may not reach the topic (the hour soak saw workers hold erasures back for
        11 s after a shed, until the periodic read-back found the holds incomplete)."""
        wait = RECHECK_AFTER_RECOVERY_S if after_recovery else self.settings.holds_verify_s
        self.verify_at = now + wait

    async def recover(self) -> None:
        log.warning("the broker forgot what it was sent: announcing holds and requests again")
        await ensure_topics(self.kafka, topics.all_topics(tuple(self.systems)))
        await fetching.rewind_all()
        await holds.announce_all(self.pool)
        announced = await store.announce_unstarted(self.pool, datetime.now(UTC))
        decisions = await reviews.resend_decisions(self.pool)
        extensions = await operations.resend_extensions(self.pool)
        log.info(
            "announced again",
            extra={"requests": announced, "decisions": decisions, "extensions": extensions},
        )
        self.schedule_verification(time.monotonic(), after_recovery=True)
