"""Building blocks for a system whose store is a PostgreSQL database: the transaction, the
journal in the same database, and the generic erase / anonymise / restrict statements per
category table. A PostgreSQL-backed adapter only declares its tables and how to find the
subject's rows."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, ClassVar, Self
from uuid import UUID

import asyncpg

from shared.contracts.outcomes import Action
from shared.db import apply_schema, create_pool, ensure_database
from shared.identity import Identities
from shared.keys import email_prefilter, id_prefilter, phone_prefilter
from shared.settings import DatabaseSettings
from shared.worker.journal import (
    JOURNAL_OPEN_DDL,
    JOURNAL_STRIP_DDL,
    WORKER_JOURNAL_COMPRESSION,
    WORKER_JOURNAL_DDL,
    TransactionalJournal,
)
from shared.worker.matching import match, unread_match
from shared.worker.pgbatch import JOURNAL_OPEN_MANY_DDL, CommandBatch
from shared.worker.ports import Decision, JournalEntry, Record

JOURNAL_DDL = (
    WORKER_JOURNAL_DDL,
    WORKER_JOURNAL_COMPRESSION,
    JOURNAL_OPEN_DDL,
    JOURNAL_OPEN_MANY_DDL,
    JOURNAL_STRIP_DDL,
)


@dataclass(frozen=True)
class CategoryTable:
    """Where one data category lives. `personal_columns` are nulled by anonymisation (less
    any the rule says to keep); the row stays for the purpose that retains it. `terms` are the
    dates and facts its records carry, which a retention rule may count from or keep while."""

    category: str
    table: str
    key: str
    personal_columns: tuple[str, ...] = ()
    terms: tuple[str, ...] = ()


@dataclass(frozen=True)
class Candidate:
    """A top-level row a store's coarse keys let through: the record (its `owner` filled in)
    and every identifier on it a search may match (a recording's caller and callee too)."""

    record: Record
    matchable: Identities


class PostgresStoreSession(TransactionalJournal):
    """One command's work on the store: in a transaction of its own, or in a batch's
    (`batch`: its journal read and written with the batch's other commands)."""

    def __init__(
        self, conn: asyncpg.Connection, adapter: PostgresStoreAdapter, batch: CommandBatch | None = None
    ) -> None:
        super().__init__(conn)
        self.adapter = adapter
        self.batch = batch

    async def load_journal(self, command_id: UUID) -> JournalEntry | None:
        if self.batch is not None and self.batch.known(command_id):
            return self.batch.journal[command_id]
        return await super().load_journal(command_id)

    async def save_outcome(self, command_id: UUID, outcome: dict[str, Any]) -> None:
        if self.batch is None:
            await super().save_outcome(command_id, outcome)
        else:
            self.batch.record(command_id, self._plan or [], outcome)

    async def find(self, identities: Identities) -> list[Record]:
        return await self.adapter.find_records(self.conn, identities)

    async def apply(self, decisions: Sequence[Decision]) -> None:
        await self.adapter.apply_decisions(self.conn, decisions)

    async def unconfirmed(self, decisions: Sequence[Decision]) -> list[tuple[str, str]]:
        """Nothing outside the database by default: the handler re-reads the rows themselves.
        An adapter whose rows index something else (files) gives a session that looks."""
        return []

    async def existing(self, keys: Sequence[tuple[str, str]]) -> set[tuple[str, str]]:
        by_category: dict[str, list[str]] = defaultdict(list)
        for category, record_id in keys:
            by_category[category].append(record_id)
        tables = {t.category: t for t in self.adapter.tables}
        found: set[tuple[str, str]] = set()
        for category, ids in by_category.items():
            table = tables[category]
            key = f"{table.key}::text"
            rows = await self.conn.fetch(
                f"SELECT {key} AS id FROM {table.table} WHERE {key} = ANY($1::text[])", ids
            )
            found.update((category, r["id"]) for r in rows)
        return found


class PostgresStoreAdapter:
    system: str
    tables: tuple[CategoryTable, ...]
    schema: tuple[str, ...]
    # Whether a fetch's commands may share one transaction (`batch`). Not for a store that
    # changes something outside the database before the commit (files): a batch undone by a
    # neighbour's failure would leave that changed while the command is planned afresh.
    batching: ClassVar[bool] = True

    def __init__(self, database_url: str, pool_max: int = 10) -> None:
        self.database_url = database_url
        self.pool_max = pool_max
        self._pool: asyncpg.Pool | None = None

    @classmethod
    def from_env(cls) -> Self:
        settings = DatabaseSettings()
        return cls(settings.database_url, settings.db_pool_max)

    @property
    def categories(self) -> tuple[str, ...]:
        return tuple(t.category for t in self.tables)

    @property
    def personal_fields(self) -> dict[str, tuple[str, ...]]:
        return {t.category: t.personal_columns for t in self.tables}

    @property
    def record_terms(self) -> dict[str, tuple[str, ...]]:
        return {t.category: t.terms for t in self.tables}

    @classmethod
    def ddl(cls) -> tuple[str, ...]:
        """What `start` runs on the store's database, in order (`lethe store-schema` prints it)."""
        return (*cls.schema, *JOURNAL_DDL)

    @property
    def pool(self) -> asyncpg.Pool:
        if self._pool is None:
            raise RuntimeError(f"{self.system} adapter used before start()")
        return self._pool

    async def start(self) -> None:
        await ensure_database(self.database_url)
        self._pool = await create_pool(self.database_url, self.pool_max)
        await apply_schema(self._pool, *self.ddl())

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    @asynccontextmanager
    async def session(self) -> AsyncIterator[PostgresStoreSession]:
        async with self.pool.acquire() as conn, conn.transaction():
            yield self.open_session(conn)

    @asynccontextmanager
    async def batch(self, command_ids: Sequence[UUID]) -> AsyncIterator[CommandBatch]:
        """One transaction for these commands (shared/worker/pgbatch.py): committed with
        their journal rows if the block completes, rolled back whole if it raises."""
        async with self.pool.acquire() as conn, conn.transaction():
            batch = CommandBatch(self, conn)
            await batch.open(command_ids)
            yield batch
            await batch.flush()

    def open_session(
        self, conn: asyncpg.Connection, batch: CommandBatch | None = None
    ) -> PostgresStoreSession:
        """The session of one command; an adapter overrides it to carry more state."""
        return PostgresStoreSession(conn, self, batch)

    async def find_records(self, conn: asyncpg.Connection, identities: Identities) -> list[Record]:
        """One statement (`find_sql`) gives the store's candidates by coarse keys (rows with no
        `parent`) and the rows under them; a candidate is kept where a normalised identifier
        matches (shared/identity.py: one normalisation, in Python), or where a value of a kind
        searched for cannot be read (`unread_match`), with what is under it."""
        keys = {
            "customer_ids": sorted({id_prefilter(c) for c in identities.customer_ids}),
            "email_keys": sorted({email_prefilter(e) for e in identities.emails}),
            "phone_keys": sorted({phone_prefilter(p) for p in identities.phones}),
        }
        rows = await conn.fetch(self.find_sql, *(keys[name] for name in self.find_params))
        heads: dict[str, Record] = {}
        for row in rows:
            if row["parent"] is None:
                candidate = self.head(row)
                record = candidate.record
                matched, variants = match(candidate.matchable, identities)
                texts = tuple(v for v in row.values() if isinstance(v, str)) if record.unreadable else ()
                if matched or variants or unread_match(record.unreadable, texts, identities):
                    heads[record.record_id] = record.model_copy(
                        update={
                            "matched": matched,
                            "variants": variants,
                            "searchable": candidate.matchable,
                            "unread_texts": texts,
                        }
                    )
        children = [
            self.child(row).model_copy(
                update={
                    "group": (head := heads[row["parent"]]).key,
                    "owner": head.owner,
                    "matched": head.matched,
                    "variants": head.variants,
                    "unreadable": head.unreadable,
                    "searchable": head.searchable,
                    "unread_texts": head.unread_texts,
                }
            )
            for row in rows
            if row["parent"] is not None and row["parent"] in heads
        ]
        return list(heads.values()) + children

    # What an adapter declares: the statement, the coarse keys it takes (in order, as $1, $2…),
    # and how a row becomes a candidate or a record under one.
    find_sql: str
    find_params: tuple[str, ...] = ("customer_ids", "email_keys", "phone_keys")

    def head(self, row: asyncpg.Record) -> Candidate:
        raise NotImplementedError

    def child(self, row: asyncpg.Record) -> Record:
        raise NotImplementedError

    async def apply_decisions(self, conn: asyncpg.Connection, decisions: Sequence[Decision]) -> None:
        """Every change of the plan in one statement (data-modifying CTEs see one snapshot and
        each runs once): a round trip per command, not one per table and action. Foreign keys
        are checked at the end of the statement, so children and parents go together."""
        tables = {t.category: t for t in self.tables}
        grouped: dict[tuple[str, Action, tuple[str, ...]], list[str]] = defaultdict(list)
        for d in decisions:
            cleared: tuple[str, ...] = ()
            if d.action is Action.ANONYMISED:
                personal = tables[d.record.category].personal_columns
                cleared = tuple(c for c in personal if c not in d.keep_fields)
            elif d.action is Action.RETAINED:
                cleared = d.strip_fields
            grouped[(d.record.category, d.action, cleared)].append(d.record.record_id)
        statements: list[str] = []
        args: list[list[str]] = []
        for (category, action, cleared), ids in grouped.items():
            statement = change_statement(tables[category], action, cleared, len(args) + 1)
            if statement is not None:
                statements.append(statement)
                args.append(ids)
        if len(statements) == 1:
            await conn.execute(statements[0], *args)
        elif statements:
            ctes = ", ".join(f"change_{n} AS ({sql})" for n, sql in enumerate(statements))
            await conn.execute(f"WITH {ctes} SELECT 1", *args)


def change_statement(
    table: CategoryTable, action: Action, cleared: tuple[str, ...], param: int
) -> str | None:
    """The statement carrying out one action on the rows whose keys are in parameter `param`.
    Idempotent by construction: deleting a deleted row, clearing a cleared field or setting a
    set flag is a no-op. Retained records lose the fields their rule strips."""
    where = f"{table.key}::text = ANY(${param}::text[])"
    if action is Action.ERASED:
        return f"DELETE FROM {table.table} WHERE {where}"
    if action in (Action.ANONYMISED, Action.RETAINED):
        if not cleared:
            return None
        return f"UPDATE {table.table} SET {', '.join(f'{c} = NULL' for c in cleared)} WHERE {where}"
    if action in (Action.RESTRICTED, Action.UNRESTRICTED):
        return f"UPDATE {table.table} SET restricted = {action is Action.RESTRICTED} WHERE {where}"
    return None  # redirected: the record stays as it is, the controller is told


async def open_store(database_url: str, *ddl: str) -> asyncpg.Pool:
    """For seeders and tests: the store's database, created with its schema if new."""
    await ensure_database(database_url)
    pool = await create_pool(database_url, 4)
    await apply_schema(pool, *ddl, *JOURNAL_DDL)
    return pool
