"""Billing, CRM and mailing adapters against a real PostgreSQL: seed two people, erase one
through the worker's handler, check the database itself."""

from __future__ import annotations

import asyncio
import unicodedata
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg
import pytest

from cli.seed import SeedFile
from services.billing import seed as billing_seed
from services.billing.store import BillingAdapter
from services.crm import seed as crm_seed
from services.crm.store import CrmAdapter
from services.mailing import seed as mailing_seed
from services.mailing.store import AddressSuppressed, MailingAdapter, address_hash, subscribe
from shared.contracts import EraseSubject, LiftRestriction, RequestType, RestrictSubject
from shared.crypto import subject_ref
from shared.identity import Identities
from shared.worker.handler import execute
from shared.worker.policy import ActOnEverything
from shared.worker.runtime import utc_clock
from tests.conftest import person, said_yes

pytestmark = pytest.mark.integration
# Alice as an upstream tool would name her: other spellings than the stores hold.
ALICE = Identities(
    customer_ids=["C-1001"], emails=["Alice.Hartley@Example.co.uk"], phones=["0044 7700 900123"]
)
REF = subject_ref("k", ALICE)


def erase(system: str) -> EraseSubject:
    return EraseSubject(request_id="it-1", system=system, subject_ref=REF, sealed_identifiers="x")


async def count(pool: asyncpg.Pool, sql: str, *args: object) -> int:
    value = await pool.fetchval(sql, *args)
    return int(value)


@asynccontextmanager
async def mailing_list(fresh_db: str, fields: dict[str, str]) -> AsyncIterator[MailingAdapter]:
    """A mailing store whose one list has these subscribers (id: the e-mail field as stored)."""
    adapter = MailingAdapter(fresh_db, suppression_key="test-key")
    await adapter.start()
    try:
        await adapter.pool.execute("INSERT INTO lists VALUES ('news', 'News', 'marketing')")
        await adapter.pool.executemany(
            "INSERT INTO subscribers (subscriber_id, list_id, email, subscribed_at)"
            " VALUES ($1, 'news', $2, now())",
            list(fields.items()),
        )
        yield adapter
    finally:
        await adapter.close()


async def test_billing_erases_both_of_alices_accounts_and_keeps_bens(
    fresh_db: str, demo_seed: SeedFile
) -> None:
    adapter = BillingAdapter(fresh_db)
    await adapter.start()
    try:
        async with adapter.pool.acquire() as conn:
            await billing_seed.write(
                conn, person(demo_seed, "alice").billing + person(demo_seed, "ben").billing
            )
        outcome = await execute(erase("billing"), ALICE, adapter, ActOnEverything(), utc_clock)
        assert outcome.status == "done"
        found = {c.category: c.found for c in outcome.categories}
        assert found == {
            "accounts": 2,
            "invoices": 3,
            "payments": 3,
            "call_detail_records": 2,
            "radius_sessions": 1,
        }
        pool = adapter.pool
        assert (
            await count(pool, "SELECT count(*) FROM accounts WHERE account_id IN ('ACC-1001','ACC-2044')")
            == 0
        )
        for table in ("invoices", "payments", "cdrs", "radius_sessions"):
            assert await count(pool, f"SELECT count(*) FROM {table} WHERE account_id <> 'ACC-1002'") == 0
            assert await count(pool, f"SELECT count(*) FROM {table} WHERE account_id = 'ACC-1002'") >= 1
        # Ben's CDR of a call to Alice is Ben's billing record: it stays.
        assert await count(pool, "SELECT count(*) FROM cdrs WHERE callee = '+447700900123'") == 1
    finally:
        await adapter.close()


async def test_a_customer_id_stored_with_spaces_is_found_by_the_id_alone(
    fresh_db: str, demo_seed: SeedFile
) -> None:
    """Compared raw, "C-1002 " was not C-1002: the account escaped a request (or a hold) naming
    the id, while one naming the address found it."""
    adapter = BillingAdapter(fresh_db)
    await adapter.start()
    try:
        async with adapter.pool.acquire() as conn:
            await billing_seed.write(conn, person(demo_seed, "ben").billing)
            await conn.execute("UPDATE accounts SET customer_id = ' C-1002\t' WHERE customer_id = 'C-1002'")
        ben = Identities(customer_ids=["C-1002"])
        outcome = await execute(erase("billing"), ben, adapter, ActOnEverything(), utc_clock)
        assert {c.category: c.found for c in outcome.categories}["accounts"] == 1
        assert await count(adapter.pool, "SELECT count(*) FROM accounts") == 0
    finally:
        await adapter.close()


async def test_crm_erasure_matches_messy_spellings(fresh_db: str, demo_seed: SeedFile) -> None:
    adapter = CrmAdapter(fresh_db)
    await adapter.start()
    try:
        async with adapter.pool.acquire() as conn:
            await crm_seed.write(
                conn,
                person(demo_seed, "alice").crm
                + person(demo_seed, "ben").crm
                + person(demo_seed, "chloe").crm,
            )
        chloe = Identities(emails=["CHLOE.PATEL@example.com"])
        outcome = await execute(erase("crm"), chloe, adapter, ActOnEverything(), utc_clock)
        assert sum(c.erased for c in outcome.categories) == 4
        pool = adapter.pool
        assert await count(pool, "SELECT count(*) FROM contacts") == 2
        assert await count(pool, "SELECT count(*) FROM purchases WHERE contact_id = 'CRM-503'") == 0
    finally:
        await adapter.close()


async def test_crm_restriction_flags_rows_and_keeps_them(fresh_db: str, demo_seed: SeedFile) -> None:
    adapter = CrmAdapter(fresh_db)
    await adapter.start()
    try:
        async with adapter.pool.acquire() as conn:
            await crm_seed.write(conn, person(demo_seed, "alice").crm)
        command = RestrictSubject(request_id="it-2", system="crm", subject_ref=REF, sealed_identifiers="x")
        outcome = await execute(command, ALICE, adapter, ActOnEverything(), utc_clock)
        assert outcome.status == "done"
        assert await count(adapter.pool, "SELECT count(*) FROM interactions WHERE restricted") == 2
    finally:
        await adapter.close()


async def test_mailing_erasure_leaves_only_a_keyed_suppression_entry(
    fresh_db: str, demo_seed: SeedFile
) -> None:
    adapter = MailingAdapter(fresh_db, suppression_key="test-key")
    await adapter.start()
    try:
        async with adapter.pool.acquire() as conn:
            await mailing_seed.write_lists(conn, demo_seed.mailing_lists)
            await mailing_seed.write(
                conn, "test-key", person(demo_seed, "alice").mailing + person(demo_seed, "ben").mailing
            )
        outcome = await execute(erase("mailing"), ALICE, adapter, ActOnEverything(), utc_clock)
        assert {c.category: c.erased for c in outcome.categories} == {"subscribers": 2, "consent_records": 1}
        pool = adapter.pool
        assert await count(pool, "SELECT count(*) FROM subscribers WHERE lower(email) LIKE 'alice%'") == 0
        assert await count(pool, "SELECT count(*) FROM subscribers") == 1
        hashes = [r["address_hash"] for r in await pool.fetch("SELECT address_hash FROM suppression")]
        assert hashes == [address_hash("test-key", "alice.hartley@example.co.uk")]
        assert "alice" not in hashes[0]
        async with pool.acquire() as conn:
            with pytest.raises(AddressSuppressed):
                await subscribe(
                    conn,
                    "test-key",
                    "SUB-9",
                    "news",
                    "ALICE.hartley@example.co.uk",
                    None,
                    "2026-11-27T00:00:00Z",
                )
    finally:
        await adapter.close()


@pytest.fixture
async def billing_with_alice(fresh_db: str, demo_seed: SeedFile) -> AsyncIterator[BillingAdapter]:
    adapter = BillingAdapter(fresh_db)
    await adapter.start()
    try:
        async with adapter.pool.acquire() as conn:
            await billing_seed.write(conn, person(demo_seed, "alice").billing)
        yield adapter
    finally:
        await adapter.close()


async def test_redelivered_command_is_not_applied_twice(
    billing_with_alice: BillingAdapter, demo_seed: SeedFile
) -> None:
    adapter = billing_with_alice
    command = erase("billing")
    first = await execute(command, ALICE, adapter, ActOnEverything(), utc_clock)
    async with adapter.pool.acquire() as conn:  # the same account re-created meanwhile
        await billing_seed.write(conn, person(demo_seed, "alice").billing[:1])
    again = await execute(command, ALICE, adapter, ActOnEverything(), utc_clock)
    assert again == first
    assert await count(adapter.pool, "SELECT count(*) FROM lethe_command_journal") == 1


async def test_two_deliveries_of_one_command_at_once_act_once(billing_with_alice: BillingAdapter) -> None:
    """A redelivery can overlap the first delivery (a rebalance mid-command): the second waits
    on the command's lock and reports the first one's outcome, not a second erasure."""
    adapter = billing_with_alice
    command = erase("billing")
    first, second = await asyncio.gather(
        execute(command, ALICE, adapter, ActOnEverything(), utc_clock),
        execute(command, ALICE, adapter, ActOnEverything(), utc_clock),
    )
    assert first == second
    assert sum(c.erased for c in first.categories) == 11
    assert await count(adapter.pool, "SELECT count(*) FROM lethe_command_journal") == 1


async def test_the_journal_keeps_decisions_not_whose_records_they_were(
    billing_with_alice: BillingAdapter,
) -> None:
    adapter = billing_with_alice
    command = erase("billing")
    await execute(command, ALICE, adapter, ActOnEverything(), utc_clock)
    plan = await adapter.pool.fetchval("SELECT plan::text FROM lethe_command_journal")
    assert '"action"' in plan and '["C-1001"]' not in plan  # the decisions, by record id
    for clear in ("alice.hartley", "7700900123", "7700 900123"):
        assert clear not in plan.lower()
    # A journal written before plans were stripped is stripped at start-up.
    await adapter.pool.execute(
        "UPDATE lethe_command_journal SET plan = jsonb_set(plan, '{0,record,owner}',"
        ' \'{"emails": ["alice.hartley@example.co.uk"]}\')'
    )
    await adapter.close()
    await adapter.start()
    assert "alice.hartley" not in await adapter.pool.fetchval("SELECT plan::text FROM lethe_command_journal")
    again = await execute(command, ALICE, adapter, ActOnEverything(), utc_clock)
    assert again.status == "done"  # the stored outcome answers a redelivery


async def test_records_whose_identifier_cannot_be_read_or_names_nobody_go_to_a_person(fresh_db: str) -> None:
    """Alice's erasure names her customer id, address and the household landline. The CRM
    holds a contact of hers with a number and another's end, one with two addresses in its e-mail
    field, ones with two and three numbers in their phone field (hers the second), and Ben's:
    his name and the landline, nothing else. The store's keys find them all; none is erased,
    and none silently left out: a person decides."""
    adapter = CrmAdapter(fresh_db)
    await adapter.start()
    try:
        await adapter.pool.executemany(
            "INSERT INTO contacts (contact_id, full_name, email, phone, created_on)"
            " VALUES ($1, $2, $3, $4, current_date)",
            [
                ("CT-1", "Alice Hartley", None, "07700 900461 or 900462"),
                ("CT-2", "Alice Hartley", "alice.hartley@example.co.uk; a.hartley@work.example", None),
                ("CT-3", "Ben Hartley", None, "01632 960123"),
                ("CT-4", "Alice Hartley", None, "020 7946 0000, 07700 900461"),  # hers, second
                ("CT-6", "Alice Hartley", None, "020 7946 0002 / 07700 900461 / 020 7946 0003"),
            ],
        )
        # Hers too, under a customer id the request does not give: what is written in the
        # field decides, not that another strong identifier is on it.
        await adapter.pool.execute(
            "INSERT INTO contacts (contact_id, customer_id, full_name, phone, created_on)"
            " VALUES ('CT-5', 'C-1009', 'Alice Hartley', '020 7946 0001 / 07700 900461', current_date)"
        )
        # Zed's: another number ending in the same digits (the key's), unreadable: Alice's is
        # not written in it, so it is not shown to her reviewer.
        await adapter.pool.execute(
            "INSERT INTO contacts (contact_id, customer_id, full_name, phone, created_on)"
            " VALUES ('CT-9', 'C-9009', 'Zed Stone', '01632 900461 or 900462', current_date)"
        )
        alice = Identities(
            customer_ids=["C-1001"],
            emails=["alice.hartley@example.co.uk"],
            phones=["07700 900461", "01632 960123"],
        )
        outcome = await execute(erase("crm"), alice, adapter, ActOnEverything(), utc_clock)
        contacts = {c.category: c for c in outcome.categories}["contacts"]
        assert (contacts.found, contacts.erased, contacts.in_review) == (0, 0, 6)
        reasons = sorted(r.reason for r in outcome.reviews)
        assert reasons == ["phone_only", *["unreadable_identifier"] * 5]
        assert await count(adapter.pool, "SELECT count(*) FROM contacts") == 7
    finally:
        await adapter.close()


async def test_an_account_whose_address_field_lists_two_people_is_not_erased_as_either(
    fresh_db: str,
) -> None:
    """Alice's account carries `Alice Hartley <alice@…>, Ben Hartley <ben@…>`: read as its last
    address, Ben's request erased it as certainly his, and learnt her customer id (the next
    round would have erased the rest of her). Another carries `alice@…,ben@…`, read as one
    address, nobody's. Now the store's key finds each, and a person decides."""
    adapter = BillingAdapter(fresh_db)
    await adapter.start()
    try:
        await adapter.pool.executemany(
            "INSERT INTO accounts (account_id, customer_id, holder_name, email, status, opened_on)"
            " VALUES ($1, $2, 'Alice Hartley', $3, 'active', current_date)",
            [
                (
                    "ACC-1",
                    "C-1001",
                    "Alice Hartley <alice.hartley@example.co.uk>, Ben Hartley <ben.hartley@example.co.uk>",
                ),
                ("ACC-2", "C-1002", "ben.hartley@example.co.uk,alice.hartley@example.co.uk"),
            ],
        )
        ben = Identities(emails=["ben.hartley@example.co.uk"])
        outcome = await execute(erase("billing"), ben, adapter, ActOnEverything(), utc_clock)
        accounts = {c.category: c for c in outcome.categories}["accounts"]
        assert (accounts.found, accounts.erased, accounts.in_review) == (0, 0, 2)
        assert {r.reason for r in outcome.reviews} == {"unreadable_identifier"}
        assert not outcome.learnt
        assert await count(adapter.pool, "SELECT count(*) FROM accounts") == 2
    finally:
        await adapter.close()


async def test_every_address_of_a_subscriber_field_is_searched_and_a_decomposed_one_found(
    fresh_db: str,
) -> None:
    """The list's fields as people fill them: two addresses (Ben's second), a display form with
    a comment, an accent stored decomposed. Only a field's first address (a display form's
    last) had a key, and the decomposed `é` left an `e` the request's key has not: Ben's
    subscriptions and José's were never found. Now each is, and the lists go to a person."""
    fields = {
        "S-1": "alice.hartley@example.co.uk,ben.hartley@example.co.uk",
        "S-2": "alice.hartley@example.co.uk, Ben.Hartley@example.co.uk",
        "S-3": "Ben Hartley <ben.hartley@example.co.uk> (home)",
        "S-4": unicodedata.normalize("NFD", "José.García@example.es"),
        "S-5": "benjamin.hartley@example.co.uk",  # someone else's
    }
    async with mailing_list(fresh_db, fields) as adapter:
        ben = Identities(emails=["ben.hartley@example.co.uk"])
        outcome = await execute(erase("mailing"), ben, adapter, ActOnEverything(), utc_clock)
        subscribers = {c.category: c for c in outcome.categories}["subscribers"]
        assert (subscribers.erased, subscribers.in_review) == (1, 2)
        assert {r.reason for r in outcome.reviews} == {"unreadable_identifier"}
        jose = Identities(emails=["josé.garcía@example.es"])
        outcome = await execute(erase("mailing"), jose, adapter, ActOnEverything(), utc_clock)
        assert {c.category: c.erased for c in outcome.categories}["subscribers"] == 1
        left = {r["subscriber_id"] for r in await adapter.pool.fetch("SELECT subscriber_id FROM subscribers")}
        assert left == {"S-1", "S-2", "S-5"}


async def test_a_list_with_another_spelling_of_the_subjects_mailbox_goes_to_a_person(fresh_db: str) -> None:
    """Alice's Gmail address as mail clients write it (with a space after `mailto:`, in
    Exchange's form), and in lists beside Ben's under other spellings of her mailbox: found
    alone, those spellings go to a person, and so they do in a list (they had been dropped)."""
    fields = {
        "S-1": "mailto: alice.hartley@gmail.com",
        "S-2": '"Hartley, Alice (alice.hartley@gmail.com)" <alice.hartley@gmail.com>',
        "S-3": "Ben Hartley <ben@example.co.uk>, Alice Hartley <a.lice.hartley@googlemail.com>",
        "S-4": "Ben Hartley <ben@example.co.uk>, Alice Hartley <alice.hartley+news@gmail.com>",
    }
    async with mailing_list(fresh_db, fields) as adapter:
        alice = Identities(emails=["alice.hartley@gmail.com"])
        outcome = await execute(erase("mailing"), alice, adapter, ActOnEverything(), utc_clock)
        subscribers = {c.category: c for c in outcome.categories}["subscribers"]
        assert (subscribers.erased, subscribers.in_review) == (2, 2)
        left = {r["subscriber_id"] for r in await adapter.pool.fetch("SELECT subscriber_id FROM subscribers")}
        assert left == {"S-3", "S-4"}


async def test_a_reviewers_yes_on_a_restriction_restricts_and_erases_nothing(fresh_db: str) -> None:
    """Alice asks for restriction. A contact with the household landline and another customer
    id goes to a person, who says it is hers ('erase', the one yes there is): it is restricted,
    as she asked, not erased. A contact with nothing but the number on it is restricted at once
    (a lift undoes it); an erasure would have put it to a person."""
    adapter = CrmAdapter(fresh_db)
    await adapter.start()
    try:
        await adapter.pool.executemany(
            "INSERT INTO contacts (contact_id, customer_id, full_name, phone, created_on)"
            " VALUES ($1, $2, $3, '01632 960123', current_date)",
            [("CT-1", "C-2002", "A. Hartley"), ("CT-2", None, "Hartley")],
        )
        alice = Identities(customer_ids=["C-1001"], phones=["01632 960123"])
        restrict = RestrictSubject(request_id="it-r", system="crm", subject_ref=REF, sealed_identifiers="x")
        outcome = await execute(restrict, alice, adapter, ActOnEverything(), utc_clock)
        contacts = {c.category: c for c in outcome.categories}["contacts"]
        assert (contacts.restricted, contacts.in_review) == (1, 1)
        [review] = outcome.reviews
        assert review.reason == "shared_phone"
        decided = said_yes(review, "it-r", "crm", REF, applies=RequestType.RESTRICTION)
        carried_out = await execute(decided, alice, adapter, ActOnEverything(), utc_clock)
        contacts = {c.category: c for c in carried_out.categories}["contacts"]
        assert (contacts.restricted, contacts.erased, carried_out.status) == (1, 0, "done")
        assert await count(adapter.pool, "SELECT count(*) FROM contacts WHERE restricted") == 2
    finally:
        await adapter.close()


async def test_a_customer_id_in_another_case_is_found_and_put_to_a_person(fresh_db: str) -> None:
    """The CRM holds Alice's contact under `c-1002`; the request says C-1002. Found (it was
    missed), and put to a person: a system may tell `c-1002` from `C-1002`."""
    adapter = CrmAdapter(fresh_db)
    await adapter.start()
    try:
        await adapter.pool.execute(
            "INSERT INTO contacts (contact_id, customer_id, full_name, created_on)"
            " VALUES ('CT-1', 'c-1002', 'Alice Hartley', current_date)"
        )
        request = Identities(customer_ids=["C-1002"])
        outcome = await execute(erase("crm"), request, adapter, ActOnEverything(), utc_clock)
        contacts = {c.category: c for c in outcome.categories}["contacts"]
        assert (contacts.erased, contacts.in_review) == (0, 1)
        assert [r.reason for r in outcome.reviews] == ["id_variant"]
    finally:
        await adapter.close()


async def test_a_lift_puts_a_record_with_only_the_number_to_a_person(fresh_db: str) -> None:
    """Ben restricted his own contact (his name and the household landline). Alice's lift,
    naming the landline, must not undo it on its own: whose restriction set the flag is not
    kept, so a person decides."""
    adapter = CrmAdapter(fresh_db)
    await adapter.start()
    try:
        await adapter.pool.execute(
            "INSERT INTO contacts (contact_id, full_name, phone, restricted, created_on)"
            " VALUES ('CT-B', 'Ben Hartley', '01632 960123', true, current_date)"
        )
        alice = Identities(customer_ids=["C-1001"], phones=["01632 960123"])
        lift = LiftRestriction(request_id="it-l", system="crm", subject_ref=REF, sealed_identifiers="x")
        outcome = await execute(lift, alice, adapter, ActOnEverything(), utc_clock)
        assert [r.reason for r in outcome.reviews] == ["phone_only"]
        assert await count(adapter.pool, "SELECT count(*) FROM contacts WHERE restricted") == 1
    finally:
        await adapter.close()


async def test_a_reviewers_yes_on_a_subscriber_with_two_addresses_erases_and_suppresses_both(
    fresh_db: str,
) -> None:
    """The list holds Alice under `alice.hartley@example.co.uk; a.hartley@work.example`: no one
    address, so a person decides. Their yes erased nothing: the suppression entry could not be
    made of the field, and the command failed at every try."""
    field = "alice.hartley@example.co.uk; a.hartley@work.example"
    async with mailing_list(fresh_db, {"S-1": field}) as adapter:
        alice = Identities(emails=["alice.hartley@example.co.uk"])
        outcome = await execute(erase("mailing"), alice, adapter, ActOnEverything(), utc_clock)
        [review] = outcome.reviews
        assert review.reason == "unreadable_identifier"
        decided = said_yes(review, "it", "mailing", REF)
        carried_out = await execute(decided, alice, adapter, ActOnEverything(), utc_clock)
        assert carried_out.status == "done"
        assert await count(adapter.pool, "SELECT count(*) FROM subscribers") == 0
        hashes = {r["address_hash"] for r in await adapter.pool.fetch("SELECT address_hash FROM suppression")}
        assert hashes == {
            address_hash("test-key", "alice.hartley@example.co.uk"),
            address_hash("test-key", "a.hartley@work.example"),
        }
