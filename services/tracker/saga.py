"""The saga of one request, as plain data: which systems were asked, what each answered, and
what that makes of the request. No I/O here, so the rules are unit-tested directly."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime

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


def _total(categories: list[CategoryOutcome], attribute: str) -> int:
    return sum(int(getattr(c, attribute)) for c in categories)


@dataclass
class SystemSlot:
    system: str
    state: SystemState
    attempts: int
    dispatched_at: datetime
    answered_at: datetime | None = None
    outcome: OutcomeReported | None = None
    deferred: list[OutcomeReported] = field(default_factory=list)

    def progress(self) -> SystemProgress:
        return SystemProgress(
            system=self.system,
            state=self.state,
            attempts=self.attempts,
            dispatched_at=self.dispatched_at,
            answered_at=self.answered_at,
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
            error=self.outcome.error if self.outcome else None,
            finished_at=self.outcome.finished_at if self.outcome else None,
            policy_version=self.outcome.policy_version if self.outcome else None,
            deferred=[
                DeferredErasure(
                    finished_at=d.finished_at,
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

    def record(self, outcome: OutcomeReported) -> bool:
        """Take a system's answer; False if it changes nothing (a duplicate, or an answer for
        a system that already answered). A deferred erasure's outcome is added to the
        system's history without reopening the request."""
        slot = self.slots.get(outcome.system)
        if slot is None:
            return False
        if outcome.resume_of is not None:
            if any(d.command_id == outcome.command_id for d in slot.deferred):
                return False
            slot.deferred.append(outcome)
            return True
        if slot.state is not SystemState.DISPATCHED:
            return False
        slot.state = SystemState.DONE if outcome.status == "done" else SystemState.FAILED
        slot.answered_at = outcome.finished_at
        slot.outcome = outcome
        if self.status.is_final and self.completed_at is None:
            self.completed_at = max(s.answered_at for s in self.slots.values() if s.answered_at)
        return True

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
        )
