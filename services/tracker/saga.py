"""The saga of one request, as plain data: which systems were asked, what each answered, and
what that makes of the request. No I/O here, so the rules are unit-tested directly."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from shared.contracts import (
    OutcomeReported,
    Report,
    RequestStatus,
    RequestType,
    SystemProgress,
    SystemReport,
    SystemState,
)


@dataclass
class SystemSlot:
    system: str
    state: SystemState
    attempts: int
    dispatched_at: datetime
    answered_at: datetime | None = None
    outcome: OutcomeReported | None = None

    def progress(self) -> SystemProgress:
        return SystemProgress(
            system=self.system,
            state=self.state,
            attempts=self.attempts,
            dispatched_at=self.dispatched_at,
            answered_at=self.answered_at,
        )

    def report(self) -> SystemReport:
        cats = self.outcome.categories if self.outcome else []
        return SystemReport(
            system=self.system,
            state=self.state,
            attempts=self.attempts,
            records_found=sum(c.found for c in cats),
            erased=sum(c.erased for c in cats),
            anonymised=sum(c.anonymised for c in cats),
            restricted=sum(c.restricted for c in cats),
            retained=sum(c.retained_count for c in cats),
            categories=cats,
            verification=self.outcome.verification if self.outcome else None,
            error=self.outcome.error if self.outcome else None,
            finished_at=self.outcome.finished_at if self.outcome else None,
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
        a system that already answered)."""
        slot = self.slots.get(outcome.system)
        if slot is None or slot.state is not SystemState.DISPATCHED:
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
        """Something the person asked to be erased is still held: retained, or only restricted.
        Anonymised data is no longer personal data, so it is not an exception; a restriction
        request that restricted is simply done."""
        for slot in self.slots.values():
            for c in slot.outcome.categories if slot.outcome else []:
                if c.retained:
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
