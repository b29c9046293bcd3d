"""CRM processing paths that must honour a restriction."""

from __future__ import annotations

import asyncpg


async def contacts_for_campaign(conn: asyncpg.Connection) -> list[str]:
    """Contacts a sales or survey campaign may use; restricted contacts are only stored."""
    rows = await conn.fetch(
        "SELECT contact_id FROM contacts WHERE NOT restricted AND email IS NOT NULL ORDER BY contact_id"
    )
    return [r["contact_id"] for r in rows]
