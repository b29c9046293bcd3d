"""Litigation and regulatory holds, as Legal places and releases them. One message per change
of a hold, keyed by hold id, carrying the hold's whole state (the topic can be compacted); and
the snapshot marker that lets a reader tell whether what it read is complete."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal
from uuid import UUID

from pydantic import AwareDatetime, Field, StringConstraints, TypeAdapter, model_validator

from shared.contracts.base import Envelope, SubjectRef, SystemName

# Opaque on purpose: "Smith v Telco" would put a litigant's name in every report that cites it.
CaseReference = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9./_:-]{0,63}$")]
SNAPSHOT_KEY = "holds-snapshot"  # one key, so the markers keep their order (and compact to the last)


class HoldUpdated(Envelope):
    event: Literal["hold_updated"] = "hold_updated"
    hold_id: UUID
    version: int = Field(ge=1)
    case_reference: CaseReference
    subject_ref: SubjectRef
    # None once the hold has been over for a while: intake drops the identifiers of a released
    # or expired hold (services/intake/holds.py, forget_identifiers) and announces that version.
    sealed_identifiers: str | None
    systems: list[SystemName] | None = None
    categories: list[str] | None = None
    placed_at: AwareDatetime
    expires_at: AwareDatetime | None = None
    released_at: AwareDatetime | None = None

    @model_validator(mode="after")
    def _identifiers_while_it_may_protect(self) -> HoldUpdated:
        if self.sealed_identifiers is None and self.released_at is None and self.expires_at is None:
            raise ValueError("sealed_identifiers: required while the hold has no end")
        return self

    def active_at(self, moment: datetime) -> bool:
        """In force from the moment it was read, whatever `placed_at` says: intake's clock
        stamps it, and a worker whose clock is behind would otherwise decide without a hold
        that was acknowledged before the decision (a hold has no future start)."""
        if self.released_at is not None and moment >= self.released_at:
            return False
        return self.expires_at is None or moment < self.expires_at

    def covers(self, system: str, category: str | None = None) -> bool:
        if self.systems is not None and system not in self.systems:
            return False
        return category is None or self.categories is None or category in self.categories


class HoldsAnnounced(Envelope):
    """Intake re-published every hold it has, at these versions, before this marker. A reader
    that holds each of them at that version or later has read a complete set of holds; one
    that has seen no marker, or misses one of them, has not (the broker forgot, the topic was
    recreated) and must not erase. Holds placed after the marker travel as usual."""

    event: Literal["holds_announced"] = "holds_announced"
    versions: dict[UUID, int] = Field(description="Every hold (active or not) and its latest version.")


HOLDS_MESSAGE: TypeAdapter[HoldUpdated | HoldsAnnounced] = TypeAdapter(
    Annotated[HoldUpdated | HoldsAnnounced, Field(discriminator="event")]
)
