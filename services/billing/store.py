"""The billing database and how the subject's rows are found in it."""

from __future__ import annotations

import asyncpg

from shared.identity import Identities
from shared.keys import (
    email_key_index,
    email_match_sql,
    id_key_index,
    id_key_sql,
    phone_key_index,
    phone_match_sql,
)
from shared.worker.pgstore import Candidate, CategoryTable, PostgresStoreAdapter
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
    *id_key_index("accounts_customer", "accounts", "customer_id"),
    *email_key_index("accounts_email_key", "accounts", "email"),
    *phone_key_index("accounts_phone_key", "accounts", "phone"),
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

# Candidate accounts by coarse keys, then what is under each, in one statement. The rows under
# them by `= ANY(ARRAY(…))`, not `IN (…)`: PostgreSQL plans this statement at every execution
# (its plan depends on the keys given), and a semi-join per table made that planning a third
# dearer (docs/performance.md, fourteenth part).
_FIND = f"""
WITH candidates AS (
    SELECT * FROM accounts
     WHERE {id_key_sql("customer_id")} = ANY($1::text[])
        OR {email_match_sql("email", "$2::text[]")}
        OR {phone_match_sql("phone", "$3::text[]")})
SELECT NULL AS parent, 'accounts' AS category, account_id AS id, restricted, opened_on AS d1,
       closed_on AS d2, customer_id, email, phone, status
  FROM candidates
UNION ALL
SELECT account_id, 'invoices', invoice_id, restricted, issued_on, NULL, NULL, NULL, NULL, NULL
  FROM invoices WHERE account_id = ANY(ARRAY(SELECT account_id FROM candidates))
UNION ALL
SELECT account_id, 'payments', payment_id, restricted, paid_on, NULL, NULL, NULL, NULL, NULL
  FROM payments WHERE account_id = ANY(ARRAY(SELECT account_id FROM candidates))
UNION ALL
SELECT account_id, 'call_detail_records', cdr_id, restricted, started_at::date, NULL, NULL, NULL, NULL, NULL
  FROM cdrs WHERE account_id = ANY(ARRAY(SELECT account_id FROM candidates))
UNION ALL
SELECT account_id, 'radius_sessions', session_id, restricted, started_at::date, NULL, NULL, NULL, NULL, NULL
  FROM radius_sessions WHERE account_id = ANY(ARRAY(SELECT account_id FROM candidates))
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
            "accounts",
            "accounts",
            "account_id",
            ("holder_name", "email", "phone", "postal_address"),
            ("opened_on", "closed_on", "contract_active"),
        ),
        CategoryTable(
            "invoices",
            "invoices",
            "invoice_id",
            ("billing_name", "billing_address", "billing_email"),
            ("issued_on",),
        ),
        CategoryTable("payments", "payments", "payment_id", ("payer_name",), ("paid_on",)),
        CategoryTable("call_detail_records", "cdrs", "cdr_id", ("caller", "callee"), ("call_date",)),
        CategoryTable(
            "radius_sessions", "radius_sessions", "session_id", ("username", "framed_ip"), ("session_date",)
        ),
    )

    find_sql = _FIND

    def head(self, row: asyncpg.Record) -> Candidate:
        dates = {"opened_on": row["d1"]}
        if row["d2"] is not None:
            dates["closed_on"] = row["d2"]
        owner, unreadable = Identities.read(
            customer_ids=[row["customer_id"]], emails=[row["email"]], phones=[row["phone"]]
        )
        record = Record(
            category="accounts",
            record_id=row["id"],
            restricted=row["restricted"],
            dates=dates,
            facts={"contract_active": row["status"] == "active"},
            owner=owner,
            unreadable=unreadable,
        )
        return Candidate(record, owner)

    def child(self, row: asyncpg.Record) -> Record:
        return Record(
            category=row["category"],
            record_id=row["id"],
            restricted=row["restricted"],
            dates={_ANCHOR[row["category"]]: row["d1"]},
        )
