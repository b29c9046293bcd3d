"""Deferred erasure: records kept under a time-bound rule, or by a hold, are erased later
without anyone resubmitting. The tracker schedules a follow-up command for the system at the
retain-until date, or at the moment the hold ends (released, or its `expires_at` passed); the
worker re-examines what the earlier command kept, erases what no rule or hold still keeps, and
the report records when it went and why."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from datetime import date, datetime
from uuid import UUID, uuid4

import asyncpg

from shared import topics
from shared.contracts import EraseSubject, OutcomeReported
from shared.contracts.holds import HoldUpdated
from shared.db import Db, transaction
from shared.outbox import enqueue
from shared.telemetry.messaging import TRACER, link_to

log = logging.getLogger(__name__)
SCHEDULE_DDL = (
    # Deferred erasures: re-examine what `resume_of` retained once `due_on` (and `due_at`,
    # for an end given to the second, a hold's expiry) comes.
    """CREATE TABLE IF NOT EXISTS scheduled_erasures (
        request_id text NOT NULL REFERENCES sagas,
        system text NOT NULL,
        resume_of uuid NOT NULL,
        due_on date NOT NULL,
        reason text NOT NULL,
        dispatched_at timestamptz,
        PRIMARY KEY (request_id, system, resume_of, due_on))""",
    "ALTER TABLE scheduled_erasures ADD COLUMN IF NOT EXISTS due_at timestamptz",
    # The command sent, so that one the broker lost is sent again as the same command.
    "ALTER TABLE scheduled_erasures ADD COLUMN IF NOT EXISTS command_id uuid",
    "CREATE INDEX IF NOT EXISTS scheduled_due ON scheduled_erasures (due_on) WHERE dispatched_at IS NULL",
    # What the tracker knows of each hold: when it ends, for the records it alone kept.
    """CREATE TABLE IF NOT EXISTS holds (
        hold_id uuid PRIMARY KEY,
        version integer NOT NULL,
        case_reference text NOT NULL,
        expires_at timestamptz,
        released_at timestamptz)""",
    "CREATE INDEX IF NOT EXISTS holds_case ON holds (case_reference)",
)
_INSERT = (
    "INSERT INTO scheduled_erasures (request_id, system, resume_of, due_on, due_at, reason)"
    " VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING"
)


def hold_end(
    case_reference: str, expires_at: datetime | None, released_at: datetime | None
) -> tuple[datetime, str] | None:
    """When a hold stops protecting records, and why; None while nothing ends it."""
    if released_at is not None and (expires_at is None or released_at <= expires_at):
        return released_at, f"hold {case_reference} released"
    if expires_at is not None:
        return expires_at, f"hold {case_reference} expired"
    return None


async def schedule_follow_ups(conn: asyncpg.Connection, outcome: OutcomeReported) -> None:
    """What an erasure outcome kept, erased later: at each retain-until date, and when each hold
    it cites ends (already ended, too: a release can overtake the outcome that cites it)."""
    rows: list[tuple[str, str, UUID, date, datetime | None, str]] = [
        (outcome.request_id, outcome.system, outcome.command_id, due, None, "retention ended")
        for due in sorted({r.retain_until for c in outcome.categories for r in c.retained if r.retain_until})
    ]
    cited = sorted({r.hold_reference for c in outcome.categories for r in c.retained if r.hold_reference})
    if cited:
        await _lock_cases(conn, cited)
        for hold in await conn.fetch(
            "SELECT case_reference, expires_at, released_at FROM holds"
            " WHERE case_reference = ANY($1::text[])",
            cited,
        ):
            end = hold_end(hold["case_reference"], hold["expires_at"], hold["released_at"])
            if end is not None:
                rows.append((outcome.request_id, outcome.system, outcome.command_id, end[0].date(), *end))
    if rows:  # most outcomes have none: asyncpg would still make a round trip for nothing
        await conn.executemany(_INSERT, rows)


async def _lock_cases(conn: asyncpg.Connection, case_references: Sequence[str]) -> None:
    """Until the transaction ends. A hold's end and an outcome citing it are handled at once
    (they are keyed apart): each reading before the other committed, neither would schedule
    the follow-up, and what the hold kept would stay for good. Taken in order: no deadlock."""
    for reference in sorted(case_references):
        await conn.execute("SELECT pg_advisory_xact_lock(hashtextextended('hold:' || $1, 0))", reference)


async def record_hold(db: Db, hold: HoldUpdated) -> int:
    """Take a hold's change; once it has an end (a release, an expiry), every outcome that kept
    records under it gets a follow-up due then. Returns the follow-ups scheduled."""
    async with transaction(db) as conn:
        await _lock_cases(conn, [hold.case_reference])
        changed = await conn.fetchval(
            "INSERT INTO holds (hold_id, version, case_reference, expires_at, released_at)"
            " VALUES ($1, $2, $3, $4, $5) ON CONFLICT (hold_id) DO UPDATE SET version = $2,"
            " case_reference = $3, expires_at = $4, released_at = $5 WHERE holds.version < $2 RETURNING true",
            hold.hold_id,
            hold.version,
            hold.case_reference,
            hold.expires_at,
            hold.released_at,
        )
        end = hold_end(hold.case_reference, hold.expires_at, hold.released_at)
        if not changed or end is None:
            return 0
        rows = await _citing(conn, hold.case_reference)
        await conn.executemany(
            _INSERT,
            [(r["request_id"], r["system"], r["command_id"], end[0].date(), *end) for r in rows],
        )
    return len(rows)


async def _citing(conn: asyncpg.Connection, case_reference: str) -> Sequence[asyncpg.Record]:
    """Every outcome (first, a later round's or deferred) that kept records under this case
    reference."""
    cites = json.dumps({"categories": [{"retained": [{"hold_reference": case_reference}]}]})
    rows: Sequence[asyncpg.Record] = await conn.fetch(
        """SELECT request_id, system, (o->>'command_id')::uuid AS command_id
             FROM saga_systems, LATERAL (
                  SELECT outcome AS o WHERE outcome IS NOT NULL
                  UNION ALL SELECT d FROM jsonb_array_elements(deferred) AS d
                  UNION ALL SELECT r FROM jsonb_array_elements(rounds) AS r) AS outcomes
            WHERE o @> $1::jsonb""",
        cites,
    )
    return rows


async def dispatch_due(pool: asyncpg.Pool, now: datetime) -> int:
    """Send the follow-up commands that are due. Safe with several tracker instances: rows are
    claimed with SKIP LOCKED and marked in the transaction that enqueues their command. A row
    sent before keeps its command id (sent again after the broker lost it: the same command)."""
    async with pool.acquire() as conn, conn.transaction():
        rows = await conn.fetch(
            """SELECT s.request_id, s.system, s.resume_of, s.due_on, s.reason, s.command_id, g.subject_ref,
                      g.sealed_identifiers, g.traceparent
                 FROM scheduled_erasures s JOIN sagas g USING (request_id)
                WHERE s.dispatched_at IS NULL AND s.due_on <= $1 AND (s.due_at IS NULL OR s.due_at <= $2)
                ORDER BY s.due_on LIMIT 200 FOR UPDATE OF s SKIP LOCKED""",
            now.date(),
            now,
        )
        for row in rows:
            if row["sealed_identifiers"] is None:
                await _cannot_send(conn, row, now)
                continue
            command = EraseSubject(
                message_id=row["command_id"] or uuid4(),
                request_id=row["request_id"],
                system=row["system"],
                subject_ref=row["subject_ref"],
                sealed_identifiers=row["sealed_identifiers"],
                resume_of=row["resume_of"],
                reason=row["reason"],
            )
            with TRACER.start_as_current_span(
                "deferred erasure",
                links=link_to(row["traceparent"]),
                attributes={
                    "lethe.request_id": row["request_id"],
                    "lethe.system": row["system"],
                    "lethe.resume_of": str(row["resume_of"]),
                },
            ):
                await enqueue(conn, topics.command_topic(row["system"]), row["subject_ref"], command)
            await _mark_dispatched(conn, row, now, command.message_id)
    return len(rows)


async def _mark_dispatched(
    conn: asyncpg.Connection, row: asyncpg.Record, now: datetime, command_id: UUID | None
) -> None:
    await conn.execute(
        "UPDATE scheduled_erasures SET dispatched_at = $5, command_id = coalesce($6, command_id)"
        " WHERE request_id = $1 AND system = $2 AND resume_of = $3 AND due_on = $4",
        row["request_id"],
        row["system"],
        row["resume_of"],
        row["due_on"],
        now,
        command_id,
    )


async def _cannot_send(conn: asyncpg.Connection, row: asyncpg.Record, now: datetime) -> None:
    """A follow-up due after the request's identifiers were dropped (forgetting.py should never
    let that happen): marked dispatched so it does not block every other due erasure each tick,
    and said loudly, for a person to look at."""
    log.error(
        "deferred erasure due but the identifiers are gone",
        extra={"request_id": row["request_id"], "system": row["system"]},
    )
    await _mark_dispatched(conn, row, now, None)


async def undispatch_unanswered(conn: asyncpg.Connection) -> int:
    """Follow-ups sent whose outcome has not come back are due again (the broker lost them)."""
    status: str = await conn.execute(
        """UPDATE scheduled_erasures e SET dispatched_at = NULL
            WHERE dispatched_at IS NOT NULL AND command_id IS NOT NULL AND NOT EXISTS (
                  SELECT 1 FROM saga_systems s, jsonb_array_elements(s.deferred) AS d
                   WHERE s.request_id = e.request_id AND s.system = e.system
                     AND (d->>'command_id')::uuid = e.command_id)"""
    )
    return int(status.split()[-1])


async def pending(pool: asyncpg.Pool, request_id: str) -> list[tuple[str, date]]:
    rows = await pool.fetch(
        "SELECT system, due_on FROM scheduled_erasures WHERE request_id = $1 AND dispatched_at IS NULL"
        " ORDER BY due_on, system",
        request_id,
    )
    return [(r["system"], r["due_on"]) for r in rows]
