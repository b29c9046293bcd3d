"""Billing's section of the seed file, and the writer that loads it into the billing store."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date, datetime

import asyncpg
from pydantic import Field

from shared.seeding import SeedModel


class InvoiceSeed(SeedModel):
    invoice_id: str
    issued_on: date
    amount_pence: int = Field(ge=0)


class PaymentSeed(SeedModel):
    payment_id: str
    paid_on: date
    amount_pence: int = Field(ge=0)
    method: str = Field("direct_debit", description="card, direct_debit, bank_transfer")


class CdrSeed(SeedModel):
    started_at: datetime
    callee: str
    duration_s: int = Field(ge=0)


class RadiusSessionSeed(SeedModel):
    started_at: datetime
    duration_s: int = Field(ge=0)
    bytes_in: int = Field(0, ge=0)
    bytes_out: int = Field(0, ge=0)
    framed_ip: str | None = None


class BillingAccountSeed(SeedModel):
    account_id: str
    customer_id: str
    holder_name: str
    email: str | None = None
    phone: str | None = Field(None, description="As the customer wrote it; CDRs use it as caller.")
    postal_address: str | None = None
    status: str = Field("active", pattern="^(active|closed)$")
    opened_on: date
    closed_on: date | None = None
    invoices: list[InvoiceSeed] = Field(default_factory=list)
    payments: list[PaymentSeed] = Field(default_factory=list)
    call_detail_records: list[CdrSeed] = Field(default_factory=list)
    radius_sessions: list[RadiusSessionSeed] = Field(default_factory=list)


async def write(conn: asyncpg.Connection, accounts: Sequence[BillingAccountSeed]) -> int:
    """Idempotent: seeding the same file twice leaves one copy of each record."""
    rows = 0
    for a in accounts:
        await conn.execute(
            "INSERT INTO accounts (account_id, customer_id, holder_name, email, phone, postal_address,"
            " status, opened_on, closed_on) VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9) ON CONFLICT DO NOTHING",
            a.account_id,
            a.customer_id,
            a.holder_name,
            a.email,
            a.phone,
            a.postal_address,
            a.status,
            a.opened_on,
            a.closed_on,
        )
        await conn.executemany(
            "INSERT INTO invoices (invoice_id, account_id, issued_on, amount_pence, billing_name,"
            " billing_address, billing_email) VALUES ($1,$2,$3,$4,$5,$6,$7) ON CONFLICT DO NOTHING",
            [
                (
                    i.invoice_id,
                    a.account_id,
                    i.issued_on,
                    i.amount_pence,
                    a.holder_name,
                    a.postal_address,
                    a.email,
                )
                for i in a.invoices
            ],
        )
        await conn.executemany(
            "INSERT INTO payments (payment_id, account_id, paid_on, amount_pence, method, payer_name)"
            " VALUES ($1,$2,$3,$4,$5,$6) ON CONFLICT DO NOTHING",
            [
                (p.payment_id, a.account_id, p.paid_on, p.amount_pence, p.method, a.holder_name)
                for p in a.payments
            ],
        )
        await conn.executemany(
            "INSERT INTO cdrs (cdr_id, account_id, started_at, caller, callee, duration_s)"
            " VALUES ($1,$2,$3,$4,$5,$6) ON CONFLICT DO NOTHING",
            [
                (f"{a.account_id}-cdr-{n}", a.account_id, c.started_at, a.phone or "", c.callee, c.duration_s)
                for n, c in enumerate(a.call_detail_records, 1)
            ],
        )
        await conn.executemany(
            "INSERT INTO radius_sessions (session_id, account_id, username, started_at, duration_s,"
            " bytes_in, bytes_out, framed_ip) VALUES ($1,$2,$3,$4,$5,$6,$7,$8::inet)"
            " ON CONFLICT DO NOTHING",
            [
                (
                    f"{a.account_id}-rad-{n}",
                    a.account_id,
                    f"{a.customer_id}@broadband",
                    r.started_at,
                    r.duration_s,
                    r.bytes_in,
                    r.bytes_out,
                    r.framed_ip,
                )
                for n, r in enumerate(a.radius_sessions, 1)
            ],
        )
        rows += 1 + sum(len(x) for x in (a.invoices, a.payments, a.call_detail_records, a.radius_sessions))
    return rows
