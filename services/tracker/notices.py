"""Intake's reports on the delivery of notices, taken into their sagas (once each)."""

from __future__ import annotations

from services.tracker.repository import claim_and_load
from services.tracker.saving import save
from shared.contracts.notices import NoticeUpdated
from shared.db import Db, transaction


async def notice_updated(db: Db, event: NoticeUpdated) -> bool:
    async with transaction(db) as conn:
        new_ids, loaded = await claim_and_load(conn, [event.message_id], event.request_id)
        if not new_ids or loaded is None:
            return False
        was_final = loaded.saga.status.is_final
        if not loaded.saga.notice_updated(event):
            return False
        await save(conn, loaded, was_final)
        return True
