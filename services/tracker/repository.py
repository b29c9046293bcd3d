"""How a saga is kept: loaded with its systems, reviews and audit trail in one round trip
under a row lock, written back (only what changed), its audit events chained, its snapshot and
completion announced through the outbox, its commands enqueued."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from uuid import UUID

import asyncpg
from pydantic import BaseModel

from services.tracker import reviews
from services.tracker.notices_out import send_planned
from services.tracker.recipients import Recipients
from services.tracker.saga import Saga
from services.tracker.slots import SystemSlot
from shared import topics
from shared.contracts import (
    COMMAND_FOR_TYPE,
    OutcomeReported,
    RequestCompleted,
    RequestStatusChanged,
    RequestType,
    SystemState,
)
from shared.contracts.audit import GENESIS, AuditEntry
from shared.contracts.commands import EraseRecords, SubjectCommand
from shared.contracts.report import Extension, ReviewState
from shared.outbox import enqueue, enqueue_many
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


# The saga, its systems and its audit trail in one round trip, read after the saga is locked.
# Not one SELECT ... FOR UPDATE: a statement that waited for the lock re-reads only the locked
# row (EvalPlanQual); its subqueries keep the snapshot taken before the other change committed,
# so the systems would be stale and the next audit entry would reuse a taken number. In a
# function each statement takes a new snapshot: the lock, then the read. The saga comes as JSON,
# not as the table's row type, which a client caches and a column added later would outdate.
# (A later change of what it returns needs a new name: CREATE OR REPLACE cannot change it.)
LOAD_DDL = """CREATE OR REPLACE FUNCTION lethe_saga_load(rid text)
    RETURNS TABLE (saga json, systems json, trail json) LANGUAGE plpgsql AS $$
BEGIN
    PERFORM 1 FROM sagas WHERE request_id = rid FOR UPDATE;
    RETURN QUERY SELECT row_to_json(g),
        (SELECT coalesce(json_agg(s), '[]') FROM saga_systems s WHERE s.request_id = g.request_id),
        (SELECT coalesce(json_agg(a ORDER BY a.seq), '[]') FROM audit_log a WHERE a.request_id = g.request_id)
    FROM sagas g WHERE g.request_id = rid;
END $$"""
_LOAD = "SELECT saga, systems, trail FROM lethe_saga_load($1)"


def _utc(text: str) -> datetime:
    """A timestamp as PostgreSQL writes it in JSON, in UTC as asyncpg returns columns (the audit
    digests were computed over UTC times)."""
    return datetime.fromisoformat(text).astimezone(UTC)


async def load(conn: asyncpg.Connection, request_id: str) -> Loaded | None:
    loaded_row = await conn.fetchrow(_LOAD, request_id)
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


async def _append_audit(conn: asyncpg.Connection, loaded: Loaded) -> list[AuditEntry]:
    """Chain the saga's new audit events onto its trail (as loaded with the locked saga);
    returns the whole trail."""
    saga, trail = loaded.saga, loaded.trail
    prev = trail[-1].hash if trail else GENESIS
    added: list[AuditEntry] = []
    for at, kind, raw in saga.audit:
        detail = json.loads(json.dumps(raw, default=str))  # as stored, so the hash checks out
        seq = len(trail) + len(added) + 1
        digest = AuditEntry.digest(saga.request_id, seq, at, kind, detail, prev)
        entry = AuditEntry(
            request_id=saga.request_id, seq=seq, at=at, kind=kind, detail=detail, prev_hash=prev, hash=digest
        )
        added.append(entry)
        prev = entry.hash
    if added:  # one statement, not one execution per entry
        await conn.execute(
            "INSERT INTO audit_log (request_id, seq, at, kind, detail, prev_hash, hash)"
            " SELECT $1, seq, at, kind, detail::jsonb, prev_hash, hash FROM unnest("
            "$2::integer[], $3::timestamptz[], $4::text[], $5::text[], $6::text[], $7::text[])"
            " AS e(seq, at, kind, detail, prev_hash, hash)",
            saga.request_id,
            [e.seq for e in added],
            [e.at for e in added],
            [e.kind for e in added],
            [json.dumps(e.detail) for e in added],
            [e.prev_hash for e in added],
            [e.hash for e in added],
        )
    saga.audit.clear()
    loaded.trail = trail + added
    return loaded.trail


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
        ),
    )


async def save(conn: asyncpg.Connection, loaded: Loaded, was_final: bool) -> None:
    """Persist the saga, chain its audit events and announce the new snapshot, in the caller's
    transaction; announce completion once each time the request reaches a final status."""
    saga = loaded.saga
    await send_planned(conn, loaded)  # notices planned by this change (services/tracker/recipients.py)
    if saga.recipients.release_now:  # a lift whose recipients were told: its commands go now
        saga.recipients.release_now = False
        await enqueue_waiting(conn, loaded, "lift after notices")
    loaded.version += 1
    status = saga.status
    await conn.execute(
        "UPDATE sagas SET status = $2, version = $3, completed_at = $4, deadline = $5,"
        " extension = $6::jsonb, round = $7, reviews = $8::jsonb, sealed_identifiers = $9,"
        " pending_learnt = $10, recipients = $11::jsonb WHERE request_id = $1",
        saga.request_id,
        status.value,
        loaded.version,
        saga.completed_at,
        saga.deadline,
        saga.extension.model_dump_json() if saga.extension else None,
        saga.round,
        json.dumps([reviews.to_json(r) for r in saga.reviews.values()]),
        loaded.sealed_identifiers,
        loaded.pending_learnt,
        json.dumps(saga.recipients.to_json()),
    )
    changed = [s for s in saga.slots.values() if s != loaded.as_loaded.get(s.system)]
    if changed:  # an answer changes one slot, not five; an extension none. One statement.
        await conn.execute(
            "UPDATE saga_systems s SET state = u.state, attempts = u.attempts,"
            " dispatched_at = u.dispatched_at, command_id = u.command_id, answered_at = u.answered_at,"
            " outcome = u.outcome::jsonb, error = u.error, deferred = u.deferred::jsonb,"
            " rounds = u.rounds::jsonb"
            " FROM unnest($2::text[], $3::text[], $4::integer[], $5::timestamptz[], $6::uuid[],"
            " $7::timestamptz[], $8::text[], $9::text[], $10::text[], $11::text[])"
            " AS u(system, state, attempts, dispatched_at, command_id, answered_at, outcome, error,"
            " deferred, rounds)"
            " WHERE s.request_id = $1 AND s.system = u.system",
            saga.request_id,
            [s.system for s in changed],
            [s.state.value for s in changed],
            [s.attempts for s in changed],
            [s.dispatched_at for s in changed],
            [s.command_id for s in changed],
            [s.answered_at for s in changed],
            [s.outcome.model_dump_json() if s.outcome else None for s in changed],
            [s.error for s in changed],
            [json.dumps([d.model_dump(mode="json") for d in s.deferred]) for s in changed],
            [json.dumps([r.model_dump(mode="json") for r in s.rounds]) for s in changed],
        )
    await _append_audit(conn, loaded)
    just_finished = status.is_final and not was_final
    if just_finished:
        labels = {"type": saga.request_type.value, "status": status.value}
        metrics.requests_completed.add(1, labels)
        if saga.completed_at is not None:
            metrics.request_duration.record((saga.completed_at - saga.received_at).total_seconds(), labels)
    await announce(conn, loaded, completed=just_finished)


async def announce(conn: asyncpg.Connection, loaded: Loaded, completed: bool) -> None:
    """The saga's snapshot as it stands (its version: intake keeps the newest it has seen), and
    with `completed` the completion event for upstream."""
    saga = loaded.saga
    report = saga.report()
    snapshot = RequestStatusChanged(
        request_id=saga.request_id,
        version=loaded.version,
        status=saga.status,
        systems=[s.progress() for s in saga.slots.values()],
        report=report,
        audit=loaded.trail,
    )
    messages: list[tuple[str, str, BaseModel]] = [(topics.REQUEST_STATUS, saga.request_id, snapshot)]
    if completed:
        done = RequestCompleted(request_id=saga.request_id, status=saga.status, report=report)
        messages.append((topics.REQUESTS_COMPLETED, saga.request_id, done))
    await enqueue_many(conn, messages)
