"""Processed-message journal: the consumer side of exactly-once effects.

A handler records the message id in the same transaction as its change; a redelivered
message finds its id and returns the result it produced the first time.
"""

from __future__ import annotations

import json
from typing import Any
from uuid import UUID

import asyncpg

JOURNAL_DDL = """
CREATE TABLE IF NOT EXISTS processed_messages (
    message_id uuid PRIMARY KEY,
    processed_at timestamptz NOT NULL DEFAULT now(),
    result jsonb
)"""


async def previous_result(conn: asyncpg.Connection, message_id: UUID) -> Any | None:
    """The stored result, or None if the message is new. Locks nothing: callers that need
    mutual exclusion hold `claim` first."""
    raw = await conn.fetchval("SELECT result FROM processed_messages WHERE message_id = $1", message_id)
    return None if raw is None else json.loads(raw)


async def claim(conn: asyncpg.Connection, message_id: UUID) -> bool:
    """Take the message for this transaction; False if it was already processed. A concurrent
    claimer of the same id waits on the row lock and then sees it processed."""
    inserted = await conn.fetchval(
        "INSERT INTO processed_messages (message_id) VALUES ($1) "
        "ON CONFLICT (message_id) DO NOTHING RETURNING true",
        message_id,
    )
    return bool(inserted)


async def record_result(conn: asyncpg.Connection, message_id: UUID, result: Any) -> None:
    await conn.execute(
        "UPDATE processed_messages SET result = $2::jsonb WHERE message_id = $1",
        message_id,
        json.dumps(result),
    )
