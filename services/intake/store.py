"""Intake's database: requests (identifiers sealed at rest) and the outbox, written together."""

from __future__ import annotations

from dataclasses import dataclass, fields
from datetime import datetime
from typing import Any
from uuid import UUID, uuid5

import asyncpg
from pydantic import BaseModel, TypeAdapter

from shared import topics
from shared.contracts import (
    COMMAND_FOR_TYPE,
    NotificationRequested,
    RequestAccepted,
    RequestStatus,
    RequestStatusChanged,
    RequestType,
    SystemProgress,
)
from shared.contracts.audit import AuditEntry
from shared.db import lz4
from shared.outbox import enqueue_many, outbox_ctes

_ANNOUNCEMENT_IDS = UUID("5b0f0b1e-6c65-7468-6561-6e6e6f756e63")

SCHEMA = (
    """CREATE TABLE IF NOT EXISTS requests (
        request_id text PRIMARY KEY,
        fingerprint text NOT NULL,
        request_type text NOT NULL,
        subject_ref text NOT NULL,
        sealed_identifiers text NOT NULL,
        systems text[] NOT NULL,
        received_at timestamptz NOT NULL,
        deadline timestamptz NOT NULL,
        status text NOT NULL DEFAULT 'received',
        status_version integer NOT NULL DEFAULT 0,
        progress jsonb NOT NULL DEFAULT '[]',
        report jsonb,
        completed_at timestamptz,
        trace_id text,
        created_at timestamptz NOT NULL DEFAULT now(),
        updated_at timestamptz NOT NULL DEFAULT now())""",
    "ALTER TABLE requests ADD COLUMN IF NOT EXISTS callback_url text",
    # Identifiers are dropped once the request is final (data minimisation): see apply_status.
    "ALTER TABLE requests ALTER COLUMN sealed_identifiers DROP NOT NULL",
    "ALTER TABLE requests ADD COLUMN IF NOT EXISTS audit jsonb NOT NULL DEFAULT '[]'",
    "ALTER TABLE requests ADD COLUMN IF NOT EXISTS extension_months integer",
    "ALTER TABLE requests ADD COLUMN IF NOT EXISTS extension_reason text",
    "ALTER TABLE requests ADD COLUMN IF NOT EXISTS extended_at timestamptz",
    "ALTER TABLE requests ADD COLUMN IF NOT EXISTS traceparent text",
    # When its acceptance and commands were last handed to the outbox (announced again if the
    # tracker never acknowledges it: services/intake/recovery.py).
    "ALTER TABLE requests ADD COLUMN IF NOT EXISTS announced_at timestamptz NOT NULL DEFAULT now()",
    "ALTER TABLE requests ADD COLUMN IF NOT EXISTS reannounced integer NOT NULL DEFAULT 0",
    # Who submitted it (services/intake/scope.py); NULL for requests stored before it was kept.
    "ALTER TABLE requests ADD COLUMN IF NOT EXISTS submitted_by text",
    "CREATE INDEX IF NOT EXISTS requests_submitted_by ON requests (submitted_by, received_at)",
    "CREATE INDEX IF NOT EXISTS requests_status ON requests (status, received_at)",
    "CREATE INDEX IF NOT EXISTS requests_deadline ON requests (deadline) WHERE completed_at IS NULL",
    lz4("requests", "progress", "report", "audit"),
)


@dataclass(frozen=True)
class NewRequest:
    request_id: str
    fingerprint: str
    request_type: str
    subject_ref: str
    sealed_identifiers: str
    systems: list[str]
    received_at: datetime
    deadline: datetime
    trace_id: str | None
    callback_url: str | None = None
    traceparent: str | None = None
    submitted_by: str | None = None


class Conflict(Exception):
    """The request id exists, with a different body or from another submitter."""


_INSERT_REQUEST = """stored AS (
    INSERT INTO requests (request_id, fingerprint, request_type, subject_ref, sealed_identifiers,
        systems, received_at, deadline, trace_id, callback_url, traceparent, submitted_by)
    VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12) ON CONFLICT (request_id) DO NOTHING RETURNING *)"""


async def submit(pool: asyncpg.Pool, new: NewRequest) -> tuple[asyncpg.Record, bool]:
    """Store the request and its commands atomically, in one statement (the request row and
    its outbox rows are data-modifying CTEs of it). Returns the stored row and whether this call
    stored it: for a known request id nothing is stored or dispatched, and the caller decides
    whether the submission repeats the stored one (scope.is_resubmission) or conflicts."""
    outbox, outbox_args = outbox_ctes(
        _announcements(new), first_param=13, only_if="EXISTS (SELECT 1 FROM stored)"
    )
    row = await pool.fetchrow(
        f"WITH {_INSERT_REQUEST}, {outbox} SELECT stored.* FROM stored LEFT JOIN outbox_wake ON true",
        new.request_id,
        new.fingerprint,
        new.request_type,
        new.subject_ref,
        new.sealed_identifiers,
        new.systems,
        new.received_at,
        new.deadline,
        new.trace_id,
        new.callback_url,
        new.traceparent,
        new.submitted_by,
        *outbox_args,
    )
    if row is not None:
        return row, True
    known = await pool.fetchrow("SELECT * FROM requests WHERE request_id = $1", new.request_id)
    assert known is not None  # rows are never deleted
    return known, False


def _announcements(new: NewRequest) -> list[tuple[str, str, BaseModel]]:
    """The messages that announce a new request: the acceptance and a command per system. Their
    ids derive from the request id, so announcing a request again (after the broker lost the
    first announcement) repeats the same messages, which every consumer de-duplicates."""
    command_type = COMMAND_FOR_TYPE[RequestType(new.request_type)]
    messages: list[tuple[str, str, BaseModel]] = []
    if new.request_type == RequestType.LIFT_RESTRICTION:
        # Art. 18(3): the person is told before the lift takes effect; the outbox publishes in
        # row order, so the notification leaves before the commands.
        notice = NotificationRequested(
            message_id=message_id(new.request_id, "notice"),
            request_id=new.request_id,
            kind="restriction_lift",
            subject_ref=new.subject_ref,
        )
        messages.append((topics.NOTIFICATIONS, new.request_id, notice))
    commands = {
        system: command_type(
            message_id=message_id(new.request_id, system),
            request_id=new.request_id,
            system=system,
            subject_ref=new.subject_ref,
            sealed_identifiers=new.sealed_identifiers,
        )
        for system in new.systems
    }
    accepted = RequestAccepted(
        message_id=message_id(new.request_id, "accepted"),
        request_id=new.request_id,
        request_type=RequestType(new.request_type),
        subject_ref=new.subject_ref,
        systems=new.systems,
        received_at=new.received_at,
        deadline=new.deadline,
        sealed_identifiers=new.sealed_identifiers,
        trace_id=new.trace_id,
        traceparent=new.traceparent,
        command_ids={system: c.message_id for system, c in commands.items()},
    )
    messages.append((topics.REQUESTS_ACCEPTED, new.request_id, accepted))
    if new.request_type == RequestType.LIFT_RESTRICTION:
        # The tracker sends a lift's commands once its recipients were told (Art. 19 with 18(3)).
        return messages
    # Keyed by subject: all commands about one person land on one partition, in order.
    messages += [(topics.command_topic(s), new.subject_ref, c) for s, c in commands.items()]
    return messages


def message_id(request_id: str, part: str) -> UUID:
    """The same id each time a message is sent again (after a broker loss): the receiver's
    journal then takes a repeat as one it has seen."""
    return uuid5(_ANNOUNCEMENT_IDS, f"{request_id}/{part}")


# Announced again k times already, a request waits resend age + backoff * (2^k - 1): with the
# resend age as backoff, twice as long each time.
_REANNOUNCE = """
UPDATE requests SET announced_at = now(), reannounced = reannounced + 1 WHERE request_id IN (
    SELECT request_id FROM requests
     WHERE status = 'received' AND sealed_identifiers IS NOT NULL
       AND announced_at < $1::timestamptz
           - make_interval(secs => $4::float8 * (power(2, least(reannounced, $5::int)) - 1))
       AND request_id > $2
     ORDER BY request_id LIMIT $3 FOR UPDATE SKIP LOCKED)
RETURNING *"""
# Never more than 16 times the resend age.
BACKOFF_DOUBLINGS = 4


async def announce_unstarted(
    pool: asyncpg.Pool, announced_before: datetime, backoff_s: float = 0.0, batch: int = 200
) -> int:
    """Announce again every request the tracker has not acknowledged (no status snapshot folded
    in) that was last announced before `announced_before`: after the broker forgot, with the
    moment of the loss (no backoff: each was lost); and, as a safety net for a message lost any
    other way, with the age after which a request still waiting for its first snapshot is
    announced again, and that age as `backoff_s`: each later announcement waits twice as long
    as the one before, so a tracker that stops acknowledging (stuck, or its consumer stalled)
    is not sent the whole backlog again every few seconds, which loads the broker it needs."""
    announced, after = 0, ""
    while True:
        async with pool.acquire() as conn, conn.transaction():
            rows = await conn.fetch(_REANNOUNCE, announced_before, after, batch, backoff_s, BACKOFF_DOUBLINGS)
            if not rows:
                return announced
            rows = sorted(rows, key=lambda r: r["request_id"])
            await enqueue_many(conn, [m for row in rows for m in _announcements(_as_new(row))])
        announced += len(rows)
        after = rows[-1]["request_id"]


def _as_new(row: asyncpg.Record) -> NewRequest:
    return NewRequest(**{f.name: row[f.name] for f in fields(NewRequest)})


_APPLY_STATUS = """
WITH previous AS (
    SELECT status FROM requests WHERE request_id = $1 AND status_version < $3 FOR UPDATE),
folded AS (
    UPDATE requests r SET status = $2, status_version = $3, progress = $4::jsonb,
        report = $5::jsonb, completed_at = $6, deadline = coalesce($7, r.deadline),
        audit = $8::jsonb, updated_at = now(),
        -- Intake needs the identifiers only to dispatch; once the request is final they go.
        -- (The tracker keeps its sealed copy while a deferred erasure or a retry may need it.)
        sealed_identifiers = CASE WHEN $9 THEN NULL ELSE r.sealed_identifiers END
    FROM previous WHERE r.request_id = $1
    RETURNING previous.status AS previous, r.callback_url, r.completed_at, r.deadline),
announced AS (
    INSERT INTO callbacks (request_id, status_version, url, body)
    SELECT $1, $3, callback_url, jsonb_build_object(
        'request_id', $1::text, 'status', $2::text, 'completed_at', completed_at,
        'deadline', deadline, 'report', '/v1/requests/' || $1 || '/report')
    FROM folded
    WHERE $9 AND callback_url IS NOT NULL AND previous <> $2
    ON CONFLICT DO NOTHING)
SELECT previous FROM folded"""


# Serialised by pydantic-core, not json.dumps of each item's dump: half the time for a
# request's final snapshot (62 µs against 125), and the same JSON once PostgreSQL parses it.
_PROGRESS = TypeAdapter(list[SystemProgress])
_AUDIT = TypeAdapter(list[AuditEntry])


async def apply_status(conn: asyncpg.Connection | asyncpg.Pool, event: RequestStatusChanged) -> bool:
    """Fold the tracker's snapshot into the read model; older or repeated snapshots lose (False).
    When the request reached a final status other than the one it had (failed, then completed
    by a late answer or a retry), its callback (if any) is queued in the same statement: one
    round trip, atomic on its own (a request makes several snapshots). The reviewer's sealed
    evidence is not kept in the report (reviews.fold keeps it for them)."""
    report = event.report
    if report is not None and report.reviews:
        report = report.model_copy(
            update={"reviews": [r.model_copy(update={"evidence": None}) for r in report.reviews]}
        )
    folded = await conn.fetchrow(
        _APPLY_STATUS,
        event.request_id,
        event.status.value,
        event.version,
        _PROGRESS.dump_json(event.systems).decode(),
        report.model_dump_json() if report else None,
        report.completed_at if report else None,
        report.deadline if report else None,
        _AUDIT.dump_json(event.audit).decode(),
        event.status.is_final,
    )
    return folded is not None


async def get(pool: asyncpg.Pool, request_id: str, *, submitted_by: str | None) -> asyncpg.Record | None:
    """The request, if it exists and (`submitted_by` given) that submitter submitted it: another's
    request is not found, exactly like a missing one. `submitted_by` None: any request."""
    return await pool.fetchrow(
        "SELECT * FROM requests WHERE request_id = $1 AND ($2::text IS NULL OR submitted_by = $2)",
        request_id,
        submitted_by,
    )


async def search(
    pool: asyncpg.Pool,
    *,
    submitted_by: str | None,
    status: RequestStatus | None,
    overdue: bool | None,
    received_from: datetime | None,
    received_to: datetime | None,
    limit: int,
    offset: int,
    stuck_before: datetime | None = None,
) -> list[asyncpg.Record]:
    clauses: list[str] = ["true"]
    args: list[Any] = []
    if submitted_by is not None:  # a submitter lists its own requests only
        args.append(submitted_by)
        clauses.append(f"submitted_by = ${len(args)}")
    if stuck_before is not None:  # not final and unchanged since then
        args.append(stuck_before)
        clauses.append(f"status IN ('received', 'in_progress') AND updated_at < ${len(args)}")
    if status is not None:
        args.append(status.value)
        clauses.append(f"status = ${len(args)}")
    if overdue is not None:
        clauses.append(("" if overdue else "NOT ") + "(coalesce(completed_at, now()) > deadline)")
    if received_from is not None:
        args.append(received_from)
        clauses.append(f"received_at >= ${len(args)}")
    if received_to is not None:
        args.append(received_to)
        clauses.append(f"received_at < ${len(args)}")
    args += [limit, offset]
    rows: list[asyncpg.Record] = await pool.fetch(
        f"SELECT * FROM requests WHERE {' AND '.join(clauses)} ORDER BY received_at DESC, request_id"
        f" LIMIT ${len(args) - 1} OFFSET ${len(args)}",
        *args,
    )
    return rows
