"""PostgreSQL plumbing shared by every service that owns a database."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TypeAlias
from urllib.parse import urlsplit, urlunsplit

import asyncpg

log = logging.getLogger(__name__)
# Where a handler does its work: a pool (a transaction of its own) or a connection already in
# a transaction (a batch's, shared by several messages' handlers: shared/together.py).
Db: TypeAlias = asyncpg.Pool | asyncpg.Connection


# How long a transaction shared by several messages' work waits for any lock: one message
# stuck behind a lock (a row the store's own application holds, a twin delivery) must hold up
# the others no longer; past it the batch fails and its messages are handled one at a time.
BATCH_LOCK_WAIT_MS = 1000


@asynccontextmanager
async def transaction(db: Db) -> AsyncIterator[asyncpg.Connection]:
    """A transaction of its own from a pool; on a connection, the transaction it is in, which
    its owner commits or rolls back (a nested one would cost a SAVEPOINT's round trips)."""
    if isinstance(db, asyncpg.Connection):
        if not db.is_in_transaction():
            raise RuntimeError("a shared connection must be in its owner's transaction")
        yield db
        return
    async with db.acquire() as conn, conn.transaction():
        yield conn


def _with_database(dsn: str, database: str) -> str:
    parts = urlsplit(dsn)
    return urlunsplit(parts._replace(path="/" + database))


def database_name(dsn: str) -> str:
    name = urlsplit(dsn).path.lstrip("/")
    if not name:
        raise ValueError("LETHE_DATABASE_URL: names no database")
    return name


async def ensure_database(dsn: str) -> None:
    """Create this service's database if it does not exist yet (dev and test convenience;
    production databases are provisioned, and then this is a no-op)."""
    name = database_name(dsn)
    conn = await connect_with_retry(_with_database(dsn, "postgres"))
    try:
        exists = await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name)
        if not exists:
            try:
                await conn.execute(f'CREATE DATABASE "{name}"')
            except asyncpg.DuplicateDatabaseError:
                pass  # another instance won the race
    finally:
        await conn.close()


async def connect_with_retry(dsn: str, attempts: int = 60) -> asyncpg.Connection:
    delay = 0.2
    for attempt in range(attempts):
        try:
            return await asyncpg.connect(dsn)
        except (OSError, asyncpg.CannotConnectNowError, asyncpg.TooManyConnectionsError):
            if attempt == attempts - 1:
                raise
            log.warning("postgres not reachable, retrying", extra={"delay_s": delay})
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)
    raise AssertionError("unreachable")


async def _keep_session(conn: asyncpg.Connection) -> None:
    """Lethe's connections leave no session state behind (no SET, no session advisory locks;
    the one LISTEN is removed before release), so the pool skips asyncpg's default reset
    query, which costs a round trip on every release. asyncpg still rolls back an open
    transaction and drops listener callbacks."""


async def create_pool(dsn: str, max_size: int = 10) -> asyncpg.Pool:
    probe = await connect_with_retry(dsn)  # waits for the server; the pool itself does not retry
    await probe.close()
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=max_size, reset=_keep_session)
    assert pool is not None
    return pool


def lz4(table: str, *columns: str) -> str:
    """DDL: `columns` of Lethe's own `table` compressed with lz4 rather than pglz, where the
    server was built with it (PostgreSQL 14 and later) and they were left at the server's
    default (a column an operator set to pglz stays so). For the large values Lethe writes at
    each change: status snapshots in the outbox, reports, audit trails, outcomes, journals.
    Storing a 15 KB snapshot cost the server 220 µs of CPU with pglz and 133 with lz4
    (docs/performance.md, twelfth part); readers see no difference, and values written before
    keep theirs. Per column, not per session: a startup parameter would be refused by a pooler
    such as PgBouncer."""
    names = ", ".join(f"'{c}'" for c in columns)
    return f"""DO $$
DECLARE col text;
BEGIN
    IF NOT 'lz4' = ANY (coalesce(
            (SELECT enumvals FROM pg_settings WHERE name = 'default_toast_compression'), '{{}}')) THEN
        RETURN;
    END IF;
    FOREACH col IN ARRAY ARRAY[{names}] LOOP
        IF (SELECT attcompression FROM pg_attribute
            WHERE attrelid = '{table}'::regclass AND attname = col) = '' THEN
            EXECUTE format('ALTER TABLE %I ALTER COLUMN %I SET COMPRESSION lz4', '{table}', col);
        END IF;
    END LOOP;
END $$"""


async def apply_schema(pool: asyncpg.Pool, *ddl: str) -> None:
    """Idempotent DDL, serialised by an advisory lock so that instances starting together do
    not race on CREATE ... IF NOT EXISTS (which is not atomic in PostgreSQL)."""
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(7470656)")
        for statement in ddl:
            await conn.execute(statement)
