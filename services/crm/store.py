"""The CRM database and how the subject's rows are found in it."""

from __future__ import annotations

import asyncpg

from shared.identity import Identities, e164_sql
from shared.worker.pgstore import CategoryTable, PostgresStoreAdapter
from shared.worker.ports import Record

SCHEMA = (
    """CREATE TABLE IF NOT EXISTS contacts (
        contact_id text PRIMARY KEY,
        customer_id text,
        full_name text,
        email text,
        phone text,
        organisation text,
        job_title text,
        created_on date NOT NULL,
        restricted boolean NOT NULL DEFAULT false)""",
    "CREATE INDEX IF NOT EXISTS contacts_customer ON contacts (customer_id)",
    "CREATE INDEX IF NOT EXISTS contacts_email ON contacts (lower(trim(email)))",
    f"CREATE INDEX IF NOT EXISTS contacts_phone ON contacts ({e164_sql('phone')})",
    """CREATE TABLE IF NOT EXISTS interactions (
        interaction_id text PRIMARY KEY,
        contact_id text NOT NULL,
        channel text NOT NULL CHECK (channel IN ('call', 'email', 'ticket', 'chat')),
        occurred_at timestamptz NOT NULL,
        summary text,
        restricted boolean NOT NULL DEFAULT false)""",
    "CREATE INDEX IF NOT EXISTS interactions_contact ON interactions (contact_id)",
    """CREATE TABLE IF NOT EXISTS purchases (
        purchase_id text PRIMARY KEY,
        contact_id text NOT NULL,
        product text NOT NULL,
        licence_key text,
        purchased_on date NOT NULL,
        contract_end date,
        buyer_name text,
        buyer_email text,
        restricted boolean NOT NULL DEFAULT false)""",
    "CREATE INDEX IF NOT EXISTS purchases_contact ON purchases (contact_id)",
    """CREATE TABLE IF NOT EXISTS forum_memberships (
        membership_id text PRIMARY KEY,
        contact_id text NOT NULL,
        handle text NOT NULL,
        joined_on date NOT NULL,
        restricted boolean NOT NULL DEFAULT false)""",
    "CREATE INDEX IF NOT EXISTS forum_contact ON forum_memberships (contact_id)",
)

_FIND = f"""
WITH subject_contacts AS (
    SELECT contact_id, created_on, restricted FROM contacts
    WHERE customer_id = ANY($1::text[])
       OR lower(trim(email)) = ANY($2::text[])
       OR {e164_sql("phone")} = ANY($3::text[])
)
SELECT 'contacts' AS category, contact_id AS id, restricted, created_on AS d1, NULL::date AS d2
  FROM subject_contacts
UNION ALL
SELECT 'interactions', interaction_id, restricted, occurred_at::date, NULL FROM interactions
 WHERE contact_id IN (SELECT contact_id FROM subject_contacts)
UNION ALL
SELECT 'purchases', purchase_id, restricted, purchased_on, contract_end FROM purchases
 WHERE contact_id IN (SELECT contact_id FROM subject_contacts)
UNION ALL
SELECT 'forum_memberships', membership_id, restricted, joined_on, NULL FROM forum_memberships
 WHERE contact_id IN (SELECT contact_id FROM subject_contacts)
"""
_ANCHOR = {
    "contacts": "created_on",
    "interactions": "occurred_on",
    "purchases": "purchased_on",
    "forum_memberships": "joined_on",
}


class CrmAdapter(PostgresStoreAdapter):
    system = "crm"
    schema = SCHEMA
    tables = (
        CategoryTable("contacts", "contacts", "contact_id", ("full_name", "email", "phone", "job_title")),
        CategoryTable("interactions", "interactions", "interaction_id", ("summary",)),
        CategoryTable("purchases", "purchases", "purchase_id", ("buyer_name", "buyer_email")),
        CategoryTable("forum_memberships", "forum_memberships", "membership_id", ("handle",)),
    )

    async def find_records(self, conn: asyncpg.Connection, identities: Identities) -> list[Record]:
        rows = await conn.fetch(_FIND, identities.customer_ids, identities.emails, identities.phones)
        # Contract facts are dates, not booleans computed against the database clock: the policy
        # compares them with its own (injectable) clock.
        ends = [r["d2"] for r in rows if r["category"] == "purchases"]
        open_ended = any(end is None for end in ends)
        latest_end = max((e for e in ends if e is not None), default=None)
        records = []
        for row in rows:
            dates = {_ANCHOR[row["category"]]: row["d1"]}
            if row["category"] == "purchases":
                if row["d2"] is not None:
                    dates["contract_end"] = row["d2"]
                facts = {"contract_open_ended": row["d2"] is None}
            else:
                if latest_end is not None and not open_ended:
                    dates["latest_contract_end"] = latest_end
                facts = {"contract_open_ended": open_ended}
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
