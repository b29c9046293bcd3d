"""Billing's own processing paths that must honour a restriction (Art. 18: restricted data is
only stored). Every query that feeds processing goes through here."""

from __future__ import annotations

import asyncpg


async def accounts_for_dunning(conn: asyncpg.Connection) -> list[str]:
    """Active accounts to chase for payment; restricted accounts are left alone."""
    rows = await conn.fetch(
        "SELECT account_id FROM accounts WHERE status = 'active' AND NOT restricted ORDER BY account_id"
    )
    return [r["account_id"] for r in rows]
