"""The tracker's snapshots of a request, folded into intake's read model (the request row,
its callback, the reviews a person decides on)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg
from aiokafka import ConsumerRecord

from services.intake import reviews, store
from shared.codec import decode
from shared.contracts import RequestStatusChanged
from shared.delivery import GroupHandler


async def fold_status(pool: asyncpg.Pool, record: ConsumerRecord[bytes, bytes]) -> None:
    await fold_statuses(pool, [record])


async def fold_statuses(pool: asyncpg.Pool, records: list[ConsumerRecord[bytes, bytes]]) -> None:
    """Snapshots of one request: only the newest matters (each carries the whole state). One
    older than what intake holds (read again after a broker loss) changes nothing, reviews
    included: their states would go back."""
    event = newest(records)
    if not event.report or not event.report.reviews:
        await store.apply_status(pool, event)  # one statement, atomic on its own: no BEGIN, COMMIT
        return
    await _with_reviews(pool, event)


@asynccontextmanager
async def folding_together(pool: asyncpg.Pool) -> AsyncIterator[GroupHandler]:
    """Several requests' snapshots (shared/delivery.py `together`): those without reviews are
    folded in one statement once all are read, each request's with reviews in a transaction of
    its own. Folding is idempotent (a snapshot no newer than what intake holds changes
    nothing), so a batch that fails half-way is simply folded again request by request."""
    plain: list[RequestStatusChanged] = []

    async def fold(records: list[ConsumerRecord[bytes, bytes]]) -> None:
        event = newest(records)
        if event.report and event.report.reviews:
            await _with_reviews(pool, event)
        else:
            plain.append(event)

    yield fold
    await store.apply_statuses(pool, plain)


def newest(records: list[ConsumerRecord[bytes, bytes]]) -> RequestStatusChanged:
    return max((decode(r.value, RequestStatusChanged) for r in records), key=lambda e: e.version)


async def _with_reviews(pool: asyncpg.Pool, event: RequestStatusChanged) -> None:
    async with pool.acquire() as conn, conn.transaction():
        if await store.apply_status(conn, event):
            await reviews.fold(conn, event)
