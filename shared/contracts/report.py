"""The completion report: what compliance hands to a regulator. Names the subject only by
its pseudonymous reference."""

from __future__ import annotations

from datetime import date
from enum import StrEnum
from typing import Literal
from uuid import UUID

from pydantic import AwareDatetime, Field

from shared.contracts.base import Frozen, RequestType, SubjectRef, SystemName
from shared.contracts.notices import RecipientNotice
from shared.contracts.outcomes import CategoryOutcome, Verification

REPORT_SCHEMA_VERSION = 1


class RequestStatus(StrEnum):
    RECEIVED = "received"
    IN_PROGRESS = "in_progress"
    AWAITING_REVIEW = "awaiting_review"  # every system answered; records wait for a person
    AWAITING_RECIPIENTS = "awaiting_recipients"  # done here; a recipient's acknowledgement awaited
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


class ReviewDecision(StrEnum):
    ERASE = "erase"  # they are the subject's: erase them (rules and holds still apply)
    KEEP = "keep"  # not erased: not the subject's, or otherwise excluded


class ReviewState(StrEnum):
    OPEN = "open"
    ERASING = "erasing"  # decided 'erase' (the subject's); the system is carrying it out
    # Carried out: what the request asked done to the records (erasure, restriction, its lift).
    ERASED = "erased"
    RESTRICTED = "restricted"
    UNRESTRICTED = "unrestricted"
    KEPT = "kept"
    FAILED = "failed"


class ReviewReport(Frozen):
    """Records that may be someone else's, and what a person decided. No identifiers: the
    reviewer's evidence stays sealed in intake; the reason given is intake's to show."""

    review_id: UUID
    system: SystemName | None = Field(description="None: about the request (the search's bound)")
    reason: str
    groups: list[tuple[str, str]]
    records: dict[str, int]
    matched: list[str]
    conflicting: list[str]
    round: int
    state: ReviewState
    opened_at: AwareDatetime
    decided_at: AwareDatetime | None = None
    decided_by: str | None = Field(None, description="The deciding token's id")
    decided_role: str | None = None
    erased: int = 0
    # Written only where not 0 (issue 17's fourteenth part): an intake of an earlier version,
    # which forbids fields it does not know, reads every other snapshot.
    restricted: int = Field(0, exclude_if=lambda n: not n)
    unrestricted: int = Field(0, exclude_if=lambda n: not n)
    retained: int = 0
    evidence: str | None = Field(None, description="Sealed, for intake's reviewer: what matched, masked")


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
    rounds: int = Field(1, description="Rounds of the identity search (shared/worker/matching.py)")
    reviews: list[ReviewReport] = Field(default_factory=list)
    recipients: list[RecipientNotice] = Field(
        default_factory=list, description="Who the outcome was communicated to (Art. 19), and how it went"
    )
