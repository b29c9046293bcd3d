"""Holds cover what each hold's own search of the store would find, in every real store: the
demo's people (shared numbers, sub-addresses, a second account, a callee) and synthetic ones
beside them, held by identifiers written as people write them, with holds on nobody in the
stores among them. (Read off the records, a hold covers at least what its search finds: more
only where a store's search is narrower than the matching that decides after it, which keeps
a record rather than erasing it. Here the two agree.)"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from uuid import uuid4

import pytest

from cli import synthetic
from cli.seed import PersonSeed, SeedFile
from services.billing import seed as billing_seed
from services.billing.store import BillingAdapter
from services.crm import seed as crm_seed
from services.crm.store import CrmAdapter
from services.directory import seed as directory_seed
from services.directory.ldap import LdapSettings
from services.directory.store import DirectoryAdapter
from services.mailing import seed as mailing_seed
from services.mailing.store import MailingAdapter
from services.recordings import seed as recordings_seed
from services.recordings.store import RecordingsAdapter
from shared.contracts import EraseSubject, RequestType
from shared.crypto import subject_ref
from shared.identity import Identities, KnownIdentities
from shared.policy.evaluate import RetentionPolicy
from shared.policy.model import DEFAULT_POLICY_FILE, load_policy
from shared.worker import hold_cover
from shared.worker.handler import execute, held_records
from shared.worker.holds import ActiveHold
from shared.worker.ports import Record, StoreAdapter, StoreSession
from shared.worker.runtime import utc_clock
from tests.conftest import drop_database

pytestmark = pytest.mark.integration
NOW = datetime(2026, 11, 27, 12, tzinfo=UTC)
CATEGORIES = [None, frozenset({"invoices", "accounts"}), frozenset({"contacts"}), frozenset({"recordings"})]


def people(demo_seed: SeedFile) -> list[PersonSeed]:
    return demo_seed.people + synthetic.people(15, prefix="hc").people


def written_otherwise(kind: str, value: str, rng: random.Random) -> list[str]:
    """The identifier as a hold might name it: as stored, in capitals, with a sub-address, with
    an extension (a switchboard's line), in international form."""
    if kind == "emails":
        local, _, domain = value.partition("@")
        return [value, value.upper(), f"{local}+legal@{domain}", value]
    if kind == "phones":
        digits = value.replace(" ", "")
        national = "0" + digits[3:] if digits.startswith("+44") else digits
        return [value, national, f"{national} x{rng.randint(1, 99)}", "+44" + national.lstrip("0")]
    return [value]


def holds_for(everyone: list[PersonSeed], rng: random.Random) -> list[ActiveHold]:
    """Holds on what the stores hold (each identifier of each record, written some way), and
    as many on nobody, shuffled."""
    stored: list[tuple[str, str]] = []
    for p in everyone:
        for a in p.billing:
            stored += [("customer_ids", a.customer_id), ("emails", a.email or ""), ("phones", a.phone or "")]
        for c in p.crm:
            stored += [("emails", c.email or ""), ("phones", c.phone or "")]
        for r in p.recordings:
            stored += [("phones", r.caller or ""), ("phones", r.callee or "")]
        for d in p.directory:
            stored += [("ldap_uids", d.uid), ("emails", d.mail or "")]
            stored += [("phones", d.telephone_number or ""), ("phones", d.mobile or "")]
        for m in p.mailing:
            stored += [("emails", m.email)]
    holds = []
    for n, (kind, value) in enumerate(v for v in stored if v[1]):
        identities = Identities.lenient(**{kind: [rng.choice(written_otherwise(kind, value, rng))]})
        if identities:
            holds.append(ActiveHold(f"LIT-{n}", identities, rng.choice(CATEGORIES)))
    # A case names several identifiers of one person or of two: each of them counts.
    named = [v for v in stored if v[1]]
    for n in range(0, len(named) - 1, 3):
        (k1, v1), (k2, v2) = named[n], rng.choice(named)
        named_so: dict[str, list[str]] = {k1: [rng.choice(written_otherwise(k1, v1, rng))]}
        named_so.setdefault(k2, []).append(rng.choice(written_otherwise(k2, v2, rng)))
        holds.append(ActiveHold(f"CASE-{n}", Identities.lenient(**named_so), rng.choice(CATEGORIES)))
    for n in range(len(holds)):
        nobody = {"emails": [f"nobody{n}@example.org"], "phones": [f"+4420790{n:05d}"]}
        holds.append(
            ActiveHold(f"NONE-{n}", Identities(**rng.choice([nobody, {"customer_ids": [f"Z-{n}"]}])), None)
        )
    rng.shuffle(holds)
    return holds


async def one_search_per_hold(
    store: StoreSession, holds: list[ActiveHold]
) -> tuple[dict[tuple[str, str], str], list[Record]]:
    """How every hold was applied before: each searched the store on its own. And every
    record any of them found."""
    held: dict[tuple[str, str], str] = {}
    found: list[Record] = []
    for hold in holds:
        for r in await store.find(hold.identities):
            found.append(r)
            if hold.categories is None or r.category in hold.categories:
                held.setdefault(r.key, hold.case_reference)
    return held, found


class Counting:
    """A store session that counts its searches."""

    def __init__(self, store: StoreSession) -> None:
        self.store = store
        self.searches = 0

    async def find(self, identities: Identities) -> list[Record]:
        self.searches += 1
        return await self.store.find(identities)


class Holds:
    def __init__(self, holds: list[ActiveHold]) -> None:
        self.holds = holds

    async def active(self, system: str, moment: datetime) -> list[ActiveHold]:
        return self.holds


async def assert_same_cover(adapter: StoreAdapter, everyone: list[PersonSeed]) -> None:
    rng = random.Random(17)
    holds = holds_for(everyone, rng)
    assert len(hold_cover.searches(holds)) > 3  # several searches, each of several holds
    subjects = [p.subject for p in everyone if p.subject is not None][:6]
    async with adapter.session() as store:
        expected, found_by_holds = await one_search_per_hold(store, holds)
        assert expected, "the holds cover nothing: the test would prove nothing"
        for subject in subjects:
            known = KnownIdentities(
                given=Identities.lenient(
                    customer_ids=[subject.customer_id], emails=subject.emails, phones=subject.phones
                )
            )
            theirs = await store.find(known.all)
            # Many people's records, as if all one subject's: what is on them is stripped of
            # `owner`, and no identifier is given as the subject's, so that no hold covers them
            # for naming the subject (test_worker_holds) and the searches alone are compared.
            records = [
                r.model_copy(update={"owner": Identities()})
                for r in {r.key: r for r in [*theirs, *found_by_holds]}.values()
            ]
            known = KnownIdentities(given=Identities())
            wanted = {r.key: expected[r.key] for r in records if r.key in expected}
            assert all(r.searchable is not None for r in records)  # every store tells
            counted = Counting(store)
            # Found by the subject's search: what is on each record decides, no search.
            got = await held_records(
                counted, adapter.system, Holds(holds), NOW, RequestType.ERASURE, known, records
            )
            assert got == wanted and counted.searches == 0
            # Read back from a journal (nothing on them): the holds' identifiers are searched.
            bare = [r.model_copy(update={"searchable": None}) for r in records]
            got = await held_records(
                counted, adapter.system, Holds(holds), NOW, RequestType.ERASURE, known, bare
            )
            assert got == wanted and counted.searches == len(hold_cover.searches(holds))


@pytest.fixture
async def stores(
    pg_server: str, slapd: LdapSettings, tmp_path: Path, demo_seed: SeedFile
) -> AsyncIterator[tuple[list[StoreAdapter], list[PersonSeed]]]:
    everyone = people(demo_seed)
    names = {
        system: f"lethe_it_{uuid4().hex[:12]}"
        for system in ("billing", "crm", "recordings", "mailing", "directory")
    }
    billing = BillingAdapter(f"{pg_server}/{names['billing']}")
    crm = CrmAdapter(f"{pg_server}/{names['crm']}")
    recordings = RecordingsAdapter(f"{pg_server}/{names['recordings']}", tmp_path)
    mailing = MailingAdapter(f"{pg_server}/{names['mailing']}", "k")
    directory = DirectoryAdapter(f"{pg_server}/{names['directory']}", slapd)
    adapters: list[StoreAdapter] = [billing, crm, recordings, mailing, directory]
    try:
        for adapter in adapters:
            await adapter.start()
        async with billing.pool.acquire() as conn:
            await billing_seed.write(conn, [a for p in everyone for a in p.billing])
        async with crm.pool.acquire() as conn:
            await crm_seed.write(conn, [c for p in everyone for c in p.crm])
        async with recordings.pool.acquire() as conn:
            await recordings_seed.write(conn, tmp_path, [r for p in everyone for r in p.recordings])
        async with mailing.pool.acquire() as conn:
            await mailing_seed.write_lists(conn, demo_seed.mailing_lists + synthetic.people(1).mailing_lists)
            await mailing_seed.write(conn, "k", [s for p in everyone for s in p.mailing])
        # The session's directory is shared with other tests, which write and erase the demo's
        # people in it: only the synthetic ones are added (whatever else is there is searched
        # alike by both ways).
        synthetic_only = [e for p in everyone if p.label.startswith("hc") for e in p.directory]
        await directory_seed.write(directory.directory, synthetic_only)
        yield adapters, everyone
    finally:
        for adapter in adapters:
            await adapter.close()
        for name in names.values():
            await drop_database(pg_server, name)


async def test_holds_searched_together_cover_what_each_holds_own_search_covers(
    stores: tuple[list[StoreAdapter], list[PersonSeed]], monkeypatch: pytest.MonkeyPatch
) -> None:
    adapters, everyone = stores
    monkeypatch.setattr(hold_cover, "SEARCH_SIZE", 48)
    for adapter in adapters:
        await assert_same_cover(adapter, everyone)


async def test_every_date_and_fact_a_record_carries_is_one_its_store_declares(
    stores: tuple[list[StoreAdapter], list[PersonSeed]],
) -> None:
    """What a retention rule may name is checked at start-up against `record_terms`: a store
    that put a date or fact on its records without declaring it would have a correct rule
    refused, and one it declares but never sets would let a rule count from nothing."""
    adapters, everyone = stores
    for adapter in adapters:
        carried: dict[str, set[str]] = {}
        async with adapter.session() as store:
            for person in everyone:
                if person.subject is None:
                    continue
                ids = Identities.lenient(
                    customer_ids=[person.subject.customer_id],
                    emails=person.subject.emails,
                    phones=person.subject.phones,
                )
                for record in await store.find(ids):
                    carried.setdefault(record.category, set()).update(record.dates, record.facts)
        assert carried, adapter.system
        for category, names in carried.items():
            assert names <= set(adapter.record_terms[category]), (adapter.system, category)


ALICE = Identities(customer_ids=["C-1001"], emails=["alice.hartley@example.co.uk"])
POLICY = RetentionPolicy(load_policy(DEFAULT_POLICY_FILE))


def erase(system: str) -> EraseSubject:
    return EraseSubject(
        request_id=f"held-{uuid4().hex[:8]}",
        system=system,
        subject_ref=subject_ref("k", ALICE),
        sealed_identifiers="sealed",
    )


async def test_a_hold_on_the_subjects_email_keeps_records_that_carry_only_their_customer_id(
    fresh_db: str, tmp_path: Path
) -> None:
    """Legal holds Alice by her e-mail; her erasure names it and her customer id. Her call
    recording carries only the customer id (and the numbers on the call): it is hers, so kept."""
    adapter = RecordingsAdapter(fresh_db, tmp_path)
    await adapter.start()
    try:
        (tmp_path / "REC-1.wav").write_bytes(b"RIFF")
        await adapter.pool.execute(
            "INSERT INTO recordings (recording_id, customer_id, caller, callee, recorded_at,"
            " duration_s, path) VALUES ('REC-1', 'C-1001', '07700 900461', '0800 123 4567', now(),"
            " 60, 'REC-1.wav')"
        )
        hold = ActiveHold("LIT-1", Identities(emails=["alice.hartley@example.co.uk"]), None)
        outcome = await execute(erase("recordings"), ALICE, adapter, POLICY, utc_clock, holds=Holds([hold]))
        (recordings,) = outcome.categories
        assert (recordings.erased, [r.hold_reference for r in recordings.retained]) == (0, ["LIT-1"])
        assert (tmp_path / "REC-1.wav").exists()
    finally:
        await adapter.close()


async def test_a_hold_on_an_address_only_a_record_carries_keeps_that_record_alone(fresh_db: str) -> None:
    """Two contacts under Alice's customer id; one also carries the family's mailbox, on which
    Ben's litigation hold stands. That contact is kept; the other is Alice's alone and erased,
    as she asked (an address on one of her records is not hers for holding all of them)."""
    adapter = CrmAdapter(fresh_db)
    await adapter.start()
    try:
        await adapter.pool.executemany(
            "INSERT INTO contacts (contact_id, customer_id, full_name, email, created_on)"
            " VALUES ($1, 'C-1001', 'Alice Hartley', $2, current_date - 400)",
            [("CT-1", "alice.hartley@example.co.uk"), ("CT-2", "hartleys@family.example")],
        )
        hold = ActiveHold("LIT-BEN", Identities(emails=["hartleys@family.example"]), None)
        request = Identities(customer_ids=["C-1001"])
        outcome = await execute(erase("crm"), request, adapter, POLICY, utc_clock, holds=Holds([hold]))
        contacts = {c.category: c for c in outcome.categories}["contacts"]
        assert (contacts.erased, sum(r.count for r in contacts.retained)) == (1, 1)
    finally:
        await adapter.close()


async def test_a_hold_on_a_number_written_beside_another_in_one_field_keeps_the_record(
    fresh_db: str,
) -> None:
    """Alice's contact carries `07700 900123 / 01632 960000`, two numbers in one field, and
    a hold stands on the first. The field cannot be read as one number, so no number read off
    the record matched the hold, and the contact was erased under it. Her other contact, with
    the same numbers apart, is kept as before; one with neither number is erased."""
    adapter = CrmAdapter(fresh_db)
    await adapter.start()
    try:
        await adapter.pool.executemany(
            "INSERT INTO contacts (contact_id, customer_id, full_name, phone, created_on)"
            " VALUES ($1, 'C-1001', 'Alice Hartley', $2, current_date - 400)",
            [("CT-1", "07700 900123 / 01632 960000"), ("CT-2", "07700 900123"), ("CT-3", "01632 960999")],
        )
        hold = ActiveHold("LIT-7", Identities(phones=["+447700900123"]), None)
        request = Identities(customer_ids=["C-1001"])
        outcome = await execute(erase("crm"), request, adapter, POLICY, utc_clock, holds=Holds([hold]))
        contacts = {c.category: c for c in outcome.categories}["contacts"]
        assert contacts.erased == 1
        assert [(r.hold_reference, r.count) for r in contacts.retained] == [("LIT-7", 2)]
        left = {r["contact_id"] for r in await adapter.pool.fetch("SELECT contact_id FROM contacts")}
        assert left == {"CT-1", "CT-2"}
    finally:
        await adapter.close()
