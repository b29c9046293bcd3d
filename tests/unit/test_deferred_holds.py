"""A hold placed after an erasure kept records for later covers them when the deferred erasure
runs, even when nothing links them to an identifier any more (shared/worker/handler.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, date, datetime
from typing import Any
from uuid import UUID

from shared.contracts import Action, EraseSubject
from shared.crypto import subject_ref
from shared.identity import Identities
from shared.policy.evaluate import RetentionPolicy
from shared.policy.model import DEFAULT_POLICY_FILE, load_policy
from shared.worker.handler import execute
from shared.worker.holds import ActiveHold
from shared.worker.journal import PLAN, stripped
from shared.worker.matching import match
from shared.worker.ports import Decision, JournalEntry, Record

POLICY = RetentionPolicy(load_policy(DEFAULT_POLICY_FILE))
ALICE = Identities(customer_ids=["C-1"], emails=["alice@example.org"])
INVOICED = date(2026, 1, 10)  # kept six years from here by the billing policy


class Billing:
    """Accounts and their invoices; an invoice is found only through its account, as in the
    real store's statement, so once the account is erased no identifier finds it."""

    system = "billing"
    categories = ("accounts", "invoices", "payments", "call_detail_records", "radius_sessions")

    def __init__(self) -> None:
        self.accounts = {"ACC-1": ALICE}
        self.invoices = {"INV-1": "ACC-1"}
        self.journal: dict[UUID, JournalEntry] = {}

    @asynccontextmanager
    async def session(self) -> AsyncIterator[Billing]:
        yield self

    async def load_journal(self, command_id: UUID) -> JournalEntry | None:
        return self.journal.get(command_id)

    async def save_plan(self, command_id: UUID, plan: Sequence[Decision]) -> list[Decision]:
        self.journal[command_id] = JournalEntry(plan=list(plan))
        return list(plan)

    async def save_outcome(self, command_id: UUID, outcome: dict[str, Any]) -> None:
        plan = PLAN.validate_json(stripped(self.journal[command_id].plan or []))  # as the journal strips
        self.journal[command_id] = JournalEntry(plan=plan, outcome=outcome)

    async def find(self, identities: Identities) -> list[Record]:
        found: list[Record] = []
        for account_id, owner in self.accounts.items():
            matched, variants = match(owner, identities)
            if not (matched or variants):
                continue
            head = Record(
                category="accounts",
                record_id=account_id,
                owner=owner,
                matched=matched,
                dates={"opened_on": date(2020, 1, 1), "closed_on": date(2021, 1, 1)},
                facts={"contract_active": False},
            )
            found.append(head)
            found += [
                Record(
                    category="invoices",
                    record_id=invoice,
                    group=head.key,
                    owner=owner,
                    matched=matched,
                    dates={"issued_on": INVOICED},
                )
                for invoice, account in self.invoices.items()
                if account == account_id
            ]
        return found

    async def apply(self, plan: Sequence[Decision]) -> None:
        for d in plan:
            if d.action is Action.ERASED:
                (self.accounts if d.record.category == "accounts" else self.invoices).pop(
                    d.record.record_id, None
                )

    async def unconfirmed(self, plan: Sequence[Decision]) -> list[tuple[str, str]]:
        return []

    async def existing(self, keys: Sequence[tuple[str, str]]) -> set[tuple[str, str]]:
        return {k for k in keys if k[1] in self.accounts or k[1] in self.invoices}


class Holds:
    def __init__(self, *holds: ActiveHold) -> None:
        self.holds = list(holds)

    async def active(self, system: str, moment: datetime) -> list[ActiveHold]:
        return self.holds


def command(**extra: Any) -> EraseSubject:
    return EraseSubject(
        request_id="r-1",
        system="billing",
        subject_ref=subject_ref("k", ALICE),
        sealed_identifiers="sealed",
        **extra,
    )


async def deferred_erasure(store: Billing, holds: Holds, subject: Identities) -> dict[str, Decision]:
    first = command()
    await execute(first, subject, store, POLICY, lambda: datetime(2026, 11, 27, tzinfo=UTC), Holds())
    plan = {d.record.record_id: d for d in store.journal[first.message_id].plan or []}
    assert plan["ACC-1"].action is Action.ERASED and plan["INV-1"].action is Action.RETAINED
    later = command(resume_of=first.message_id, reason="retention ended")
    when = datetime(2032, 2, 1, tzinfo=UTC)  # the invoice's six years are over
    await execute(later, subject, store, POLICY, lambda: when, holds)
    return {d.record.record_id: d for d in store.journal[later.message_id].plan or []}


async def test_a_hold_on_the_subject_keeps_a_record_no_identifier_finds_any_more() -> None:
    store = Billing()
    hold = ActiveHold("LIT-7", Identities(customer_ids=["C-1"]), None)
    plan = await deferred_erasure(store, Holds(hold), ALICE)
    assert plan["INV-1"].action is Action.RETAINED and plan["INV-1"].hold_reference == "LIT-7"
    assert "INV-1" in store.invoices


async def test_a_hold_on_someone_else_or_on_other_categories_does_not_keep_it() -> None:
    for hold in (
        ActiveHold("LIT-8", Identities(customer_ids=["C-2"]), None),
        ActiveHold("LIT-9", Identities(customer_ids=["C-1"]), frozenset({"payments"})),
    ):
        store = Billing()
        plan = await deferred_erasure(store, Holds(hold), ALICE)
        assert plan["INV-1"].action is Action.ERASED and "INV-1" not in store.invoices


async def test_a_hold_on_someone_who_shares_only_the_subjects_landline_does_not_keep_it() -> None:
    subject = ALICE.union(Identities(phones=["+441632960100"]))
    neighbour = ActiveHold("LIT-5", Identities(customer_ids=["C-2"], phones=["+441632960100"]), None)
    store = Billing()
    plan = await deferred_erasure(store, Holds(neighbour), subject)
    assert plan["INV-1"].action is Action.ERASED
