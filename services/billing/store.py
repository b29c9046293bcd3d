"""The billing database and how the subject's rows are found in it."""

from __future__ import annotations

import asyncpg

from shared.identity import Identities, e164_sql
from shared.worker.pgstore import CategoryTable, PostgresStoreAdapter
from shared.worker.ports import Record

SCHEMA = (
    """CREATE TABLE IF NOT EXISTS accounts (
        account_id text PRIMARY KEY,
        customer_id text NOT NULL,
        holder_name text,
        email text,
        phone text,
        postal_address text,
        status text NOT NULL CHECK (status IN ('active', 'closed')),
        opened_on date NOT NULL,
        closed_on date,
        restricted boolean NOT NULL DEFAULT false)""",
    "CREATE INDEX IF NOT EXISTS accounts_customer ON accounts (customer_id)",
    "CREATE INDEX IF NOT EXISTS accounts_email ON accounts (lower(trim(email)))",
    f"CREATE INDEX IF NOT EXISTS accounts_phone ON accounts ({e164_sql('phone')})",
    """CREATE TABLE IF NOT EXISTS invoices (
        invoice_id text PRIMARY KEY,
        account_id text NOT NULL,
        issued_on date NOT NULL,
        amount_pence integer NOT NULL,
        billing_name text,
        billing_address text,
        billing_email text,
        restricted boolean NOT NULL DEFAULT false)""",
    "CREATE INDEX IF NOT EXISTS invoices_account ON invoices (account_id)",
    """CREATE TABLE IF NOT EXISTS payments (
        payment_id text PRIMARY KEY,
        account_id text NOT NULL,
        paid_on date NOT NULL,
        amount_pence integer NOT NULL,
        method text NOT NULL,
        payer_name text,
        restricted boolean NOT NULL DEFAULT false)""",
    "CREATE INDEX IF NOT EXISTS payments_account ON payments (account_id)",
    """CREATE TABLE IF NOT EXISTS cdrs (
        cdr_id text PRIMARY KEY,
        account_id text NOT NULL,
        started_at timestamptz NOT NULL,
        caller text NOT NULL,
        callee text NOT NULL,
        duration_s integer NOT NULL,
        restricted boolean NOT NULL DEFAULT false)""",
    "CREATE INDEX IF NOT EXISTS cdrs_account ON cdrs (account_id)",
    """CREATE TABLE IF NOT EXISTS radius_sessions (
        session_id text PRIMARY KEY,
        account_id text NOT NULL,
        username text NOT NULL,
        started_at timestamptz NOT NULL,
        duration_s integer NOT NULL,
        bytes_in bigint NOT NULL,
        bytes_out bigint NOT NULL,
        framed_ip inet,
        restricted boolean NOT NULL DEFAULT false)""",
    "CREATE INDEX IF NOT EXISTS radius_account ON radius_sessions (account_id)",
)

_FIND = f"""
WITH subject_accounts AS (
    SELECT account_id, status, opened_on, closed_on, restricted FROM accounts
    WHERE customer_id = ANY($1::text[])
       OR lower(trim(email)) = ANY($2::text[])
       OR {e164_sql("phone")} = ANY($3::text[])
)
SELECT 'accounts' AS category, account_id AS id, restricted, opened_on AS d1, closed_on AS d2,
       status = 'active' AS active FROM subject_accounts
UNION ALL
SELECT 'invoices', invoice_id, restricted, issued_on, NULL, NULL FROM invoices
 WHERE account_id IN (SELECT account_id FROM subject_accounts)
UNION ALL
SELECT 'payments', payment_id, restricted, paid_on, NULL, NULL FROM payments
 WHERE account_id IN (SELECT account_id FROM subject_accounts)
UNION ALL
SELECT 'call_detail_records', cdr_id, restricted, started_at::date, NULL, NULL FROM cdrs
 WHERE account_id IN (SELECT account_id FROM subject_accounts)
UNION ALL
SELECT 'radius_sessions', session_id, restricted, started_at::date, NULL, NULL FROM radius_sessions
 WHERE account_id IN (SELECT account_id FROM subject_accounts)
"""
_ANCHOR = {
    "accounts": "opened_on",
    "invoices": "issued_on",
    "payments": "paid_on",
    "call_detail_records": "call_date",
    "radius_sessions": "session_date",
}


class BillingAdapter(PostgresStoreAdapter):
    system = "billing"
    schema = SCHEMA
    tables = (
        CategoryTable(
            "accounts", "accounts", "account_id", ("holder_name", "email", "phone", "postal_address")
        ),
        CategoryTable(
            "invoices", "invoices", "invoice_id", ("billing_name", "billing_address", "billing_email")
        ),
        CategoryTable("payments", "payments", "payment_id", ("payer_name",)),
        CategoryTable("call_detail_records", "cdrs", "cdr_id", ("caller", "callee")),
        CategoryTable("radius_sessions", "radius_sessions", "session_id", ("username", "framed_ip")),
    )

    async def find_records(self, conn: asyncpg.Connection, identities: Identities) -> list[Record]:
        rows = await conn.fetch(_FIND, identities.customer_ids, identities.emails, identities.phones)
        records = []
        for row in rows:
            dates = {_ANCHOR[row["category"]]: row["d1"]}
            if row["d2"] is not None:
                dates["closed_on"] = row["d2"]
            facts = {} if row["active"] is None else {"contract_active": row["active"]}
            records.append(
                Record(
                    category=row["category"],
                    record_id=row["id"],
                    restricted=row["restricted"],
                    dates=dates,
                    facts=facts,
                )
            )
        return records
