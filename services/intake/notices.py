"""Notices in intake: the tracker's commands to tell a recipient (stored once each, identifiers
still sealed), their delivery, the recipient's acknowledgement and compliance's closing of a
task. Every change is reported to the tracker (NoticeUpdated, through the outbox, in the same
transaction), which keeps the request's status and report."""

from __future__ import annotations

import hashlib
import json
from datetime import datetime
from typing import Any, NamedTuple
from uuid import UUID

import asyncpg

from shared import topics
from shared.contracts.notices import NoticeState, NoticeUpdated, NotifyRecipient
from shared.crypto import IdentifierSeal
from shared.outbox import enqueue
from shared.recipients.register import RegisterFile

SCHEMA = (
    """CREATE TABLE IF NOT EXISTS notices (
        notice_id uuid PRIMARY KEY,
        request_id text NOT NULL,
        recipient_id text NOT NULL,
        channel text NOT NULL,
        request_type text NOT NULL,
        categories jsonb NOT NULL,
        sealed_identifiers text,
        must_acknowledge boolean NOT NULL,
        acknowledge_by timestamptz,
        state text NOT NULL DEFAULT 'pending',
        attempts integer NOT NULL DEFAULT 0,
        next_at timestamptz NOT NULL DEFAULT now(),
        delivered_at timestamptz,
        acknowledged_at timestamptz,
        acknowledged_via text,
        last_error text,
        note text,
        closed_by text,
        created_at timestamptz NOT NULL DEFAULT now())""",
    # The note's digest, audited, and kept to report it again (the note itself is sealed).
    "ALTER TABLE notices ADD COLUMN IF NOT EXISTS note_sha256 text",
    "CREATE INDEX IF NOT EXISTS notices_due ON notices (next_at)"
    " WHERE state = 'pending' AND channel = 'webhook'",
    "CREATE INDEX IF NOT EXISTS notices_request ON notices (request_id)",
    # Identifiers kept for compliance, dropped after a while if never closed (notice_sender.py).
    "CREATE INDEX IF NOT EXISTS notices_kept ON notices (created_at)"
    " WHERE sealed_identifiers IS NOT NULL AND (channel = 'manual' OR state = 'failed')",
    "CREATE INDEX IF NOT EXISTS notices_recipient ON notices (recipient_id, created_at)",
)


class NotAcknowledgeable(Exception):
    """The recipient acknowledges a notice it was never sent (or whose sending was given up)."""


async def report(conn: asyncpg.Connection, row: asyncpg.Record, at: datetime, **extra: Any) -> None:
    """Tell the tracker what became of the notice (in the caller's transaction)."""
    extra.setdefault("closed_by", row["closed_by"])
    extra.setdefault("note_sha256", row["note_sha256"])
    await enqueue(
        conn,
        topics.NOTICE_UPDATES,
        row["request_id"],
        NoticeUpdated(
            request_id=row["request_id"],
            notice_id=row["notice_id"],
            recipient_id=row["recipient_id"],
            state=NoticeState(row["state"]),
            attempts=row["attempts"],
            at=at,
            error=row["last_error"],
            acknowledged_via=row["acknowledged_via"],
            **extra,
        ),
    )


async def take(pool: asyncpg.Pool, register: RegisterFile, command: NotifyRecipient, now: datetime) -> None:
    await take_many(pool, register, [command], now)


async def take_many(
    pool: asyncpg.Pool, register: RegisterFile, commands: list[NotifyRecipient], now: datetime
) -> None:
    """The tracker's commands of one request (a change plans its notices together: under load
    they arrive together), stored in one statement, atomic on its own. Only what has something
    to report in the same transaction takes one: a recipient the register lacks (failed at once)
    or a command sent again."""
    rows = [_row(register, c, now) for c in commands]  # a twin conflicts with its first: stored once
    if all(row.state == "pending" for row in rows):  # the usual case: no transaction
        if again := _not_stored(rows, await _insert(pool, rows)):
            async with pool.acquire() as conn, conn.transaction():
                await _seen_again(conn, again, now)
        return
    async with pool.acquire() as conn, conn.transaction():
        stored = await _insert(conn, rows)
        for row in stored:
            if row["state"] == "failed":
                await report(conn, row, now)
        await _seen_again(conn, _not_stored(rows, stored), now)


class _Notice(NamedTuple):
    """A notice row as _INSERT takes it, column by column."""

    notice_id: UUID
    request_id: str
    recipient_id: str
    channel: str
    request_type: str
    categories: str
    sealed_identifiers: str | None
    must_acknowledge: bool
    acknowledge_by: datetime | None
    state: str
    last_error: str | None
    next_at: datetime


def _row(register: RegisterFile, command: NotifyRecipient, now: datetime) -> _Notice:
    """The command as a notice row. A recipient this intake's register does not know (the two
    services were given different registers) cannot be sent anything: it is failed at once,
    and shows so."""
    recipient = register.get(command.recipient_id)
    channel = recipient.notify.channel if recipient else "webhook"
    state, error = ("pending", None) if recipient else ("failed", "recipient not in intake's register")
    return _Notice(
        command.notice_id,
        command.request_id,
        command.recipient_id,
        channel,
        command.request_type.value,
        json.dumps([c.model_dump(mode="json") for c in command.categories]),
        command.sealed_identifiers,
        command.must_acknowledge,
        command.acknowledge_by,
        state,
        error,
        now,
    )


_INSERT = """INSERT INTO notices (notice_id, request_id, recipient_id, channel, request_type,
    categories, sealed_identifiers, must_acknowledge, acknowledge_by, state, last_error, next_at)
SELECT n.notice_id, n.request_id, n.recipient_id, n.channel, n.request_type, n.categories::jsonb,
    n.sealed_identifiers, n.must_acknowledge, n.acknowledge_by, n.state, n.last_error, n.next_at
FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[],
    $8::boolean[], $9::timestamptz[], $10::text[], $11::text[], $12::timestamptz[])
    AS n(notice_id, request_id, recipient_id, channel, request_type, categories, sealed_identifiers,
    must_acknowledge, acknowledge_by, state, last_error, next_at)
ON CONFLICT DO NOTHING RETURNING *"""


async def _insert(db: asyncpg.Connection | asyncpg.Pool, rows: list[_Notice]) -> list[asyncpg.Record]:
    """Store each notice once; returns those stored now (a redelivered one is not)."""
    columns = [list(column) for column in zip(*rows, strict=True)]
    stored: list[asyncpg.Record] = await db.fetch(_INSERT, *columns)
    return stored


def _not_stored(rows: list[_Notice], stored: list[asyncpg.Record]) -> list[UUID]:
    """The notices stored before (a twin of one stored now is neither)."""
    new = {r["notice_id"] for r in stored}
    return sorted({row.notice_id for row in rows if row.notice_id not in new})


async def _seen_again(conn: asyncpg.Connection, notice_ids: list[UUID], now: datetime) -> None:
    """Commands sent again (the tracker's recovery after a broker loss): the report of what
    became of a notice may be what was lost, so a settled one is reported again. A pending one
    has nothing to report yet: its next try or closing will."""
    for notice_id in notice_ids:
        stored = await conn.fetchrow("SELECT * FROM notices WHERE notice_id = $1", notice_id)
        if stored is not None and stored["state"] != "pending":
            await report_again(conn, stored, now)


async def report_again(conn: asyncpg.Connection, row: asyncpg.Record, now: datetime) -> None:
    """The stored state once more, at the time it was reached (the tracker takes a repeat as
    nothing new, and a lost report as if it had come in time)."""
    at = row["acknowledged_at"] or row["delivered_at"] or now
    await report(conn, row, at)


async def acknowledge(
    pool: asyncpg.Pool, notice_id: UUID, recipient_id: str, token_id: str, now: datetime
) -> asyncpg.Record | None:
    """The recipient's acknowledgement, only of its own webhook notice (None: not found, like
    another's) and only once it was sent: delivered, or tried (a try is counted as it starts,
    and one whose 2xx was lost may have arrived). A notice never sent or given up cannot be
    acknowledged (NotAcknowledgeable): its identifiers stay for compliance. Acknowledging again
    reports it again (the first report may have been lost with a broker) and changes nothing."""
    async with pool.acquire() as conn, conn.transaction():
        row = await conn.fetchrow(
            "UPDATE notices SET state = 'acknowledged', acknowledged_at = $3, acknowledged_via = 'recipient',"
            " delivered_at = coalesce(delivered_at, $3), sealed_identifiers = NULL, last_error = NULL,"
            " closed_by = $4"
            " WHERE notice_id = $1 AND recipient_id = $2 AND channel = 'webhook'"
            " AND (state = 'delivered' OR (state = 'pending' AND attempts > 0)) RETURNING *",
            notice_id,
            recipient_id,
            now,
            token_id,
        )
        if row is not None:
            await report(conn, row, now)
            return row
        stored = await conn.fetchrow(
            "SELECT * FROM notices WHERE notice_id = $1 AND recipient_id = $2 AND channel = 'webhook'"
            " FOR UPDATE",
            notice_id,
            recipient_id,
        )
        if stored is None:
            return None
        if stored["state"] != "acknowledged":
            raise NotAcknowledgeable(
                f"notice: is {stored['state']} with {stored['attempts']} tries;"
                " only a notice that was sent can be acknowledged"
            )
        await report_again(conn, stored, now)
        return stored


async def close(
    pool: asyncpg.Pool, notice_id: UUID, note: str, token_id: str, now: datetime, seal: IdentifierSeal
) -> asyncpg.Record | None:
    """Compliance told the recipient another way (a manual task, a webhook that failed) or
    confirmed its acknowledgement: closed with a note, kept here sealed (its digest is audited).
    Closing one already acknowledged keeps the first evidence and reports it again."""
    digest = hashlib.sha256(note.encode()).hexdigest()
    async with pool.acquire() as conn, conn.transaction():
        row = await conn.fetchrow(
            "UPDATE notices SET state = 'acknowledged', acknowledged_at = $2,"
            " acknowledged_via = 'compliance', note = $3, note_sha256 = $5, closed_by = $4,"
            " sealed_identifiers = NULL, last_error = NULL"
            " WHERE notice_id = $1 AND state <> 'acknowledged' RETURNING *",
            notice_id,
            now,
            seal.seal_text(note),
            token_id,
            digest,
        )
        if row is not None:
            await report(conn, row, now)
            return row
        stored = await conn.fetchrow("SELECT * FROM notices WHERE notice_id = $1 FOR UPDATE", notice_id)
        if stored is not None:
            await report_again(conn, stored, now)
        return stored


async def get(pool: asyncpg.Pool, notice_id: UUID, recipient_id: str | None) -> asyncpg.Record | None:
    return await pool.fetchrow(
        "SELECT * FROM notices WHERE notice_id = $1 AND ($2::text IS NULL OR recipient_id = $2)",
        notice_id,
        recipient_id,
    )


async def search(
    pool: asyncpg.Pool,
    *,
    recipient_id: str | None,
    request_id: str | None,
    state: str | None,
    overdue_at: datetime | None,
    limit: int,
    offset: int,
) -> list[asyncpg.Record]:
    """`overdue_at`: only those whose required acknowledgement is missing past its time."""
    rows: list[asyncpg.Record] = await pool.fetch(
        "SELECT * FROM notices WHERE ($1::text IS NULL OR recipient_id = $1)"
        " AND ($2::text IS NULL OR request_id = $2) AND ($3::text IS NULL OR state = $3)"
        " AND ($4::timestamptz IS NULL OR (state <> 'acknowledged' AND acknowledge_by < $4))"
        " ORDER BY created_at DESC, notice_id LIMIT $5 OFFSET $6",
        recipient_id,
        request_id,
        state,
        overdue_at,
        limit,
        offset,
    )
    return rows


async def attention(pool: asyncpg.Pool, now: datetime, limit: int = 50) -> dict[str, Any]:
    """For the dashboard: how many notices are open manual tasks, webhooks still being tried,
    failed, overdue; and the oldest of those a person must act on (tasks, failures, overdue)."""
    rows = await pool.fetch(
        "SELECT notice_id, request_id, recipient_id, channel, state, attempts, last_error, acknowledge_by,"
        " created_at FROM notices WHERE (state = 'pending' AND channel = 'manual') OR state = 'failed'"
        " OR (state <> 'acknowledged' AND acknowledge_by < $1) ORDER BY created_at LIMIT $2",
        now,
        limit,
    )
    return {"counts": await counts(pool, now), "rows": rows, "now": now}


async def counts(pool: asyncpg.Pool, now: datetime) -> dict[str, int]:
    row = await pool.fetchrow(
        "SELECT count(*) FILTER (WHERE state = 'pending' AND channel = 'manual') AS tasks,"
        " count(*) FILTER (WHERE state = 'pending' AND channel = 'webhook') AS sending,"
        " count(*) FILTER (WHERE state = 'failed') AS failed,"
        " count(*) FILTER (WHERE state <> 'acknowledged' AND acknowledge_by < $1) AS overdue"
        " FROM notices",
        now,
    )
    return dict(row) if row else {}
