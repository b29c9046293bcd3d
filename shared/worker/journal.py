"""The worker's command journal in PostgreSQL: the plan it made and the outcome it reported,
per command id. Stores that live in PostgreSQL keep it in their own database, inside the same
transaction as the change; the others keep it in a small database of the worker's."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any
from uuid import UUID

import asyncpg
from pydantic import TypeAdapter

from shared.worker.ports import Decision, JournalEntry

WORKER_JOURNAL_DDL = """
CREATE TABLE IF NOT EXISTS lethe_command_journal (
    command_id uuid PRIMARY KEY,
    plan jsonb NOT NULL,
    outcome jsonb,
    updated_at timestamptz NOT NULL DEFAULT now()
)"""
_PLAN = TypeAdapter(list[Decision])


class PostgresJournal:
    def __init__(self, conn: asyncpg.Connection) -> None:
        self.conn = conn

    async def load_journal(self, command_id: UUID) -> JournalEntry | None:
        row = await self.conn.fetchrow(
            "SELECT plan, outcome FROM lethe_command_journal WHERE command_id = $1", command_id
        )
        if row is None:
            return None
        return JournalEntry(
            plan=_PLAN.validate_json(row["plan"]),
            outcome=None if row["outcome"] is None else json.loads(row["outcome"]),
        )

    async def save_plan(self, command_id: UUID, plan: Sequence[Decision]) -> list[Decision]:
        inserted = await self.conn.fetchval(
            "INSERT INTO lethe_command_journal (command_id, plan) VALUES ($1, $2::jsonb) "
            "ON CONFLICT (command_id) DO NOTHING RETURNING true",
            command_id,
            _PLAN.dump_json(list(plan)).decode(),
        )
        if inserted:
            return list(plan)
        entry = await self.load_journal(command_id)  # a concurrent delivery planned first
        assert entry is not None and entry.plan is not None
        return entry.plan

    async def save_outcome(self, command_id: UUID, outcome: dict[str, Any]) -> None:
        await self.conn.execute(
            "UPDATE lethe_command_journal SET outcome = $2::jsonb, updated_at = now() WHERE command_id = $1",
            command_id,
            json.dumps(outcome),
        )


@asynccontextmanager
async def transaction(pool: asyncpg.Pool) -> AsyncIterator[asyncpg.Connection]:
    """A connection in a transaction that also serialises deliveries of one command: the
    journal row's insert blocks a concurrent twin until this one commits."""
    async with pool.acquire() as conn, conn.transaction():
        yield conn
