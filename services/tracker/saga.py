"""The saga of one request, as plain data: which systems were asked, what each answered, what
that makes of the request, and the audit events each change produces. No I/O here, so the rules
are unit-tested directly."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any
from uuid import UUID

from shared.contracts import (
    CategoryOutcome,
    DeferredErasure,
    OutcomeReported,
    Report,
    RequestStatus,
    RequestType,
    SystemProgress,
    SystemReport,
    SystemState,
)
from shared.contracts.report import Extension


def _total(categories: list[CategoryOutcome], attribute: str) -> int:
    return sum(int(getattr(c, attribute)) for c in categories)


@dataclass(frozen=True)
class Timeouts:
    """How long a system may stay silent: `first` for the first try, multiplied by `backoff`
    for each further try; after `attempts` tries the system is failed."""

    first: timedelta
    attempts: int
    backoff: float = 2.0

    def wait(self, attempt: int) -> timedelta:
        return self.first * (self.backoff ** (attempt - 1))


@dataclass
class SystemSlot:
    system: str
    state: SystemState
    attempts: int
    dispatched_at: datetime
    command_id: UUID
    answered_at: datetime | None = None
    outcome: OutcomeReported | None = None
    deferred: list[OutcomeReported] = field(default_factory=list)
    error: str | None = None

    def progress(self) -> SystemProgress:
        return SystemProgress(
            system=self.system,
            state=self.state,
            attempts=self.attempts,
            dispatched_at=self.dispatched_at,
            answered_at=self.answered_at,
            error=self.error,
        )

    def latest(self) -> OutcomeReported | None:
        return self.deferred[-1] if self.deferred else self.outcome

    def next_erasure_on(self) -> date | None:
        latest = self.latest()
        dates = [
            r.retain_until
            for c in (latest.categories if latest else [])
            for r in c.retained
            if r.retain_until is not None
        ]
        return min(dates, default=None)

    def report(self) -> SystemReport:
        cats = self.outcome.categories if self.outcome else []
        return SystemReport(
            system=self.system,
            state=self.state,
            attempts=self.attempts,
            records_found=_total(cats, "found"),
            erased=_total(cats, "erased"),
            anonymised=_total(cats, "anonymised"),
            restricted=_total(cats, "restricted"),
            retained=_total(cats, "retained_count"),
            redirected=sum(r.count for c in cats for r in c.redirected),
            categories=cats,
            verification=self.outcome.verification if self.outcome else None,
            error=self.error,
            finished_at=self.answered_at,
            policy_version=self.outcome.policy_version if self.outcome else None,
            deferred=[
                DeferredErasure(
                    finished_at=d.finished_at,
                    reason=d.reason,
                    status=d.status,
                    erased=_total(d.categories, "erased"),
                    still_retained=_total(d.categories, "retained_count"),
                    categories=d.categories,
                )
                for d in self.deferred
            ],
            next_erasure_on=self.next_erasure_on(),
        )


@dataclass
class Saga:
    request_id: str
    request_type: RequestType
    subject_ref: str
    received_at: datetime
    deadline: datetime
    trace_id: str | None
    slots: dict[str, SystemSlot] = field(default_factory=dict)
    completed_at: datetime | None = None
    extension: Extension | None = None
    audit: list[tuple[datetime, str, dict[str, Any]]] = field(default_factory=list)

    def note(self, at: datetime, kind: str, **detail: Any) -> None:
        """An audit event for the store to chain; details are ids and counts, never identifiers."""
        self.audit.append((at, kind, detail))

    def record(self, outcome: OutcomeReported) -> bool:
        """Take a system's answer; False if it changes nothing. Duplicates change nothing; an
        answer that arrives after the system was failed for silence is taken, since the work
        was done; a deferred erasure's outcome is added to the history without reopening."""
        slot = self.slots.get(outcome.system)
        if slot is None:
            return False
        if outcome.resume_of is not None:
            if any(d.command_id == outcome.command_id for d in slot.deferred):
                return False
            slot.deferred.append(outcome)
            self.note(
                outcome.finished_at,
                "deferred_erasure",
                system=slot.system,
                reason=outcome.reason,
                status=outcome.status,
                erased=_total(outcome.categories, "erased"),
            )
            return True
        # The same command answered after its system was failed (for silence, or by a failure
        # report followed by a replay from the dead-letter topic): the work was done; take it.
        late = (
            slot.state is SystemState.FAILED
            and outcome.command_id == slot.command_id
            and (slot.outcome is None or outcome.status == "done")
        )

        if slot.state is not SystemState.DISPATCHED and not late:
            return False
        was_final = self.status.is_final
        slot.state = SystemState.DONE if outcome.status == "done" else SystemState.FAILED
        slot.answered_at = outcome.finished_at
        slot.outcome = outcome
        slot.error = outcome.error
        self.note(
            outcome.finished_at,
            "outcome_recorded",
            system=slot.system,
            status=outcome.status,
            attempt=outcome.attempt,
            found=_total(outcome.categories, "found"),
            erased=_total(outcome.categories, "erased"),
            late=late,
        )
        self._after_change(outcome.finished_at, was_final)
        return True

    def time_out(self, system: str, now: datetime, timeouts: Timeouts) -> str | None:
        """A silent system: 'redispatch' the same command (its worker de-duplicates), or after
        the last try 'failed'. None if it answered meanwhile or is not yet due."""
        slot = self.slots[system]
        if slot.state is not SystemState.DISPATCHED or now < slot.dispatched_at + timeouts.wait(
            slot.attempts
        ):
            return None
        if slot.attempts >= timeouts.attempts:
            was_final = self.status.is_final
            slot.state = SystemState.FAILED
            slot.answered_at = now
            slot.error = f"no answer after {slot.attempts} attempts"
            self.note(now, "system_failed", system=system, attempts=slot.attempts, error=slot.error)
            self._after_change(now, was_final)
            return "failed"
        slot.attempts += 1
        slot.dispatched_at = now
        self.note(now, "redispatched", system=system, attempt=slot.attempts)
        return "redispatch"

    def retry(self, system: str, now: datetime, command_id: UUID) -> bool:
        """An operator's retry of a failed system, with a new command (the old one's journal
        holds its failure). The request is in progress again until the system answers."""
        slot = self.slots.get(system)
        if slot is None or slot.state is not SystemState.FAILED:
            self.note(now, "retry_ignored", system=system)
            return False
        slot.state = SystemState.DISPATCHED
        slot.attempts += 1
        slot.dispatched_at = now
        slot.command_id = command_id
        slot.outcome = None
        slot.answered_at = None
        slot.error = None
        self.completed_at = None
        self.note(now, "retry_dispatched", system=system, attempt=slot.attempts)
        return True

    def extend(self, months: int, deadline: datetime, at: datetime) -> bool:
        if self.extension is not None:
            return False
        self.extension = Extension(months=months, extended_at=at)
        self.deadline = deadline
        self.note(at, "deadline_extended", months=months, deadline=deadline.isoformat())
        return True

    def _after_change(self, at: datetime, was_final: bool) -> None:
        if self.status.is_final and not was_final:
            self.completed_at = max(s.answered_at for s in self.slots.values() if s.answered_at)
            self.note(at, "completed", status=self.status.value)

    @property
    def status(self) -> RequestStatus:
        states = [s.state for s in self.slots.values()]
        if any(s is SystemState.DISPATCHED for s in states):
            return RequestStatus.IN_PROGRESS
        if any(s is SystemState.FAILED for s in states):
            return RequestStatus.FAILED
        if self._has_exceptions():
            return RequestStatus.COMPLETED_WITH_EXCEPTIONS
        return RequestStatus.COMPLETED

    def _has_exceptions(self) -> bool:
        """Something the person asked to be erased is still held: retained, restricted or
        referred to another controller. Anonymised data is no longer personal data, so it is
        not an exception; a restriction request that restricted is simply done."""
        for slot in self.slots.values():
            for c in slot.outcome.categories if slot.outcome else []:
                if c.retained or c.redirected:
                    return True
                if self.request_type is RequestType.ERASURE and c.restricted:
                    return True
        return False

    def report(self) -> Report:
        return Report(
            request_id=self.request_id,
            subject_ref=self.subject_ref,
            request_type=self.request_type,
            status=self.status,
            received_at=self.received_at,
            deadline=self.deadline,
            completed_at=self.completed_at,
            deadline_met=None if self.completed_at is None else self.completed_at <= self.deadline,
            systems=[self.slots[name].report() for name in sorted(self.slots)],
            trace_id=self.trace_id,
            extension=self.extension,
        )
