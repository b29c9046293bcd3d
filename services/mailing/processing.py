"""The mailing send path: who receives the next send to a list."""

from __future__ import annotations

import asyncpg


async def recipients(conn: asyncpg.Connection, list_id: str) -> list[str]:
    """Restricted subscriptions are suspended: they get nothing until the restriction is lifted."""
    rows = await conn.fetch(
        "SELECT subscriber_id FROM subscribers WHERE list_id = $1 AND status = 'active' AND NOT restricted"
        " ORDER BY subscriber_id",
        list_id,
    )
    return [r["subscriber_id"] for r in rows]
