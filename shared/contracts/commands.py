"""Commands to system workers: one per targeted system, on that system's topic.

They carry the subject only as a pseudonymous reference and a sealed identifier set, so the
broker never holds personal data in clear.
"""

from __future__ import annotations

from typing import Annotated, Literal
from uuid import UUID

from pydantic import Field, TypeAdapter

from shared.contracts.base import Message, RequestType, SubjectRef, SystemName


class SubjectCommand(Message):
    system: SystemName
    subject_ref: SubjectRef
    sealed_identifiers: str = Field(min_length=1, max_length=65_536)
    attempt: int = Field(1, ge=1, le=100)
    resume_of: UUID | None = Field(
        None,
        description="Deferred erasure: re-examine what this earlier command retained (retention "
        "ended, hold released), besides whatever the identifiers still find.",
    )
    reason: str | None = Field(
        None, max_length=200, description="Why a deferred erasure was sent: retention ended, a hold ended."
    )
    round: int = Field(
        1,
        ge=1,
        le=20,
        description="Identity search round: 1 with what the request gave, later ones with what earlier"
        " rounds learnt from the subject's records too (sealed with the rest).",
    )
    earlier: list[UUID] = Field(
        default_factory=list,
        max_length=20,
        description="This system's commands of the earlier rounds: what they decided is not decided again.",
    )

    @property
    def request_type(self) -> RequestType:
        raise NotImplementedError


class EraseSubject(SubjectCommand):
    command: Literal["erase_subject"] = "erase_subject"

    @property
    def request_type(self) -> RequestType:
        return RequestType.ERASURE


class EraseRecords(SubjectCommand):
    """A reviewer decided these records, left alone as perhaps someone else's, are the
    subject's: do to them, and nothing else, what the request asks (`applies`: an erasure's
    are erased, rules and holds still applying; a restriction's restricted, a lift's lifted)."""

    command: Literal["erase_records"] = "erase_records"
    review_id: UUID
    groups: list[tuple[str, str]] = Field(min_length=1, max_length=10_000)
    applies: RequestType = Field(
        RequestType.ERASURE,
        description="The request's type: a reviewer's 'erase' on a restriction restricts, never erases.",
    )

    @property
    def request_type(self) -> RequestType:
        return self.applies


class RestrictSubject(SubjectCommand):
    command: Literal["restrict_subject"] = "restrict_subject"

    @property
    def request_type(self) -> RequestType:
        return RequestType.RESTRICTION


class LiftRestriction(SubjectCommand):
    command: Literal["lift_restriction"] = "lift_restriction"

    @property
    def request_type(self) -> RequestType:
        return RequestType.LIFT_RESTRICTION


AnySubjectCommand = Annotated[
    EraseSubject | EraseRecords | RestrictSubject | LiftRestriction, Field(discriminator="command")
]
SUBJECT_COMMAND: TypeAdapter[EraseSubject | EraseRecords | RestrictSubject | LiftRestriction] = TypeAdapter(
    AnySubjectCommand
)
COMMAND_FOR_TYPE: dict[RequestType, type[SubjectCommand]] = {
    RequestType.ERASURE: EraseSubject,
    RequestType.RESTRICTION: RestrictSubject,
    RequestType.LIFT_RESTRICTION: LiftRestriction,
}
