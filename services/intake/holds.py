"""Litigation and regulatory holds: placed and released by Legal, never forgotten (a release
is recorded on the row, which stays). Each change goes to the holds topic through the outbox.
The subject's identifiers are dropped a day after a hold ended (released or expired): they
served only to find what it protects, and the day covers a worker mid-batch or a clock apart."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from uuid import UUID, uuid4

import asyncpg

from shared import topics
from shared.contracts.holds import SNAPSHOT_KEY, HoldsAnnounced, HoldUpdated
from shared.outbox import enqueue, enqueue_many

SCHEMA = (
    """CREATE TABLE IF NOT EXISTS holds (
        hold_id uuid PRIMARY KEY,
        version integer NOT NULL,
        case_reference text NOT NULL,
        reason text NOT NULL,
        subject_ref text NOT NULL,
        sealed_identifiers text NOT NULL,
        systems text[],
        categories text[],
        placed_at timestamptz NOT NULL,
        expires_at timestamptz,
        released_at timestamptz)""",
    "ALTER TABLE holds ALTER COLUMN sealed_identifiers DROP NOT NULL",
)
FORGET_AFTER = timedelta(days=1)


@dataclass(frozen=True)
class NewHold:
    case_reference: str
    reason: str
    subject_ref: str
    sealed_identifiers: str | None
    systems: list[str] | None
    categories: list[str] | None
    placed_at: datetime
    expires_at: datetime | None


def _event(row: asyncpg.Record) -> HoldUpdated:
    return HoldUpdated(
        hold_id=row["hold_id"],
        version=row["version"],
        case_reference=row["case_reference"],
        subject_ref=row["subject_ref"],
        sealed_identifiers=row["sealed_identifiers"],
        systems=row["systems"],
        categories=row["categories"],
        placed_at=row["placed_at"],
        expires_at=row["expires_at"],
        released_at=row["released_at"],
    )


async def place(pool: asyncpg.Pool, new: NewHold) -> tuple[asyncpg.Record, int]:
    """Returns the hold and the outbox row announcing it."""
    async with pool.acquire() as conn, conn.transaction():
        row = await conn.fetchrow(
            "INSERT INTO holds (hold_id, version, case_reference, reason, subject_ref, sealed_identifiers,"
            " systems, categories, placed_at, expires_at) VALUES ($1,1,$2,$3,$4,$5,$6,$7,$8,$9) RETURNING *",
            uuid4(),
            new.case_reference,
            new.reason,
            new.subject_ref,
            new.sealed_identifiers,
            new.systems,
            new.categories,
            new.placed_at,
            new.expires_at,
        )
        outbox_id = await enqueue(conn, topics.HOLDS, str(row["hold_id"]), _event(row))
    return row, outbox_id


async def release(
    pool: asyncpg.Pool, hold_id: UUID, now: datetime
) -> tuple[asyncpg.Record | None, int | None]:
    """Idempotent: releasing a released hold changes nothing and announces nothing."""
    async with pool.acquire() as conn, conn.transaction():
        row = await conn.fetchrow(
            "UPDATE holds SET released_at = $2, version = version + 1"
            " WHERE hold_id = $1 AND released_at IS NULL RETURNING *",
            hold_id,
            now,
        )
        if row is None:
            return await conn.fetchrow("SELECT * FROM holds WHERE hold_id = $1", hold_id), None
        return row, await enqueue(conn, topics.HOLDS, str(hold_id), _event(row))


async def listing(
    pool: asyncpg.Pool, active_only: bool, now: datetime, limit: int = 100, offset: int = 0
) -> list[asyncpg.Record]:
    """A page of holds, newest first (the id breaks ties, so pages neither repeat nor skip)."""
    where = (
        "released_at IS NULL AND (expires_at IS NULL OR expires_at > $1)"
        if active_only
        else "$1::timestamptz IS NOT NULL"
    )
    rows: list[asyncpg.Record] = await pool.fetch(
        f"SELECT * FROM holds WHERE {where} ORDER BY placed_at DESC, hold_id LIMIT $2 OFFSET $3",
        now,
        limit,
        offset,
    )
    return rows


async def announce_all(pool: asyncpg.Pool) -> int:
    """Every hold at its latest version, then the marker that lists them, through the outbox in
    one transaction: what a reader needs to confirm it has read every hold (see
    shared/worker/holds.py). Returns the marker's outbox row."""
    async with pool.acquire() as conn, conn.transaction(isolation="repeatable_read"):
        rows = await conn.fetch("SELECT * FROM holds ORDER BY placed_at, hold_id")
        marker = HoldsAnnounced(versions={r["hold_id"]: r["version"] for r in rows})
        ids = await enqueue_many(
            conn,
            [(topics.HOLDS, str(r["hold_id"]), _event(r)) for r in rows]
            + [(topics.HOLDS, SNAPSHOT_KEY, marker)],
        )
    return ids[-1]


async def versions(pool: asyncpg.Pool) -> dict[UUID, int]:
    """Each hold's latest version: what the holds topic must hold."""
    return {r["hold_id"]: r["version"] for r in await pool.fetch("SELECT hold_id, version FROM holds")}


def identifiers_needed(released_at: datetime | None, expires_at: datetime | None, now: datetime) -> bool:
    ends = [t for t in (released_at, expires_at) if t is not None]
    return not ends or now < min(ends) + FORGET_AFTER


async def forget_identifiers(pool: asyncpg.Pool, now: datetime) -> int:
    """Drop the identifiers of holds over for a day, and announce that version (the compacted
    topic then keeps no copy of them either). Returns how many."""
    async with pool.acquire() as conn, conn.transaction():
        rows = await conn.fetch(
            "SELECT hold_id, released_at, expires_at FROM holds WHERE sealed_identifiers IS NOT NULL"
            " AND (released_at IS NOT NULL OR expires_at IS NOT NULL) FOR UPDATE SKIP LOCKED"
        )
        over = [r["hold_id"] for r in rows if not identifiers_needed(r["released_at"], r["expires_at"], now)]
        if not over:
            return 0
        updated = await conn.fetch(
            "UPDATE holds SET sealed_identifiers = NULL, version = version + 1"
            " WHERE hold_id = ANY($1::uuid[]) RETURNING *",
            over,
        )
        await enqueue_many(conn, [(topics.HOLDS, str(r["hold_id"]), _event(r)) for r in updated])
    return len(updated)
