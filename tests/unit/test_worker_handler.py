from datetime import UTC, datetime

import pytest

from shared.contracts import EraseSubject, RestrictSubject
from shared.crypto import subject_ref
from shared.identity import Identities
from shared.worker.handler import UnconfirmedChanges, execute, outcome_id
from shared.worker.policy import ActOnEverything
from tests.unit.fakes import FakeStore

ALICE = Identities(emails=["alice@example.co.uk"])
REF = subject_ref("k", ALICE)


def clock() -> datetime:
    return datetime(2026, 11, 27, 12, 0, tzinfo=UTC)


def store() -> FakeStore:
    return FakeStore(
        {
            "a1": ("things", "alice@example.co.uk"),
            "a2": ("other", "alice@example.co.uk"),
            "b1": ("things", "ben@example.org"),
        }
    )


def erase() -> EraseSubject:
    return EraseSubject(request_id="r-1", system="fake", subject_ref=REF, sealed_identifiers="x")


async def test_erases_the_subject_and_keeps_everyone_else() -> None:
    fake = store()
    outcome = await execute(erase(), ALICE, fake, ActOnEverything(), clock)
    assert set(fake.rows) == {"b1"}
    assert outcome.status == "done"
    assert outcome.verification is not None and outcome.verification.passed
    assert [(c.category, c.found, c.erased) for c in outcome.categories] == [
        ("things", 1, 1),
        ("other", 1, 1),
    ]


async def test_reports_not_found_per_category() -> None:
    outcome = await execute(
        erase(), Identities(emails=["nobody@example.com"]), store(), ActOnEverything(), clock
    )
    assert all(c.not_found for c in outcome.categories)
    assert outcome.status == "done"


async def test_redelivery_returns_the_first_outcome_without_acting_again() -> None:
    fake = store()
    command = erase()
    first = await execute(command, ALICE, fake, ActOnEverything(), clock)
    second = await execute(command, ALICE, fake, ActOnEverything(), clock)
    assert second == first
    assert fake.applied == 1
    assert first.message_id == outcome_id(command)


async def test_interrupted_command_resumes_with_its_plan_and_counts_right() -> None:
    fake = store()
    fake.fail_apply = 1
    command = erase()
    with pytest.raises(ConnectionError):
        await execute(command, ALICE, fake, ActOnEverything(), clock)
    # A non-transactional store keeps the plan and may have erased part of it already.
    del fake.rows["a1"]
    outcome = await execute(command, ALICE, fake, ActOnEverything(), clock)
    assert sum(c.erased for c in outcome.categories) == 2  # counted from the plan, not the re-read


async def test_a_record_that_survives_fails_verification() -> None:
    fake = store()
    fake.resurrect = {"a3": ("things", "alice@example.co.uk")}  # written concurrently
    outcome = await execute(erase(), ALICE, fake, ActOnEverything(), clock)
    assert outcome.status == "failed"
    assert outcome.verification is not None and outcome.verification.remaining == 1


async def test_a_change_not_confirmed_outside_the_store_is_tried_again_not_reported() -> None:
    """An erased row whose file is still on disk: the command raises (a transactional store
    rolls back, the runtime tries again) and no outcome is saved; once the file is gone, the
    same command finishes with its plan."""
    fake = store()
    fake.left_outside = {"a1"}
    command = erase()
    with pytest.raises(UnconfirmedChanges, match="1 records"):
        await execute(command, ALICE, fake, ActOnEverything(), clock)
    assert fake.journal[command.message_id].outcome is None
    fake.left_outside = set()
    outcome = await execute(command, ALICE, fake, ActOnEverything(), clock)
    assert outcome.status == "done" and sum(c.erased for c in outcome.categories) == 2


async def test_restriction_marks_and_verifies() -> None:
    fake = store()
    command = RestrictSubject(request_id="r-2", system="fake", subject_ref=REF, sealed_identifiers="x")
    outcome = await execute(command, ALICE, fake, ActOnEverything(), clock)
    assert fake.restricted == {"a1", "a2"} and "a1" in fake.rows
    assert outcome.status == "done"
    assert sum(c.restricted for c in outcome.categories) == 2
