"""Processed-message journal: the consumer side of exactly-once effects.

A handler claims the message id in the same transaction as its change; a redelivered message
finds its id taken and changes nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from uuid import UUID

import asyncpg

JOURNAL_DDL = """
CREATE TABLE IF NOT EXISTS processed_messages (
    message_id uuid PRIMARY KEY,
    processed_at timestamptz NOT NULL DEFAULT now()
)"""


async def claim(conn: asyncpg.Connection, message_id: UUID) -> bool:
    """Take the message for this transaction; False if it was already processed. A concurrent
    claimer of the same id waits on the row lock and then sees it processed."""
    return message_id in await claim_many(conn, [message_id])


async def claim_many(conn: asyncpg.Connection, message_ids: Sequence[UUID]) -> set[UUID]:
    """`claim` for several messages in one round trip; returns the ids that were new."""
    rows = await conn.fetch(
        "INSERT INTO processed_messages (message_id) SELECT unnest($1::uuid[]) "
        "ON CONFLICT (message_id) DO NOTHING RETURNING message_id",
        list(message_ids),
    )
    return {r["message_id"] for r in rows}
