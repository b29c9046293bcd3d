"""The rules that decide whose records are whose (shared/worker/matching.py)."""

from __future__ import annotations

from shared.identity import Identities, KnownIdentities
from shared.worker.matching import classify, match
from shared.worker.ports import Record

IAN = Identities(customer_ids=["C-1"], emails=["ian@example.org"], phones=["+441632960100"])


def account(record_id: str, owner: Identities, known: Identities) -> Record:
    matched, variants = match(owner, known)
    return Record(category="accounts", record_id=record_id, owner=owner, matched=matched, variants=variants)


def invoice(record_id: str, parent: Record) -> Record:
    return Record(
        category="invoices",
        record_id=record_id,
        group=parent.key,
        owner=parent.owner,
        matched=parent.matched,
        variants=parent.variants,
    )


def test_a_strong_identifier_makes_a_record_the_subjects_and_teaches_what_it_carries() -> None:
    owner = Identities(customer_ids=["C-1"], emails=["other.address@example.org"], phones=["+447700900001"])
    head = account("A-1", owner, IAN)
    result = classify([head, invoice("I-1", head)], KnownIdentities(given=IAN))
    assert [r.record_id for r in result.certain] == ["A-1", "I-1"] and not result.ambiguous
    assert result.found_by[head.key].kind == "customer_ids" and result.found_by[head.key].source == "given"
    assert result.learnt == Identities(emails=["other.address@example.org"], phones=["+447700900001"])


def test_a_shared_phone_on_someone_elses_record_is_ambiguous_and_teaches_nothing() -> None:
    jo = account("A-2", Identities(customer_ids=["C-2"], phones=["+441632960100"]), IAN)
    result = classify([jo, invoice("I-2", jo)], KnownIdentities(given=IAN))
    assert not result.certain and not result.learnt
    [item] = result.ambiguous
    assert item.reason == "shared_phone" and item.groups == (jo.key,) and len(item.records) == 2
    assert item.conflicting == Identities(customer_ids=["C-2"])


def test_a_record_with_nothing_but_the_given_phone_on_it_goes_to_a_person() -> None:
    """Ben's CRM contact: his name and the household landline Alice's request gives with her
    customer id and address. Nothing on it but the number says whose it is: not erased."""
    alice = KnownIdentities(
        given=Identities(customer_ids=["C-1001"], emails=["alice@example.org"], phones=["+441632960123"])
    )
    ben = account("CT-2", Identities(phones=["+441632960123"]), alice.all)
    result = classify([ben], alice)
    assert not result.certain and not result.learnt
    [item] = result.ambiguous
    assert item.reason == "phone_only" and item.matched == Identities(phones=["+441632960123"])
    # A surgery's recording of a call to that number, held for it as its processor: Lethe
    # changes none of it and refers the person to the surgery, which decides whose it is.
    processed = ben.model_copy(update={"facts": {"processed_for": "Riverside Surgery"}})
    assert classify([processed], alice).certain == [processed]
    # A restriction (or its lift) restricts it at once: a lift undoes it, and a reviewer's one
    # yes ('erase') would be the wrong answer to a restriction's question.
    assert classify([ben], alice, phone_alone=True).certain == [ben]
    # Named by nothing but the number either: the same.
    call = account("R-1", Identities(), IAN).model_copy(
        update={"matched": Identities(phones=["+441632960100"])}
    )
    assert classify([call], KnownIdentities(given=IAN)).ambiguous[0].reason == "phone_only"


def test_a_phone_learnt_not_given_never_erases_on_its_own() -> None:
    known = KnownIdentities(
        given=Identities(emails=["ian@example.org"]), learnt=Identities(phones=["+447700900001"])
    )
    call = account("R-2", Identities(), known.all).model_copy(
        update={"matched": Identities(phones=["+447700900001"])}
    )
    result = classify([call], known)
    assert not result.certain and result.ambiguous[0].reason == "learnt_phone"


def test_another_sub_address_is_for_a_person_to_decide() -> None:
    known = Identities(emails=["ian@example.org"])
    variant = account("S-1", Identities(emails=["ian+news@example.org"]), known)
    assert not variant.matched and variant.variants == known
    assert classify([variant], KnownIdentities(given=known)).ambiguous[0].reason == "mailbox_variant"


def test_an_identifier_finding_more_than_the_limit_goes_to_one_review() -> None:
    shared = Identities(emails=["info@company.example"])
    heads = [
        account(f"A-{n}", Identities(customer_ids=[f"C-{n}"], emails=["info@company.example"]), shared)
        for n in range(5)
    ]
    own = account(
        "A-own",
        Identities(customer_ids=["C-own"], emails=["info@company.example"]),
        shared.union(Identities(customer_ids=["C-own"])),
    )
    known = KnownIdentities(given=shared.union(Identities(customer_ids=["C-own"])))
    result = classify([*heads, own], known, match_limit=3)
    assert [r.record_id for r in result.certain] == ["A-own"]  # its customer id still finds it
    [item] = result.ambiguous
    assert item.reason == "too_many_matches" and len(item.groups) == 5


def test_learnt_strong_identifiers_are_certain_and_say_so() -> None:
    known = KnownIdentities(
        given=Identities(emails=["kim@example.com"]), learnt=Identities(customer_ids=["C-9"])
    )
    contact = account("K-1", Identities(customer_ids=["C-9"], emails=["kim@family.example"]), known.all)
    result = classify([contact], known)
    assert result.found_by[contact.key].source == "learnt"
    assert result.learnt == Identities(emails=["kim@family.example"])


def test_every_account_the_subjects_address_finds_is_theirs_whatever_its_customer_id() -> None:
    """Several accounts of one person (Alice's two in the demo seed), found by the address the
    request gave: an e-mail names one person, so each is hers and what it carries is learnt,
    whether or not the request also named one of the customer ids."""
    for given in (
        Identities(emails=["ann@example.org"]),
        Identities(customer_ids=["C-1"], emails=["ann@example.org"]),
    ):
        known = KnownIdentities(given=given)
        first = account("A-1", Identities(customer_ids=["C-1"], emails=["ann@example.org"]), known.all)
        second = account("A-7", Identities(customer_ids=["C-7"], emails=["Ann@Example.org"]), known.all)
        result = classify([first, second], known)
        assert len(result.certain) == 2 and not result.ambiguous
        assert result.learnt == Identities(customer_ids=["C-1", "C-7"]).minus(given)


def test_a_given_phone_on_a_record_whose_address_cannot_be_read_is_ambiguous() -> None:
    """Ian's landline, on Jo's contact with an address her CRM mangled: that the address cannot
    be read does not make the record Ian's; with it readable it would be Jo's."""
    ian = KnownIdentities(given=Identities(phones=["01632 960100"]))
    owner, unreadable = Identities.read(emails=["jo.reed@example"], phones=["(01632) 960 100"])
    assert unreadable == ("emails",) and not owner.emails
    jo = account("CRM-4002", owner, ian.all).model_copy(update={"unreadable": unreadable})
    [item] = classify([jo], ian).ambiguous
    assert item.reason == "shared_phone"
    # A phone that cannot be read beside the one that matched: still only a number.
    owner, unreadable = Identities.read(phones=["(01632) 960 100", "n/a"])
    assert unreadable == ("phones",)
    call = account("R-1", owner, ian.all).model_copy(update={"unreadable": unreadable})
    assert classify([call], ian).ambiguous[0].reason == "phone_only"


def test_a_record_found_by_a_value_that_cannot_be_read_goes_to_a_person() -> None:
    """The store's key found Alice's contact by its number, written `07700 900461 or 900462`,
    which does not read as a number: neither matched nor dropped, it is put to a person."""
    alice = KnownIdentities(given=Identities(customer_ids=["C-1001"], phones=["+447700900461"]))
    owner, unreadable = Identities.read(phones=["07700 900461 or 900462"])
    assert unreadable == ("phones",) and not owner.phones
    contact = account("CT-1", owner, alice.all).model_copy(update={"unreadable": unreadable})
    assert not contact.matched and not contact.variants
    result = classify([contact], alice)
    assert not result.certain and result.ambiguous[0].reason == "unreadable_identifier"


def test_another_spelling_of_a_gmail_mailbox_is_put_to_a_person_not_missed() -> None:
    """Gmail ignores dots and answers to googlemail.com too: the CRM's `a.lice@googlemail.com`
    reaches Alice's mailbox. Neither equal nor a sub-address, it was dropped unseen."""
    alice = KnownIdentities(given=Identities(emails=["alice@gmail.com"]))
    for written in ("a.lice@gmail.com", "Alice@GoogleMail.com", "al.ice+news@googlemail.com"):
        record = account("C-9", Identities.lenient(emails=[written]), alice.all)
        assert record.variants == Identities(emails=["alice@gmail.com"])
        [item] = classify([record], alice).ambiguous
        assert item.reason == "mailbox_variant"
    # Elsewhere a dot is part of the name: a.lice@example.org is someone else's mailbox.
    other = account(
        "C-8", Identities(emails=["a.lice@example.org"]), Identities(emails=["alice@example.org"])
    )
    assert not other.matched and not other.variants


SWITCHBOARD = "020 7946 0000"


def calls_on(subject_phone: str, record_phone: str) -> tuple[Identities, list[Record]]:
    """A call recording that names nobody (no strong identifier), found by the number the subject
    gave; and the store's answer, as pgstore.find_records keeps it: only what matched or varied."""
    given = Identities(phones=[subject_phone])
    call = account("R-9", Identities(phones=[record_phone]), given)
    return given, [call] if call.matched or call.variants else []


def test_an_extension_is_a_line_of_its_own_and_another_extension_is_someone_else() -> None:
    given, found = calls_on(f"{SWITCHBOARD} x12", "+44 20 7946 0000 ext. 12")
    [item] = classify(found, KnownIdentities(given=given)).ambiguous  # the same line: found,
    assert item.reason == "phone_only" and item.matched == given  # and a number alone decides nothing
    given, found = calls_on(f"{SWITCHBOARD} x12", f"{SWITCHBOARD} x13")
    assert found == []  # a colleague's extension: not the subject's, not even a candidate


def test_a_switchboards_main_number_and_one_of_its_extensions_go_to_a_person() -> None:
    for subject_phone, record_phone in (
        (f"{SWITCHBOARD} x12", SWITCHBOARD),
        (SWITCHBOARD, f"{SWITCHBOARD} x12"),
    ):
        given, found = calls_on(subject_phone, record_phone)
        result = classify(found, KnownIdentities(given=given))
        assert not result.certain and not result.learnt, (subject_phone, record_phone)
        [item] = result.ambiguous
        assert item.reason == "shared_phone" and item.records[0].variants == given  # what the review shows


def test_the_same_extension_written_with_other_leading_zeros_goes_to_a_person() -> None:
    given, found = calls_on(f"{SWITCHBOARD} x12", f"{SWITCHBOARD} ext. 012")
    result = classify(found, KnownIdentities(given=given))
    assert not result.certain and [a.reason for a in result.ambiguous] == ["shared_phone"]


def test_a_switchboards_main_number_on_many_extensions_is_one_decision_not_one_each() -> None:
    given = Identities(phones=[SWITCHBOARD])
    calls = [account(f"R-{n}", Identities(phones=[f"{SWITCHBOARD} x{n}"]), given) for n in range(100, 160)]
    result = classify(calls, KnownIdentities(given=given), match_limit=25)
    assert not result.certain
    [item] = result.ambiguous
    assert item.reason == "too_many_matches" and len(item.records) == 60


def test_a_customer_id_in_another_case_goes_to_a_person() -> None:
    alice = KnownIdentities(given=Identities(customer_ids=["C-1002"]))
    contact = account("CT-1", Identities(customer_ids=["c-1002"]), alice.all)
    assert not contact.matched and contact.variants == Identities(customer_ids=["C-1002"])
    [item] = classify([contact], alice).ambiguous
    assert item.reason == "id_variant"
