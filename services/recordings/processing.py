"""Normal access to recordings (playback, quality review): restricted recordings are out of it;
their files sit under `restricted/`, outside the tree that playback serves."""

from __future__ import annotations

import asyncpg


async def playable_recordings(conn: asyncpg.Connection) -> list[str]:
    rows = await conn.fetch("SELECT recording_id FROM recordings WHERE NOT restricted ORDER BY recording_id")
    return [r["recording_id"] for r in rows]
