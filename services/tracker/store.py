"""The tracker's database: sagas, their systems, the audit chain, outcomes that arrived before
their request, deferred erasures, and the outbox. Every handler runs in one transaction with
the processed-message journal, so redelivered events change nothing."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from uuid import UUID, uuid4

import asyncpg
from pydantic import BaseModel

from services.tracker.saga import Saga, SystemSlot, Timeouts
from services.tracker.schedule import SCHEDULE_DDL, schedule_follow_ups
from shared import topics
from shared.contracts import (
    COMMAND_FOR_TYPE,
    OutcomeReported,
    RequestAccepted,
    RequestCompleted,
    RequestStatusChanged,
    RequestType,
    SystemState,
)
from shared.contracts.audit import GENESIS, AuditEntry
from shared.contracts.commands import SubjectCommand
from shared.contracts.events import DeadlineExtended, RetrySystem
from shared.contracts.report import Extension
from shared.journal import JOURNAL_DDL, claim, claim_many
from shared.outbox import OUTBOX_DDL, enqueue, enqueue_many
from shared.telemetry import metrics
from shared.telemetry.messaging import TRACER, link_to

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
        extension jsonb,
        sealed_identifiers text NOT NULL)""",
    "ALTER TABLE sagas ADD COLUMN IF NOT EXISTS traceparent text",
    """CREATE TABLE IF NOT EXISTS saga_systems (
        request_id text NOT NULL REFERENCES sagas,
        system text NOT NULL,
        state text NOT NULL,
        attempts integer NOT NULL,
        dispatched_at timestamptz NOT NULL,
        command_id uuid NOT NULL,
        answered_at timestamptz,
        outcome jsonb,
        error text,
        deferred jsonb NOT NULL DEFAULT '[]',
        PRIMARY KEY (request_id, system))""",
    "CREATE INDEX IF NOT EXISTS saga_systems_waiting ON saga_systems (dispatched_at)"
    " WHERE state = 'dispatched'",
    """CREATE TABLE IF NOT EXISTS early_outcomes (
        message_id uuid PRIMARY KEY,
        request_id text NOT NULL,
        outcome jsonb NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS early_outcomes_request ON early_outcomes (request_id)",
    """CREATE TABLE IF NOT EXISTS audit_log (
        request_id text NOT NULL,
        seq integer NOT NULL,
        at timestamptz NOT NULL,
        kind text NOT NULL,
        detail jsonb NOT NULL,
        prev_hash text NOT NULL,
        hash text NOT NULL,
        PRIMARY KEY (request_id, seq))""",
    # Append-only in the database itself: an edit needs a superuser to drop the trigger first,
    # and even then the hash chain (copied into every status event) shows it.
    """CREATE OR REPLACE FUNCTION lethe_audit_append_only() RETURNS trigger LANGUAGE plpgsql AS
       $$ BEGIN RAISE EXCEPTION 'audit_log is append-only'; END $$""",
    """CREATE OR REPLACE TRIGGER audit_log_append_only BEFORE UPDATE OR DELETE ON audit_log
       FOR EACH ROW EXECUTE FUNCTION lethe_audit_append_only()""",
    *SCHEDULE_DDL,
    JOURNAL_DDL,
    OUTBOX_DDL,
)


@dataclass
class Loaded:
    saga: Saga
    version: int
    sealed_identifiers: str
    traceparent: str | None = None
    as_loaded: dict[str, SystemSlot] = field(default_factory=dict)  # to write back only changes
    trail: list[AuditEntry] = field(default_factory=list)


# The saga, its systems and its audit trail in one round trip; the saga row is locked, so the
# trail read is the one the next entries chain onto.
_LOAD = """
SELECT g.*,
    (SELECT coalesce(json_agg(s), '[]') FROM saga_systems s WHERE s.request_id = g.request_id) AS systems,
    (SELECT coalesce(json_agg(a ORDER BY a.seq), '[]') FROM audit_log a WHERE a.request_id = g.request_id)
        AS trail
FROM sagas g WHERE g.request_id = $1 FOR UPDATE OF g"""


def _utc(text: str) -> datetime:
    """A timestamp as PostgreSQL writes it in JSON, in UTC as asyncpg returns columns (the audit
    digests were computed over UTC times)."""
    return datetime.fromisoformat(text).astimezone(UTC)


async def load(conn: asyncpg.Connection, request_id: str) -> Loaded | None:
    row = await conn.fetchrow(_LOAD, request_id)
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
        extension=None if row["extension"] is None else Extension.model_validate_json(row["extension"]),
    )
    for s in json.loads(row["systems"]):
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
        )
    trail = [AuditEntry(**{**a, "at": _utc(a["at"])}) for a in json.loads(row["trail"])]
    as_loaded = {name: replace(slot, deferred=list(slot.deferred)) for name, slot in saga.slots.items()}
    return Loaded(saga, row["version"], row["sealed_identifiers"], row["traceparent"], as_loaded, trail)


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
    if added:
        await conn.executemany(
            "INSERT INTO audit_log (request_id, seq, at, kind, detail, prev_hash, hash)"
            " VALUES ($1,$2,$3,$4,$5::jsonb,$6,$7)",
            [(e.request_id, e.seq, e.at, e.kind, json.dumps(e.detail), e.prev_hash, e.hash) for e in added],
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
        ),
    )


async def save(conn: asyncpg.Connection, loaded: Loaded, was_final: bool) -> None:
    """Persist the saga, chain its audit events and announce the new snapshot, in the caller's
    transaction; announce completion once each time the request reaches a final status."""
    saga = loaded.saga
    loaded.version += 1
    status = saga.status
    await conn.execute(
        "UPDATE sagas SET status = $2, version = $3, completed_at = $4, deadline = $5, extension = $6::jsonb"
        " WHERE request_id = $1",
        saga.request_id,
        status.value,
        loaded.version,
        saga.completed_at,
        saga.deadline,
        saga.extension.model_dump_json() if saga.extension else None,
    )
    changed = [s for s in saga.slots.values() if s != loaded.as_loaded.get(s.system)]
    if changed:  # an answer changes one slot, not five; an extension none
        await conn.executemany(
            "UPDATE saga_systems SET state = $3, attempts = $4, dispatched_at = $5, command_id = $6,"
            " answered_at = $7, outcome = $8::jsonb, error = $9, deferred = $10::jsonb"
            " WHERE request_id = $1 AND system = $2",
            [
                (
                    saga.request_id,
                    s.system,
                    s.state.value,
                    s.attempts,
                    s.dispatched_at,
                    s.command_id,
                    s.answered_at,
                    s.outcome.model_dump_json() if s.outcome else None,
                    s.error,
                    json.dumps([d.model_dump(mode="json") for d in s.deferred]),
                )
                for s in changed
            ],
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


async def start_saga(pool: asyncpg.Pool, event: RequestAccepted, now: datetime) -> None:
    async with pool.acquire() as conn, conn.transaction():
        # The saga row is the journal here: a redelivered acceptance finds it and does nothing.
        inserted = await conn.fetchval(
            "INSERT INTO sagas (request_id, request_type, subject_ref, received_at, deadline,"
            " trace_id, status, sealed_identifiers, traceparent)"
            " VALUES ($1,$2,$3,$4,$5,$6,'in_progress',$7,$8)"
            " ON CONFLICT DO NOTHING RETURNING true",
            event.request_id,
            event.request_type.value,
            event.subject_ref,
            event.received_at,
            event.deadline,
            event.trace_id,
            event.sealed_identifiers,
            event.traceparent,
        )
        if not inserted:
            return
        await conn.executemany(
            "INSERT INTO saga_systems (request_id, system, state, attempts, dispatched_at, command_id)"
            " VALUES ($1, $2, 'dispatched', 1, $3, $4)",
            [
                (event.request_id, system, event.occurred_at, event.command_ids.get(system, uuid4()))
                for system in event.systems
            ],
        )
        loaded = await load(conn, event.request_id)
        assert loaded is not None
        saga = loaded.saga
        saga.note(
            event.occurred_at,
            "accepted",
            request_type=event.request_type.value,
            systems=event.systems,
            deadline=event.deadline.isoformat(),
        )
        early = await conn.fetch(
            "DELETE FROM early_outcomes WHERE request_id = $1 RETURNING outcome", event.request_id
        )
        for row in early:
            outcome = OutcomeReported.model_validate_json(row["outcome"])
            if saga.record(outcome) and saga.request_type is RequestType.ERASURE:
                await schedule_follow_ups(conn, outcome)
        await save(conn, loaded, was_final=False)


async def record_outcome(pool: asyncpg.Pool, event: OutcomeReported) -> None:
    await record_outcomes(pool, [event])


async def record_outcomes(pool: asyncpg.Pool, events: list[OutcomeReported]) -> None:
    """Outcomes of one request, in one transaction: the saga is loaded, changed and announced
    once for all of them (under load, a request's five answers often arrive together)."""
    async with pool.acquire() as conn, conn.transaction():
        new_ids = await claim_many(conn, [e.message_id for e in events])
        fresh = [e for e in events if e.message_id in new_ids]  # redeliveries change nothing
        if not fresh:
            return
        loaded = await load(conn, fresh[0].request_id)
        if loaded is None:
            # The outcomes overtook their request's acceptance (different topics, different
            # partitions): keep them until the saga starts.
            await conn.executemany(
                "INSERT INTO early_outcomes (message_id, request_id, outcome) VALUES ($1,$2,$3::jsonb)"
                " ON CONFLICT DO NOTHING",
                [(e.message_id, e.request_id, e.model_dump_json()) for e in fresh],
            )
            return
        was_final = loaded.saga.status.is_final
        recorded = [e for e in fresh if loaded.saga.record(e)]
        if recorded:
            await save(conn, loaded, was_final)
            if loaded.saga.request_type is RequestType.ERASURE:
                for event in recorded:
                    await schedule_follow_ups(conn, event)


async def check_timeouts(pool: asyncpg.Pool, now: datetime, timeouts: Timeouts) -> int:
    """Re-send commands to silent systems, or fail them after the last try. The candidate rows
    are claimed with SKIP LOCKED, so several tracker instances share the work."""
    changed = 0
    async with pool.acquire() as conn, conn.transaction():
        candidates = await conn.fetch(
            "SELECT request_id FROM sagas g WHERE EXISTS (SELECT 1 FROM saga_systems s"
            " WHERE s.request_id = g.request_id AND s.state = 'dispatched' AND s.dispatched_at <= $1)"
            " LIMIT 200 FOR UPDATE SKIP LOCKED",
            now - timeouts.first,
        )

        for row in candidates:
            loaded = await load(conn, row["request_id"])
            if loaded is None:
                continue
            was_final = loaded.saga.status.is_final
            actions = {name: loaded.saga.time_out(name, now, timeouts) for name in list(loaded.saga.slots)}
            if not any(actions.values()):
                continue
            await dispatch(conn, loaded, [name for name, action in actions.items() if action == "redispatch"])
            await save(conn, loaded, was_final)
            changed += 1
    return changed


async def retry_system(pool: asyncpg.Pool, event: RetrySystem, now: datetime) -> bool:
    async with pool.acquire() as conn, conn.transaction():
        if not await claim(conn, event.message_id):
            return False
        loaded = await load(conn, event.request_id)
        if loaded is None:
            return False
        was_final = loaded.saga.status.is_final
        retried = loaded.saga.retry(event.system, now, uuid4())
        if retried:
            await dispatch(conn, loaded, [event.system])
        await save(conn, loaded, was_final)
        return retried


async def extend_deadline(pool: asyncpg.Pool, event: DeadlineExtended) -> None:
    async with pool.acquire() as conn, conn.transaction():
        if not await claim(conn, event.message_id):
            return
        loaded = await load(conn, event.request_id)
        if loaded is not None and loaded.saga.extend(event.months, event.deadline, event.occurred_at):
            await save(conn, loaded, loaded.saga.status.is_final)
