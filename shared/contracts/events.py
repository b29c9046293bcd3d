"""Events: facts that happened, named in the past tense."""

from __future__ import annotations

from typing import Literal
from uuid import UUID

from pydantic import AwareDatetime, Field

from shared.contracts.audit import AuditEntry
from shared.contracts.base import Envelope, Message, RequestType, SubjectRef, SystemName
from shared.contracts.outcomes import CategoryOutcome, ReviewItem, Verification
from shared.contracts.report import Report, RequestStatus, ReviewDecision, SystemProgress


class RequestAccepted(Message):
    """Intake stored a request and dispatched its commands; the tracker starts a saga."""

    event: Literal["request_accepted"] = "request_accepted"
    request_type: RequestType
    subject_ref: SubjectRef
    systems: list[SystemName] = Field(min_length=1)
    received_at: AwareDatetime
    deadline: AwareDatetime
    sealed_identifiers: str
    command_ids: dict[SystemName, UUID] = Field(
        default_factory=dict, description="The command sent to each system, re-sent as is on a timeout."
    )
    trace_id: str | None = None
    traceparent: str | None = Field(None, description="W3C context of the request's first span, for links.")


class OutcomeReported(Message):
    """A system worker finished (or gave up on) one command."""

    event: Literal["outcome_reported"] = "outcome_reported"
    system: SystemName
    command_id: UUID
    attempt: int = Field(ge=1)
    resume_of: UUID | None = None
    reason: str | None = Field(
        None, max_length=200, description="A deferred erasure's reason, from its command."
    )
    round: int = Field(1, ge=1, description="The command's round of the identity search.")
    review_id: UUID | None = Field(None, description="The review whose 'erase' this carried out.")
    status: Literal["done", "failed"]
    categories: list[CategoryOutcome] = Field(default_factory=list)
    verification: Verification | None = None
    error: str | None = Field(None, max_length=2_000)
    policy_version: str | None = Field(None, description="The retention policy the decisions followed.")
    learnt_identifiers: str | None = Field(
        None,
        description="Sealed: identifiers on records certainly the subject's that the command did not"
        " search with.",
    )
    learnt: dict[str, int] = Field(default_factory=dict, description="How many of each kind were learnt.")
    reviews: list[ReviewItem] = Field(default_factory=list)
    started_at: AwareDatetime
    finished_at: AwareDatetime


class RequestStatusChanged(Message):
    """The tracker's view of a request changed; `version` orders snapshots of one request."""

    event: Literal["request_status_changed"] = "request_status_changed"
    version: int = Field(ge=1)
    status: RequestStatus
    systems: list[SystemProgress]
    report: Report | None = None
    audit: list[AuditEntry] = Field(default_factory=list)


class RequestCompleted(Message):
    """For upstream DSAR tools: the request reached a final status; the report is attached."""

    event: Literal["request_completed"] = "request_completed"
    status: RequestStatus
    report: Report


class NotificationRequested(Message):
    """Upstream must tell the person something before Lethe proceeds, e.g. that a restriction
    is about to be lifted (Art. 18(3)) or that the deadline was extended (Art. 12(3))."""

    event: Literal["notification_requested"] = "notification_requested"
    kind: Literal["restriction_lift"]
    subject_ref: SubjectRef


class DeadlineExtended(Message):
    """The response deadline was extended once (Art. 12(3)); upstream must tell the person, with
    the reasons, within the first month."""

    event: Literal["deadline_extended"] = "deadline_extended"
    months: int = Field(ge=1, le=2)
    deadline: AwareDatetime


class RetrySystem(Message):
    """An operator asks for a failed system to be tried again."""

    command: Literal["retry_system"] = "retry_system"
    system: SystemName


class IngressReplied(Envelope):
    """The answer to a submission on the ingress topic: accepted (with the deadline), or the
    validation error naming the field. Every submission gets one; none is dropped silently."""

    event: Literal["ingress_replied"] = "ingress_replied"
    request_id: str | None = None
    accepted: bool
    status: str | None = None
    deadline: AwareDatetime | None = None
    error: str | None = None


class ReviewDecided(Message):
    """A compliance officer decided a review item (intake checked role, state and reason). The
    reason itself stays in intake: the audit chain gets its digest."""

    event: Literal["review_decided"] = "review_decided"
    review_id: UUID
    decision: ReviewDecision
    reason_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    token_id: str = Field(max_length=64)
    role: str = Field(max_length=32)
