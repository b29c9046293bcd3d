"""One try of a command, as the worker runtime delivers it: opened (or dead-lettered as poison),
carried out (shared/worker/handler.py), and its outcome reported; a try that fails goes to the
system's retry topic with a due time, and the last one is dead-lettered and reported `failed`."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from aiokafka import ConsumerRecord
from opentelemetry import trace

from shared import topics
from shared.codec import PoisonMessage, decode, encode
from shared.contracts import SUBJECT_COMMAND, OutcomeReported, SubjectCommand
from shared.crypto import IdentifierSeal, IdentifierSealError
from shared.delivery import Publisher
from shared.identity import KnownIdentities
from shared.telemetry import metrics
from shared.worker.handler import Clock, SessionFactory, answering, execute, outcome_id
from shared.worker.holds import HoldsUnavailable, HoldsView
from shared.worker.policy import Policy
from shared.worker.ports import StoreAdapter
from shared.worker.settings import RetrySettings

log = logging.getLogger(__name__)
# How long an erasure waits before it looks again at holds it could not confirm complete.
HOLDS_WAIT_S = 1.0
OPENING_ERRORS = (PoisonMessage, IdentifierSealError)


@dataclass
class Attempts:
    adapter: StoreAdapter
    policy: Policy
    seal: IdentifierSeal
    publisher: Publisher
    clock: Clock
    holds: HoldsView | None
    retry: RetrySettings

    @property
    def system(self) -> str:
        return self.adapter.system

    def open(self, record: ConsumerRecord[bytes, bytes]) -> tuple[SubjectCommand, KnownIdentities]:
        """Raises one of OPENING_ERRORS for a message no try will get further with."""
        command = decode(record.value, SUBJECT_COMMAND)
        if command.system != self.system:
            raise PoisonMessage("system", f"{command.system!r} is not handled by this worker")
        return command, self.seal.open_known(command.sealed_identifiers)

    async def poison(self, record: ConsumerRecord[bytes, bytes], exc: Exception) -> None:
        log.warning("poison message dead-lettered", extra={"offset": record.offset, "error": str(exc)})
        await self.publisher.dead_letter(record, str(exc))

    async def carry_out(
        self, command: SubjectCommand, identities: KnownIdentities, session: SessionFactory | None = None
    ) -> OutcomeReported:
        return await execute(
            command,
            identities,
            self.adapter,
            self.policy,
            self.clock,
            self.holds,
            self.seal,
            self.retry.match_limit,
            session=session,
        )

    async def attempt(
        self,
        record: ConsumerRecord[bytes, bytes],
        command: SubjectCommand,
        identities: KnownIdentities,
        attempt: int,
    ) -> None:
        try:
            outcome = await self.carry_out(command, identities)
        except HoldsUnavailable as exc:
            # Not the command's fault, and not its store's: it waits on the retry topic, without
            # using up its tries, until the holds are known again (intake re-announces them).
            log.warning(
                "erasure held back: holds not confirmed",
                extra={"request_id": command.request_id, "system": self.system, "error": str(exc)},
            )
            metrics.erasures_held_back.add(1, {"system": self.system})
            await self.publisher.retry_later(
                record, topics.retry_topic(self.system), attempt, HOLDS_WAIT_S, type(exc).__name__
            )
            return
        except Exception as exc:  # store errors of every driver; only the type is reported
            error = type(exc).__name__
            log.warning(
                "command failed", extra={"request_id": command.request_id, "try": attempt, "error": error}
            )
            if attempt < self.retry.attempts:
                await self.publisher.retry_later(
                    record, topics.retry_topic(self.system), attempt + 1, self.retry.delay(attempt), error
                )
                return
            await self.publisher.dead_letter(record, f"gave up after {attempt} tries: {error}")
            now = self.clock()
            outcome = OutcomeReported(
                # Not the success's id: a later success (after a replay) must not be taken for
                # a duplicate of this failure.
                message_id=outcome_id(command, failed_after=attempt),
                **answering(command, self.system),
                status="failed",
                error=f"{error} after {attempt} tries",
                started_at=now,
                finished_at=now,
            )
        await self.report(command, attempt, outcome)

    async def report(self, command: SubjectCommand, attempt: int, outcome: OutcomeReported) -> None:
        """In the span of the message the command came in."""
        self.note(command, attempt, outcome)
        await self.publisher.publish(topics.OUTCOMES, command.request_id.encode(), encode(outcome))

    def note(self, command: SubjectCommand, attempt: int, outcome: OutcomeReported) -> None:
        """What the outcome says, on the current span, the metrics and the log (never whose)."""
        trace.get_current_span().set_attributes(
            {
                "lethe.request_id": command.request_id,
                "lethe.status": outcome.status,
                "lethe.attempt": attempt,
                "lethe.command_id": str(command.message_id),
            }
        )
        for category in outcome.categories:
            for action in ("erased", "anonymised", "restricted", "unrestricted"):
                if count := getattr(category, action):
                    metrics.outcomes.add(count, {"system": self.system, "action": action})
            if category.retained_count:
                metrics.outcomes.add(category.retained_count, {"system": self.system, "action": "retained"})
        log.info(
            "command handled",
            extra={
                "request_id": command.request_id,
                "system": self.system,
                "status": outcome.status,
                "try": attempt,
            },
        )
