"""CRM's section of the seed file, and its writer."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date, datetime

import asyncpg
from pydantic import Field

from shared.seeding import SeedModel


class InteractionSeed(SeedModel):
    interaction_id: str
    channel: str = Field(pattern="^(call|email|ticket|chat)$")
    occurred_at: datetime
    summary: str = ""


class PurchaseSeed(SeedModel):
    purchase_id: str
    product: str
    licence_key: str | None = None
    purchased_on: date
    contract_end: date | None = Field(None, description="None: open-ended contract, still active.")


class ForumMembershipSeed(SeedModel):
    membership_id: str
    handle: str
    joined_on: date


class CrmContactSeed(SeedModel):
    contact_id: str
    customer_id: str | None = None
    full_name: str
    email: str | None = None
    phone: str | None = None
    organisation: str | None = None
    job_title: str | None = None
    created_on: date
    interactions: list[InteractionSeed] = Field(default_factory=list)
    purchases: list[PurchaseSeed] = Field(default_factory=list)
    forum_memberships: list[ForumMembershipSeed] = Field(default_factory=list)


async def write(conn: asyncpg.Connection, contacts: Sequence[CrmContactSeed]) -> int:
    rows = 0
    for c in contacts:
        await conn.execute(
            "INSERT INTO contacts (contact_id, customer_id, full_name, email, phone, organisation,"
            " job_title, created_on) VALUES ($1,$2,$3,$4,$5,$6,$7,$8) ON CONFLICT DO NOTHING",
            c.contact_id,
            c.customer_id,
            c.full_name,
            c.email,
            c.phone,
            c.organisation,
            c.job_title,
            c.created_on,
        )
        await conn.executemany(
            "INSERT INTO interactions (interaction_id, contact_id, channel, occurred_at, summary)"
            " VALUES ($1,$2,$3,$4,$5) ON CONFLICT DO NOTHING",
            [(i.interaction_id, c.contact_id, i.channel, i.occurred_at, i.summary) for i in c.interactions],
        )
        await conn.executemany(
            "INSERT INTO purchases (purchase_id, contact_id, product, licence_key, purchased_on,"
            " contract_end, buyer_name, buyer_email) VALUES ($1,$2,$3,$4,$5,$6,$7,$8)"
            " ON CONFLICT DO NOTHING",
            [
                (
                    p.purchase_id,
                    c.contact_id,
                    p.product,
                    p.licence_key,
                    p.purchased_on,
                    p.contract_end,
                    c.full_name,
                    c.email,
                )
                for p in c.purchases
            ],
        )
        await conn.executemany(
            "INSERT INTO forum_memberships (membership_id, contact_id, handle, joined_on)"
            " VALUES ($1,$2,$3,$4) ON CONFLICT DO NOTHING",
            [(f.membership_id, c.contact_id, f.handle, f.joined_on) for f in c.forum_memberships],
        )
        rows += 1 + len(c.interactions) + len(c.purchases) + len(c.forum_memberships)
    return rows
