"""Holds searched together: how their identifiers are put into searches, and how what a search
found is told apart by hold (the equivalence with one search per hold, on real stores, is
tests/integration/test_hold_searches.py)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from shared.contracts import RequestType
from shared.contracts.outcomes import Action
from shared.identity import Identities, KnownIdentities
from shared.worker import hold_cover, journal
from shared.worker.handler import held_records
from shared.worker.holds import ActiveHold
from shared.worker.ports import Decision, Record, SearchTooBroad

NOW = datetime(2026, 11, 27, tzinfo=UTC)


def hold(reference: str, **identifiers: list[str]) -> ActiveHold:
    return ActiveHold(reference, Identities(**identifiers), None)


def test_no_holds_no_search() -> None:
    assert hold_cover.searches([]) == []


def test_holds_share_searches_up_to_the_size_and_a_big_one_has_its_own() -> None:
    holds = [hold(f"H{n}", customer_ids=[f"C-{n}"], emails=[f"p{n}@example.com"]) for n in range(5)]
    big = hold("BIG", customer_ids=[f"C-{n}" for n in range(10, 17)])
    sets = hold_cover.searches([*holds[:2], big, *holds[2:]], size=4)
    assert [s.count() for s in sets] == [4, 7, 4, 2]
    assert Identities().union(*sets) == Identities().union(*(h.identities for h in [*holds, big]))


def test_an_identifier_two_holds_share_is_searched_once() -> None:
    a, b = hold("A", emails=["x@example.com"]), hold("B", emails=["x@example.com"], phones=["+447700900123"])
    assert [s.count() for s in hold_cover.searches([a, b], size=2)] == [2]


def test_a_record_is_covered_by_each_hold_whose_identifier_found_it_or_a_variant_of_it() -> None:
    account = Record(
        category="accounts",
        record_id="A-1",
        matched=Identities(customer_ids=["C-1"]),
        variants=Identities(emails=["alice@example.com"]),  # it holds alice+shop@
    )
    invoice = account.model_copy(update={"category": "invoices", "record_id": "I-1", "group": account.key})
    found = hold_cover.index([account, invoice])
    by_id, by_mailbox = hold("H1", customer_ids=["C-1"]), hold("H2", emails=["alice@example.com"])
    elsewhere = hold("H3", customer_ids=["C-2"])
    expected = {account.key: "accounts", invoice.key: "invoices"}
    assert hold_cover.found_by(by_id, found) == expected
    assert hold_cover.found_by(by_mailbox, found) == expected
    assert hold_cover.found_by(elsewhere, found) == {}


def test_the_index_finds_the_holds_a_records_identifiers_match_as_a_search_would() -> None:
    by_address = hold("A", emails=["alice@example.com"])
    by_sub_address = hold("B", emails=["alice+legal@example.com"])
    by_extension = hold("C", phones=["+442079460000 x12"])
    by_other_extension = hold("D", phones=["+442079460000 x13"])
    by_customer = hold("E", customer_ids=["C-1"])
    unrelated = hold("F", emails=["bob@example.com"], phones=["+447700900999"])
    index = hold_cover.HoldIndex(
        [by_address, by_sub_address, by_extension, by_other_extension, by_customer, unrelated]
    )
    # A call from the switchboard's main number, to alice's address: a search for an extension
    # finds the main number (a variant), as for the address's sub-address.
    call = Identities(emails=["alice@example.com"], phones=["+442079460000"])
    assert [h.case_reference for h in index.covering(call)] == ["A", "B", "C", "D"]
    # One extension does not find another's line.
    desk = Identities(phones=["+442079460000 x12"], customer_ids=["C-1"])
    assert [h.case_reference for h in index.covering(desk)] == ["C", "E"]
    assert index.covering(Identities(emails=["carol@example.com"])) == []


def test_what_a_record_is_searchable_by_is_never_written_with_a_plan() -> None:
    """It is the record's identifiers in clear, a call's other party too: kept in memory for
    the holds, never in the journal (whose plans keep no identifiers once the outcome is).
    So are the texts of a record with a value that cannot be read."""
    record = Record(
        category="calls",
        record_id="R-1",
        searchable=Identities(emails=["alice@example.com"]),
        unreadable=("phones",),
        unread_texts=("07700 900461 / 01632 960000",),
    )
    plan = journal.PLAN.dump_json([Decision(record=record, action=Action.ERASED)])
    assert b"alice" not in plan and b"searchable" not in plan
    assert b"900461" not in plan and b"unread_texts" not in plan
    assert b"alice" not in record.model_dump_json().encode()


def test_a_hold_written_in_a_value_that_cannot_be_read_covers_the_record_its_search_found() -> None:
    """A hold on a number that a record's field holds beside another (read back from a
    journal, the record is covered by what the holds' search found): no number read off the
    record matches it, but it is written there."""
    on_first, on_second, elsewhere = (
        hold("H1", phones=["+447700900461"]),
        hold("H2", phones=["+441632960000"]),
        hold("H3", phones=["+447700900462"]),
    )
    contact = Record(
        category="contacts",
        record_id="CT-1",
        unreadable=("phones",),
        unread_texts=("07700 900461 / 01632 960000",),
    )
    covered = hold_cover.covered_by_search([on_first, on_second, elsewhere], [contact])
    assert covered == {contact.key: [on_first, on_second]}
    # Another spelling of a held mailbox in a list, as the hold's search finds it alone.
    on_alice = hold("H4", emails=["alice@gmail.com"])
    for field in (
        "ben@example.com, a.lice@googlemail.com",
        "ben@y.org/a.lice@gmail.com",
        "ben@y.org|alice@gmail.com",
    ):
        listed = contact.model_copy(update={"unread_texts": (field,)})
        assert hold_cover.written_on(listed, [on_first, on_alice]) == [on_alice], field
    assert hold_cover.written_on(contact.model_copy(update={"unread_texts": ()}), [on_first]) == []


def test_the_index_is_made_again_only_when_the_holds_change() -> None:
    holds = [hold("A", customer_ids=["C-1"])]
    first = hold_cover.HoldIndex.of(holds)
    assert hold_cover.HoldIndex.of(holds) is first
    holds.append(hold("B", customer_ids=["C-2"]))  # a list changed in place is not the same
    assert [
        h.case_reference for h in hold_cover.HoldIndex.of(holds).covering(Identities(customer_ids=["C-2"]))
    ] == ["B"]


class _NarrowStore:
    """A store that answers at most two identifiers a search, as an LDAP server's size limit
    makes one refuse a search that finds too much."""

    def __init__(self, records: list[Record]) -> None:
        self.records = records
        self.asked: list[int] = []

    async def find(self, identities: Identities) -> list[Record]:
        self.asked.append(identities.count())
        if identities.count() > 2:
            raise SearchTooBroad("size limit")
        wanted = set(identities.pairs())
        found = []
        for record in self.records:
            matched = Identities.normalised(
                {k: [v for k, v in record.owner.pairs() if (k, v) in wanted] for k in ("customer_ids",)}
            )
            if matched:
                found.append(record.model_copy(update={"matched": matched}))
        return found


async def test_a_search_the_store_finds_too_broad_is_asked_again_in_halves() -> None:
    """Records read back from a journal carry nothing to match: the holds are searched for, and
    a search refused as too broad is split until the store answers."""
    records = [
        Record(category="invoices", record_id=f"I-{n}", owner=Identities(customer_ids=[f"C-{n}"]))
        for n in range(5)
    ]
    store = _NarrowStore(records)
    holds = [hold(f"H{n}", customer_ids=[f"C-{n}"]) for n in range(5)]
    known = KnownIdentities(given=Identities(customer_ids=["C-0"]))
    bare = [r.model_copy(update={"owner": Identities()}) for r in records]
    held = await held_records(store, "billing", FixedHolds(holds), NOW, RequestType.ERASURE, known, bare)  # type: ignore[arg-type]
    assert held == {r.key: f"H{n}" for n, r in enumerate(records)}
    assert store.asked[0] == 5 and sum(n for n in store.asked if n <= 2) == 5  # each answered once


async def test_a_single_identifier_too_broad_fails_the_command() -> None:
    store = _NarrowStore([])
    store.find = _always_too_broad  # type: ignore[method-assign]
    known = KnownIdentities(given=Identities(customer_ids=["C-0"]))
    bare = [Record(category="invoices", record_id="I-0")]
    with pytest.raises(SearchTooBroad):
        await held_records(
            store,
            "billing",
            FixedHolds([hold("H", customer_ids=["C-1"])]),
            NOW,
            RequestType.ERASURE,
            known,
            bare,
        )  # type: ignore[arg-type]


async def _always_too_broad(identities: Identities) -> list[Record]:
    raise SearchTooBroad("size limit")


class FixedHolds:
    def __init__(self, holds: list[ActiveHold]) -> None:
        self.holds = holds

    async def active(self, system: str, moment: datetime) -> list[ActiveHold]:
        return self.holds


def test_a_hold_on_a_customer_id_typed_in_another_case_covers_the_record() -> None:
    """Legal types `c-1001`; the billing system holds `C-1001`. A hold errs on keeping."""
    index = hold_cover.HoldIndex(
        [hold("LIT-3", customer_ids=["c-1001"]), hold("LIT-4", customer_ids=["C-1002"])]
    )
    assert [h.case_reference for h in index.covering(Identities(customer_ids=["C-1001"]))] == ["LIT-3"]


async def test_a_hold_naming_the_subjects_customer_id_in_another_case_covers_all_of_theirs() -> None:
    record = Record(category="recordings", record_id="R-1", owner=Identities(customer_ids=["C-1001"]))
    found = record.model_copy(update={"searchable": Identities(phones=["+447700900461"])})
    known = KnownIdentities(given=Identities(customer_ids=["C-1001"]))
    held = await held_records(
        _NarrowStore([]),
        "recordings",
        FixedHolds([hold("LIT-5", customer_ids=["c-1001"])]),
        NOW,
        RequestType.ERASURE,
        known,
        [found],
    )  # type: ignore[arg-type]
    assert held == {record.key: "LIT-5"}


def test_a_hold_on_a_number_covers_a_record_that_carries_it_with_a_note() -> None:
    """The CRM holds the subject's mobile as `07700 900461 (mobile)`: read as the number, so a
    hold on it covers the contact (unread, it did not, and the contact was erased)."""
    index = hold_cover.HoldIndex([hold("LIT-6", phones=["07700 900461"])])
    on_record = Identities.lenient(customer_ids=["C-1001"], phones=["07700 900461 (mobile)"])
    assert [h.case_reference for h in index.covering(on_record)] == ["LIT-6"]
