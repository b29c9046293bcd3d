"""Which recipients are told what: pure rules over the register and a request's outcomes.

A recipient is sent a notice when the request changed records (erased, anonymised, restricted,
unrestricted) in a category disclosed to it; one notice per request and recipient, listing each
such category with its counts. Retained, redirected or untouched records change nothing the
recipient holds a copy of. A lift is announced before it takes effect (its counts are not known
yet) to every recipient of a category that the person's restrictions restricted in the systems
it targets."""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from uuid import UUID

from shared.contracts.base import RequestType
from shared.contracts.notices import NoticeCategory, RecipientNotice
from shared.contracts.outcomes import CategoryOutcome
from shared.identity import Identities
from shared.recipients.register import EMPTY, Recipient, RegisterFile

_NOTICE_IDS = uuid.UUID("2d1f6a52-8a43-4f1e-9c57-6e6f74696365")
CHANGES = ("erased", "anonymised", "restricted", "unrestricted")


def notice_id(request_id: str, recipient_id: str) -> UUID:
    """Deterministic: a plan made twice (a redelivery) is the same notice."""
    return uuid.uuid5(_NOTICE_IDS, f"{request_id}/{recipient_id}")


def restricted(outcomes: Iterable[tuple[str, CategoryOutcome]]) -> set[tuple[str, str]]:
    """The (system, category) pairs where a restriction restricted records."""
    return {key for key, counts in changed(outcomes).items() if counts.get("restricted")}


def changed(outcomes: Iterable[tuple[str, CategoryOutcome]]) -> dict[tuple[str, str], dict[str, int]]:
    """Per (system, category), how many records each kind of change touched (non-zero only)."""
    counts: dict[tuple[str, str], dict[str, int]] = {}
    for system, outcome in outcomes:
        for change in CHANGES:
            if n := getattr(outcome, change):
                entry = counts.setdefault((system, outcome.category), {})
                entry[change] = entry.get(change, 0) + n
    return counts


@dataclass(frozen=True)
class Planner:
    """The register, and what the rules need of it. Holds no I/O."""

    register: RegisterFile = EMPTY

    def after_outcomes(
        self,
        request_id: str,
        request_type: RequestType,
        outcomes: Iterable[tuple[str, CategoryOutcome]],
        at: datetime,
    ) -> list[RecipientNotice]:
        """The notices an erasure or restriction calls for once its systems have answered."""
        if request_type is RequestType.LIFT_RESTRICTION:
            return []  # told before the lift (before_lift), not after
        counts = changed(outcomes)
        notices = []
        for recipient in self.register.recipients:
            categories = [
                NoticeCategory(system=s, category=c, counts=counts[(s, c)])
                for s, c in sorted(counts)
                if recipient.receives_category(s, c)
            ]
            if categories:
                notices.append(_notice(request_id, recipient, categories, at))
        return notices

    def before_lift(
        self, request_id: str, systems: Iterable[str], restricted: Iterable[tuple[str, str]], at: datetime
    ) -> list[RecipientNotice]:
        """A lift's notices, before it happens: to each recipient of a category that the
        person's restrictions restricted in the targeted systems, and of nothing else (a
        recipient that never held their data learns nothing of them)."""
        targeted = set(systems)
        lifted = sorted((s, c) for s, c in set(restricted) if s in targeted)
        notices = []
        for recipient in self.register.recipients:
            categories = [
                NoticeCategory(system=s, category=c) for s, c in lifted if recipient.receives_category(s, c)
            ]
            if categories:
                notices.append(_notice(request_id, recipient, categories, at))
        return notices

    def disclosed_to(self, found: Iterable[tuple[str, str]]) -> list[tuple[Recipient, list[tuple[str, str]]]]:
        """Art. 19, second sentence: the recipients of the categories where the person's records
        were found, with those categories."""
        where = sorted(set(found))
        answer = []
        for recipient in self.register.recipients:
            shared = [(s, c) for s, c in where if recipient.receives_category(s, c)]
            if shared:
                answer.append((recipient, shared))
        return answer

    def identifiers_for(self, recipient_id: str, known: Identities) -> Identities:
        """Only the kinds the recipient already holds (nothing else leaves the company)."""
        recipient = self.register.get(recipient_id)
        kinds = set(recipient.identifiers) if recipient else set()
        return Identities.normalised({k: getattr(known, k) for k in kinds})


def _notice(
    request_id: str, recipient: Recipient, categories: list[NoticeCategory], at: datetime
) -> RecipientNotice:
    return RecipientNotice(
        notice_id=notice_id(request_id, recipient.id),
        recipient_id=recipient.id,
        name=recipient.name,
        role=recipient.role.value,
        channel=recipient.notify.channel,
        categories=categories,
        must_acknowledge=recipient.must_acknowledge,
        planned_at=at,
        acknowledge_by=at + timedelta(days=recipient.acknowledge_within_days)
        if recipient.must_acknowledge
        else None,
    )
