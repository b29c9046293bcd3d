"""The completion report: what compliance hands to a regulator. Names the subject only by
its pseudonymous reference."""

from __future__ import annotations

from datetime import date
from enum import StrEnum
from typing import Literal

from pydantic import AwareDatetime, Field

from shared.contracts.base import Frozen, RequestType, SubjectRef, SystemName
from shared.contracts.outcomes import CategoryOutcome, Verification

REPORT_SCHEMA_VERSION = 1


class RequestStatus(StrEnum):
    RECEIVED = "received"
    IN_PROGRESS = "in_progress"
    COMPLETED = "completed"
    COMPLETED_WITH_EXCEPTIONS = "completed_with_exceptions"
    FAILED = "failed"

    @property
    def is_final(self) -> bool:
        return self in FINAL_STATUSES


FINAL_STATUSES = frozenset(
    {RequestStatus.COMPLETED, RequestStatus.COMPLETED_WITH_EXCEPTIONS, RequestStatus.FAILED}
)


class SystemState(StrEnum):
    DISPATCHED = "dispatched"
    DONE = "done"
    FAILED = "failed"


class SystemProgress(Frozen):
    system: SystemName
    state: SystemState
    attempts: int = Field(ge=1)
    dispatched_at: AwareDatetime
    answered_at: AwareDatetime | None = None
    error: str | None = None


class DeferredErasure(Frozen):
    """A later run for records an earlier one retained: retention ended, a hold was released or
    expired."""

    finished_at: AwareDatetime
    reason: str | None = Field(None, description="Why it ran: 'retention ended', 'hold LIT-1 expired'…")
    status: Literal["done", "failed"]
    erased: int
    still_retained: int
    categories: list[CategoryOutcome]


class SystemReport(Frozen):
    system: SystemName
    state: SystemState
    attempts: int
    records_found: int
    erased: int
    anonymised: int
    restricted: int
    retained: int
    categories: list[CategoryOutcome]
    verification: Verification | None
    error: str | None = None
    finished_at: AwareDatetime | None
    redirected: int = 0
    policy_version: str | None = None
    deferred: list[DeferredErasure] = Field(default_factory=list)
    next_erasure_on: date | None = Field(None, description="When retained records are due to be erased.")


class Extension(Frozen):
    months: int
    extended_at: AwareDatetime


class Report(Frozen):
    report_schema_version: Literal[1] = 1
    request_id: str
    subject_ref: SubjectRef
    request_type: RequestType
    status: RequestStatus
    received_at: AwareDatetime
    deadline: AwareDatetime
    completed_at: AwareDatetime | None
    deadline_met: bool | None
    systems: list[SystemReport]
    trace_id: str | None = None
    extension: Extension | None = None
