"""The limit to compare against: the same erasures done directly against the stores by a
minimal script, with no pipeline (SQL deletes, LDAP deletes, file unlinks), as concurrently as
the stores allow."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import time
from pathlib import Path

import asyncpg
import ldap
from ldap.filter import escape_filter_chars

from cli.seed import PersonSeed
from services.directory.ldap import Directory, LdapSettings
from shared.identity import normalise_email, normalise_phone
from shared.keys import (
    email_match_sql,
    email_prefilter,
    id_key_sql,
    id_prefilter,
    phone_match_sql,
    phone_prefilter,
)

# The stores' own indexed keys (shared/keys.py), without the pipeline's confirmation of each
# match in Python: synthetic people do not share identifiers, so nothing else is reached.
BILLING = f"""WITH a AS (SELECT account_id FROM accounts WHERE {id_key_sql("customer_id")} = $1
          OR {email_match_sql("email", "ARRAY[$2::text]")} OR {phone_match_sql("phone", "ARRAY[$3::text]")}),
  i AS (DELETE FROM invoices WHERE account_id IN (SELECT account_id FROM a)),
  p AS (DELETE FROM payments WHERE account_id IN (SELECT account_id FROM a)),
  c AS (DELETE FROM cdrs WHERE account_id IN (SELECT account_id FROM a)),
  r AS (DELETE FROM radius_sessions WHERE account_id IN (SELECT account_id FROM a))
DELETE FROM accounts WHERE account_id IN (SELECT account_id FROM a)"""
CRM = f"""WITH c AS (SELECT contact_id FROM contacts WHERE {id_key_sql("customer_id")} = $1
          OR {email_match_sql("email", "ARRAY[$2::text]")} OR {phone_match_sql("phone", "ARRAY[$3::text]")}),
  i AS (DELETE FROM interactions WHERE contact_id IN (SELECT contact_id FROM c)),
  p AS (DELETE FROM purchases WHERE contact_id IN (SELECT contact_id FROM c)),
  f AS (DELETE FROM forum_memberships WHERE contact_id IN (SELECT contact_id FROM c))
DELETE FROM contacts WHERE contact_id IN (SELECT contact_id FROM c)"""


async def erase_one(
    person: PersonSeed, pools: dict[str, asyncpg.Pool], directory: Directory, root: Path, key: str
) -> None:
    subject = person.subject
    assert subject is not None and subject.customer_id
    cid, email, phone = (
        id_prefilter(subject.customer_id),
        normalise_email(subject.emails[0]),
        normalise_phone(subject.phones[0]),
    )
    email_key, phone_key = email_prefilter(email), phone_prefilter(phone)
    await pools["billing"].execute(BILLING, cid, email_key, phone_key)
    await pools["crm"].execute(CRM, cid, email_key, phone_key)
    async with pools["mailing"].acquire() as conn, conn.transaction():
        digest = hmac.new(key.encode(), email.encode(), hashlib.sha256).hexdigest()
        await conn.execute(
            "INSERT INTO suppression (address_hash, reason) VALUES ($1, 'erasure') ON CONFLICT DO NOTHING",
            digest,
        )
        ids = [
            r["subscriber_id"]
            for r in await conn.fetch(
                f"SELECT subscriber_id FROM subscribers WHERE {email_match_sql('email', 'ARRAY[$1::text]')}",
                email_key,
            )
        ]
        await conn.execute("DELETE FROM consents WHERE subscriber_id = ANY($1::text[])", ids)
        await conn.execute("DELETE FROM subscribers WHERE subscriber_id = ANY($1::text[])", ids)
    rows = await pools["recordings"].fetch(
        f"DELETE FROM recordings WHERE {id_key_sql('customer_id')} = $1"
        f" OR {phone_match_sql('caller', 'ARRAY[$2::text]')}"
        f" OR {phone_match_sql('callee', 'ARRAY[$2::text]')}"
        " RETURNING path",
        cid,
        phone_key,
    )
    for row in rows:
        (root / row["path"]).unlink(missing_ok=True)
    await asyncio.to_thread(_ldap_delete, directory, subject.ldap_uid or "", email)


def _ldap_delete(directory: Directory, uid: str, email: str) -> None:
    # A bound connection per thread, kept, as the worker does: a connect and bind per erasure
    # made the first version of this baseline LDAP-bound at ~40/s, flattering Lethe's ratio.
    with directory.bound() as conn:
        found = conn.search_ext_s(
            directory.settings.base_dn,
            ldap.SCOPE_SUBTREE,
            f"(|(uid={escape_filter_chars(uid)})(mail={escape_filter_chars(email)}))",
            ["1.1"],
        )
        for dn, _ in found:
            if dn is not None:
                conn.delete_s(dn)


async def run(
    people: list[PersonSeed],
    database_urls: dict[str, str],
    ldap: LdapSettings,
    root: Path,
    key: str,
    concurrency: int = 16,
) -> float:
    """Erasures per second."""
    pools = {
        name: await asyncpg.create_pool(url, min_size=2, max_size=min(concurrency, 8))
        for name, url in database_urls.items()
    }
    directory = Directory(ldap)
    gate = asyncio.Semaphore(concurrency)

    async def one(person: PersonSeed) -> None:
        async with gate:
            await erase_one(person, pools, directory, root, key)

    start = time.perf_counter()
    await asyncio.gather(*(one(p) for p in people))
    elapsed = time.perf_counter() - start
    for pool in pools.values():
        await pool.close()
    return len(people) / elapsed
