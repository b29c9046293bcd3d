"""Several commands in one transaction of a PostgreSQL store: their journal rows read (and
their deliveries serialised) in one statement at the start, written in one at the end, one
BEGIN and one COMMIT. A command alone costs seven round trips; in a batch, three and its share
of four. Nothing is published before the commit: the runtime reports the outcomes after it,
and a batch that fails anywhere is rolled back whole and its commands run one by one
(shared/worker/batching.py)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any
from uuid import UUID

import asyncpg

from shared.db import BATCH_LOCK_WAIT_MS
from shared.worker.journal import PLAN, stripped
from shared.worker.ports import Decision, JournalEntry

if TYPE_CHECKING:
    from shared.worker.pgstore import PostgresStoreAdapter, PostgresStoreSession

# First, how long any lock of the batch's transaction may be waited for (shared.db's
# BATCH_LOCK_WAIT_MS: one command stuck must not hold up the others, nor keep their rows
# locked, for longer; past it the batch fails and its commands run one by one, where only the
# stuck one waits), set here and not in a statement of its own: a round trip less. Then the
# transaction locks of every command of the batch, in one order whoever takes them (two
# batches sharing commands cannot deadlock on them), then their journal rows, read after the
# locks were granted (a VOLATILE function's query takes its snapshot then).
JOURNAL_OPEN_MANY_DDL = """
CREATE OR REPLACE FUNCTION lethe_journal_open_many(cmds uuid[], wait_ms integer)
RETURNS TABLE (command_id uuid, plan jsonb, outcome jsonb)
LANGUAGE plpgsql VOLATILE AS $$
DECLARE k bigint;
BEGIN
    PERFORM set_config('lock_timeout', wait_ms::text, true);
    FOR k IN SELECT DISTINCT hashtextextended(c::text, 0) FROM unnest(cmds) AS c ORDER BY 1 LOOP
        PERFORM pg_advisory_xact_lock(k);
    END LOOP;
    RETURN QUERY SELECT j.command_id, j.plan, j.outcome FROM lethe_command_journal j
        WHERE j.command_id = ANY(cmds);
END $$"""
_OPEN = "SELECT command_id, plan, outcome FROM lethe_journal_open_many($1::uuid[], $2)"
_WRITE = """
INSERT INTO lethe_command_journal (command_id, plan, outcome)
SELECT c, p::jsonb, o::jsonb FROM unnest($1::uuid[], $2::text[], $3::text[]) AS t(c, p, o)
ON CONFLICT (command_id) DO UPDATE SET outcome = excluded.outcome, updated_at = now()"""


class CommandBatch:
    """The journal of the batch's commands, as read at its start and as written since; a
    command not of the batch (an earlier round's, a deferred erasure's) is read from the
    database as usual. `session()` gives each command a session of its own (a store's may keep
    state per command) on the batch's connection and transaction."""

    def __init__(self, adapter: PostgresStoreAdapter, conn: asyncpg.Connection) -> None:
        self.adapter = adapter
        self.conn = conn
        self.journal: dict[UUID, JournalEntry | None] = {}
        self.written: dict[UUID, tuple[str, str]] = {}  # command id -> (plan, outcome) to insert

    async def open(self, command_ids: Sequence[UUID]) -> None:
        self.journal = dict.fromkeys(command_ids)
        for row in await self.conn.fetch(_OPEN, list(self.journal), BATCH_LOCK_WAIT_MS):
            self.journal[row["command_id"]] = JournalEntry(
                plan=PLAN.validate_json(row["plan"]),
                outcome=None if row["outcome"] is None else json.loads(row["outcome"]),
            )

    def known(self, command_id: UUID) -> bool:
        return command_id in self.journal

    def record(self, command_id: UUID, plan: Sequence[Decision], outcome: dict[str, Any]) -> None:
        """A command's plan and outcome, as its own transaction would have written them; read
        back by a later delivery of it in the same batch."""
        self.journal[command_id] = JournalEntry(plan=list(plan), outcome=outcome)
        self.written[command_id] = (stripped(plan), json.dumps(outcome))

    async def flush(self) -> None:
        if self.written:
            ids = list(self.written)
            await self.conn.execute(
                _WRITE, ids, [self.written[i][0] for i in ids], [self.written[i][1] for i in ids]
            )
            self.written.clear()

    @asynccontextmanager
    async def session(self) -> AsyncIterator[PostgresStoreSession]:
        yield self.adapter.open_session(self.conn, self)
