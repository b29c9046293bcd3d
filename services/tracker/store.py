"""What the tracker does with each event, in a transaction of its own or a batch's (with the
processed-message journal, so a redelivery changes nothing): start a saga, take outcomes (and
run the next round of the identity search), time out silent systems, retry, extend, decide a
review."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from datetime import datetime
from uuid import UUID

import asyncpg
from pydantic import ValidationError

from services.tracker import expansion
from services.tracker.repository import (
    Loaded,
    audit_trail,
    claim_and_load,
    dispatch,
    enqueue_review_erasure,
    enqueue_waiting,
    load,
    start,
)
from services.tracker.saving import save
from services.tracker.schedule import schedule_follow_ups
from services.tracker.schema import SCHEMA
from shared.contracts import OutcomeReported, RequestAccepted, RequestType
from shared.contracts.events import DeadlineExtended, RetrySystem, ReviewDecided
from shared.crypto import IdentifierSeal
from shared.db import Db, transaction
from shared.recipients.plan import restricted

__all__ = ["SCHEMA", "audit_trail", "load"]
log = logging.getLogger(__name__)


async def start_saga(
    db: Db,
    event: RequestAccepted,
    now: datetime,
    seal: IdentifierSeal | None = None,
    max_rounds: int = 3,
) -> None:
    async with transaction(db) as conn:
        started = await start(conn, event)
        if started is None:  # a redelivered acceptance
            return
        loaded = started.loaded
        saga = loaded.saga
        saga.note(
            event.occurred_at,
            "accepted",
            request_type=event.request_type.value,
            systems=event.systems,
            deadline=event.deadline.isoformat(),
        )
        saga.max_rounds = max_rounds
        if event.request_type is RequestType.LIFT_RESTRICTION:  # it waits for its notices
            saga.announce_lift(event.occurred_at, await _restricted_before(conn, event))
        await _take_early(conn, loaded, started.early, started.extensions, seal)
        await save(conn, loaded, was_final=False)


async def _restricted_before(conn: asyncpg.Connection, event: RequestAccepted) -> set[tuple[str, str]]:
    """Where the person's earlier restrictions (the same subject_ref: the same identifiers)
    restricted records: a lift's recipients are those of these categories only."""
    rows = await conn.fetch(
        "SELECT s.system, s.outcome, s.rounds FROM sagas g JOIN saga_systems s USING (request_id)"
        " WHERE g.subject_ref = $1 AND g.request_type = 'restriction' AND g.request_id <> $2",
        event.subject_ref,
        event.request_id,
    )
    answers = []
    for row in rows:  # jsonb comes as text
        if row["outcome"]:
            answers.append(OutcomeReported.model_validate_json(row["outcome"]))
        answers += [OutcomeReported.model_validate(r) for r in json.loads(row["rounds"] or "[]")]
    return restricted((o.system, c) for o in answers if o.status == "done" for c in o.categories)


async def record_outcome(
    db: Db, event: OutcomeReported, seal: IdentifierSeal | None = None, max_rounds: int = 3
) -> None:
    await record_outcomes(db, [event], seal, max_rounds)


async def record_outcomes(
    db: Db, events: list[OutcomeReported], seal: IdentifierSeal | None = None, max_rounds: int = 3
) -> None:
    """Outcomes of one request, in one transaction: the saga is loaded, changed and announced
    once for all of them (under load, a request's five answers often arrive together). Without
    a `seal` the tracker cannot open what was learnt, and searches no further than round 1."""
    async with transaction(db) as conn:
        new_ids, loaded = await claim_and_load(conn, [e.message_id for e in events], events[0].request_id)
        fresh = [e for e in events if e.message_id in new_ids]  # redeliveries change nothing
        if not fresh:
            return
        if loaded is None:
            # The outcomes overtook their request's acceptance (different topics, different
            # partitions): keep them until the saga starts.
            await conn.executemany(
                "INSERT INTO early_outcomes (message_id, request_id, outcome) VALUES ($1,$2,$3::jsonb)"
                " ON CONFLICT DO NOTHING",
                [(e.message_id, e.request_id, e.model_dump_json()) for e in fresh],
            )
            return
        loaded.saga.max_rounds = max_rounds
        was_final = loaded.saga.status.is_final
        if await _take(conn, loaded, fresh, seal):
            await save(conn, loaded, was_final)


# Answers and extensions kept as early for a saga that exists: left behind by a tracker of an
# earlier version, whose start took no lock (docs/performance.md, twelfth part), or by whatever
# else kept one after its saga's start had looked. The tick takes them as the start would have.
_STRANDED = """SELECT request_id FROM early_outcomes e WHERE EXISTS (SELECT 1 FROM sagas g
    WHERE g.request_id = e.request_id)
UNION SELECT request_id FROM early_extensions e WHERE EXISTS (SELECT 1 FROM sagas g
    WHERE g.request_id = e.request_id)
LIMIT 100"""


async def take_stranded(pool: asyncpg.Pool, seal: IdentifierSeal | None = None, max_rounds: int = 3) -> int:
    """Take what was kept as early for sagas that exist, a saga at a time; returns the sagas."""
    taken = 0
    for row in await pool.fetch(_STRANDED):
        try:
            async with pool.acquire() as conn, conn.transaction():
                taken += await _take_stranded(conn, row["request_id"], seal, max_rounds)
        except (ValidationError, ValueError):  # one that cannot be read stays, loudly; the rest go on
            log.exception("an answer kept as early cannot be taken", extra={"request_id": row["request_id"]})
    return taken


async def _take_stranded(
    conn: asyncpg.Connection, request_id: str, seal: IdentifierSeal | None, max_rounds: int
) -> int:
    loaded = await load(conn, request_id)
    if loaded is None:
        return 0
    early = await conn.fetch(
        "DELETE FROM early_outcomes WHERE request_id = $1 RETURNING outcome::text", request_id
    )
    extensions = await conn.fetch(
        "DELETE FROM early_extensions WHERE request_id = $1 RETURNING event::text", request_id
    )
    was_final = loaded.saga.status.is_final
    loaded.saga.max_rounds = max_rounds
    changed, not_taken = await _take_early(
        conn, loaded, [r["outcome"] for r in early], [r["event"] for r in extensions], seal
    )
    for outcome in not_taken:
        log.warning(
            "an answer kept as early was not taken (its saga had moved on)",
            extra={"request_id": request_id, "system": outcome.system, "round": outcome.round},
        )
    if changed:
        await save(conn, loaded, was_final)
        return 1
    return 0


async def _take_early(
    conn: asyncpg.Connection,
    loaded: Loaded,
    early: Sequence[str],
    extensions: Sequence[str],
    seal: IdentifierSeal | None,
) -> tuple[bool, list[OutcomeReported]]:
    """What was kept for the saga before it could take it (as JSON): the extensions, then the
    answers. Returns whether the saga changed, and the answers it did not take."""
    saga = loaded.saga
    extended = [DeadlineExtended.model_validate_json(text) for text in extensions]
    changed = [saga.extend(e.months, e.deadline, e.occurred_at) for e in extended]
    outcomes = [OutcomeReported.model_validate_json(text) for text in early]
    recorded = await _take(conn, loaded, outcomes, seal)
    return bool(recorded) or any(changed), [o for o in outcomes if o.message_id not in recorded]


async def _take(
    conn: asyncpg.Connection, loaded: Loaded, outcomes: list[OutcomeReported], seal: IdentifierSeal | None
) -> set[UUID]:
    """Record each outcome in the saga (what it learnt first: the last answer of a round starts
    the next); dispatch the next round if one started; schedule what was kept for later.
    Returns the messages it recorded (none: nothing changed)."""
    saga, round_before = loaded.saga, loaded.saga.round
    expansion.prime(loaded, seal)
    recorded = []
    for outcome in await _sent(conn, saga.request_id, outcomes):
        if saga.accepts(outcome):
            expansion.take(loaded, outcome.learnt_identifiers, seal)
        if saga.record(outcome):
            recorded.append(outcome)
    if saga.round != round_before:
        expansion.advance(loaded, seal)
        await enqueue_waiting(conn, loaded, "next round")
    if saga.request_type is RequestType.ERASURE:
        for outcome in recorded:
            await schedule_follow_ups(conn, outcome)
    return {outcome.message_id for outcome in recorded}


async def _sent(
    conn: asyncpg.Connection, request_id: str, outcomes: list[OutcomeReported]
) -> list[OutcomeReported]:
    """The outcomes less a follow-up erasure's answer for a command the tracker did not send
    (the saga checks a round's and a reviewer's itself; a follow-up's ids are in the schedule)."""
    asked = [o.command_id for o in outcomes if o.resume_of is not None]
    if not asked:
        return outcomes
    sent = {
        r["command_id"]
        for r in await conn.fetch(
            "SELECT command_id FROM scheduled_erasures"
            " WHERE request_id = $1 AND command_id = ANY($2::uuid[])",
            request_id,
            asked,
        )
    }
    for outcome in outcomes:
        if outcome.resume_of is not None and outcome.command_id not in sent:
            log.warning(
                "an answer to a follow-up erasure the tracker did not send was not taken",
                extra={"request_id": request_id, "system": outcome.system},
            )
    return [o for o in outcomes if o.resume_of is None or o.command_id in sent]


async def retry_system(db: Db, event: RetrySystem, now: datetime) -> bool:
    async with transaction(db) as conn:
        new_ids, loaded = await claim_and_load(conn, [event.message_id], event.request_id)
        if not new_ids or loaded is None:
            return False
        was_final = loaded.saga.status.is_final
        if loaded.sealed_identifiers is None:  # forgotten (forgetting.py): nothing to search with
            loaded.saga.note(now, "retry_ignored", system=event.system, reason="identifiers no longer kept")
            await save(conn, loaded, was_final)
            return False
        retried = loaded.saga.retry(event.system, now)
        if retried:
            await dispatch(conn, loaded, [event.system])
        await save(conn, loaded, was_final)
        return retried


async def extend_deadline(db: Db, event: DeadlineExtended) -> None:
    async with transaction(db) as conn:
        new_ids, loaded = await claim_and_load(conn, [event.message_id], event.request_id)
        if not new_ids:
            return
        if loaded is None:  # read before the request's acceptance: applied when the saga starts
            await conn.execute(
                "INSERT INTO early_extensions (message_id, request_id, event) VALUES ($1, $2, $3)"
                " ON CONFLICT DO NOTHING",
                event.message_id,
                event.request_id,
                event.model_dump_json(),
            )
        elif loaded.saga.extend(event.months, event.deadline, event.occurred_at):
            await save(conn, loaded, loaded.saga.status.is_final)


async def decide_review(
    db: Db, event: ReviewDecided, now: datetime, seal: IdentifierSeal | None = None
) -> bool:
    """A person's decision: 'erase' sends the system a command for exactly those records (or,
    for the search's bound, runs the next round); 'keep' is recorded. Once only."""
    async with transaction(db) as conn:
        new_ids, loaded = await claim_and_load(conn, [event.message_id], event.request_id)
        if not new_ids or loaded is None:
            return False
        was_final, round_before = loaded.saga.status.is_final, loaded.saga.round
        review = loaded.saga.decide(
            event.review_id, event.decision, event.token_id, event.role, event.reason_sha256, now
        )
        if review is None:
            return False
        if review.system is not None and review.command_id is not None and review.outcome is None:
            await enqueue_review_erasure(conn, loaded, review)
        if loaded.saga.round != round_before:
            expansion.prime(loaded, seal)
            expansion.advance(loaded, seal)
            await enqueue_waiting(conn, loaded, "next round")
        await save(conn, loaded, was_final)
        return True
