"""Deferred erasure: records kept under a time-bound rule, or by a hold, are erased later
without anyone resubmitting. The tracker schedules a follow-up command for the system at the
retain-until date (or when the hold is released); the worker re-examines what the earlier
command kept, erases what no rule or hold still keeps, and the report records when it went."""

from __future__ import annotations

import json
from datetime import date, datetime

import asyncpg

from shared import topics
from shared.contracts import EraseSubject, OutcomeReported
from shared.contracts.holds import HoldUpdated
from shared.outbox import enqueue
from shared.telemetry.messaging import TRACER, link_to

SCHEDULE_DDL = (
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
)


async def schedule_retention_ends(conn: asyncpg.Connection, outcome: OutcomeReported) -> None:
    due_dates = {r.retain_until for c in outcome.categories for r in c.retained if r.retain_until}
    if not due_dates:  # most outcomes: asyncpg would still make a round trip for nothing
        return
    await conn.executemany(
        "INSERT INTO scheduled_erasures (request_id, system, resume_of, due_on, reason)"
        " VALUES ($1, $2, $3, $4, 'retention ended') ON CONFLICT DO NOTHING",
        [(outcome.request_id, outcome.system, outcome.command_id, due) for due in sorted(due_dates)],
    )


async def schedule_hold_release(pool: asyncpg.Pool, hold: HoldUpdated) -> int:
    """Every outcome that kept records under this hold gets a follow-up, due at once."""
    if hold.released_at is None:
        return 0
    cites = json.dumps({"categories": [{"retained": [{"hold_reference": hold.case_reference}]}]})
    async with pool.acquire() as conn, conn.transaction():
        rows = await conn.fetch(
            """SELECT request_id, system, (o->>'command_id')::uuid AS command_id
                 FROM saga_systems, LATERAL (
                      SELECT outcome AS o WHERE outcome IS NOT NULL
                      UNION ALL SELECT d FROM jsonb_array_elements(deferred) AS d) AS outcomes
                WHERE o @> $1::jsonb""",
            cites,
        )
        await conn.executemany(
            "INSERT INTO scheduled_erasures (request_id, system, resume_of, due_on, reason)"
            " VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
            [
                (
                    r["request_id"],
                    r["system"],
                    r["command_id"],
                    hold.released_at.date(),
                    f"hold {hold.case_reference} released",
                )
                for r in rows
            ],
        )
    return len(rows)


async def dispatch_due(pool: asyncpg.Pool, now: datetime) -> int:
    """Send the follow-up commands that are due. Safe with several tracker instances: rows are
    claimed with SKIP LOCKED and marked in the transaction that enqueues their command."""
    async with pool.acquire() as conn, conn.transaction():
        rows = await conn.fetch(
            """SELECT s.request_id, s.system, s.resume_of, s.due_on, g.subject_ref, g.sealed_identifiers,
                      g.traceparent
                 FROM scheduled_erasures s JOIN sagas g USING (request_id)
                WHERE s.dispatched_at IS NULL AND s.due_on <= $1
                ORDER BY s.due_on LIMIT 200 FOR UPDATE OF s SKIP LOCKED""",
            now.date(),
        )
        for row in rows:
            with TRACER.start_as_current_span(
                "deferred erasure",
                links=link_to(row["traceparent"]),
                attributes={
                    "lethe.request_id": row["request_id"],
                    "lethe.system": row["system"],
                    "lethe.resume_of": str(row["resume_of"]),
                },
            ):
                await enqueue(
                    conn,
                    topics.command_topic(row["system"]),
                    row["subject_ref"],
                    EraseSubject(
                        request_id=row["request_id"],
                        system=row["system"],
                        subject_ref=row["subject_ref"],
                        sealed_identifiers=row["sealed_identifiers"],
                        resume_of=row["resume_of"],
                    ),
                )
            await conn.execute(
                "UPDATE scheduled_erasures SET dispatched_at = $5 WHERE request_id = $1 AND system = $2"
                " AND resume_of = $3 AND due_on = $4",
                row["request_id"],
                row["system"],
                row["resume_of"],
                row["due_on"],
                now,
            )
    return len(rows)


async def pending(pool: asyncpg.Pool, request_id: str) -> list[tuple[str, date]]:
    rows = await pool.fetch(
        "SELECT system, due_on FROM scheduled_erasures WHERE request_id = $1 AND dispatched_at IS NULL"
        " ORDER BY due_on, system",
        request_id,
    )
    return [(r["system"], r["due_on"]) for r in rows]
