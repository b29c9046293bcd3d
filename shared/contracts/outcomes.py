"""What a system did with one request, per data category: the vocabulary of the report."""

from __future__ import annotations

from datetime import date
from enum import StrEnum

from pydantic import AwareDatetime, Field

from shared.contracts.base import Frozen


class Action(StrEnum):
    ERASED = "erased"
    ANONYMISED = "anonymised"
    RESTRICTED = "restricted"
    UNRESTRICTED = "unrestricted"
    RETAINED = "retained"
    REDIRECTED = "redirected"


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


class CategoryOutcome(Frozen):
    category: str
    found: int = Field(ge=0)
    erased: int = Field(0, ge=0)
    anonymised: int = Field(0, ge=0)
    restricted: int = Field(0, ge=0)
    unrestricted: int = Field(0, ge=0)
    retained: list[Retention] = Field(default_factory=list)
    redirected: list[Redirect] = Field(default_factory=list)
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
