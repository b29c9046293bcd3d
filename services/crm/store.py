"""The CRM database and how the subject's rows are found in it."""

from __future__ import annotations

from collections import defaultdict
from datetime import date

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
    *id_key_index("contacts_customer", "contacts", "customer_id"),
    *email_key_index("contacts_email_key", "contacts", "email"),
    *phone_key_index("contacts_phone_key", "contacts", "phone"),
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

# Candidate contacts by coarse keys, then what is under each, in one statement.
_FIND = f"""
WITH candidates AS (
    SELECT * FROM contacts
     WHERE {id_key_sql("customer_id")} = ANY($1::text[])
        OR {email_match_sql("email", "$2::text[]")}
        OR {phone_match_sql("phone", "$3::text[]")})
SELECT NULL AS parent, 'contacts' AS category, contact_id AS id, restricted, created_on AS d1,
       NULL::date AS d2, customer_id, email, phone
  FROM candidates
UNION ALL
SELECT contact_id, 'interactions', interaction_id, restricted, occurred_at::date, NULL, NULL, NULL, NULL
  FROM interactions WHERE contact_id = ANY(ARRAY(SELECT contact_id FROM candidates))
UNION ALL
SELECT contact_id, 'purchases', purchase_id, restricted, purchased_on, contract_end, NULL, NULL, NULL
  FROM purchases WHERE contact_id = ANY(ARRAY(SELECT contact_id FROM candidates))
UNION ALL
SELECT contact_id, 'forum_memberships', membership_id, restricted, joined_on, NULL, NULL, NULL, NULL
  FROM forum_memberships WHERE contact_id = ANY(ARRAY(SELECT contact_id FROM candidates))
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
        CategoryTable(
            "contacts",
            "contacts",
            "contact_id",
            ("full_name", "email", "phone", "job_title"),
            ("created_on", "latest_contract_end", "contract_open_ended"),
        ),
        CategoryTable(
            "interactions",
            "interactions",
            "interaction_id",
            ("summary",),
            ("occurred_on", "latest_contract_end", "contract_open_ended"),
        ),
        CategoryTable(
            "purchases",
            "purchases",
            "purchase_id",
            ("buyer_name", "buyer_email"),
            ("purchased_on", "contract_end", "contract_open_ended"),
        ),
        CategoryTable("forum_memberships", "forum_memberships", "membership_id", ("handle",), ("joined_on",)),
    )

    find_sql = _FIND

    def head(self, row: asyncpg.Record) -> Candidate:
        owner, unreadable = Identities.read(
            customer_ids=[row["customer_id"]], emails=[row["email"]], phones=[row["phone"]]
        )
        record = Record(
            category="contacts",
            record_id=row["id"],
            restricted=row["restricted"],
            dates={"created_on": row["d1"]},
            owner=owner,
            unreadable=unreadable,
        )
        return Candidate(record, owner)

    def child(self, row: asyncpg.Record) -> Record:
        dates = {_ANCHOR[row["category"]]: row["d1"]}
        facts: dict[str, bool] = {}
        if row["category"] == "purchases":
            if row["d2"] is not None:
                dates["contract_end"] = row["d2"]
            facts = {"contract_open_ended": row["d2"] is None}
        return Record(
            category=row["category"],
            record_id=row["id"],
            restricted=row["restricted"],
            dates=dates,
            facts=facts,
        )

    async def find_records(self, conn: asyncpg.Connection, identities: Identities) -> list[Record]:
        """A contact and its interactions are kept while that contact's contract runs: the facts
        come from its own purchases. They are dates, not booleans computed against the
        database clock: the policy compares them with its own (injectable) clock."""
        records = await super().find_records(conn, identities)
        ends: dict[tuple[str, str], list[date | None]] = defaultdict(list)
        for r in records:
            if r.category == "purchases" and r.group is not None:
                ends[r.group].append(r.dates.get("contract_end"))
        finished = []
        for r in records:
            if r.category not in ("contacts", "interactions"):
                finished.append(r)
                continue
            own = ends.get(r.group or r.key, [])
            open_ended = any(end is None for end in own)
            dates = dict(r.dates)
            latest = max((e for e in own if e is not None), default=None)
            if latest is not None and not open_ended:
                dates["latest_contract_end"] = latest
            finished.append(
                r.model_copy(update={"dates": dates, "facts": {"contract_open_ended": open_ended}})
            )
        return finished
