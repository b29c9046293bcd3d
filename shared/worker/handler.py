"""Carrying out one command in one system: match → holds → decide → act → verify → outcome.

Idempotent: a redelivered command returns the outcome it produced the first time, and a
command interrupted mid-way resumes with the plan it had made.
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from datetime import date, datetime
from typing import Protocol

from shared.contracts import (
    Action,
    CategoryOutcome,
    OutcomeReported,
    RequestType,
    Retention,
    SubjectCommand,
    Verification,
)
from shared.contracts.outcomes import Redirect
from shared.identity import Identities
from shared.telemetry.messaging import TRACER
from shared.worker.holds import ActiveHold
from shared.worker.policy import Policy
from shared.worker.ports import Decision, Record, StoreAdapter, StoreSession

Clock = Callable[[], datetime]
_OUTCOME_NAMESPACE = uuid.UUID("6f1c1f4e-2b51-4a53-9a3e-6c6574686501")
KEPT = frozenset({Action.RETAINED, Action.REDIRECTED})


class HoldSource(Protocol):
    async def active(self, system: str, moment: datetime) -> list[ActiveHold]: ...


class NoHolds:
    async def active(self, system: str, moment: datetime) -> list[ActiveHold]:
        return []


def outcome_id(command: SubjectCommand, failed_after: int | None = None) -> uuid.UUID:
    """Deterministic, so that a re-emitted outcome de-duplicates at the tracker."""
    suffix = "" if failed_after is None else f":failed:{failed_after}"
    return uuid.uuid5(_OUTCOME_NAMESPACE, f"{command.message_id}{suffix}")


async def execute(
    command: SubjectCommand,
    identities: Identities,
    adapter: StoreAdapter,
    policy: Policy,
    clock: Clock,
    holds: HoldSource | None = None,
) -> OutcomeReported:
    started = clock()
    async with adapter.session() as store:
        journal = await store.load_journal(command.message_id)
        if journal is not None and journal.outcome is not None:
            return OutcomeReported.model_validate(journal.outcome)
        if journal is not None and journal.plan is not None:
            plan = journal.plan
        else:
            with TRACER.start_as_current_span("match") as span:
                records = await _records(store, identities, command)
                span.set_attribute("lethe.records.found", len(records))
            with TRACER.start_as_current_span("holds") as span:
                held = await _held(store, adapter.system, holds or NoHolds(), started, command.request_type)
                span.set_attribute("lethe.records.retained", len(held))
            with TRACER.start_as_current_span("decide"):
                decided = policy.decide(adapter.system, command.request_type, records, started.date(), held)
                plan = await store.save_plan(command.message_id, decided)
        with TRACER.start_as_current_span("act") as span:
            await store.apply(plan)
            span.set_attribute("lethe.records.erased", sum(d.action is Action.ERASED for d in plan))
        with TRACER.start_as_current_span("verify") as span:
            after = await store.find(identities)
            left = unfinished(command.request_type, plan, after)
            span.set_attribute("lethe.verification.passed", not left)
        verification = Verification(passed=not left, remaining=len(left), checked_at=clock())
        outcome = OutcomeReported(
            message_id=outcome_id(command),
            request_id=command.request_id,
            system=adapter.system,
            command_id=command.message_id,
            attempt=command.attempt,
            resume_of=command.resume_of,
            reason=command.reason,
            status="done" if verification.passed else "failed",
            categories=summarise(adapter.categories, plan, getattr(adapter, "erasure_notes", {})),
            verification=verification,
            error=None if verification.passed else f"verification: {len(left)} records remain",
            policy_version=policy.version,
            started_at=started,
            finished_at=clock(),
        )
        await store.save_outcome(command.message_id, outcome.model_dump(mode="json"))
    return outcome


async def _records(store: StoreSession, identities: Identities, command: SubjectCommand) -> list[Record]:
    """What the identifiers find, plus, for a deferred erasure, what the earlier command kept
    and still exists (its link to the identifiers may be gone: an erased account row)."""
    found = await store.find(identities)
    if command.resume_of is None:
        return found
    earlier = await store.load_journal(command.resume_of)
    if earlier is None or earlier.plan is None:
        return found
    kept = [d.record for d in earlier.plan if d.action is Action.RETAINED]
    seen = {r.key for r in found}
    existing = await store.existing([r.key for r in kept if r.key not in seen])
    # Facts (an active contract) are about the live link; an orphaned record has none.
    return found + [r.model_copy(update={"facts": {}}) for r in kept if r.key in existing]


async def _held(
    store: StoreSession, system: str, holds: HoldSource, moment: datetime, request_type: RequestType
) -> dict[tuple[str, str], str]:
    """Which of the store's records a hold in force covers: the hold's own identifiers are
    matched in this store, so a hold on a customer id covers records found by e-mail too."""
    if request_type is not RequestType.ERASURE:
        return {}
    held: dict[tuple[str, str], str] = {}
    for hold in await holds.active(system, moment):
        for record in await store.find(hold.identities):
            if hold.categories is None or record.category in hold.categories:
                held.setdefault(record.key, hold.case_reference)
    return held


def unfinished(request_type: RequestType, plan: Sequence[Decision], after: Sequence[Record]) -> list[Record]:
    """Records the re-read still shows in a state the plan should have changed: an erased or
    anonymised record still matching the subject, a record that appeared meanwhile (erasure),
    or a record whose restriction flag is not what the request asked for."""
    kept = {d.record.key for d in plan if d.action in KEPT}
    if request_type is RequestType.ERASURE:
        return [r for r in after if r.key not in kept]
    should_be_restricted = request_type is RequestType.RESTRICTION
    return [r for r in after if r.key not in kept and r.restricted is not should_be_restricted]


def summarise(
    categories: Sequence[str], plan: Sequence[Decision], notes: Mapping[str, str] | None = None
) -> list[CategoryOutcome]:
    """One entry per category the system holds, so `not_found` is explicit in the report."""
    by_category: dict[str, list[Decision]] = defaultdict(list)
    for decision in plan:
        by_category[decision.record.category].append(decision)
    ordered = list(categories) + sorted(set(by_category) - set(categories))
    notes = notes or {}
    return [_category_outcome(c, by_category.get(c, []), notes.get(c)) for c in ordered]


def _category_outcome(category: str, decisions: Sequence[Decision], note: str | None) -> CategoryOutcome:
    counts: dict[Action, int] = defaultdict(int)
    kept: dict[tuple[str | None, str | None, str, date | None], int] = defaultdict(int)
    redirected: dict[str, int] = defaultdict(int)
    for d in decisions:
        counts[d.action] += 1
        if d.action is Action.RETAINED:
            kept[(d.rule_id, d.hold_reference, d.legal_basis or "", d.retain_until)] += 1
        elif d.action is Action.REDIRECTED:
            redirected[d.controller or "unknown controller"] += 1
    return CategoryOutcome(
        category=category,
        found=len(decisions),
        erased=counts[Action.ERASED],
        anonymised=counts[Action.ANONYMISED],
        restricted=counts[Action.RESTRICTED],
        unrestricted=counts[Action.UNRESTRICTED],
        retained=[
            Retention(count=n, rule_id=rule, hold_reference=hold, legal_basis=basis, retain_until=until)
            for (rule, hold, basis, until), n in sorted(kept.items(), key=str)
        ],
        redirected=[Redirect(count=n, controller=c) for c, n in sorted(redirected.items())],
        note=note if counts[Action.ERASED] else None,
    )
