from datetime import UTC, datetime, timedelta
from uuid import UUID, uuid4, uuid5

from services.tracker.saga import Saga, SystemSlot, Timeouts
from shared.contracts import (
    CategoryOutcome,
    OutcomeReported,
    RequestStatus,
    RequestType,
    Retention,
    SystemState,
)
from shared.contracts.audit import GENESIS, AuditEntry, verify_chain
from shared.contracts.commands import EraseRecords, EraseSubject
from shared.contracts.outcomes import ReviewItem
from shared.contracts.report import ReviewDecision
from shared.worker.handler import answering

T0 = datetime(2026, 11, 1, tzinfo=UTC)
TIMEOUTS = Timeouts(first=timedelta(minutes=10), attempts=3, backoff=2.0)


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
        s.slots[name] = SystemSlot(
            system=name,
            state=SystemState.DISPATCHED,
            attempts=1,
            dispatched_at=T0,
            command_id=first_command(name),
        )
    return s


def first_command(system: str) -> UUID:
    """The command a slot starts with, and that an outcome answers unless it names another."""
    return uuid5(UUID(int=0), system)


def outcome(
    system: str, status: str = "done", command_id: UUID | None = None, **category: object
) -> OutcomeReported:
    cats = (
        [CategoryOutcome(category="things", found=1, erased=1)]
        if not category
        else [CategoryOutcome(category="things", found=1, **category)]
    )  # type: ignore[arg-type]
    return OutcomeReported(
        request_id="r",
        system=system,
        command_id=command_id or first_command(system),
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
    assert [kind for _, kind, _ in s.audit] == ["outcome_recorded", "outcome_recorded", "completed"]


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


def test_timeout_redispatches_with_backoff_then_an_answer_completes() -> None:
    s = saga("crm")
    assert s.time_out("crm", T0 + timedelta(minutes=9), TIMEOUTS) is None
    assert s.time_out("crm", T0 + timedelta(minutes=10), TIMEOUTS) == "redispatch"
    second = T0 + timedelta(minutes=10)
    assert s.time_out("crm", second + timedelta(minutes=19), TIMEOUTS) is None  # waits 20 min now
    assert s.record(outcome("crm", command_id=s.slots["crm"].command_id))
    assert s.status is RequestStatus.COMPLETED and s.slots["crm"].attempts == 2


def test_timeouts_to_exhaustion_fail_the_system_instead_of_hanging() -> None:
    s = saga("crm", "billing")
    s.record(outcome("billing"))
    now = T0
    for _ in range(2):
        now += TIMEOUTS.wait(s.slots["crm"].attempts)
        assert s.time_out("crm", now, TIMEOUTS) == "redispatch"
    now += TIMEOUTS.wait(3)
    assert s.time_out("crm", now, TIMEOUTS) == "failed"
    assert s.status is RequestStatus.FAILED and s.completed_at is not None
    assert s.slots["crm"].error == "no answer after 3 attempts"
    assert s.time_out("crm", now + timedelta(days=1), TIMEOUTS) is None


def test_a_late_answer_after_failing_for_silence_is_taken() -> None:
    s = saga("crm")
    command = s.slots["crm"].command_id
    s.slots["crm"].attempts = 3
    assert s.time_out("crm", T0 + timedelta(days=1), TIMEOUTS) == "failed"
    assert s.record(outcome("crm", command_id=command))
    assert s.status is RequestStatus.COMPLETED


def test_operator_retry_reopens_a_failed_system_with_a_new_command() -> None:
    s = saga("crm")
    old = s.slots["crm"].command_id
    s.record(outcome("crm", status="failed", command_id=old))
    assert not s.retry("nonexistent", T0)
    assert s.retry("crm", T0 + timedelta(hours=2))
    assert s.status is RequestStatus.IN_PROGRESS and s.completed_at is None
    new = s.slots["crm"].command_id
    assert new not in (old, first_command("crm")) and s.slots["crm"].attempts == 2
    assert not s.retry("crm", T0)  # not failed any more


def test_the_replaced_commands_late_failure_is_not_taken_for_the_retrys_answer() -> None:
    """The old command's worker gave up after the system was failed for silence and an
    operator retried it: that failure says nothing of the retry, whose success completes."""
    s = saga("crm")
    old = s.slots["crm"].command_id
    s.slots["crm"].attempts = 3
    assert s.time_out("crm", T0 + timedelta(days=1), TIMEOUTS) == "failed"
    assert s.retry("crm", T0 + timedelta(days=1, hours=1))
    new = s.slots["crm"].command_id
    assert not s.record(outcome("crm", status="failed", command_id=old))
    assert s.status is RequestStatus.IN_PROGRESS and s.completed_at is None
    assert s.record(outcome("crm", command_id=new))
    assert s.status is RequestStatus.COMPLETED
    # The old command's success, had it come instead, was the work done: it is taken.
    t = saga("crm")
    t.slots["crm"].attempts = 3
    t.time_out("crm", T0 + timedelta(days=1), TIMEOUTS)
    t.retry("crm", T0 + timedelta(days=1, hours=1))
    assert t.record(outcome("crm", command_id=first_command("crm")))
    assert t.status is RequestStatus.COMPLETED


def test_a_done_answer_to_a_command_never_issued_is_no_answer() -> None:
    """Any producer on the outcomes topic, with a made-up command id: before, a `done` for any
    id completed a dispatched system, before the worker had done anything (even kept as early,
    before the request was submitted). The commands a slot issued: its own, and those its
    retries replaced, found from it."""
    s = saga("crm")
    assert not s.record(outcome("crm", command_id=uuid4()))
    assert s.slots["crm"].state is SystemState.DISPATCHED and s.status is RequestStatus.IN_PROGRESS
    s.slots["crm"].attempts = 3
    s.time_out("crm", T0 + timedelta(days=1), TIMEOUTS)
    s.retry("crm", T0 + timedelta(days=1, hours=1))
    s.time_out("crm", T0 + timedelta(days=3), TIMEOUTS)
    s.retry("crm", T0 + timedelta(days=3, hours=1))
    assert not s.record(outcome("crm", command_id=uuid4()))
    assert s.record(outcome("crm", command_id=first_command("crm")))  # replaced twice, still its


def test_extension_moves_the_deadline_once() -> None:
    s = saga("crm")
    assert s.extend(2, T0 + timedelta(days=91), T0 + timedelta(days=3))
    assert not s.extend(1, T0 + timedelta(days=60), T0 + timedelta(days=4))
    report = s.report()
    assert report.deadline == T0 + timedelta(days=91) and report.extension and report.extension.months == 2


def chain(*kinds: str) -> list[AuditEntry]:
    entries, prev = [], GENESIS
    for seq, kind in enumerate(kinds, start=1):
        digest = AuditEntry.digest("r", seq, T0, kind, {"n": seq}, prev)
        entries.append(
            AuditEntry(
                request_id="r", seq=seq, at=T0, kind=kind, detail={"n": seq}, prev_hash=prev, hash=digest
            )
        )
        prev = digest
    return entries


def test_audit_chain_verifies_and_detects_an_edit_a_removal_and_a_reorder() -> None:
    entries = chain("accepted", "outcome_recorded", "completed")
    assert verify_chain(entries) is None
    edited = entries[1].model_copy(update={"detail": {"n": 99}})
    assert verify_chain([entries[0], edited, entries[2]]) == 2
    assert verify_chain([entries[0], entries[2]]) == 3
    assert verify_chain([entries[1], entries[0], entries[2]]) == 2


def test_an_answer_that_learnt_something_starts_the_next_round_once_all_have_answered() -> None:
    s = saga("crm", "billing")
    s.learn(2)
    assert s.record(outcome("crm"))
    assert s.round == 1 and s.status is RequestStatus.IN_PROGRESS
    assert s.record(outcome("billing"))
    assert s.round == 2 and s.status is RequestStatus.IN_PROGRESS and s.completed_at is None
    assert all(slot.state is SystemState.DISPATCHED for slot in s.slots.values())
    late = outcome("crm")  # round 1's answer again: not round 2's
    assert not s.record(late)
    for system in ("crm", "billing"):  # each answering round 2's command
        answer = outcome(system, command_id=s.slots[system].command_id)
        assert s.record(answer.model_copy(update={"round": 2}))
    assert s.status is RequestStatus.COMPLETED and s.report().rounds == 2
    assert s.report().systems[0].erased == 2  # both rounds' answers count
    kinds = [kind for _, kind, _ in s.audit]
    assert kinds.count("round_dispatched") == 1 and kinds[-1] == "completed"


def test_the_search_stops_at_its_bound_and_asks_a_person() -> None:
    s = saga("crm")
    s.max_rounds = 1
    s.learn(3)
    s.record(outcome("crm"))
    assert s.status is RequestStatus.AWAITING_REVIEW
    [bound] = s.reviews.values()
    assert bound.system is None and bound.reason == "expansion_bound"
    s.learn(3)  # what was learnt is still there to search with
    decided = s.decide(bound.review_id, ReviewDecision.ERASE, "tok1", "compliance", "0" * 64, T0)
    assert decided is not None and s.round == 2 and s.status is RequestStatus.IN_PROGRESS


def review(records: int = 1) -> ReviewItem:
    return ReviewItem(
        review_id=uuid4(),
        groups=[("accounts", "A-2")],
        records={"accounts": records},
        reason="shared_phone",
        matched=["phones"],
        conflicting=["customer_ids"],
    )


def test_review_items_hold_the_request_until_decided_and_each_is_decided_once() -> None:
    s = saga("billing")
    item = review()
    s.record(outcome("billing").model_copy(update={"reviews": [item]}))
    assert s.status is RequestStatus.AWAITING_REVIEW and s.completed_at is None
    erase = s.decide(
        item.review_id, ReviewDecision.ERASE, "tok1", "compliance", "a" * 64, T0 + timedelta(days=1)
    )
    assert erase is not None and erase.command_id is not None
    assert s.decide(item.review_id, ReviewDecision.KEEP, "tok2", "admin", "b" * 64, T0) is None  # once
    assert s.status is RequestStatus.IN_PROGRESS  # the system carries the erasure out
    done = outcome("billing", command_id=erase.command_id).model_copy(update={"review_id": item.review_id})
    assert s.record(done)
    assert s.status is RequestStatus.COMPLETED and s.report().reviews[0].state == "erased"
    assert s.report().reviews[0].erased == 1
    decided = [d for _, kind, d in s.audit if kind == "review_decided"]
    assert decided == [
        {
            "review_id": str(item.review_id),
            "decision": "erase",
            "token_id": "tok1",
            "role": "compliance",
            "reason_sha256": "a" * 64,
        }
    ]


def test_a_reviewers_yes_on_a_restriction_or_its_lift_is_reported_as_what_was_done() -> None:
    """Not as 'erased': the command restricted (or lifted) the records and erased nothing."""
    for kind, state, counts in (
        (RequestType.RESTRICTION, "restricted", {"restricted": 2}),
        (RequestType.LIFT_RESTRICTION, "unrestricted", {"unrestricted": 2}),
    ):
        s = saga("billing")
        s.request_type = kind
        item = review(records=2)
        s.record(outcome("billing", restricted=0).model_copy(update={"reviews": [item]}))
        yes = s.decide(item.review_id, ReviewDecision.ERASE, "tok1", "compliance", "a" * 64, T0)
        assert yes is not None and yes.command_id is not None
        done = outcome("billing", command_id=yes.command_id, **counts)
        assert s.record(done.model_copy(update={"review_id": item.review_id}))
        reported = s.report().reviews[0]
        assert (reported.state, reported.erased) == (state, 0)
        assert reported.model_dump()[state] == 2
        [audited] = [d for _, kind, d in s.audit if kind == "review_carried_out"]
        assert audited[state] == 2  # in the audit chain too


def test_keeping_records_a_reviewer_decided_on_is_an_exception_in_the_report() -> None:
    s = saga("billing")
    item = review()
    s.record(outcome("billing").model_copy(update={"reviews": [item]}))
    s.decide(item.review_id, ReviewDecision.KEEP, "tok1", "compliance", "a" * 64, T0 + timedelta(days=2))
    assert s.status is RequestStatus.COMPLETED_WITH_EXCEPTIONS
    assert s.completed_at == T0 + timedelta(days=2)  # the decision ended it


def test_a_worker_giving_up_on_a_reviewers_erasure_or_a_later_round_is_heard() -> None:
    """The give-up outcome names the command's round and review as a success would: without
    them the tracker took neither, and the request waited for ever (review 'erasing')."""
    s = saga("billing")
    item = review()
    s.record(outcome("billing").model_copy(update={"reviews": [item]}))
    erase = s.decide(item.review_id, ReviewDecision.ERASE, "t", "compliance", "a" * 64, T0)
    assert erase is not None and erase.command_id is not None
    command = EraseRecords(
        message_id=erase.command_id,
        request_id="r",
        system="billing",
        subject_ref="subj_" + "0" * 32,
        sealed_identifiers="sealed",
        review_id=item.review_id,
        groups=[("accounts", "A-2")],
    )
    at = {"started_at": T0, "finished_at": T0 + timedelta(days=1)}
    gave_up = OutcomeReported(status="failed", error="OSError after 5", **at, **answering(command, "billing"))
    assert s.record(gave_up) and s.report().reviews[0].state == "failed"
    assert s.status.is_final

    later = saga("crm")
    later.round = 2
    round_two = EraseSubject(
        message_id=later.slots["crm"].command_id,
        request_id="r",
        system="crm",
        subject_ref="subj_" + "0" * 32,
        sealed_identifiers="s",
        round=2,
    )
    assert later.record(OutcomeReported(status="failed", error="x", **at, **answering(round_two, "crm")))
    assert later.slots["crm"].state is SystemState.FAILED


def test_a_late_answer_that_learnt_something_reopens_a_failed_request_as_not_complete() -> None:
    """A system failed for silence; its answer comes late, with identifiers it learnt: the next
    round starts, and the request is not complete any more (its identifiers must stay: what
    drops them once a request is complete reads completed_at)."""
    s = saga("crm")
    for attempt in range(3):
        s.time_out("crm", T0 + timedelta(days=1 + attempt), TIMEOUTS)
    assert s.status is RequestStatus.FAILED and s.completed_at is not None
    s.learn(1)
    assert s.record(outcome("crm"))
    assert s.round == 2 and s.status is RequestStatus.IN_PROGRESS and s.completed_at is None
