"""The tracker's database: one row per saga, one per targeted system, outcomes that arrived
before their request, and the outbox for status events. Every handler runs in one transaction
with the processed-message journal, so redelivered events change nothing."""

from __future__ import annotations

import json
from datetime import datetime

import asyncpg

from services.tracker.saga import Saga, SystemSlot
from services.tracker.schedule import schedule_retention_ends
from shared import topics
from shared.contracts import (
    OutcomeReported,
    RequestAccepted,
    RequestCompleted,
    RequestStatusChanged,
    RequestType,
    SystemState,
)
from shared.journal import JOURNAL_DDL, claim
from shared.outbox import OUTBOX_DDL, enqueue

SCHEMA = (
    """CREATE TABLE IF NOT EXISTS sagas (
        request_id text PRIMARY KEY,
        request_type text NOT NULL,
        subject_ref text NOT NULL,
        received_at timestamptz NOT NULL,
        deadline timestamptz NOT NULL,
        trace_id text,
        status text NOT NULL,
        version integer NOT NULL DEFAULT 0,
        completed_at timestamptz,
        sealed_identifiers text NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS saga_systems (
        request_id text NOT NULL REFERENCES sagas,
        system text NOT NULL,
        state text NOT NULL,
        attempts integer NOT NULL,
        dispatched_at timestamptz NOT NULL,
        answered_at timestamptz,
        outcome jsonb,
        deferred jsonb NOT NULL DEFAULT '[]',
        PRIMARY KEY (request_id, system))""",
    """CREATE TABLE IF NOT EXISTS early_outcomes (
        message_id uuid PRIMARY KEY,
        request_id text NOT NULL,
        outcome jsonb NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS early_outcomes_request ON early_outcomes (request_id)",
    # Deferred erasures: re-examine what `resume_of` retained once `due_on` comes.
    """CREATE TABLE IF NOT EXISTS scheduled_erasures (
        request_id text NOT NULL REFERENCES sagas,
        system text NOT NULL,
        resume_of uuid NOT NULL,
        due_on date NOT NULL,
        reason text NOT NULL,
        dispatched_at timestamptz,
        PRIMARY KEY (request_id, system, resume_of, due_on))""",
    "CREATE INDEX IF NOT EXISTS scheduled_due ON scheduled_erasures (due_on) WHERE dispatched_at IS NULL",
    JOURNAL_DDL,
    OUTBOX_DDL,
)


async def _load(conn: asyncpg.Connection, request_id: str) -> tuple[Saga, int] | None:
    row = await conn.fetchrow("SELECT * FROM sagas WHERE request_id = $1 FOR UPDATE", request_id)
    if row is None:
        return None
    saga = Saga(
        request_id=row["request_id"],
        request_type=RequestType(row["request_type"]),
        subject_ref=row["subject_ref"],
        received_at=row["received_at"],
        deadline=row["deadline"],
        trace_id=row["trace_id"],
        completed_at=row["completed_at"],
    )
    for s in await conn.fetch("SELECT * FROM saga_systems WHERE request_id = $1", request_id):
        saga.slots[s["system"]] = SystemSlot(
            system=s["system"],
            state=SystemState(s["state"]),
            attempts=s["attempts"],
            dispatched_at=s["dispatched_at"],
            answered_at=s["answered_at"],
            outcome=None if s["outcome"] is None else OutcomeReported.model_validate_json(s["outcome"]),
            deferred=[OutcomeReported.model_validate(d) for d in json.loads(s["deferred"])],
        )
    return saga, row["version"]


async def _save(conn: asyncpg.Connection, saga: Saga, version: int, was_final: bool) -> None:
    """Persist the saga and announce the new snapshot, in the caller's transaction; announce
    completion once, when the request first reaches a final status."""
    version += 1
    status = saga.status
    await conn.execute(
        "UPDATE sagas SET status = $2, version = $3, completed_at = $4 WHERE request_id = $1",
        saga.request_id,
        status.value,
        version,
        saga.completed_at,
    )
    await conn.executemany(
        "UPDATE saga_systems SET state = $3, attempts = $4, answered_at = $5, outcome = $6::jsonb,"
        " deferred = $7::jsonb WHERE request_id = $1 AND system = $2",
        [
            (
                saga.request_id,
                s.system,
                s.state.value,
                s.attempts,
                s.answered_at,
                s.outcome.model_dump_json() if s.outcome else None,
                json.dumps([d.model_dump(mode="json") for d in s.deferred]),
            )
            for s in saga.slots.values()
        ],
    )
    report = saga.report()
    await enqueue(
        conn,
        topics.REQUEST_STATUS,
        saga.request_id,
        RequestStatusChanged(
            request_id=saga.request_id,
            version=version,
            status=status,
            systems=[s.progress() for s in saga.slots.values()],
            report=report,
        ),
    )
    if status.is_final and not was_final:
        await enqueue(
            conn,
            topics.REQUESTS_COMPLETED,
            saga.request_id,
            RequestCompleted(request_id=saga.request_id, status=status, report=report),
        )


async def start_saga(pool: asyncpg.Pool, event: RequestAccepted, now: datetime) -> None:
    async with pool.acquire() as conn, conn.transaction():
        if not await claim(conn, event.message_id):
            return
        inserted = await conn.fetchval(
            "INSERT INTO sagas (request_id, request_type, subject_ref, received_at, deadline,"
            " trace_id, status, sealed_identifiers) VALUES ($1,$2,$3,$4,$5,$6,'in_progress',$7)"
            " ON CONFLICT DO NOTHING RETURNING true",
            event.request_id,
            event.request_type.value,
            event.subject_ref,
            event.received_at,
            event.deadline,
            event.trace_id,
            event.sealed_identifiers,
        )
        if not inserted:
            return
        await conn.executemany(
            "INSERT INTO saga_systems (request_id, system, state, attempts, dispatched_at)"
            " VALUES ($1, $2, 'dispatched', 1, $3)",
            [(event.request_id, system, event.occurred_at) for system in event.systems],
        )
        loaded = await _load(conn, event.request_id)
        assert loaded is not None
        saga, version = loaded
        early = await conn.fetch(
            "DELETE FROM early_outcomes WHERE request_id = $1 RETURNING outcome", event.request_id
        )
        for row in early:
            outcome = OutcomeReported.model_validate_json(row["outcome"])
            if saga.record(outcome) and saga.request_type is RequestType.ERASURE:
                await schedule_retention_ends(conn, outcome)
        await _save(conn, saga, version, was_final=False)


async def record_outcome(pool: asyncpg.Pool, event: OutcomeReported) -> None:
    async with pool.acquire() as conn, conn.transaction():
        if not await claim(conn, event.message_id):
            return  # a redelivery of an outcome already counted
        loaded = await _load(conn, event.request_id)
        if loaded is None:
            # The outcome overtook its request's acceptance (different topics, different
            # partitions): keep it until the saga starts.
            await conn.execute(
                "INSERT INTO early_outcomes (message_id, request_id, outcome) VALUES ($1,$2,$3::jsonb)"
                " ON CONFLICT DO NOTHING",
                event.message_id,
                event.request_id,
                event.model_dump_json(),
            )
            return
        saga, version = loaded
        was_final = saga.status.is_final
        if saga.record(event):
            await _save(conn, saga, version, was_final)
            if saga.request_type is RequestType.ERASURE:
                await schedule_retention_ends(conn, event)
