"""How a saga is kept: loaded with its systems, reviews and audit trail in one round trip
under a row lock (with the messages that change it claimed, in the same one), and its commands
enqueued. How it is written back: services/tracker/saving.py."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from uuid import UUID, uuid4

import asyncpg

from services.tracker import reviews
from services.tracker.recipients import Recipients
from services.tracker.saga import Saga
from services.tracker.slots import SystemSlot
from shared import topics
from shared.contracts import (
    COMMAND_FOR_TYPE,
    OutcomeReported,
    RequestAccepted,
    RequestType,
    SystemState,
)
from shared.contracts.audit import AuditEntry
from shared.contracts.commands import EraseRecords, SubjectCommand
from shared.contracts.report import Extension, ReviewState
from shared.journal import claimed
from shared.outbox import enqueue
from shared.telemetry import metrics
from shared.telemetry.messaging import TRACER, link_to


@dataclass
class Loaded:
    saga: Saga
    version: int
    # What commands search with: given, and learnt in earlier rounds; None once nothing more
    # can need them (forgetting.py).
    sealed_identifiers: str | None
    traceparent: str | None = None
    as_loaded: dict[str, SystemSlot] = field(default_factory=dict)  # to write back only changes
    trail: list[AuditEntry] = field(default_factory=list)
    pending_learnt: str | None = None  # sealed: learnt this round, not yet searched with


# A saga's start (lethe_saga_start) and every load of it (lethe_saga_load) first take the
# request's advisory lock, and the timer's sweep takes it where it is free (sweep.py); the row
# is then locked FOR NO KEY UPDATE, which a foreign key's check of another transaction (a
# follow-up scheduled for the saga by a hold's release) does not wait for: a saga being started
# is not yet visible to another transaction, which kept an outcome (or an extension) for it as
# early while the start, its snapshot taken, no longer looked for early ones; kept so, it was
# never taken, and the system's answer was dropped as a repeat when it came again. With the
# lock, whichever comes second waits for the first to commit, and its next statement sees what
# that wrote (each statement takes its own snapshot in READ COMMITTED, PostgreSQL's default).
def saga_lock(request_id: str = "rid", wait: bool = True) -> str:
    """SQL taking the lock of the saga `request_id` (an SQL expression) names, for the
    transaction; without `wait`, true if it was free and is now held, false if not."""
    function = "pg_advisory_xact_lock" if wait else "pg_try_advisory_xact_lock"
    return f"{function}(hashtextextended('saga:' || {request_id}, 0))"


# The saga, its systems and its audit trail in one round trip, read after the saga is locked.
# Not one SELECT ... FOR UPDATE: a statement that waited for the lock re-reads only the locked
# row (EvalPlanQual); its subqueries keep the snapshot taken before the other change committed,
# so the systems would be stale and the next audit entry would reuse a taken number. In a
# function each statement takes a new snapshot: the locks, then the read. The systems come in
# the order of their names, whatever the plan (and so in every snapshot and report). The saga
# comes as JSON, not as the table's row type, which a client caches and a column added later
# would outdate. (A later change of what it returns needs a new name: CREATE OR REPLACE cannot
# change it.)
LOAD_DDL = f"""CREATE OR REPLACE FUNCTION lethe_saga_load(rid text)
    RETURNS TABLE (saga json, systems json, trail json) LANGUAGE plpgsql AS $$
BEGIN
    PERFORM {saga_lock()};
    PERFORM 1 FROM sagas WHERE request_id = rid FOR NO KEY UPDATE;
    RETURN QUERY SELECT row_to_json(g),
        (SELECT coalesce(json_agg(s ORDER BY s.system), '[]') FROM saga_systems s
            WHERE s.request_id = g.request_id),
        (SELECT coalesce(json_agg(a ORDER BY a.seq), '[]') FROM audit_log a WHERE a.request_id = g.request_id)
    FROM sagas g WHERE g.request_id = rid;
END $$"""
_LOAD = "SELECT saga, systems, trail FROM lethe_saga_load($1)"


def _utc(text: str) -> datetime:
    """A timestamp as PostgreSQL writes it in JSON, in UTC as asyncpg returns columns (the audit
    digests were computed over UTC times)."""
    return datetime.fromisoformat(text).astimezone(UTC)


async def load(conn: asyncpg.Connection, request_id: str) -> Loaded | None:
    return _loaded(await conn.fetchrow(_LOAD, request_id))


# The messages claimed (shared/journal.py) and the saga loaded, in one round trip: a handler's
# first two statements, which every change of a saga makes. The claim comes first: the load,
# and its lock, only if a message was new (a redelivery, as after a rebalance, loads nothing).
_CLAIM_AND_LOAD = f"""WITH {claimed(2)}
SELECT ARRAY(SELECT message_id FROM claimed) AS fresh, l.saga, l.systems, l.trail
FROM (SELECT 1) AS one LEFT JOIN LATERAL (
    SELECT * FROM lethe_saga_load($1) WHERE EXISTS (SELECT 1 FROM claimed)) AS l ON true"""


async def claim_and_load(
    conn: asyncpg.Connection, message_ids: Sequence[UUID], request_id: str
) -> tuple[set[UUID], Loaded | None]:
    """Which of the messages are new (a redelivered one is not), and, if any is, the saga
    locked in the caller's transaction."""
    row = await conn.fetchrow(_CLAIM_AND_LOAD, request_id, list(message_ids))
    assert row is not None
    return set(row["fresh"]), _loaded(row) if row["saga"] is not None else None


# A new saga and its systems, and what arrived for it before it (outcomes and extensions read
# ahead of the acceptance, kept until now), taken; and the saga as `lethe_saga_load` would read
# it (its rows as inserted, defaults filled in: no trail yet), in one round trip, under the
# request's lock (saga_lock). Only if the saga is new: the saga row is the journal of
# acceptances, and a redelivered one changes nothing. (The systems' foreign key is checked at
# the statement's end, with the saga in.) A function, so that its statement's snapshot is
# taken after the lock.
START_DDL = f"""CREATE OR REPLACE FUNCTION lethe_saga_start(rid text, kind text, subject text,
    received timestamptz, due timestamptz, trace text, sealed text, parent text,
    dispatched timestamptz, names text[], commands uuid[])
    RETURNS TABLE (early text[], extensions text[], saga json, systems json, trail json)
    LANGUAGE plpgsql AS $$
BEGIN
    PERFORM {saga_lock()};
    RETURN QUERY WITH new_saga AS (
        INSERT INTO sagas AS g (request_id, request_type, subject_ref, received_at, deadline,
            trace_id, status, sealed_identifiers, traceparent)
        VALUES (rid, kind, subject, received, due, trace, 'in_progress', sealed, parent)
        ON CONFLICT DO NOTHING RETURNING g.*),
    new_systems AS (
        INSERT INTO saga_systems AS s (request_id, system, state, attempts, dispatched_at, command_id)
        SELECT n.request_id, u.name, 'dispatched', 1, dispatched, u.command
        FROM new_saga n, unnest(names, commands) AS u(name, command) RETURNING s.*),
    taken_outcomes AS (
        DELETE FROM early_outcomes o WHERE o.request_id = rid AND EXISTS (SELECT 1 FROM new_saga)
        RETURNING o.outcome),
    taken_extensions AS (
        DELETE FROM early_extensions e WHERE e.request_id = rid AND EXISTS (SELECT 1 FROM new_saga)
        RETURNING e.event)
    SELECT ARRAY(SELECT t.outcome::text FROM taken_outcomes t),
        ARRAY(SELECT t.event::text FROM taken_extensions t),
        (SELECT row_to_json(n) FROM new_saga n),
        (SELECT coalesce(json_agg(n ORDER BY n.system), '[]') FROM new_systems n),
        '[]'::json;
END $$"""
_START = "SELECT * FROM lethe_saga_start($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)"


@dataclass
class Started:
    loaded: Loaded
    early: list[str]  # outcomes that waited for the saga, as JSON
    extensions: list[str]  # extensions that waited for it, as JSON


async def start(conn: asyncpg.Connection, event: RequestAccepted) -> Started | None:
    """The new saga, locked in the caller's transaction; None if it was started before."""
    row = await conn.fetchrow(
        _START,
        event.request_id,
        event.request_type.value,
        event.subject_ref,
        event.received_at,
        event.deadline,
        event.trace_id,
        event.sealed_identifiers,
        event.traceparent,
        event.occurred_at,
        list(event.systems),
        [event.command_ids.get(system, uuid4()) for system in event.systems],
    )
    assert row is not None
    loaded = _loaded(row if row["saga"] is not None else None)  # None: a redelivered acceptance
    return None if loaded is None else Started(loaded, row["early"], row["extensions"])


def _loaded(loaded_row: asyncpg.Record | None) -> Loaded | None:
    if loaded_row is None:
        return None
    row = json.loads(loaded_row["saga"])
    saga = Saga(
        request_id=row["request_id"],
        request_type=RequestType(row["request_type"]),
        subject_ref=row["subject_ref"],
        received_at=_utc(row["received_at"]),
        deadline=_utc(row["deadline"]),
        trace_id=row["trace_id"],
        completed_at=None if row["completed_at"] is None else _utc(row["completed_at"]),
        extension=None if row["extension"] is None else Extension.model_validate(row["extension"]),
        round=row["round"],
        reviews={r.review_id: r for r in map(reviews.from_json, row["reviews"])},
        recipients=Recipients.from_json(row.get("recipients")),
    )
    for s in json.loads(loaded_row["systems"]):
        saga.slots[s["system"]] = SystemSlot(
            system=s["system"],
            state=SystemState(s["state"]),
            attempts=s["attempts"],
            dispatched_at=_utc(s["dispatched_at"]),
            command_id=UUID(s["command_id"]),
            answered_at=None if s["answered_at"] is None else _utc(s["answered_at"]),
            outcome=None if s["outcome"] is None else OutcomeReported.model_validate(s["outcome"]),
            deferred=[OutcomeReported.model_validate(d) for d in s["deferred"]],
            error=s["error"],
            rounds=[OutcomeReported.model_validate(r) for r in s["rounds"]],
        )
    trail = [AuditEntry(**{**a, "at": _utc(a["at"])}) for a in json.loads(loaded_row["trail"])]
    as_loaded = {
        name: replace(slot, deferred=list(slot.deferred), rounds=list(slot.rounds))
        for name, slot in saga.slots.items()
    }
    return Loaded(
        saga,
        row["version"],
        row["sealed_identifiers"],
        row["traceparent"],
        as_loaded,
        trail,
        row["pending_learnt"],
    )


async def audit_trail(conn: asyncpg.Connection | asyncpg.Pool, request_id: str) -> list[AuditEntry]:
    rows = await conn.fetch("SELECT * FROM audit_log WHERE request_id = $1 ORDER BY seq", request_id)
    return [
        AuditEntry(
            request_id=r["request_id"],
            seq=r["seq"],
            at=r["at"],
            kind=r["kind"],
            detail=json.loads(r["detail"]),
            prev_hash=r["prev_hash"],
            hash=r["hash"],
        )
        for r in rows
    ]


async def dispatch(conn: asyncpg.Connection, loaded: Loaded, systems: Sequence[str]) -> None:
    """Re-sending happens outside the request's trace (a timer, an operator), so its span links
    back to the request's first span: the trace tool shows both, connected."""
    saga = loaded.saga
    command_type = COMMAND_FOR_TYPE[saga.request_type]
    for system in systems:
        slot = saga.slots[system]
        metrics.redispatches.add(1, {"system": system})
        with TRACER.start_as_current_span(
            "redispatch",
            links=link_to(loaded.traceparent),
            attributes={
                "lethe.request_id": saga.request_id,
                "lethe.system": system,
                "lethe.attempt": slot.attempts,
            },
        ):
            await enqueue_command(conn, loaded, command_type, system, slot)


async def enqueue_command(
    conn: asyncpg.Connection,
    loaded: Loaded,
    command_type: type[SubjectCommand],
    system: str,
    slot: SystemSlot,
) -> None:
    saga = loaded.saga
    await enqueue(
        conn,
        topics.command_topic(system),
        saga.subject_ref,
        command_type(
            message_id=slot.command_id,
            request_id=saga.request_id,
            system=system,
            subject_ref=saga.subject_ref,
            sealed_identifiers=loaded.sealed_identifiers,
            attempt=slot.attempts,
            round=saga.round,
            earlier=[o.command_id for o in slot.answers() if o.round < saga.round],
        ),
    )


async def enqueue_waiting(conn: asyncpg.Connection, loaded: Loaded, span: str) -> list[str]:
    """Every command the saga waits on: each system's of this round, each reviewer's 'erase'
    being carried out. Returns the systems."""
    saga = loaded.saga
    command_type = COMMAND_FOR_TYPE[saga.request_type]
    sent = []
    with TRACER.start_as_current_span(
        span,
        links=link_to(loaded.traceparent),
        attributes={"lethe.request_id": saga.request_id, "lethe.round": saga.round},
    ):
        for slot in saga.slots.values():
            if slot.state is SystemState.DISPATCHED:
                await enqueue_command(conn, loaded, command_type, slot.system, slot)
                sent.append(slot.system)
        for review in saga.reviews.values():
            if review.state is ReviewState.ERASING and review.system and review.command_id:
                await enqueue_review_erasure(conn, loaded, review)
                sent.append(review.system)
    return sent


async def enqueue_review_erasure(conn: asyncpg.Connection, loaded: Loaded, review: reviews.Review) -> None:
    saga = loaded.saga
    assert review.system is not None and review.command_id is not None
    await enqueue(
        conn,
        topics.command_topic(review.system),
        saga.subject_ref,
        EraseRecords(
            message_id=review.command_id,
            request_id=saga.request_id,
            system=review.system,
            subject_ref=saga.subject_ref,
            sealed_identifiers=loaded.sealed_identifiers,
            round=review.round,
            review_id=review.review_id,
            groups=review.groups,
            applies=saga.request_type,
        ),
    )
