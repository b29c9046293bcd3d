"""Synthetic people for the benchmark and the fault suite, written through the same seed loader
as the demo, so that they look like the demo's: an account with invoices, payments and CDRs, a
CRM contact, a call recording, a directory entry and a mailing-list subscription each.

The dates are written for AS_OF and move with the day they are loaded (`SeedFile.as_of`), so per
person an erasure on any day gives the same known counts, and double counting is visible:
erased = billing 3 (account, 2019 invoice and payment), crm 3, recordings 1, directory 1,
mailing 2 (subscriber, consent); retained = billing 1 (the recent invoice, HMRC rule)."""

from __future__ import annotations

import zlib
from datetime import UTC, date, datetime

from cli.seed import PersonSeed, SeedFile, SubjectSeed
from services.billing.seed import BillingAccountSeed, InvoiceSeed, PaymentSeed
from services.crm.seed import CrmContactSeed, ForumMembershipSeed, InteractionSeed
from services.directory.seed import DirectoryEntrySeed
from services.mailing.seed import ConsentSeed, MailingListSeed, SubscriptionSeed
from services.recordings.seed import RecordingSeed

AS_OF = date(2026, 11, 27)
EXPECTED_ERASED = {"billing": 3, "crm": 3, "recordings": 1, "directory": 1, "mailing": 2}
EXPECTED_RETAINED = {"billing": 1, "crm": 0, "recordings": 0, "directory": 0, "mailing": 0}


def person(n: int, prefix: str = "syn") -> PersonSeed:
    # The phone number must be unique across prefixes too: numbers match across accounts.
    cid, email = f"{prefix.upper()}-{n:06d}", f"{prefix}.person{n}@example.net"
    tel = f"07{zlib.crc32(prefix.encode()) % 900 + 100}{n:06d}"  # distinct for the prefixes in use

    return PersonSeed(
        label=f"{prefix}-{n}",
        subject=SubjectSeed(customer_id=cid, emails=[email], phones=[tel], ldap_uid=f"{prefix}{n}"),
        billing=[
            BillingAccountSeed(
                account_id=f"A-{cid}",
                customer_id=cid,
                holder_name=f"Person {n}",
                email=email,
                phone=tel,
                postal_address=f"{n} Test Street",
                status="closed",
                opened_on=date(2018, 1, 1),
                closed_on=date(2019, 6, 1),
                invoices=[
                    InvoiceSeed(invoice_id=f"I-{cid}-1", issued_on=date(2019, 2, 1), amount_pence=1000),
                    InvoiceSeed(invoice_id=f"I-{cid}-2", issued_on=date(2025, 2, 1), amount_pence=1000),
                ],
                payments=[PaymentSeed(payment_id=f"P-{cid}-1", paid_on=date(2019, 2, 10), amount_pence=1000)],
            )
        ],
        crm=[
            CrmContactSeed(
                contact_id=f"C-{cid}",
                customer_id=cid,
                full_name=f"Person {n}",
                email=email,
                created_on=date(2018, 1, 1),
                interactions=[
                    InteractionSeed(
                        interaction_id=f"X-{cid}",
                        channel="email",
                        occurred_at=datetime(2019, 3, 1, tzinfo=UTC),
                    )
                ],
                forum_memberships=[
                    ForumMembershipSeed(membership_id=f"F-{cid}", handle=f"p{n}", joined_on=date(2019, 1, 1))
                ],
            )
        ],
        recordings=[
            RecordingSeed(
                recording_id=f"R-{cid}",
                customer_id=cid,
                caller=tel,
                callee="+441708000100",
                recorded_at=datetime(2026, 10, 1, tzinfo=UTC),
                duration_s=1,
            )
        ],
        directory=[DirectoryEntrySeed(uid=f"{prefix}{n}", cn=f"Person {n}", sn=f"Person{n}", mail=email)],
        mailing=[
            SubscriptionSeed(
                subscriber_id=f"S-{cid}",
                list_id="synthetic",
                email=email,
                subscribed_at=datetime(2018, 1, 1, tzinfo=UTC),
                consents=[ConsentSeed(consent_id=f"K-{cid}", given_at=datetime(2018, 1, 1, tzinfo=UTC))],
            )
        ],
    )


def people(count: int, prefix: str = "syn", start: int = 0) -> SeedFile:
    return SeedFile(
        as_of=AS_OF,
        mailing_lists=[MailingListSeed(list_id="synthetic", name="Synthetic", purpose="marketing")],
        people=[person(n, prefix) for n in range(start, start + count)],
    )
