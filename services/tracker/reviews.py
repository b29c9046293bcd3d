"""Records that may be someone else's, waiting for a person: as plain data, with the rules for
deciding them. A decision is taken once; 'erase' becomes a command for exactly those records,
'keep' is recorded as an exclusion."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

from shared.contracts import OutcomeReported, RequestType
from shared.contracts.outcomes import ReviewItem
from shared.contracts.report import ReviewDecision, ReviewReport, ReviewState

EXPANSION_BOUND = "expansion_bound"  # the search stopped with identifiers learnt and not searched
# What a reviewer's 'erase' (they are the subject's) ends in once carried out: what the request
# asked done to them. A restriction's records are restricted, not erased.
APPLIED = {
    RequestType.ERASURE: ReviewState.ERASED,
    RequestType.RESTRICTION: ReviewState.RESTRICTED,
    RequestType.LIFT_RESTRICTION: ReviewState.UNRESTRICTED,
}


@dataclass
class Review:
    review_id: UUID
    system: str | None  # None: about the request as a whole (the search's bound)
    reason: str
    groups: list[tuple[str, str]]
    records: dict[str, int]
    matched: list[str]
    conflicting: list[str]
    round: int
    opened_at: datetime
    state: ReviewState = ReviewState.OPEN
    decided_at: datetime | None = None
    decided_by: str | None = None
    decided_role: str | None = None
    command_id: UUID | None = None  # the EraseRecords command of an 'erase'
    outcome: OutcomeReported | None = None
    evidence: str | None = None  # sealed by the worker, opened by intake for the reviewer

    @classmethod
    def of(cls, system: str, item: ReviewItem, round_: int, at: datetime) -> Review:
        return cls(
            item.review_id,
            system,
            item.reason,
            [tuple(g) for g in item.groups],  # type: ignore[misc]
            dict(item.records),
            list(item.matched),
            list(item.conflicting),
            round_,
            at,
            evidence=item.evidence,
        )

    @property
    def open(self) -> bool:
        return self.state is ReviewState.OPEN

    @property
    def pending(self) -> bool:
        """Keeps the request from finishing: not decided, or its 'erase' not yet carried out."""
        return self.state in (ReviewState.OPEN, ReviewState.ERASING)

    def decide(
        self, decision: ReviewDecision, token_id: str, role: str, at: datetime, command_id: UUID | None
    ) -> bool:
        if not self.open:
            return False
        self.decided_at, self.decided_by, self.decided_role = at, token_id, role
        if decision is ReviewDecision.KEEP:
            self.state = ReviewState.KEPT
        else:
            self.state = ReviewState.ERASING
            self.command_id = command_id
        return True

    def carried_out(self, outcome: OutcomeReported, request_type: RequestType) -> bool:
        if self.state is not ReviewState.ERASING or outcome.command_id != self.command_id:
            return False
        self.outcome = outcome
        self.state = APPLIED[request_type] if outcome.status == "done" else ReviewState.FAILED
        return True

    def report(self) -> ReviewReport:
        cats = self.outcome.categories if self.outcome else []
        return ReviewReport(
            review_id=self.review_id,
            system=self.system,
            reason=self.reason,
            groups=self.groups,
            records=self.records,
            matched=self.matched,
            conflicting=self.conflicting,
            round=self.round,
            state=self.state,
            opened_at=self.opened_at,
            decided_at=self.decided_at,
            decided_by=self.decided_by,
            decided_role=self.decided_role,
            erased=sum(c.erased for c in cats),
            restricted=sum(c.restricted for c in cats),
            unrestricted=sum(c.unrestricted for c in cats),
            retained=sum(c.retained_count for c in cats),
            evidence=self.evidence,
        )


def to_json(review: Review) -> dict[str, object]:
    return {
        "review_id": str(review.review_id),
        "system": review.system,
        "reason": review.reason,
        "groups": review.groups,
        "records": review.records,
        "matched": review.matched,
        "conflicting": review.conflicting,
        "round": review.round,
        "opened_at": review.opened_at.isoformat(),
        "state": review.state.value,
        "decided_at": review.decided_at.isoformat() if review.decided_at else None,
        "decided_by": review.decided_by,
        "decided_role": review.decided_role,
        "command_id": str(review.command_id) if review.command_id else None,
        "outcome": review.outcome.model_dump(mode="json") if review.outcome else None,
        "evidence": review.evidence,
    }


def from_json(data: dict[str, Any]) -> Review:
    def when(text: str | None) -> datetime | None:
        return None if text is None else datetime.fromisoformat(text).astimezone(UTC)

    return Review(
        review_id=UUID(data["review_id"]),
        system=data["system"],
        reason=data["reason"],
        groups=[(c, r) for c, r in data["groups"]],
        records=dict(data["records"]),
        matched=list(data["matched"]),
        conflicting=list(data["conflicting"]),
        round=data["round"],
        opened_at=datetime.fromisoformat(data["opened_at"]).astimezone(UTC),
        state=ReviewState(data["state"]),
        decided_at=when(data["decided_at"]),
        decided_by=data["decided_by"],
        decided_role=data["decided_role"],
        command_id=UUID(data["command_id"]) if data["command_id"] else None,
        outcome=OutcomeReported.model_validate(data["outcome"]) if data["outcome"] else None,
        evidence=data.get("evidence"),
    )
