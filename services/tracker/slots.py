"""One system's part in a request, as plain data: the command it was sent, the answers of each
round of the identity search, and the deferred erasures after; merged into its report."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import date, datetime
from uuid import UUID

from shared.contracts import (
    CategoryOutcome,
    DeferredErasure,
    OutcomeReported,
    SystemProgress,
    SystemReport,
    SystemState,
)
from shared.contracts.outcomes import FoundBy, Redirect, Retention


def total(categories: list[CategoryOutcome], attribute: str) -> int:
    return sum(int(getattr(c, attribute)) for c in categories)


def merge(answers: list[OutcomeReported]) -> list[CategoryOutcome]:
    """The categories of several rounds' answers as one: counts added, what was kept and how
    things were found listed together."""
    if len(answers) == 1:
        return answers[0].categories
    merged: dict[str, list[CategoryOutcome]] = defaultdict(list)
    for answer in answers:
        for category in answer.categories:
            merged[category.category].append(category)
    result = []
    for name, parts in merged.items():
        kept: dict[tuple[str | None, str | None, str, date | None], int] = defaultdict(int)
        redirected: dict[str, int] = defaultdict(int)
        for part in parts:
            for r in part.retained:
                kept[(r.rule_id, r.hold_reference, r.legal_basis, r.retain_until)] += r.count
            for d in part.redirected:
                redirected[d.controller] += d.count
        notes = [p.note for p in parts if p.note]
        result.append(
            CategoryOutcome(
                category=name,
                found=sum(p.found for p in parts),
                erased=sum(p.erased for p in parts),
                anonymised=sum(p.anonymised for p in parts),
                restricted=sum(p.restricted for p in parts),
                unrestricted=sum(p.unrestricted for p in parts),
                retained=[
                    Retention(
                        count=n, rule_id=rule, hold_reference=hold, legal_basis=basis, retain_until=until
                    )
                    for (rule, hold, basis, until), n in sorted(kept.items(), key=str)
                ],
                redirected=[Redirect(count=n, controller=c) for c, n in sorted(redirected.items())],
                in_review=sum(p.in_review for p in parts),
                found_by=[f for p in parts for f in p.found_by] or [],
                note=notes[0] if notes else None,
            )
        )
    return result


@dataclass
class SystemSlot:
    system: str
    state: SystemState
    attempts: int
    dispatched_at: datetime
    command_id: UUID
    answered_at: datetime | None = None
    outcome: OutcomeReported | None = None
    deferred: list[OutcomeReported] = field(default_factory=list)
    error: str | None = None
    rounds: list[OutcomeReported] = field(default_factory=list)  # rounds 2.. of the search

    def progress(self) -> SystemProgress:
        return SystemProgress(
            system=self.system,
            state=self.state,
            attempts=self.attempts,
            dispatched_at=self.dispatched_at,
            answered_at=self.answered_at,
            error=self.error,
        )

    def answers(self) -> list[OutcomeReported]:
        return ([self.outcome] if self.outcome else []) + self.rounds

    def latest(self) -> OutcomeReported | None:
        return self.deferred[-1] if self.deferred else (self.rounds[-1] if self.rounds else self.outcome)

    def next_erasure_on(self) -> date | None:
        kept_by = self.deferred[-1:] or self.answers()
        dates = [
            r.retain_until
            for o in kept_by
            for c in o.categories
            for r in c.retained
            if r.retain_until is not None
        ]
        return min(dates, default=None)

    def report(self) -> SystemReport:
        answers = self.answers()
        cats = merge(answers) if answers else []
        latest = answers[-1] if answers else None
        return SystemReport(
            system=self.system,
            state=self.state,
            attempts=self.attempts,
            records_found=total(cats, "found"),
            erased=total(cats, "erased"),
            anonymised=total(cats, "anonymised"),
            restricted=total(cats, "restricted"),
            retained=total(cats, "retained_count"),
            redirected=sum(r.count for c in cats for r in c.redirected),
            categories=cats,
            verification=latest.verification if latest else None,
            error=self.error,
            finished_at=self.answered_at,
            policy_version=latest.policy_version if latest else None,
            deferred=[
                DeferredErasure(
                    finished_at=d.finished_at,
                    reason=d.reason,
                    status=d.status,
                    erased=total(d.categories, "erased"),
                    still_retained=total(d.categories, "retained_count"),
                    categories=d.categories,
                )
                for d in self.deferred
            ],
            next_erasure_on=self.next_erasure_on(),
        )


__all__ = ["FoundBy", "SystemSlot", "merge", "total"]
