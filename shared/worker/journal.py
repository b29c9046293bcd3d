"""The worker's command journal in PostgreSQL: the plan it made and the outcome it reported,
per command id. Stores that live in PostgreSQL keep it in their own database, inside the same
transaction as the change; the others keep it in a small database of the worker's."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any
from uuid import UUID

import asyncpg
from pydantic import TypeAdapter

from shared.db import lz4
from shared.worker.ports import Decision, JournalEntry

WORKER_JOURNAL_DDL = """
CREATE TABLE IF NOT EXISTS lethe_command_journal (
    command_id uuid PRIMARY KEY,
    plan jsonb NOT NULL,
    outcome jsonb,
    updated_at timestamptz NOT NULL DEFAULT now()
)"""
WORKER_JOURNAL_COMPRESSION = lz4("lethe_command_journal", "plan", "outcome")
# Waits for any other delivery of the command to finish, then reads its journal row. In a
# VOLATILE function the read takes a snapshot after the lock is granted; in one plain statement
# it would not see what the other delivery committed meanwhile.
JOURNAL_OPEN_DDL = """
CREATE OR REPLACE FUNCTION lethe_journal_open(cmd uuid) RETURNS TABLE (plan jsonb, outcome jsonb)
LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    PERFORM pg_advisory_xact_lock(hashtextextended(cmd::text, 0));
    RETURN QUERY SELECT j.plan, j.outcome FROM lethe_command_journal j WHERE j.command_id = cmd;
END $$"""
PLAN = TypeAdapter(list[Decision])

# Once a command's outcome is written, its plan keeps the decisions (record keys, actions, rules:
# what later rounds and deferred erasures read back) but not whose each record was: the owner's
# and the matching identifiers are the subject's e-mails and phones, in clear, which must not
# outlive the erasure in the very database it erased. Until the outcome, a replay needs them.
_STRIPPED_PLAN = """(SELECT coalesce(jsonb_agg(d #- '{record,owner}' #- '{record,matched}'
    #- '{record,variants}' ORDER BY n), '[]'::jsonb)
    FROM jsonb_array_elements(plan) WITH ORDINALITY AS e(d, n))"""
# Journals written before plans were stripped: stripped at start-up.
JOURNAL_STRIP_DDL = f"""UPDATE lethe_command_journal SET plan = {_STRIPPED_PLAN}
 WHERE outcome IS NOT NULL AND jsonb_path_exists(plan, '$[*].record.owner')"""


def stripped(plan: Sequence[Decision]) -> str:
    """The plan as stored once its outcome is: without whose each record was (as
    _STRIPPED_PLAN leaves it). Left out while serialising, not copied first: a quarter of the cost."""
    return PLAN.dump_json(list(plan), exclude=_IDENTITIES).decode()


_IDENTITIES = {"__all__": {"record": {"owner", "matched", "variants"}}}


class PostgresJournal:
    _read = "SELECT plan, outcome FROM lethe_command_journal WHERE command_id = $1"

    def __init__(self, conn: asyncpg.Connection) -> None:
        self.conn = conn

    async def load_journal(self, command_id: UUID) -> JournalEntry | None:
        row = await self.conn.fetchrow(self._read, command_id)
        if row is None:
            return None
        return JournalEntry(
            plan=PLAN.validate_json(row["plan"]),
            outcome=None if row["outcome"] is None else json.loads(row["outcome"]),
        )

    async def save_plan(self, command_id: UUID, plan: Sequence[Decision]) -> list[Decision]:
        inserted = await self.conn.fetchval(
            "INSERT INTO lethe_command_journal (command_id, plan) VALUES ($1, $2::jsonb) "
            "ON CONFLICT (command_id) DO NOTHING RETURNING true",
            command_id,
            PLAN.dump_json(list(plan)).decode(),
        )
        if inserted:
            return list(plan)
        entry = await self.load_journal(command_id)  # a concurrent delivery planned first
        assert entry is not None and entry.plan is not None
        return entry.plan

    async def save_outcome(self, command_id: UUID, outcome: dict[str, Any]) -> None:
        await self.conn.execute(
            "UPDATE lethe_command_journal SET outcome = $2::jsonb, updated_at = now(),"
            f" plan = {_STRIPPED_PLAN} WHERE command_id = $1",
            command_id,
            json.dumps(outcome),
        )


class TransactionalJournal(PostgresJournal):
    """The journal of a store whose whole command is one transaction with it: the plan is
    durable only together with its effects, so plan and outcome are written once, at the
    end. Deliveries of one command are serialised from the start by a transaction lock on
    its id: a twin waits, then finds the outcome."""

    _read = "SELECT plan, outcome FROM lethe_journal_open($1)"
    _plan: list[Decision] | None = None

    async def save_plan(self, command_id: UUID, plan: Sequence[Decision]) -> list[Decision]:
        self._plan = list(plan)
        return self._plan

    async def save_outcome(self, command_id: UUID, outcome: dict[str, Any]) -> None:
        await self.conn.execute(
            "INSERT INTO lethe_command_journal (command_id, plan, outcome) VALUES ($1, $3::jsonb, $2::jsonb)"
            " ON CONFLICT (command_id) DO UPDATE SET outcome = $2::jsonb, updated_at = now()",
            command_id,
            json.dumps(outcome),
            stripped(self._plan or []),
        )
