"""Carrying out one command in one system: match → decide (holds, retention) → act → verify
→ outcome. Idempotent: a redelivered command returns the outcome it produced the first time,
and a command interrupted mid-way resumes with the plan it had made."""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import Callable, Sequence
from datetime import datetime

from shared.contracts import (
    Action,
    CategoryOutcome,
    OutcomeReported,
    RequestType,
    Retention,
    SubjectCommand,
    Verification,
)
from shared.identity import Identities
from shared.worker.policy import Policy
from shared.worker.ports import Decision, Record, StoreAdapter

Clock = Callable[[], datetime]
_OUTCOME_NAMESPACE = uuid.UUID("6f1c1f4e-2b51-4a53-9a3e-6c6574686501")


def outcome_id(command: SubjectCommand) -> uuid.UUID:
    """Deterministic, so that a re-emitted outcome de-duplicates at the tracker."""
    return uuid.uuid5(_OUTCOME_NAMESPACE, str(command.message_id))


async def execute(
    command: SubjectCommand,
    identities: Identities,
    adapter: StoreAdapter,
    policy: Policy,
    clock: Clock,
) -> OutcomeReported:
    started = clock()
    async with adapter.session() as store:
        journal = await store.load_journal(command.message_id)
        if journal is not None and journal.outcome is not None:
            return OutcomeReported.model_validate(journal.outcome)
        if journal is not None and journal.plan is not None:
            plan = journal.plan
        else:
            records = await store.find(identities)
            decided = policy.decide(adapter.system, command.request_type, records, started.date())
            plan = await store.save_plan(command.message_id, decided)
        await store.apply(plan)
        after = await store.find(identities)
        verification = Verification(
            passed=not (left := unfinished(command.request_type, plan, after)),
            remaining=len(left),
            checked_at=clock(),
        )
        outcome = OutcomeReported(
            message_id=outcome_id(command),
            request_id=command.request_id,
            system=adapter.system,
            command_id=command.message_id,
            attempt=command.attempt,
            status="done" if verification.passed else "failed",
            categories=summarise(adapter.categories, plan),
            verification=verification,
            error=None if verification.passed else f"verification: {len(left)} records remain",
            started_at=started,
            finished_at=clock(),
        )
        await store.save_outcome(command.message_id, outcome.model_dump(mode="json"))
    return outcome


def unfinished(request_type: RequestType, plan: Sequence[Decision], after: Sequence[Record]) -> list[Record]:
    """Records the re-read still shows in a state the plan should have changed: an erased or
    anonymised record still matching the subject, a record that appeared meanwhile (erasure),
    or a record whose restriction flag is not what the request asked for."""
    kept = {d.record.key for d in plan if d.action is Action.RETAINED}
    if request_type is RequestType.ERASURE:
        return [r for r in after if r.key not in kept]
    should_be_restricted = request_type is RequestType.RESTRICTION
    return [r for r in after if r.key not in kept and r.restricted is not should_be_restricted]


def summarise(categories: Sequence[str], plan: Sequence[Decision]) -> list[CategoryOutcome]:
    """One entry per category the system holds, so `not_found` is explicit in the report."""
    by_category: dict[str, list[Decision]] = defaultdict(list)
    for decision in plan:
        by_category[decision.record.category].append(decision)
    ordered = list(categories) + sorted(set(by_category) - set(categories))
    return [_category_outcome(c, by_category.get(c, [])) for c in ordered]


def _category_outcome(category: str, decisions: Sequence[Decision]) -> CategoryOutcome:
    counts: dict[Action, int] = defaultdict(int)
    kept: dict[tuple[str | None, str | None, str, object], int] = defaultdict(int)
    for d in decisions:
        counts[d.action] += 1
        if d.action is Action.RETAINED:
            kept[(d.rule_id, d.hold_reference, d.legal_basis or "", d.retain_until)] += 1
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
    )
