"""Each PostgreSQL store finds a person's candidates through its key indexes, not by reading
every row: a key in the search that differs from its index's expression by a character still
finds the right rows, only by a scan of the whole table (10,000 contacts and more in a real
store, at every command), which no other test would notice. And the indexes an operator builds
beforehand from `lethe store-schema` are the ones the worker would build."""

from __future__ import annotations

from pathlib import Path

import asyncpg
import pytest
from typer.testing import CliRunner

from cli.main import app
from services.billing.store import BillingAdapter
from services.crm.store import CrmAdapter
from services.mailing.store import MailingAdapter
from services.recordings.store import RecordingsAdapter
from shared.db import ensure_database
from shared.keys import email_prefilter, id_prefilter, phone_prefilter
from shared.worker.pgstore import PostgresStoreAdapter
from tests.conftest import drop_database

ROWS = 5000
# The stranger rows: other ids, addresses and numbers (one, two or three in a field).
FILL = {
    "accounts": """INSERT INTO accounts
            (account_id, customer_id, holder_name, email, phone, status, opened_on)
        SELECT 'A-' || n, 'C-' || n, 'X', 'x' || n || '@example.org',
               '07700 ' || lpad(n::text, 6, '0') || repeat(', 020 7946 ' || lpad(n::text, 4, '0'), n % 3),
               'active', current_date FROM generate_series(1, $1) AS n""",
    "contacts": """INSERT INTO contacts (contact_id, customer_id, full_name, email, phone, created_on)
        SELECT 'CT-' || n, 'C-' || n, 'X', 'x' || n || '@example.org',
               '07700 ' || lpad(n::text, 6, '0') || repeat(' / 020 7946 ' || lpad(n::text, 4, '0'), n % 3),
               current_date FROM generate_series(1, $1) AS n""",
    "subscribers": """INSERT INTO subscribers (subscriber_id, list_id, email, subscribed_at)
        SELECT 'S-' || n, (SELECT min(list_id) FROM lists), 'x' || n || '@example.org', now()
          FROM generate_series(1, $1) AS n""",
    "recordings": """INSERT INTO recordings (recording_id, customer_id, caller, callee, recorded_at,
            duration_s, path)
        SELECT 'R-' || n, 'C-' || n, '07700 ' || lpad(n::text, 6, '0'), '020 7946 0000', now(), 60,
               'r/' || n FROM generate_series(1, $1) AS n""",
}


def adapters(url: str, tmp: Path) -> list[tuple[PostgresStoreAdapter, str]]:
    return [
        (BillingAdapter(url), "accounts"),
        (CrmAdapter(url), "contacts"),
        (MailingAdapter(url, suppression_key="k"), "subscribers"),
        (RecordingsAdapter(url, tmp), "recordings"),
    ]


@pytest.mark.parametrize("store", range(4))
async def test_a_store_finds_candidates_by_its_indexes(fresh_db: str, tmp_path: Path, store: int) -> None:
    adapter, table = adapters(fresh_db, tmp_path)[store]
    await adapter.start()
    try:
        if table == "subscribers":
            await adapter.pool.execute("INSERT INTO lists VALUES ('news', 'News', 'marketing')")
        await adapter.pool.execute(FILL[table], ROWS)
        await adapter.pool.execute(f"ANALYZE {table}")
        keys = {
            "customer_ids": [id_prefilter("C-4711")],
            "email_keys": [email_prefilter("x4711@example.org")],
            "phone_keys": [phone_prefilter("+441632960123"), phone_prefilter("+447700004711")],
        }
        args = [keys[name] for name in adapter.find_params]
        async with adapter.pool.acquire() as conn:
            plan = await explain(conn, adapter.find_sql, args)
            found = await conn.fetch(adapter.find_sql, *args)
            gin = await conn.fetch(
                "SELECT c.relname, c.reloptions FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid"
                " JOIN pg_am a ON a.oid = c.relam WHERE i.indrelid = $1::regclass AND a.amname = 'gin'",
                table,
            )
    finally:
        await adapter.close()
    assert f"Seq Scan on {table}" not in plan, plan
    assert any(row["parent"] is None for row in found)  # the plan is of a search that finds
    # A GIN index's pending list is read whole by every search until a vacuum empties it.
    assert all("fastupdate=off" in (row["reloptions"] or []) for row in gin), gin
    # The keys of each number and address in a field: every table has one or the other.
    assert gin


async def explain(conn: asyncpg.Connection, sql: str, args: list[object]) -> str:
    return "\n".join(r[0] for r in await conn.fetch("EXPLAIN " + sql, *args))


async def test_the_printed_store_schema_builds_the_store_the_worker_builds(fresh_db: str) -> None:
    """`lethe store-schema` is what an operator builds a changed index from beforehand: run as
    printed, in psql, it must give the indexes (and their names) the worker would make."""
    printed = CliRunner().invoke(app, ["store-schema", "crm"])
    assert printed.exit_code == 0, printed.output
    adapter = CrmAdapter(fresh_db)
    await adapter.start()
    try:
        made = await index_names(adapter.pool)
    finally:
        await adapter.close()
    database = fresh_db.rsplit("/", 1)[1] + "_printed"
    url = f"{fresh_db.rsplit('/', 1)[0]}/{database}"
    await ensure_database(url)
    try:
        conn = await asyncpg.connect(url)
        try:
            await conn.execute(printed.output)  # the simple protocol: every statement, in order
            assert await index_names(conn) == made
        finally:
            await conn.close()
    finally:
        await drop_database(fresh_db.rsplit("/", 1)[0], database)


async def index_names(conn: asyncpg.Connection | asyncpg.Pool) -> set[str]:
    rows = await conn.fetch("SELECT indexname FROM pg_indexes WHERE schemaname = 'public'")
    return {r["indexname"] for r in rows}
