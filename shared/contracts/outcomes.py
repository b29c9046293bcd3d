"""What a system did with one request, per data category: the vocabulary of the report."""

from __future__ import annotations

from datetime import date
from enum import StrEnum
from typing import Literal
from uuid import UUID

from pydantic import AwareDatetime, Field

from shared.contracts.base import Frozen


class Action(StrEnum):
    ERASED = "erased"
    ANONYMISED = "anonymised"
    RESTRICTED = "restricted"
    UNRESTRICTED = "unrestricted"
    RETAINED = "retained"
    REDIRECTED = "redirected"
    IN_REVIEW = "in_review"  # found, but perhaps someone else's: left alone for a person to decide


class Retention(Frozen):
    """Why some records were kept: a retention rule or a hold, and until when (None: while
    the hold lasts)."""

    count: int = Field(ge=1)
    rule_id: str | None = None
    hold_reference: str | None = None
    legal_basis: str
    retain_until: date | None = None


class Redirect(Frozen):
    """Records held as a processor for another controller: the request is referred to it
    (Art. 28(3)(e)); Lethe does not act on them."""

    count: int = Field(ge=1)
    controller: str


class FoundBy(Frozen):
    """How records were found: which kind of identifier, given by the request or learnt from the
    subject's records in another system, in which round of the search."""

    kind: Literal["customer_ids", "emails", "phones", "ldap_uids"]
    source: Literal["given", "learnt"]
    round: int = Field(ge=1)
    count: int = Field(ge=1)


# Why records went to a person (shared/worker/matching.py decides; intake explains each).
ReviewReason = Literal[
    "shared_phone",
    "phone_only",
    "learnt_phone",
    "mailbox_variant",
    "id_variant",
    "unreadable_identifier",
    "too_many_matches",
]


class ReviewItem(Frozen):
    """Records a store found that may be someone else's (shared/worker/matching.py): neither
    acted on nor learnt from until a person decides. Ids only; what matched, masked, is sealed
    in `evidence` for the reviewer."""

    review_id: UUID
    groups: list[tuple[str, str]] = Field(description="(category, record id) of each top-level record")
    records: dict[str, int] = Field(
        description="Records per category, the top-level ones and those under them"
    )
    reason: ReviewReason
    matched: list[str] = Field(description="Kinds of the subject's identifiers that found them")
    conflicting: list[str] = Field(
        description="Kinds of strong identifiers on them the subject is not known by"
    )
    evidence: str | None = Field(None, description="Sealed: the identifiers, masked, for the reviewer")


class CategoryOutcome(Frozen):
    category: str
    found: int = Field(ge=0)
    erased: int = Field(0, ge=0)
    anonymised: int = Field(0, ge=0)
    restricted: int = Field(0, ge=0)
    unrestricted: int = Field(0, ge=0)
    retained: list[Retention] = Field(default_factory=list)
    redirected: list[Redirect] = Field(default_factory=list)
    in_review: int = Field(
        0, ge=0, description="Found, perhaps someone else's: awaiting a person's decision."
    )
    found_by: list[FoundBy] = Field(default_factory=list)
    note: str | None = None

    @property
    def not_found(self) -> bool:
        return self.found == 0

    @property
    def retained_count(self) -> int:
        return sum(r.count for r in self.retained)


class Verification(Frozen):
    """The result of re-reading the store after acting: nothing that should be gone remains."""

    passed: bool
    checked_at: AwareDatetime
    remaining: int = Field(0, ge=0)
