"""The default retention policy and holds, applied by the real worker handler to real stores,
with an injected clock: held vs not held, inside vs past retention, active vs ended contract,
deferred erasure when retention ends, restriction honoured by processing paths, lift."""

from __future__ import annotations

from datetime import UTC, date, datetime
from pathlib import Path

import pytest

from cli.seed import SeedFile
from services.billing import processing as billing_processing
from services.billing import seed as billing_seed
from services.billing.store import BillingAdapter
from services.crm import processing as crm_processing
from services.crm import seed as crm_seed
from services.crm.store import CrmAdapter
from services.mailing import processing as mailing_processing
from services.mailing import seed as mailing_seed
from services.mailing.store import MailingAdapter
from services.recordings import processing as recordings_processing
from services.recordings import seed as recordings_seed
from services.recordings.store import RecordingsAdapter
from shared.contracts import EraseSubject, LiftRestriction, OutcomeReported, RestrictSubject, SubjectCommand
from shared.crypto import subject_ref
from shared.identity import Identities
from shared.policy.evaluate import RetentionPolicy
from shared.policy.model import DEFAULT_POLICY_FILE, load_policy
from shared.worker.handler import execute
from shared.worker.holds import ActiveHold
from shared.worker.ports import StoreAdapter
from tests.conftest import person

pytestmark = pytest.mark.integration
POLICY = RetentionPolicy(load_policy(DEFAULT_POLICY_FILE))
ALICE = Identities(customer_ids=["C-1001"], emails=["alice.hartley@example.co.uk"], phones=["+447700900123"])
CHLOE = Identities(emails=["chloe.patel@example.com"], phones=["+447700900789"])
REF = subject_ref("k", ALICE)


def at(day: date):  # type: ignore[no-untyped-def]
    return lambda: datetime(day.year, day.month, day.day, 12, tzinfo=UTC)


def command(
    cls: type[SubjectCommand], system: str, resume_of: OutcomeReported | None = None
) -> SubjectCommand:
    return cls(
        request_id="pol-1",
        system=system,
        subject_ref=REF,
        sealed_identifiers="x",
        resume_of=resume_of.command_id if resume_of else None,
    )


class FixedHolds:
    def __init__(self, *holds: ActiveHold) -> None:
        self.holds = list(holds)

    async def active(self, system: str, moment: datetime) -> list[ActiveHold]:
        return self.holds


def by_category(outcome: OutcomeReported) -> dict[str, tuple[int, int, list[tuple[str | None, date | None]]]]:
    return {
        c.category: (c.found, c.erased, [(r.rule_id or r.hold_reference, r.retain_until) for r in c.retained])
        for c in outcome.categories
    }


async def run(
    adapter: StoreAdapter, cmd: SubjectCommand, ids: Identities, day: date, holds: FixedHolds | None = None
) -> OutcomeReported:
    return await execute(cmd, ids, adapter, POLICY, at(day), holds)


@pytest.fixture
async def billing(fresh_db: str, demo_seed: SeedFile):  # type: ignore[no-untyped-def]
    adapter = BillingAdapter(fresh_db)
    await adapter.start()
    async with adapter.pool.acquire() as conn:
        await billing_seed.write(conn, person(demo_seed, "alice").billing + person(demo_seed, "ben").billing)
    yield adapter
    await adapter.close()


async def test_billing_keeps_tax_records_strips_contact_and_erases_the_rest(billing: BillingAdapter) -> None:
    outcome = await run(billing, command(EraseSubject, "billing"), ALICE, date(2026, 11, 27))
    assert outcome.status == "done" and outcome.policy_version
    cats = by_category(outcome)
    assert cats["accounts"] == (2, 2, [])  # both closed
    assert cats["invoices"][1] == 1  # the 2019 invoice is past six years
    assert sorted(cats["invoices"][2]) == [
        ("billing.invoices.hmrc", date(2031, 5, 1)),
        ("billing.invoices.hmrc", date(2032, 1, 1)),
    ]
    assert cats["call_detail_records"] == (
        2,
        0,
        [
            ("billing.cdrs.bill-challenge", date(2026, 12, 3)),
            ("billing.cdrs.bill-challenge", date(2027, 2, 20)),
        ],
    )
    assert cats["radius_sessions"] == (1, 1, [])  # February session: past six months
    row = await billing.pool.fetchrow(
        "SELECT billing_name, billing_email FROM invoices WHERE invoice_id = 'INV-1001-2026-01'"
    )
    assert row["billing_name"] == "Alice Hartley" and row["billing_email"] is None
    assert await billing.pool.fetchval("SELECT count(*) FROM accounts WHERE customer_id = 'C-1002'") == 1


async def test_deferred_erasure_erases_what_was_kept_once_retention_ends(billing: BillingAdapter) -> None:
    first = await run(billing, command(EraseSubject, "billing"), ALICE, date(2026, 11, 27))
    # The accounts are gone, so the identifiers no longer reach the invoices: the follow-up
    # finds them through the first command's plan.
    later = await run(billing, command(EraseSubject, "billing", resume_of=first), ALICE, date(2027, 3, 1))
    cats = by_category(later)
    assert cats["call_detail_records"][1] == 2
    assert [u for _, u in cats["invoices"][2]] == [date(2031, 5, 1), date(2032, 1, 1)]
    final = await run(billing, command(EraseSubject, "billing", resume_of=later), ALICE, date(2032, 6, 1))
    assert sum(c.erased for c in final.categories) == 4  # 2 invoices, 2 payments
    assert not any(c.retained for c in final.categories)
    assert (
        await billing.pool.fetchval(
            "SELECT count(*) FROM invoices WHERE account_id IN ('ACC-1001','ACC-2044')"
        )
        == 0
    )
    assert await billing.pool.fetchval("SELECT count(*) FROM invoices WHERE account_id = 'ACC-1002'") == 1


async def test_a_hold_keeps_records_a_rule_would_erase(billing: BillingAdapter) -> None:
    hold = ActiveHold("LIT-2026-14", Identities(customer_ids=["C-1001"]), frozenset({"invoices", "accounts"}))
    outcome = await run(
        billing, command(EraseSubject, "billing"), ALICE, date(2026, 11, 27), FixedHolds(hold)
    )
    cats = by_category(outcome)
    assert cats["invoices"][1] == 0  # even the 2019 invoice, past retention, is held
    assert ("LIT-2026-14", None) in cats["invoices"][2]
    # The hold names customer C-1001, Alice's: her other account ACC-2044 (C-2044, found by her
    # address) is hers as much, and kept under it too (it cites the hold; nothing of it erased).
    assert cats["accounts"][:3] == (2, 0, [("LIT-2026-14", None)])
    assert (
        await billing.pool.fetchval("SELECT count(*) FROM invoices WHERE invoice_id = 'INV-1001-2019-04'")
        == 1
    )


async def test_restriction_is_honoured_by_dunning_and_lift_restores(billing: BillingAdapter) -> None:
    ben = Identities(customer_ids=["C-1002"])
    async with billing.pool.acquire() as conn:
        assert await billing_processing.accounts_for_dunning(conn) == ["ACC-1002"]
    restricted = await run(billing, command(RestrictSubject, "billing"), ben, date(2026, 11, 27))
    assert restricted.status == "done" and sum(c.restricted for c in restricted.categories) == 5
    async with billing.pool.acquire() as conn:
        assert await billing_processing.accounts_for_dunning(conn) == []
    lifted = await run(billing, command(LiftRestriction, "billing"), ben, date(2026, 11, 28))
    assert lifted.status == "done"
    async with billing.pool.acquire() as conn:
        assert await billing_processing.accounts_for_dunning(conn) == ["ACC-1002"]


@pytest.fixture
async def crm(fresh_db: str, demo_seed: SeedFile):  # type: ignore[no-untyped-def]
    adapter = CrmAdapter(fresh_db)
    await adapter.start()
    async with adapter.pool.acquire() as conn:
        await crm_seed.write(conn, [c for p in demo_seed.people for c in p.crm])
    yield adapter
    await adapter.close()


async def test_crm_keeps_an_active_customer_until_contract_end_then_erases(crm: CrmAdapter) -> None:
    first = await run(crm, command(EraseSubject, "crm"), CHLOE, date(2026, 11, 27))
    cats = by_category(first)
    assert cats["contacts"][2] == [("crm.contacts.contract", date(2027, 1, 9))]
    assert cats["interactions"][2] == [("crm.interactions.contract", date(2027, 1, 9))]
    assert cats["purchases"][2] == [("crm.purchases.contract-plus-6y", date(2033, 1, 9))]
    assert cats["forum_memberships"] == (1, 1, [])
    buyer = await crm.pool.fetchrow(
        "SELECT buyer_name, buyer_email, product FROM purchases WHERE purchase_id='PUR-303'"
    )
    assert buyer["buyer_name"] is None and buyer["buyer_email"] is None and buyer["product"]
    after = await run(crm, command(EraseSubject, "crm", resume_of=first), CHLOE, date(2027, 1, 10))
    cats = by_category(after)
    assert cats["contacts"][1] == 1 and cats["interactions"][1] == 1
    assert cats["purchases"][2] == [("crm.purchases.contract-plus-6y", date(2033, 1, 9))]


async def test_crm_open_ended_contract_keeps_the_contact_with_no_end_date(crm: CrmAdapter) -> None:
    outcome = await run(
        crm, command(EraseSubject, "crm"), Identities(customer_ids=["C-1002"]), date(2026, 11, 27)
    )
    assert by_category(outcome)["contacts"][2] == [("crm.contacts.contract", None)]


async def test_crm_restriction_keeps_contacts_out_of_campaigns(crm: CrmAdapter) -> None:
    await run(crm, command(RestrictSubject, "crm"), CHLOE, date(2026, 11, 27))
    async with crm.pool.acquire() as conn:
        assert "CRM-503" not in await crm_processing.contacts_for_campaign(conn)
        assert "CRM-502" in await crm_processing.contacts_for_campaign(conn)


async def test_mailing_keeps_consent_as_proof_and_suspends_on_restriction(
    fresh_db: str, demo_seed: SeedFile
) -> None:
    adapter = MailingAdapter(fresh_db, "k")
    await adapter.start()
    try:
        async with adapter.pool.acquire() as conn:
            await mailing_seed.write_lists(conn, demo_seed.mailing_lists)
            await mailing_seed.write(conn, "k", [s for p in demo_seed.people for s in p.mailing])
            assert "SUB-4" in await mailing_processing.recipients(conn, "news")
        await run(adapter, command(RestrictSubject, "mailing"), CHLOE, date(2026, 11, 27))
        async with adapter.pool.acquire() as conn:
            assert "SUB-4" not in await mailing_processing.recipients(conn, "news")
        erased = await run(adapter, command(EraseSubject, "mailing"), CHLOE, date(2026, 11, 28))
        cats = {c.category: c for c in erased.categories}
        assert cats["subscribers"].erased == 1 and cats["subscribers"].note
        assert cats["consent_records"].retained[0].rule_id == "mailing.consents.proof"
        assert await adapter.pool.fetchval("SELECT count(*) FROM consents WHERE consent_id = 'CON-4'") == 1
    finally:
        await adapter.close()


async def test_recordings_processor_data_is_redirected_and_restricted_audio_leaves_playback(
    fresh_db: str, tmp_path: Path
) -> None:
    adapter = RecordingsAdapter(fresh_db, tmp_path)
    await adapter.start()
    try:
        seeds = [
            recordings_seed.RecordingSeed(
                recording_id="R-OWN",
                customer_id="C-1001",
                caller="07700900123",
                callee="+441708000100",
                recorded_at=datetime(2026, 11, 1, tzinfo=UTC),
                duration_s=10,
            ),
            recordings_seed.RecordingSeed(
                recording_id="R-PROC",
                caller="+441632960999",
                callee="07700 900123",
                recorded_at=datetime(2026, 11, 2, tzinfo=UTC),
                duration_s=10,
                processed_for="Riverside Surgery",
            ),
        ]
        async with adapter.pool.acquire() as conn:
            await recordings_seed.write(conn, tmp_path, seeds)
        restricted = await run(adapter, command(RestrictSubject, "recordings"), ALICE, date(2026, 11, 27))
        assert restricted.categories[0].restricted == 1 and restricted.categories[0].redirected[0].count == 1
        assert list(tmp_path.glob("restricted/**/R-OWN.wav"))
        async with adapter.pool.acquire() as conn:
            assert await recordings_processing.playable_recordings(conn) == ["R-PROC"]
        await run(adapter, command(LiftRestriction, "recordings"), ALICE, date(2026, 11, 28))
        assert not list(tmp_path.glob("restricted/**/*.wav")) and list(tmp_path.glob("2026/11/R-OWN.wav"))
        erased = await run(adapter, command(EraseSubject, "recordings"), ALICE, date(2026, 11, 29))
        category = erased.categories[0]
        assert category.erased == 1 and category.redirected[0].controller == "Riverside Surgery"
        assert [p.name for p in tmp_path.rglob("*.wav")] == ["R-PROC.wav"]
    finally:
        await adapter.close()
