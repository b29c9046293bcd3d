"""What compliance does to a request in flight: extend its deadline once, retry a system."""

from __future__ import annotations

from datetime import datetime

import asyncpg

from services.intake import store
from shared import topics
from shared.contracts import FINAL_STATUSES, RequestStatus
from shared.contracts.events import DeadlineExtended, RetrySystem
from shared.deadlines import add_months
from shared.outbox import enqueue, enqueue_many


class NotFound(LookupError):
    pass


class Refused(ValueError):
    """The operation does not apply to the request as it stands (HTTP 409)."""


async def extend(
    pool: asyncpg.Pool, request_id: str, months: int, reason: str, now: datetime
) -> asyncpg.Record:
    """Art. 12(3): by up to two further months, once, while the request is open; the event
    lets upstream tell the person, with the reason, within the first month."""
    async with pool.acquire() as conn, conn.transaction():
        row = await conn.fetchrow("SELECT * FROM requests WHERE request_id = $1 FOR UPDATE", request_id)
        if row is None:
            raise NotFound(request_id)
        if row["extension_months"] is not None:
            raise Refused("request_id: the deadline was already extended once")
        if RequestStatus(row["status"]).is_final:
            raise Refused("request_id: the request is finished")
        deadline = add_months(row["deadline"], months)
        updated = await conn.fetchrow(
            "UPDATE requests SET deadline = $2, extension_months = $3, extension_reason = $4,"
            " extended_at = $5, updated_at = now() WHERE request_id = $1 RETURNING *",
            request_id,
            deadline,
            months,
            reason,
            now,
        )
        await enqueue(conn, topics.DEADLINES, request_id, extension_of(updated))
    return updated


def extension_of(row: asyncpg.Record) -> DeadlineExtended:
    """The extension as the tracker is told it, with the same id however often it is sent."""
    return DeadlineExtended(
        message_id=store.message_id(row["request_id"], "extended"),
        request_id=row["request_id"],
        months=row["extension_months"],
        deadline=row["deadline"],
        occurred_at=row["extended_at"],
    )


async def resend_extensions(pool: asyncpg.Pool) -> int:
    """After a broker loss: every extension of an open request whose report does not show it
    yet (the tracker may never have read it; a repeat changes nothing there)."""
    async with pool.acquire() as conn, conn.transaction():
        rows = await conn.fetch(
            "SELECT * FROM requests WHERE extension_months IS NOT NULL AND status <> ALL($1::text[])"
            " AND coalesce(jsonb_typeof(report->'extension'), 'null') = 'null'",
            [s.value for s in FINAL_STATUSES],
        )
        if rows:
            await enqueue_many(conn, [(topics.DEADLINES, r["request_id"], extension_of(r)) for r in rows])
    return len(rows)


async def request_retry(pool: asyncpg.Pool, request_id: str, system: str) -> None:
    async with pool.acquire() as conn, conn.transaction():
        row = await conn.fetchrow("SELECT systems, progress FROM requests WHERE request_id = $1", request_id)
        if row is None:
            raise NotFound(request_id)
        if system not in row["systems"]:
            raise NotFound(f"system: {system} is not targeted by this request")
        await enqueue(conn, topics.RETRIES, request_id, RetrySystem(request_id=request_id, system=system))
