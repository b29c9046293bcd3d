"""The mailing-list database. Erasing a subscriber leaves only a suppression entry (a keyed
hash of the address) so that a later import can never bring the person back."""

from __future__ import annotations

import contextlib
import hashlib
import hmac
from collections.abc import Sequence
from typing import Self

import asyncpg
from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from shared.contracts.outcomes import Action
from shared.identity import Identities, addresses_in, normalise_email
from shared.keys import email_key_index, email_match_sql
from shared.secrets import check_key
from shared.settings import DatabaseSettings
from shared.worker.pgstore import Candidate, CategoryTable, PostgresStoreAdapter
from shared.worker.ports import Decision, Record

SCHEMA = (
    """CREATE TABLE IF NOT EXISTS lists (
        list_id text PRIMARY KEY,
        name text NOT NULL,
        purpose text NOT NULL CHECK (purpose IN ('marketing', 'service')))""",
    """CREATE TABLE IF NOT EXISTS subscribers (
        subscriber_id text PRIMARY KEY,
        list_id text NOT NULL REFERENCES lists,
        email text NOT NULL,
        display_name text,
        status text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'unsubscribed')),
        subscribed_at timestamptz NOT NULL,
        restricted boolean NOT NULL DEFAULT false)""",
    *email_key_index("subscribers_email_key", "subscribers", "email"),
    """CREATE TABLE IF NOT EXISTS consents (
        consent_id text PRIMARY KEY,
        subscriber_id text NOT NULL,
        list_id text NOT NULL,
        given_at timestamptz NOT NULL,
        withdrawn_at timestamptz,
        source text NOT NULL,
        wording_version text NOT NULL,
        restricted boolean NOT NULL DEFAULT false)""",
    "CREATE INDEX IF NOT EXISTS consents_subscriber ON consents (subscriber_id)",
    """CREATE TABLE IF NOT EXISTS suppression (
        address_hash text PRIMARY KEY,
        added_at timestamptz NOT NULL DEFAULT now(),
        reason text NOT NULL)""",
)

# Candidate subscribers by the e-mail's coarse key, then their consent records, in one statement.
_FIND = f"""
WITH candidates AS (
    SELECT * FROM subscribers WHERE {email_match_sql("email", "$1::text[]")})
SELECT NULL AS parent, 'subscribers' AS category, subscriber_id AS id, restricted,
       subscribed_at::date AS d1, email
  FROM candidates
UNION ALL
SELECT subscriber_id, 'consent_records', consent_id, restricted, given_at::date, NULL FROM consents
 WHERE subscriber_id = ANY(ARRAY(SELECT subscriber_id FROM candidates))
"""


class SuppressionSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LETHE_MAILING_", extra="ignore")
    suppression_key: SecretStr = Field(
        description="HMAC key of the suppression list (at least 32 random bytes): an unkeyed hash of"
        " an e-mail address is reversible by guessing."
    )

    @field_validator("suppression_key")
    @classmethod
    def _a_key(cls, value: SecretStr) -> SecretStr:
        check_key(value.get_secret_value(), "LETHE_MAILING_SUPPRESSION_KEY")
        return value


def address_hash(key: str, email: str) -> str:
    return hmac.new(key.encode(), normalise_email(email).encode(), hashlib.sha256).hexdigest()


def suppressed_hashes(key: str, field: str) -> list[str]:
    """What an erased subscriber's address field puts on the suppression list: its address, or
    where it is no one address (`a@example.com; b@example.org`, which a reviewer decided on),
    each address in it that can be read. A field with none suppresses nothing: it could not be
    matched against an address signing up either. (It raised, and the reviewer's erasure
    failed at every try.)"""
    with contextlib.suppress(ValueError):
        return [address_hash(key, field)]
    return list(dict.fromkeys(address_hash(key, address) for address in addresses_in(field)))


class AddressSuppressed(Exception):
    """The address was erased before: it must not be re-imported."""


async def subscribe(
    conn: asyncpg.Connection,
    key: str,
    subscriber_id: str,
    list_id: str,
    email: str,
    display_name: str | None,
    subscribed_at: object,
) -> None:
    """The one way addresses enter the list (imports, sign-ups, seeding): it checks the
    suppression list first."""
    suppressed = await conn.fetchval(
        "SELECT 1 FROM suppression WHERE address_hash = $1", address_hash(key, email)
    )
    if suppressed:
        raise AddressSuppressed(subscriber_id)
    await conn.execute(
        "INSERT INTO subscribers (subscriber_id, list_id, email, display_name, subscribed_at)"
        " VALUES ($1,$2,$3,$4,$5) ON CONFLICT DO NOTHING",
        subscriber_id,
        list_id,
        email,
        display_name,
        subscribed_at,
    )


class MailingAdapter(PostgresStoreAdapter):
    system = "mailing"
    schema = SCHEMA
    erasure_notes = {
        "subscribers": "a suppression entry (keyed hash of the address) is kept so the address is "
        "never re-imported",
    }
    tables = (
        CategoryTable("subscribers", "subscribers", "subscriber_id", ("display_name",), ("subscribed_on",)),
        CategoryTable("consent_records", "consents", "consent_id", (), ("given_on",)),
    )

    def __init__(self, database_url: str, suppression_key: str, pool_max: int = 10) -> None:
        super().__init__(database_url, pool_max)
        self.suppression_key = suppression_key

    @classmethod
    def from_env(cls) -> Self:
        db = DatabaseSettings()
        key = SuppressionSettings().suppression_key.get_secret_value()
        return cls(db.database_url, key, db.db_pool_max)

    find_sql = _FIND
    find_params = ("email_keys",)

    def head(self, row: asyncpg.Record) -> Candidate:
        owner, unreadable = Identities.read(emails=[row["email"]])
        record = Record(
            category="subscribers",
            record_id=row["id"],
            restricted=row["restricted"],
            dates={"subscribed_on": row["d1"]},
            owner=owner,
            unreadable=unreadable,
        )
        return Candidate(record, owner)

    def child(self, row: asyncpg.Record) -> Record:
        return Record(
            category="consent_records",
            record_id=row["id"],
            restricted=row["restricted"],
            dates={"given_on": row["d1"]},
        )

    async def apply_decisions(self, conn: asyncpg.Connection, decisions: Sequence[Decision]) -> None:
        erased = [
            d.record.record_id
            for d in decisions
            if d.record.category == "subscribers" and d.action is Action.ERASED
        ]
        if erased:
            emails = await conn.fetch(
                "SELECT DISTINCT email FROM subscribers WHERE subscriber_id = ANY($1::text[])", erased
            )
            await conn.executemany(
                "INSERT INTO suppression (address_hash, reason) VALUES ($1, 'erasure')"
                " ON CONFLICT DO NOTHING",
                [(h,) for r in emails for h in suppressed_hashes(self.suppression_key, r["email"])],
            )
        await super().apply_decisions(conn, decisions)
