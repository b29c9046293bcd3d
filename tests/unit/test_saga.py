from datetime import UTC, datetime, timedelta
from uuid import uuid4

from services.tracker.saga import Saga, SystemSlot
from shared.contracts import (
    CategoryOutcome,
    OutcomeReported,
    RequestStatus,
    RequestType,
    Retention,
    SystemState,
)

T0 = datetime(2026, 11, 1, tzinfo=UTC)


def saga(*systems: str) -> Saga:
    s = Saga(
        request_id="r",
        request_type=RequestType.ERASURE,
        subject_ref="subj_" + "0" * 32,
        received_at=T0,
        deadline=T0 + timedelta(days=30),
        trace_id=None,
    )
    for name in systems:
        s.slots[name] = SystemSlot(system=name, state=SystemState.DISPATCHED, attempts=1, dispatched_at=T0)
    return s


def outcome(system: str, status: str = "done", **category: object) -> OutcomeReported:
    cats = (
        [CategoryOutcome(category="things", found=1, erased=1)]
        if not category
        else [CategoryOutcome(category="things", found=1, **category)]
    )  # type: ignore[arg-type]
    return OutcomeReported(
        request_id="r",
        system=system,
        command_id=uuid4(),
        attempt=1,
        status=status,
        categories=cats,  # type: ignore[arg-type]
        started_at=T0,
        finished_at=T0 + timedelta(hours=1),
    )


def test_in_progress_until_every_system_answers() -> None:
    s = saga("crm", "billing")
    assert s.record(outcome("crm"))
    assert s.status is RequestStatus.IN_PROGRESS and s.completed_at is None
    assert s.record(outcome("billing"))
    assert s.status is RequestStatus.COMPLETED
    assert s.completed_at == T0 + timedelta(hours=1)
    assert s.report().deadline_met is True


def test_retained_records_make_it_completed_with_exceptions() -> None:
    s = saga("billing")
    s.record(outcome("billing", retained=[Retention(count=1, rule_id="tax", legal_basis="HMRC")]))
    assert s.status is RequestStatus.COMPLETED_WITH_EXCEPTIONS


def test_a_failed_system_fails_the_request() -> None:
    s = saga("billing", "crm")
    s.record(outcome("billing", status="failed"))
    s.record(outcome("crm"))
    assert s.status is RequestStatus.FAILED


def test_duplicate_and_unknown_outcomes_change_nothing() -> None:
    s = saga("crm")
    first = outcome("crm")
    assert s.record(first)
    assert not s.record(first)
    assert not s.record(outcome("nonexistent"))
    assert s.report().systems[0].erased == 1


def test_report_totals_per_system() -> None:
    s = saga("crm")
    s.record(outcome("crm"))
    report = s.report()
    assert [(r.system, r.records_found, r.erased) for r in report.systems] == [("crm", 1, 1)]
