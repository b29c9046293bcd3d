from datetime import date, timedelta
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.billing.store import BillingAdapter
from services.crm.store import CrmAdapter
from services.directory.store import DirectoryAdapter
from services.mailing.store import MailingAdapter
from services.recordings.store import RecordingsAdapter
from shared.contracts import Action, RequestType
from shared.policy.evaluate import RetentionPolicy
from shared.policy.model import DEFAULT_POLICY_FILE, PolicyError, check_categories, load_policy
from shared.worker.ports import Record

POLICY = load_policy(DEFAULT_POLICY_FILE)
DECIDE = RetentionPolicy(POLICY)
TODAY = date(2026, 11, 27)


def decide(
    system: str,
    record: Record,
    today: date = TODAY,
    held: str | None = None,
    request_type: RequestType = RequestType.ERASURE,
):  # type: ignore[no-untyped-def]
    return DECIDE.decide(system, request_type, [record], today, {record.key: held} if held else {})[0]


@pytest.mark.parametrize(
    "adapter",
    [
        BillingAdapter("postgresql://x/y"),
        CrmAdapter("postgresql://x/y"),
        MailingAdapter("postgresql://x/y", "k"),
        RecordingsAdapter("postgresql://x/y", Path("/tmp")),
        DirectoryAdapter.__new__(DirectoryAdapter),
    ],
)
def test_default_policy_covers_every_category_of_every_system(adapter) -> None:  # type: ignore[no-untyped-def]
    check_categories(POLICY, adapter.system, adapter.personal_fields, adapter.record_terms)


BILLING = BillingAdapter("postgresql://x/y")


def invoice(issued: date) -> Record:
    return Record(category="invoices", record_id="INV-1", dates={"issued_on": issued})


def test_invoice_inside_six_years_is_retained_with_contact_fields_stripped() -> None:
    d = decide("billing", invoice(date(2021, 1, 1)))
    assert d.action is Action.RETAINED and d.rule_id == "billing.invoices.hmrc"
    assert d.retain_until == date(2027, 1, 1)
    assert d.strip_fields == ("billing_email",)
    assert d.legal_basis and "17(3)(b)" in d.legal_basis


def test_invoice_past_six_years_is_erased() -> None:
    assert decide("billing", invoice(date(2019, 4, 1))).action is Action.ERASED


@pytest.mark.parametrize(
    ("called", "action"),
    [(TODAY - timedelta(days=300), Action.RETAINED), (TODAY - timedelta(days=400), Action.ERASED)],
)
def test_cdrs_kept_only_while_the_bill_can_be_challenged(called: date, action: Action) -> None:
    assert (
        decide(
            "billing", Record(category="call_detail_records", record_id="c", dates={"call_date": called})
        ).action
        is action
    )


def test_radius_sessions_kept_six_months() -> None:
    rec = Record(category="radius_sessions", record_id="r", dates={"session_date": date(2026, 6, 1)})
    assert decide("billing", rec).retain_until == date(2026, 12, 1)
    assert decide("billing", rec, today=date(2026, 12, 1)).action is Action.ERASED


def test_active_account_is_retained_while_the_contract_runs() -> None:
    active = Record(category="accounts", record_id="a", facts={"contract_active": True})
    closed = Record(category="accounts", record_id="a", facts={"contract_active": False})
    assert decide("billing", active).action is Action.RETAINED
    assert decide("billing", active).retain_until is None
    assert decide("billing", closed).action is Action.ERASED


@pytest.mark.parametrize(
    ("facts", "dates", "action", "until"),
    [
        ({"contract_open_ended": True}, {}, Action.RETAINED, None),
        (
            {"contract_open_ended": False},
            {"latest_contract_end": date(2027, 1, 9)},
            Action.RETAINED,
            date(2027, 1, 9),
        ),
        ({"contract_open_ended": False}, {"latest_contract_end": date(2026, 2, 28)}, Action.ERASED, None),
        ({"contract_open_ended": False}, {}, Action.ERASED, None),
    ],
)
def test_crm_contact_kept_while_contract_active_and_rechecked_at_its_end(facts, dates, action, until) -> None:  # type: ignore[no-untyped-def]
    d = decide("crm", Record(category="contacts", record_id="c", facts=facts, dates=dates))
    assert d.action is action and d.retain_until == until


def test_purchase_kept_for_contract_plus_six_years_with_contact_fields_anonymised() -> None:
    ended = Record(
        category="purchases",
        record_id="p",
        dates={"contract_end": date(2026, 2, 28)},
        facts={"contract_open_ended": False},
    )
    d = decide("crm", ended)
    assert d.action is Action.RETAINED and d.retain_until == date(2032, 2, 28)
    assert set(d.strip_fields) == {"buyer_name", "buyer_email"}
    assert decide("crm", ended, today=date(2032, 2, 28)).action is Action.ERASED


def test_forum_and_directory_and_recordings_are_erased() -> None:
    for system, category in [
        ("crm", "forum_memberships"),
        ("directory", "directory_entries"),
        ("recordings", "call_recordings"),
        ("mailing", "subscribers"),
    ]:
        assert decide(system, Record(category=category, record_id="x")).action is Action.ERASED


def test_consent_history_is_kept_as_proof() -> None:
    d = decide(
        "mailing", Record(category="consent_records", record_id="c", dates={"given_on": date(2024, 4, 1)})
    )
    assert d.action is Action.RETAINED and d.retain_until == date(2030, 4, 1)


def test_a_hold_beats_every_rule() -> None:
    d = decide("recordings", Record(category="call_recordings", record_id="r"), held="LIT-2026-7")
    assert d.action is Action.RETAINED and d.hold_reference == "LIT-2026-7" and d.retain_until is None


def test_restriction_restricts_even_held_records_and_lift_unrestricts() -> None:
    rec = Record(category="invoices", record_id="i", dates={"issued_on": TODAY})
    assert decide("billing", rec, held="H", request_type=RequestType.RESTRICTION).action is Action.RESTRICTED
    assert decide("billing", rec, request_type=RequestType.LIFT_RESTRICTION).action is Action.UNRESTRICTED


def test_processor_data_is_redirected_to_its_controller() -> None:
    d = decide(
        "recordings",
        Record(category="call_recordings", record_id="r", facts={"processed_for": "Riverside Surgery"}),
    )
    assert d.action is Action.REDIRECTED and d.controller == "Riverside Surgery"


@given(
    issued=st.dates(date(2000, 1, 1), date(2030, 12, 31)),
    today=st.dates(date(2000, 1, 1), date(2040, 1, 1)),
    held=st.booleans(),
)
def test_invoice_property_retained_iff_inside_period_or_held(issued: date, today: date, held: bool) -> None:
    d = decide("billing", invoice(issued), today=today, held="H-1" if held else None)
    inside = (
        today < issued.replace(year=issued.year + 6)
        if not (issued.month == 2 and issued.day == 29)
        else today < date(issued.year + 6, 2, 28)
    )
    assert (d.action is Action.RETAINED) == (held or inside)
    assert d.action in (Action.RETAINED, Action.ERASED)
    if d.action is Action.RETAINED:
        assert d.legal_basis and (d.rule_id or d.hold_reference)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "policy.yaml"
    path.write_text(text)
    return path


GOOD_RULE = """  - id: crm.forum.erase
    system: crm
    category: forum_memberships
    on_erasure: erase
    legal_basis: "No ground to keep it"
    gdpr_article: "17(1)(a)"
    source: "test"
"""


@pytest.mark.parametrize(
    ("rules", "message"),
    [
        (
            GOOD_RULE.replace("on_erasure: erase", "on_erasure: obliterate"),
            "rule crm.forum.erase: on_erasure",
        ),
        (
            GOOD_RULE.replace("on_erasure: erase", "on_erasure: retain\n    retain_for: {years: 6}"),
            "rule crm.forum.erase: (rule)",
        ),
        (GOOD_RULE.replace('"17(1)(a)"', '"article seventeen"'), "rule crm.forum.erase: gdpr_article"),
        (GOOD_RULE + GOOD_RULE, "duplicate id"),
        (GOOD_RULE.replace('    source: "test"\n', ""), "rule crm.forum.erase: source"),
    ],
)
def test_bad_policy_file_names_the_rule_and_field(tmp_path: Path, rules: str, message: str) -> None:
    with pytest.raises(PolicyError) as info:
        load_policy(write(tmp_path, f"version: t\nrules:\n{rules}"))
    assert message in str(info.value)


def test_a_strip_field_that_is_not_personal_stops_the_worker() -> None:
    bad = POLICY.model_copy(
        update={
            "rules": [
                r.model_copy(update={"strip_fields": ("amount_pence",)})
                if r.id == "billing.invoices.hmrc"
                else r
                for r in POLICY.rules
            ]
        }
    )
    with pytest.raises(PolicyError, match=r"billing\.invoices\.hmrc.*amount_pence"):
        check_categories(bad, "billing", BILLING.personal_fields, BILLING.record_terms)


@pytest.mark.parametrize(
    ("rule_id", "change", "message"),
    [
        (
            "billing.invoices.hmrc",
            {"anchor": "issued_onn"},
            r"anchor: 'issued_onn' is not a date or fact of invoices",
        ),
        ("billing.accounts.contract", {"while_fact": "contract_actve"}, r"while_fact: 'contract_actve'"),
    ],
)
def test_a_misspelt_anchor_or_fact_stops_the_worker(
    rule_id: str, change: dict[str, str], message: str
) -> None:
    """Never found on a record, the date or fact would read as 'no retention': a 2026 invoice
    under the six-year HMRC rule, an account whose contract runs, erased."""
    bad = POLICY.model_copy(
        update={"rules": [r.model_copy(update=change) if r.id == rule_id else r for r in POLICY.rules]}
    )
    billing = BillingAdapter("postgresql://x/y")
    with pytest.raises(PolicyError, match=message):
        check_categories(bad, "billing", billing.personal_fields, billing.record_terms)


def test_a_category_without_a_rule_stops_the_worker() -> None:
    without = POLICY.model_copy(update={"rules": [r for r in POLICY.rules if r.category != "payments"]})
    with pytest.raises(PolicyError, match="no rule for billing/payments"):
        check_categories(without, "billing", BILLING.personal_fields, BILLING.record_terms)
