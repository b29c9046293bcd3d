"""The tracker's snapshots of a request, folded into intake's read model (the request row,
its callback, the reviews a person decides on)."""

from __future__ import annotations

import asyncpg
from aiokafka import ConsumerRecord

from services.intake import reviews, store
from shared.codec import decode
from shared.contracts import RequestStatusChanged


async def fold_status(pool: asyncpg.Pool, record: ConsumerRecord[bytes, bytes]) -> None:
    await fold_statuses(pool, [record])


async def fold_statuses(pool: asyncpg.Pool, records: list[ConsumerRecord[bytes, bytes]]) -> None:
    """Snapshots of one request: only the newest matters (each carries the whole state). One
    older than what intake holds (read again after a broker loss) changes nothing, reviews
    included: their states would go back."""
    event = max((decode(r.value, RequestStatusChanged) for r in records), key=lambda e: e.version)
    if event.report is None or not event.report.reviews:
        await store.apply_status(pool, event)  # one statement, atomic on its own: no BEGIN, COMMIT
        return
    async with pool.acquire() as conn, conn.transaction():
        if await store.apply_status(conn, event):
            await reviews.fold(conn, event)
