"""Carrying out one command in one system: match → holds → decide → act → verify → outcome.

Idempotent: a redelivered command returns the outcome it produced the first time, and a
command interrupted mid-way resumes with the plan it had made.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from contextlib import AbstractAsyncContextManager
from datetime import datetime
from typing import Any, Protocol

from shared.contracts import Action, OutcomeReported, RequestType, SubjectCommand, Verification
from shared.contracts.commands import EraseRecords
from shared.crypto import IdentifierSeal
from shared.identity import KINDS, Identities, KnownIdentities
from shared.telemetry.messaging import TRACER
from shared.worker import hold_cover, outcome
from shared.worker.holds import ActiveHold
from shared.worker.matching import Ambiguous, classify
from shared.worker.policy import Policy
from shared.worker.ports import Decision, Record, SearchTooBroad, StoreAdapter, StoreSession

Clock = Callable[[], datetime]
SessionFactory = Callable[[], AbstractAsyncContextManager[StoreSession]]
_OUTCOME_NAMESPACE = uuid.UUID("6f1c1f4e-2b51-4a53-9a3e-6c6574686501")
KEPT = frozenset({Action.RETAINED, Action.REDIRECTED, Action.IN_REVIEW})
DEFAULT_MATCH_LIMIT = 25


class UnconfirmedChanges(Exception):
    """What the store indexes does not show the plan done (an erased recording's audio still on
    disk). Raised inside the session, so a transactional store rolls back and keeps the rows
    that lead to what is left, and the runtime tries the command again rather than report it."""

    def __init__(self, count: int) -> None:
        super().__init__(f"verification: {count} records not confirmed outside the store's index")


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
    identities: Identities | KnownIdentities,
    adapter: StoreAdapter,
    policy: Policy,
    clock: Clock,
    holds: HoldSource | None = None,
    seal: IdentifierSeal | None = None,
    match_limit: int = DEFAULT_MATCH_LIMIT,
    session: SessionFactory | None = None,
) -> OutcomeReported:
    """`seal` seals what the outcome says of identifiers (learnt ones, a reviewer's evidence);
    without it (tests of a store alone) the outcome gives only their counts. `session`: where
    the command's work is done, if not in a session of its own (a batch's, shared/worker/pgbatch.py)."""
    known = identities if isinstance(identities, KnownIdentities) else KnownIdentities(given=identities)
    started = clock()
    async with (session or adapter.session)() as store:
        journal = await store.load_journal(command.message_id)
        if journal is not None and journal.outcome is not None:
            return OutcomeReported.model_validate(journal.outcome)
        if journal is not None and journal.plan is not None:
            plan = journal.plan
        else:
            plan = await store.save_plan(
                command.message_id,
                await _plan(store, command, known, adapter, policy, started, holds, match_limit),
            )
        with TRACER.start_as_current_span("act") as span:
            await store.apply(plan)
            span.set_attribute("lethe.records.erased", sum(d.action is Action.ERASED for d in plan))
        with TRACER.start_as_current_span("verify") as span:
            if outside := await store.unconfirmed(plan):
                span.set_attribute("lethe.verification.passed", False)
                raise UnconfirmedChanges(len(outside))
            earlier = await decided_before(store, command)
            after = [r for r in await store.find(known.all) if r.key not in earlier]
            left = unfinished(command, plan, after)
            span.set_attribute("lethe.verification.passed", not left)
        verification = Verification(passed=not left, remaining=len(left), checked_at=clock())
        new = outcome.learnt(plan, known)
        result = OutcomeReported(
            message_id=outcome_id(command),
            **answering(command, adapter.system),
            status="done" if verification.passed else "failed",
            categories=outcome.summarise(
                adapter.categories, plan, command.round, getattr(adapter, "erasure_notes", {})
            ),
            verification=verification,
            error=None if verification.passed else f"verification: {len(left)} records remain",
            policy_version=policy.version,
            learnt_identifiers=seal.seal(new) if seal and new else None,
            learnt={kind: len(getattr(new, kind)) for kind in KINDS if getattr(new, kind)},
            reviews=outcome.reviews(plan, known, seal),
            started_at=started,
            finished_at=clock(),
        )
        await store.save_outcome(command.message_id, result.model_dump(mode="json"))
    return result


def answering(command: SubjectCommand, system: str) -> dict[str, Any]:
    """What an outcome says of the command it answers, success or failure alike: without its
    round or review the tracker cannot tell which answer it is, and would leave it unheard."""
    return {
        "request_id": command.request_id,
        "system": system,
        "command_id": command.message_id,
        "attempt": command.attempt,
        "resume_of": command.resume_of,
        "reason": command.reason,
        "round": command.round,
        "review_id": command.review_id if isinstance(command, EraseRecords) else None,
    }


async def _plan(
    store: StoreSession,
    command: SubjectCommand,
    known: KnownIdentities,
    adapter: StoreAdapter,
    policy: Policy,
    moment: datetime,
    holds: HoldSource | None,
    match_limit: int,
) -> list[Decision]:
    """match → holds → decide, for the records that are certainly the subject's; the others
    go into the plan as `in_review`, untouched (shared/worker/matching.py)."""
    with TRACER.start_as_current_span("match") as span:
        found, resumed = await _records(store, known.all, command)
        certain, found_by, ambiguous = scope(command, found, resumed, known, match_limit)
        span.set_attribute("lethe.records.found", len(certain))
        span.set_attribute("lethe.records.in_review", sum(len(a.records) for a in ambiguous))
    with TRACER.start_as_current_span("holds") as span:
        held = await held_records(
            store, adapter.system, holds or NoHolds(), moment, command.request_type, known, certain
        )
        span.set_attribute("lethe.records.retained", len(held))
    with TRACER.start_as_current_span("decide"):
        decided = policy.decide(adapter.system, command.request_type, certain, moment.date(), held)
    return [d.model_copy(update={"found_by": found_by.get(d.record.key)}) for d in decided] + [
        Decision(
            record=record,
            action=Action.IN_REVIEW,
            review_id=str(outcome.review_id(command.message_id, a.groups)),
            review_reason=a.reason,
        )
        for a in ambiguous
        for record in a.records
    ]


def scope(
    command: SubjectCommand,
    found: Sequence[Record],
    resumed: set[tuple[str, str]],
    known: KnownIdentities,
    match_limit: int,
) -> tuple[list[Record], dict[tuple[str, str], str], list[Ambiguous]]:
    """(the records to act on, how each was found, the ambiguous ones). A reviewer's 'erase'
    names its records; what an earlier command already took for the subject's stays so."""
    if isinstance(command, EraseRecords):
        wanted = {tuple(g) for g in command.groups}
        return [r for r in found if (r.group or r.key) in wanted], {}, []
    fresh = [r for r in found if r.key not in resumed]
    # A restriction of a record with only the number on it is undone by a lift; a lift of one
    # may undo another person's restriction (whose request set the flag is not kept).
    phone_alone = command.request_type is RequestType.RESTRICTION
    classified = classify(fresh, known, match_limit, phone_alone=phone_alone)
    by = {key: f"{f.kind}:{f.source}" for key, f in classified.found_by.items()}
    return classified.certain + [r for r in found if r.key in resumed], by, classified.ambiguous


async def _records(
    store: StoreSession, identities: Identities, command: SubjectCommand
) -> tuple[list[Record], set[tuple[str, str]]]:
    """What the identifiers find, plus, for a deferred erasure, what the earlier command kept
    and still exists (its link to the identifiers may be gone: an erased account row); the
    keys of those, which were decided to be the subject's then."""
    decided = await decided_before(store, command)  # by this request's earlier rounds: not again
    found = [r for r in await store.find(identities) if r.key not in decided]
    if command.resume_of is None:
        return found, set()
    earlier = await store.load_journal(command.resume_of)
    if earlier is None or earlier.plan is None:
        return found, set()
    kept = [d.record for d in earlier.plan if d.action is Action.RETAINED]
    seen = {r.key for r in found}
    existing = await store.existing([r.key for r in kept if r.key not in seen])
    # Facts (an active contract) are about the live link; an orphaned record has none.
    orphans = [r.model_copy(update={"facts": {}}) for r in kept if r.key in existing]
    return found + orphans, {r.key for r in kept}


async def decided_before(store: StoreSession, command: SubjectCommand) -> set[tuple[str, str]]:
    """The records this system's commands of the request's earlier rounds decided on."""
    decided: set[tuple[str, str]] = set()
    for command_id in command.earlier:
        entry = await store.load_journal(command_id)
        decided |= {d.record.key for d in (entry.plan if entry and entry.plan else [])}
    return decided


async def held_records(
    store: StoreSession,
    system: str,
    holds: HoldSource,
    moment: datetime,
    request_type: RequestType,
    known: KnownIdentities,
    records: Sequence[Record],
) -> dict[tuple[str, str], str]:
    """Which of `records` (the subject's) a hold in force covers (key → the first such hold's
    case reference): those its own identifiers find in this store, so a hold on a customer id
    covers records found by e-mail too (shared/worker/hold_cover.py: without a search per
    hold); and every one of them, where the hold names one of the subject's strong
    identifiers (given or learnt), since they were decided to be the subject's: a hold on
    Alice's e-mail keeps her call recordings, which carry only her customer id, and what an
    earlier command kept (a deferred erasure's) though no identifier finds it any more (an
    invoice whose account was erased)."""
    if request_type is not RequestType.ERASURE:
        return {}
    active = await holds.active(system, moment)
    if not active:
        return {}
    index = hold_cover.HoldIndex.of(active)
    unknown = [r for r in records if r.searchable is None]
    searched = hold_cover.covered_by_search(active, await _found_by_holds(store, active)) if unknown else {}
    # A shared landline does not make a hold theirs: their strong identifiers do.
    # Given or learnt: not every address on their records (a family's mailbox on Alice's
    # account would bring Ben's hold on it to all of hers).
    subject = known.all.strong()
    theirs = [
        h
        for h in active
        if set(subject.pairs()) & set(h.identities.strong().pairs())
        or hold_cover.same_id(subject, h.identities)
    ]
    held: dict[tuple[str, str], str] = {}
    for record in records:
        if record.searchable is not None:
            covering = index.covering(record.searchable) + hold_cover.written_on(record, active)
        else:
            covering = list(searched.get(record.key, ()))
        # A hold found by the record's own identifiers is the one its decision cites.
        for hold in [*sorted(covering, key=active.index), *theirs]:
            if hold.categories is None or record.category in hold.categories:
                held[record.key] = hold.case_reference
                break
    return held


async def _found_by_holds(store: StoreSession, holds: Sequence[ActiveHold]) -> list[Record]:
    """What the holds' identifiers find, a few searches for all; one the store finds too broad
    is asked again in halves (down to a single identifier, whose failure is the command's)."""
    pending, found = hold_cover.searches(holds), []
    while pending:
        identities = pending.pop()
        try:
            found += await store.find(identities)
        except SearchTooBroad:
            if identities.count() <= 1:
                raise
            pending += hold_cover.halves(identities)
    return found


def unfinished(command: SubjectCommand, plan: Sequence[Decision], after: Sequence[Record]) -> list[Record]:
    """Records the re-read still shows in a state the plan should have changed: an erased or
    anonymised record still matching the subject, a record that appeared meanwhile (erasure),
    or a record whose restriction flag is not what the request asked for. Records left for
    review are the plan's too; a reviewer's 'erase' answers for its own records only."""
    kept = {d.record.key for d in plan if d.action in KEPT}
    if isinstance(command, EraseRecords):
        wanted = {tuple(g) for g in command.groups}
        after = [r for r in after if (r.group or r.key) in wanted]
    if command.request_type is RequestType.ERASURE:
        return [r for r in after if r.key not in kept]
    should_be_restricted = command.request_type is RequestType.RESTRICTION
    return [r for r in after if r.key not in kept and r.restricted is not should_be_restricted]
