"""Intake's reports on the delivery of notices, taken into their sagas (once each)."""

from __future__ import annotations

import asyncpg

from services.tracker.repository import load, save
from shared.contracts.notices import NoticeUpdated
from shared.journal import claim


async def notice_updated(pool: asyncpg.Pool, event: NoticeUpdated) -> bool:
    async with pool.acquire() as conn, conn.transaction():
        if not await claim(conn, event.message_id):
            return False
        loaded = await load(conn, event.request_id)
        if loaded is None:
            return False
        was_final = loaded.saga.status.is_final
        if not loaded.saga.notice_updated(event):
            return False
        await save(conn, loaded, was_final)
        return True
