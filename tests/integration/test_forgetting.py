"""The tracker drops a request's identifiers once nothing can need them, and not before: a
deferred erasure waiting or unanswered, a record kept under a hold that has not ended, a failed
system compliance may still retry. A retry after they were dropped is refused and audited."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from uuid import UUID, uuid4

import asyncpg

from services.tracker import schedule, store, sweep
from services.tracker.forgetting import (
    _NEEDS,
    RECHECK_AFTER,
    SWEEP_PLAN,
    Needs,
    forget_identifiers,
    identifiers_needed,
)
from shared import topics
from shared.contracts import Retention
from shared.contracts.events import RetrySystem
from shared.contracts.holds import HoldUpdated
from tests.integration.test_tracker_and_holds import (
    REF,
    T0,
    TIMEOUTS,
    accepted,
    outbox,
    outcome,
    tracker_db,  # noqa: F401 - the fixture
)

KEEP_FAILED = timedelta(days=90)
LATER = T0 + timedelta(days=1)


async def kept_identifiers(pool: asyncpg.Pool, request_id: str) -> bool:
    return bool(
        await pool.fetchval(
            "SELECT sealed_identifiers IS NOT NULL FROM sagas WHERE request_id = $1", request_id
        )
    )


def test_the_rule() -> None:
    done = Needs(completed_at=T0, failed=False, deferred_open=False, unended_hold=False)
    assert not identifiers_needed(done, LATER, KEEP_FAILED)
    assert identifiers_needed(Needs(None, False, False, False), LATER, KEEP_FAILED)  # in flight
    assert identifiers_needed(Needs(T0, False, True, False), LATER, KEEP_FAILED)
    assert identifiers_needed(Needs(T0, False, False, True), LATER, KEEP_FAILED)
    assert identifiers_needed(Needs(T0, True, False, False), T0 + KEEP_FAILED / 2, KEEP_FAILED)
    assert not identifiers_needed(Needs(T0, True, False, False), T0 + KEEP_FAILED, KEEP_FAILED)


async def test_a_finished_request_forgets_its_identifiers_and_one_in_flight_does_not(
    tracker_db: asyncpg.Pool,  # noqa: F811
) -> None:
    await store.start_saga(tracker_db, accepted("f-1", "crm"), T0)
    await store.start_saga(tracker_db, accepted("f-2", "crm", "billing"), T0)
    await store.record_outcome(tracker_db, outcome("f-1", "crm"))
    await store.record_outcome(tracker_db, outcome("f-2", "crm"))
    assert await forget_identifiers(tracker_db, LATER, KEEP_FAILED) == 1
    assert not await kept_identifiers(tracker_db, "f-1") and await kept_identifiers(tracker_db, "f-2")


async def test_retention_and_holds_keep_them_until_the_last_deferred_erasure_came_back(
    tracker_db: asyncpg.Pool,  # noqa: F811
) -> None:
    await store.start_saga(tracker_db, accepted("f-3", "billing", "recordings"), T0)
    until = Retention(
        count=1, rule_id="billing.invoices.hmrc", legal_basis="HMRC", retain_until=date(2027, 1, 4)
    )
    billing = outcome("f-3", "billing", retained=[until])
    await store.record_outcome(tracker_db, billing)
    await store.record_outcome(
        tracker_db,
        outcome(
            "f-3", "recordings", retained=[Retention(count=1, hold_reference="LIT-F", legal_basis="hold")]
        ),
    )
    assert await forget_identifiers(tracker_db, LATER, KEEP_FAILED) == 0  # both wait
    # The retention ends and its erasure is sent and answered: the open-ended hold still needs them.
    assert await schedule.dispatch_due(tracker_db, datetime(2027, 1, 4, 6, tzinfo=UTC)) == 1
    assert await forget_identifiers(tracker_db, datetime(2027, 1, 4, 7, tzinfo=UTC), KEEP_FAILED) == 0
    sent = (await outbox(tracker_db, topics.command_topic("billing")))[-1]
    answer = outcome("f-3", "billing", resume_of=billing)
    await store.record_outcome(tracker_db, answer.model_copy(update={"command_id": UUID(sent["message_id"])}))
    assert await forget_identifiers(tracker_db, datetime(2027, 1, 5, tzinfo=UTC), KEEP_FAILED) == 0
    # The hold is released: its erasure is scheduled, sent, answered; only then are they dropped.
    released = HoldUpdated(
        hold_id=uuid4(),
        version=2,
        case_reference="LIT-F",
        subject_ref=REF,
        sealed_identifiers="x",
        placed_at=T0,
        released_at=datetime(2027, 2, 1, tzinfo=UTC),
    )
    assert await schedule.record_hold(tracker_db, released) == 1
    assert await forget_identifiers(tracker_db, datetime(2027, 2, 1, 1, tzinfo=UTC), KEEP_FAILED) == 0
    assert await schedule.dispatch_due(tracker_db, datetime(2027, 2, 1, 2, tzinfo=UTC)) == 1
    command = (await outbox(tracker_db, topics.command_topic("recordings")))[-1]
    assert command["sealed_identifiers"] == "sealed"  # sent with the identifiers still kept
    first = await tracker_db.fetchval(
        "SELECT outcome->>'command_id' FROM saga_systems WHERE system = 'recordings'"
    )
    resumed = outcome("f-3", "recordings").model_copy(
        update={"resume_of": UUID(first), "command_id": UUID(command["message_id"])}
    )
    await store.record_outcome(tracker_db, resumed)
    assert await forget_identifiers(tracker_db, datetime(2027, 2, 2, tzinfo=UTC), KEEP_FAILED) == 1


async def test_a_failed_system_keeps_them_for_a_retry_which_is_refused_once_they_are_gone(
    tracker_db: asyncpg.Pool,  # noqa: F811
) -> None:
    await store.start_saga(tracker_db, accepted("f-4", "crm"), T0)
    assert await sweep.check_timeouts(tracker_db, T0 + timedelta(minutes=5), TIMEOUTS) == 1
    assert await sweep.check_timeouts(tracker_db, T0 + timedelta(minutes=15), TIMEOUTS) == 1  # failed
    assert await forget_identifiers(tracker_db, T0 + timedelta(days=30), KEEP_FAILED) == 0
    assert await forget_identifiers(tracker_db, T0 + timedelta(days=91), KEEP_FAILED) == 1
    retry = RetrySystem(request_id="f-4", system="crm")
    assert not await store.retry_system(tracker_db, retry, T0 + timedelta(days=92))
    status = (await outbox(tracker_db, topics.REQUEST_STATUS))[-1]
    assert status["status"] == "failed"
    assert status["audit"][-1]["kind"] == "retry_ignored"
    assert status["audit"][-1]["detail"]["reason"] == "identifiers no longer kept"


async def test_a_shared_case_reference_keeps_them_while_any_hold_of_it_is_open_ended(
    tracker_db: asyncpg.Pool,  # noqa: F811
) -> None:
    # One lawsuit, two people: Bob's hold under LIT-7 is released, Alice's stays open-ended.
    await store.start_saga(tracker_db, accepted("f-5", "recordings"), T0)
    kept = Retention(count=1, hold_reference="LIT-7", legal_basis="hold")
    await store.record_outcome(tracker_db, outcome("f-5", "recordings", retained=[kept]))
    alice = HoldUpdated(
        hold_id=uuid4(),
        version=1,
        case_reference="LIT-7",
        subject_ref=REF,
        sealed_identifiers="a",
        placed_at=T0,
    )
    bob = alice.model_copy(update={"hold_id": uuid4(), "version": 2, "released_at": T0 + timedelta(hours=1)})
    await schedule.record_hold(tracker_db, alice)
    await schedule.record_hold(tracker_db, bob)
    # Bob's release schedules a follow-up for the records kept under LIT-7; it comes back kept.
    assert await schedule.dispatch_due(tracker_db, LATER) == 1
    sent = (await outbox(tracker_db, topics.command_topic("recordings")))[-1]
    first = await tracker_db.fetchval(
        "SELECT outcome->>'command_id' FROM saga_systems WHERE request_id = 'f-5'"
    )
    again = outcome("f-5", "recordings", retained=[kept], erased=0).model_copy(
        update={"resume_of": UUID(first), "command_id": UUID(sent["message_id"])}
    )
    await store.record_outcome(tracker_db, again)
    assert await forget_identifiers(tracker_db, LATER + timedelta(days=1), KEEP_FAILED) == 0
    assert await kept_identifiers(tracker_db, "f-5")


async def test_a_follow_up_without_identifiers_does_not_hold_up_the_others(
    tracker_db: asyncpg.Pool,  # noqa: F811
) -> None:
    until = Retention(count=1, rule_id="r", legal_basis="b", retain_until=date(2027, 1, 4))
    for rid in ("f-6", "f-7"):
        await store.start_saga(tracker_db, accepted(rid, "billing"), T0)
        await store.record_outcome(tracker_db, outcome(rid, "billing", retained=[until]))
    await tracker_db.execute("UPDATE sagas SET sealed_identifiers = NULL WHERE request_id = 'f-6'")
    assert await schedule.dispatch_due(tracker_db, datetime(2027, 1, 4, 6, tzinfo=UTC)) == 2
    sent = await outbox(tracker_db, topics.command_topic("billing"))
    assert [c["request_id"] for c in sent] == ["f-7"]
    assert await schedule.dispatch_due(tracker_db, datetime(2027, 1, 5, tzinfo=UTC)) == 0


async def test_the_sweep_looks_requests_up_by_index_with_no_statistics_to_go_by(
    tracker_db: asyncpg.Pool,  # noqa: F811
) -> None:
    """Without ANALYZE (autovacuum off), the planner took each of the sweep's EXISTS for a quick
    hit and scanned all of saga_systems once per request: seconds a sweep, every minute."""
    await store.start_saga(tracker_db, accepted("f-plan", "crm"), T0)
    await store.record_outcome(tracker_db, outcome("f-plan", "crm"))
    async with tracker_db.acquire() as conn, conn.transaction():
        await conn.execute(SWEEP_PLAN)
        plan = "\n".join(r[0] for r in await conn.fetch("EXPLAIN " + _NEEDS, 200, LATER - RECHECK_AFTER))
    assert "Seq Scan on saga_systems" not in plan and "JIT" not in plan, plan
