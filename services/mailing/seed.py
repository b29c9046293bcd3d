"""Mailing's section of the seed file, and its writer (which goes through `subscribe`, so a
suppressed address is refused here as in any import)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

import asyncpg
from pydantic import Field

from services.mailing.store import AddressSuppressed, subscribe
from shared.seeding import SeedModel


class MailingListSeed(SeedModel):
    list_id: str
    name: str
    purpose: str = Field(pattern="^(marketing|service)$")


class ConsentSeed(SeedModel):
    consent_id: str
    given_at: datetime
    withdrawn_at: datetime | None = None
    source: str = Field("web_form", description="Where consent was captured.")
    wording_version: str = "2018-05"


class SubscriptionSeed(SeedModel):
    subscriber_id: str
    list_id: str
    email: str
    display_name: str | None = None
    subscribed_at: datetime
    consents: list[ConsentSeed] = Field(default_factory=list)


async def write_lists(conn: asyncpg.Connection, lists: Sequence[MailingListSeed]) -> int:
    await conn.executemany(
        "INSERT INTO lists (list_id, name, purpose) VALUES ($1,$2,$3) ON CONFLICT DO NOTHING",
        [(m.list_id, m.name, m.purpose) for m in lists],
    )
    return len(lists)


async def write(conn: asyncpg.Connection, key: str, subs: Sequence[SubscriptionSeed]) -> tuple[int, int]:
    """Returns (rows written, subscriptions refused because the address is suppressed)."""
    rows = refused = 0
    for s in subs:
        try:
            await subscribe(conn, key, s.subscriber_id, s.list_id, s.email, s.display_name, s.subscribed_at)
        except AddressSuppressed:
            refused += 1
            continue
        await conn.executemany(
            "INSERT INTO consents (consent_id, subscriber_id, list_id, given_at, withdrawn_at,"
            " source, wording_version) VALUES ($1,$2,$3,$4,$5,$6,$7) ON CONFLICT DO NOTHING",
            [
                (
                    c.consent_id,
                    s.subscriber_id,
                    s.list_id,
                    c.given_at,
                    c.withdrawn_at,
                    c.source,
                    c.wording_version,
                )
                for c in s.consents
            ],
        )
        rows += 1 + len(s.consents)
    return rows, refused
