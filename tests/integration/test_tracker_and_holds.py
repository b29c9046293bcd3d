"""The tracker's saga and deferred-erasure schedule on a real PostgreSQL; the workers' view
of holds on the real broker."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, date, datetime, timedelta
from uuid import UUID, uuid4, uuid5

import asyncpg
import pytest
from aiokafka import AIOKafkaProducer

from services.tracker import recovery, repository, saving, schedule, store, sweep
from services.tracker.saga import Timeouts
from shared import topics
from shared.codec import decode, encode
from shared.contracts import (
    CategoryOutcome,
    OutcomeReported,
    RequestAccepted,
    RequestType,
    Retention,
)
from shared.contracts.audit import verify_chain
from shared.contracts.commands import EraseRecords
from shared.contracts.events import DeadlineExtended, RetrySystem, ReviewDecided
from shared.contracts.holds import SNAPSHOT_KEY, HoldsAnnounced, HoldUpdated
from shared.contracts.outcomes import ReviewItem
from shared.contracts.report import ReviewDecision
from shared.crypto import IdentifierSeal, new_identifier_key, subject_ref
from shared.db import apply_schema, create_pool, ensure_database
from shared.identity import Identities
from shared.kafka import ensure_topics, make_producer
from shared.settings import KafkaSettings
from shared.worker.holds import HoldsUnavailable, HoldsView
from tests.conftest import delete_topics

pytestmark = pytest.mark.integration
T0 = datetime(2026, 11, 27, 9, tzinfo=UTC)
REF = subject_ref("k", Identities(emails=["a@example.com"]))


@pytest.fixture
async def tracker_db(fresh_db: str):  # type: ignore[no-untyped-def]
    await ensure_database(fresh_db)
    pool = await create_pool(fresh_db)
    await apply_schema(pool, *store.SCHEMA)
    yield pool
    await pool.close()


def accepted(request_id: str, *systems: str) -> RequestAccepted:
    return RequestAccepted(
        request_id=request_id,
        request_type=RequestType.ERASURE,
        subject_ref=REF,
        systems=list(systems),
        received_at=T0,
        deadline=T0 + timedelta(days=30),
        sealed_identifiers="sealed",
        occurred_at=T0,
        command_ids={system: first_command(request_id, system) for system in systems},
    )


def first_command(request_id: str, system: str) -> UUID:
    """The command intake sends the system first (random there; fixed here, so that an answer
    can name it: the tracker takes no answer to a command it did not issue)."""
    return uuid5(UUID(int=0), f"{request_id}/{system}")


def outcome(
    request_id: str,
    system: str,
    retained: list[Retention] | None = None,
    resume_of: OutcomeReported | None = None,
    erased: int = 1,
) -> OutcomeReported:
    return OutcomeReported(
        request_id=request_id,
        system=system,
        command_id=uuid4() if resume_of else first_command(request_id, system),
        attempt=1,
        status="done",
        resume_of=resume_of.command_id if resume_of else None,
        categories=[
            CategoryOutcome(
                category="invoices",
                found=erased + sum(r.count for r in retained or []),
                erased=erased,
                retained=retained or [],
            )
        ],
        started_at=T0,
        finished_at=T0 + timedelta(minutes=1),
    )


async def outbox(pool: asyncpg.Pool, topic: str) -> list[dict[str, object]]:
    rows = await pool.fetch("SELECT value FROM outbox WHERE topic = $1 ORDER BY id", topic)
    return [json.loads(r["value"]) for r in rows]


async def test_outcomes_complete_the_saga_once_and_duplicates_change_nothing(
    tracker_db: asyncpg.Pool,
) -> None:
    await store.start_saga(tracker_db, accepted("t-1", "crm", "billing"), T0)
    crm = outcome("t-1", "crm")
    await store.record_outcome(tracker_db, crm)
    await store.record_outcome(tracker_db, crm)  # redelivered
    await store.record_outcome(tracker_db, outcome("t-1", "billing"))
    statuses = [m["status"] for m in await outbox(tracker_db, topics.REQUEST_STATUS)]
    assert statuses == ["in_progress", "in_progress", "completed"]
    assert len(await outbox(tracker_db, topics.REQUESTS_COMPLETED)) == 1


async def test_twin_deliveries_of_an_outcome_at_once_record_it_once(tracker_db: asyncpg.Pool) -> None:
    # A rebalance can hand one outcome to two tracker instances at once: the claim and the
    # saga's lock are taken in one statement, and whichever waits finds the outcome taken.
    await store.start_saga(tracker_db, accepted("twin-1", "crm", "billing"), T0)
    crm = outcome("twin-1", "crm")
    for _ in range(5):
        await asyncio.gather(*(store.record_outcome(tracker_db, crm) for _ in range(3)))
    await asyncio.gather(*(store.record_outcome(tracker_db, outcome("twin-1", "billing")) for _ in range(2)))
    statuses = [m["status"] for m in await outbox(tracker_db, topics.REQUEST_STATUS)]
    assert statuses == ["in_progress", "in_progress", "completed"]
    trail = await repository.audit_trail(tracker_db, "twin-1")
    assert [e.kind for e in trail].count("outcome_recorded") == 2
    assert verify_chain(trail) is None


async def test_a_redelivered_message_is_told_apart_without_waiting_for_the_saga(
    tracker_db: asyncpg.Pool,
) -> None:
    # After a rebalance a consumer reads again what was handled: a message already processed
    # must not queue behind whatever holds the saga, nor load it.
    await store.start_saga(tracker_db, accepted("again-1", "crm"), T0)
    crm = outcome("again-1", "crm")
    await store.record_outcome(tracker_db, crm)
    holder, other = await tracker_db.acquire(), await tracker_db.acquire()
    try:
        tx = holder.transaction()
        await tx.start()
        assert await repository.load(holder, "again-1") is not None  # the saga locked
        async with other.transaction():
            fresh, loaded = await asyncio.wait_for(
                repository.claim_and_load(other, [crm.message_id], "again-1"), 2
            )
        assert fresh == set() and loaded is None
        await tx.rollback()
    finally:
        await tracker_db.release(holder)
        await tracker_db.release(other)


async def test_an_outcome_that_overtakes_its_request_is_kept_until_the_saga_starts(
    tracker_db: asyncpg.Pool,
) -> None:
    await store.record_outcome(tracker_db, outcome("t-2", "crm"))
    await store.start_saga(tracker_db, accepted("t-2", "crm"), T0)
    assert [m["status"] for m in await outbox(tracker_db, topics.REQUEST_STATUS)] == ["completed"]
    await store.start_saga(tracker_db, accepted("t-2", "crm"), T0)  # redelivered: nothing changes
    assert [m["status"] for m in await outbox(tracker_db, topics.REQUEST_STATUS)] == ["completed"]
    assert await tracker_db.fetchval("SELECT count(*) FROM saga_systems WHERE request_id = 't-2'") == 1
    assert await tracker_db.fetchval("SELECT count(*) FROM early_outcomes") == 0


async def test_retention_end_schedules_a_deferred_erasure_and_the_report_records_it(
    tracker_db: asyncpg.Pool,
) -> None:
    await store.start_saga(tracker_db, accepted("t-3", "billing"), T0)
    kept = Retention(
        count=2, rule_id="billing.invoices.hmrc", legal_basis="HMRC", retain_until=date(2032, 1, 1)
    )
    first = outcome("t-3", "billing", retained=[kept])
    await store.record_outcome(tracker_db, first)
    assert await schedule.pending(tracker_db, "t-3") == [("billing", date(2032, 1, 1))]
    assert await schedule.dispatch_due(tracker_db, datetime(2031, 12, 31, tzinfo=UTC)) == 0
    assert await schedule.dispatch_due(tracker_db, datetime(2032, 1, 1, 3, tzinfo=UTC)) == 1
    assert await schedule.dispatch_due(tracker_db, datetime(2032, 1, 2, tzinfo=UTC)) == 0  # sent once
    command = (await outbox(tracker_db, topics.command_topic("billing")))[0]
    assert command["resume_of"] == str(first.command_id) and command["command"] == "erase_subject"
    # An answer to a follow-up the tracker did not send (a made-up id) is not taken.
    forged = outcome("t-3", "billing", resume_of=first, erased=5)
    await store.record_outcome(tracker_db, forged)
    assert (await outbox(tracker_db, topics.REQUEST_STATUS))[-1]["report"]["systems"][0]["deferred"] == []
    answer = outcome("t-3", "billing", resume_of=first, erased=2)
    await store.record_outcome(
        tracker_db, answer.model_copy(update={"command_id": UUID(command["message_id"])})
    )
    report = (await outbox(tracker_db, topics.REQUEST_STATUS))[-1]["report"]
    billing = report["systems"][0]
    assert report["status"] == "completed_with_exceptions"  # history: something was kept at first
    assert billing["deferred"][0]["erased"] == 2 and billing["next_erasure_on"] is None
    assert len(await outbox(tracker_db, topics.REQUESTS_COMPLETED)) == 1


def released_hold(case_reference: str, at: datetime) -> HoldUpdated:
    """A hold's second version: released at `at`."""
    return HoldUpdated(
        hold_id=uuid4(),
        version=2,
        case_reference=case_reference,
        subject_ref=REF,
        sealed_identifiers="x",
        placed_at=T0,
        released_at=at,
    )


async def test_releasing_a_hold_schedules_erasure_of_what_it_held(tracker_db: asyncpg.Pool) -> None:
    await store.start_saga(tracker_db, accepted("t-4", "recordings"), T0)
    held = Retention(count=1, hold_reference="LIT-9", legal_basis="hold")
    await store.record_outcome(tracker_db, outcome("t-4", "recordings", retained=[held]))
    assert await schedule.pending(tracker_db, "t-4") == []  # a hold has no end date
    released = released_hold("LIT-9", T0 + timedelta(days=3))
    assert await schedule.record_hold(tracker_db, released) == 1
    assert await schedule.record_hold(tracker_db, released) == 0  # redelivered: nothing more
    assert await schedule.pending(tracker_db, "t-4") == [("recordings", date(2026, 11, 30))]


async def test_a_hold_that_expires_schedules_erasure_at_that_moment_with_the_reason(
    tracker_db: asyncpg.Pool,
) -> None:
    expires = T0 + timedelta(hours=2, seconds=5)
    hold = HoldUpdated(
        hold_id=uuid4(),
        version=1,
        case_reference="LIT-EXP",
        subject_ref=REF,
        sealed_identifiers="x",
        placed_at=T0,
        expires_at=expires,
    )
    await store.start_saga(tracker_db, accepted("t-exp", "recordings"), T0)
    assert await schedule.record_hold(tracker_db, hold) == 0  # nothing cites it yet
    held = Retention(count=1, hold_reference="LIT-EXP", legal_basis="hold")
    first = outcome("t-exp", "recordings", retained=[held])
    await store.record_outcome(tracker_db, first)  # the outcome comes after the hold: scheduled then
    assert await schedule.pending(tracker_db, "t-exp") == [("recordings", expires.date())]
    assert await schedule.dispatch_due(tracker_db, expires - timedelta(seconds=1)) == 0  # same day, not yet
    assert await schedule.dispatch_due(tracker_db, expires) == 1
    command = (await outbox(tracker_db, topics.command_topic("recordings")))[0]
    assert command["resume_of"] == str(first.command_id) and command["reason"] == "hold LIT-EXP expired"
    later = outcome("t-exp", "recordings", resume_of=first).model_copy(
        update={"command_id": UUID(str(command["message_id"])), "reason": command["reason"]}
    )
    await store.record_outcome(tracker_db, later)
    deferred = (await outbox(tracker_db, topics.REQUEST_STATUS))[-1]["report"]["systems"][0]["deferred"]
    assert deferred[0]["reason"] == "hold LIT-EXP expired" and deferred[0]["erased"] == 1


async def test_a_release_that_overtakes_the_outcome_citing_it_still_schedules_erasure(
    tracker_db: asyncpg.Pool,
) -> None:
    released = released_hold("LIT-RACE", T0 + timedelta(minutes=1))
    await store.start_saga(tracker_db, accepted("t-race", "billing"), T0)
    await schedule.record_hold(tracker_db, released)
    held = Retention(count=1, hold_reference="LIT-RACE", legal_basis="hold")
    await store.record_outcome(tracker_db, outcome("t-race", "billing", retained=[held]))
    assert await schedule.pending(tracker_db, "t-race") == [("billing", T0.date())]


async def test_a_release_handled_while_the_outcome_citing_it_commits_still_schedules_erasure(
    tracker_db: asyncpg.Pool,
) -> None:
    """Keyed apart, they run at once: the outcome read the holds before the release committed,
    the release looked for citing outcomes before the outcome committed. Here the outcome is
    held at its audit entry (after its read of the holds) while the release is handled."""
    await store.start_saga(tracker_db, accepted("t-both", "billing"), T0)
    released = released_hold("LIT-BOTH", T0 + timedelta(minutes=1))
    held = Retention(count=1, hold_reference="LIT-BOTH", legal_basis="hold")
    async with tracker_db.acquire() as blocker, blocker.transaction():
        await blocker.execute("LOCK TABLE audit_log IN EXCLUSIVE MODE")
        answered = asyncio.create_task(
            store.record_outcome(tracker_db, outcome("t-both", "billing", retained=[held]))
        )
        await asyncio.sleep(0.5)  # it has read the holds, and waits to write its audit entry
        release = asyncio.create_task(schedule.record_hold(tracker_db, released))
        await asyncio.sleep(0.5)
    await asyncio.wait_for(asyncio.gather(answered, release), 10)
    assert await schedule.pending(tracker_db, "t-both") == [("billing", T0.date())]


def announced(*holds: HoldUpdated) -> HoldsAnnounced:
    return HoldsAnnounced(versions={h.hold_id: h.version for h in holds})


async def send(producer: AIOKafkaProducer, message: HoldUpdated | HoldsAnnounced) -> None:
    key = str(message.hold_id) if isinstance(message, HoldUpdated) else SNAPSHOT_KEY
    await producer.send_and_wait(topics.HOLDS, encode(message), key=key.encode())


@pytest.fixture
async def holds_topic(broker: KafkaSettings):  # type: ignore[no-untyped-def]
    """An empty holds topic of its own (the broker is shared by the session), and a producer."""
    await ensure_topics(broker, topics.all_topics())
    await delete_topics(broker, topics.HOLDS)
    await ensure_topics(broker, [topics.HOLDS])
    producer = make_producer(broker)
    await producer.start()
    yield producer
    await producer.stop()


async def test_holds_view_sees_every_hold_acknowledged_before_it_decides(
    broker: KafkaSettings, holds_topic: AIOKafkaProducer
) -> None:
    seal = IdentifierSeal(new_identifier_key())
    view = HoldsView(broker, seal)
    await view.start()
    producer = holds_topic
    try:
        hold = HoldUpdated(
            hold_id=uuid4(),
            version=1,
            case_reference="LIT-1",
            subject_ref=REF,
            sealed_identifiers=seal.seal(Identities(customer_ids=["C-1"])),
            systems=["billing"],
            placed_at=T0,
        )
        await view.refresh()
        with pytest.raises(HoldsUnavailable, match="no holds announcement"):  # nothing known yet
            await view.active("billing", T0)
        await send(producer, announced())
        await view.refresh()
        assert await view.active("billing", T0 + timedelta(seconds=1)) == []
        # Acknowledged by the broker, so the very next batch must see it: no sleeping here.
        await send(producer, hold)
        await view.refresh()
        active = await view.active("billing", T0 + timedelta(seconds=1))
        assert [h.case_reference for h in active] == ["LIT-1"]
        assert active[0].identities.customer_ids == ["C-1"]
        assert await view.active("crm", T0 + timedelta(seconds=1)) == []  # other systems unaffected
        released = hold.model_copy(update={"version": 2, "released_at": T0 + timedelta(days=1)})
        await send(producer, released)
        await view.refresh()
        assert await view.active("billing", T0 + timedelta(days=2)) == []
        assert len(await view.active("billing", T0 + timedelta(hours=1))) == 1  # still in force then
        await producer.send_and_wait(topics.HOLDS, b"garbage", key=str(uuid4()).encode())  # a hold's key
        await view.refresh()
        with pytest.raises(HoldsUnavailable, match="unreadable"):  # fail closed: nothing erased on a guess
            await view.active("billing", T0)
    finally:
        await view.stop()


async def test_a_view_is_incomplete_while_an_announced_hold_is_missing_or_unreadable(
    broker: KafkaSettings, holds_topic: AIOKafkaProducer
) -> None:
    seal = IdentifierSeal(new_identifier_key())
    hold = HoldUpdated(
        hold_id=uuid4(),
        version=3,
        case_reference="LIT-2",
        subject_ref=REF,
        sealed_identifiers=seal.seal(Identities(customer_ids=["C-2"])),
        placed_at=T0,
    )
    # The marker says hold LIT-2 is at version 3; the topic has lost it (a forgetful broker).
    await send(holds_topic, announced(hold))
    view = HoldsView(broker, seal)
    await view.start()
    try:
        await view.refresh()
        assert view.incomplete() == "1 announced hold(s) not read"
        await send(holds_topic, hold.model_copy(update={"version": 2}))  # an older version is not enough
        await view.refresh()
        assert view.incomplete() == "1 announced hold(s) not read"
        # A version that cannot be opened (another key) stands until a readable one supersedes it.
        other = IdentifierSeal(new_identifier_key()).seal(Identities(customer_ids=["C-2"]))
        await send(holds_topic, hold.model_copy(update={"sealed_identifiers": other}))
        await view.refresh()
        assert view.incomplete() == "1 unreadable hold message(s)"
        await send(holds_topic, hold)
        await view.refresh()
        assert view.incomplete() is None
        assert [h.case_reference for h in await view.active("crm", T0)] == ["LIT-2"]
    finally:
        await view.stop()


TIMEOUTS = Timeouts(first=timedelta(minutes=5), attempts=2, backoff=2.0)


async def test_silent_system_is_redispatched_with_the_same_command_then_failed(
    tracker_db: asyncpg.Pool,
) -> None:
    event = accepted("t-5", "crm").model_copy(update={"command_ids": {"crm": uuid4()}})
    await store.start_saga(tracker_db, event, T0)
    assert await sweep.check_timeouts(tracker_db, T0 + timedelta(minutes=4), TIMEOUTS) == 0
    assert await sweep.check_timeouts(tracker_db, T0 + timedelta(minutes=5), TIMEOUTS) == 1
    resent = await outbox(tracker_db, topics.command_topic("crm"))
    assert [c["message_id"] for c in resent] == [str(event.command_ids["crm"])]  # the worker de-duplicates
    assert resent[0]["attempt"] == 2
    assert await sweep.check_timeouts(tracker_db, T0 + timedelta(minutes=14), TIMEOUTS) == 0
    assert await sweep.check_timeouts(tracker_db, T0 + timedelta(minutes=15), TIMEOUTS) == 1
    status = (await outbox(tracker_db, topics.REQUEST_STATUS))[-1]
    assert status["status"] == "failed"
    assert status["systems"][0]["error"] == "no answer after 2 attempts"
    kinds = [e["kind"] for e in status["audit"]]
    assert kinds == ["accepted", "redispatched", "system_failed", "completed"]


async def test_an_extension_read_before_its_requests_acceptance_is_applied_when_the_saga_starts(
    tracker_db: asyncpg.Pool,
) -> None:
    """The extension (lethe.requests.deadlines.v1) and the acceptance come on different topics:
    one granted right after submission may be read first, and must not be lost."""
    extended = DeadlineExtended(request_id="t-early", months=2, deadline=T0 + timedelta(days=90))
    await store.extend_deadline(tracker_db, extended)
    await store.extend_deadline(tracker_db, extended)  # redelivered: kept once
    await store.start_saga(tracker_db, accepted("t-early", "crm"), T0)
    loaded = await tracker_db.fetchrow("SELECT deadline, extension FROM sagas WHERE request_id = 't-early'")
    assert loaded["deadline"] == T0 + timedelta(days=90)
    assert json.loads(loaded["extension"])["months"] == 2
    entries = await store.audit_trail(tracker_db, "t-early")
    assert [e.kind for e in entries] == ["accepted", "deadline_extended"]
    assert await tracker_db.fetchval("SELECT count(*) FROM early_extensions") == 0


async def test_operator_retry_and_extension_are_audited_in_a_chain_the_database_protects(
    tracker_db: asyncpg.Pool,
) -> None:
    await store.start_saga(tracker_db, accepted("t-6", "crm"), T0)
    command = await tracker_db.fetchval("SELECT command_id FROM saga_systems WHERE request_id = 't-6'")
    failed = outcome("t-6", "crm").model_copy(update={"status": "failed", "command_id": command})
    await store.record_outcome(tracker_db, failed)
    assert await store.retry_system(
        tracker_db, RetrySystem(request_id="t-6", system="crm"), T0 + timedelta(hours=1)
    )
    assert len(await outbox(tracker_db, topics.command_topic("crm"))) == 1
    extended = DeadlineExtended(request_id="t-6", months=2, deadline=T0 + timedelta(days=90))
    await store.extend_deadline(tracker_db, extended)
    await store.extend_deadline(tracker_db, extended)  # redelivered: no second entry
    entries = await store.audit_trail(tracker_db, "t-6")
    assert [e.kind for e in entries] == [
        "accepted",
        "outcome_recorded",
        "completed",
        "retry_dispatched",
        "deadline_extended",
    ]
    assert verify_chain(entries) is None
    with pytest.raises(asyncpg.RaiseError, match="append-only"):
        await tracker_db.execute("UPDATE audit_log SET kind = 'nothing' WHERE request_id = 't-6'")
    with pytest.raises(asyncpg.RaiseError, match="append-only"):
        await tracker_db.execute("DELETE FROM audit_log WHERE request_id = 't-6'")


async def test_after_a_broker_loss_what_the_sagas_wait_for_is_sent_again_as_it_was(
    tracker_db: asyncpg.Pool,
) -> None:
    waiting = accepted("t-lost", "crm", "billing").model_copy(update={"command_ids": {"crm": uuid4()}})
    await store.start_saga(tracker_db, waiting, T0)
    await store.record_outcome(tracker_db, outcome("t-lost", "billing"))
    await store.start_saga(tracker_db, accepted("t-recent", "crm"), T0)
    kept = Retention(count=1, rule_id="r", legal_basis="HMRC", retain_until=date(2027, 1, 1))
    first = outcome("t-recent", "crm", retained=[kept])
    await store.record_outcome(tracker_db, first)
    assert await schedule.dispatch_due(tracker_db, datetime(2027, 1, 1, tzinfo=UTC)) == 1  # then lost
    deferred_id = (await outbox(tracker_db, topics.command_topic("crm")))[-1]["message_id"]
    await store.start_saga(tracker_db, accepted("t-old", "mailing"), T0 - timedelta(days=30))
    await store.record_outcome(
        tracker_db, outcome("t-old", "mailing").model_copy(update={"finished_at": T0 - timedelta(days=29)})
    )
    await store.start_saga(tracker_db, accepted("t-later", "crm"), T0)
    await store.record_outcome(
        tracker_db, outcome("t-later", "crm").model_copy(update={"finished_at": T0 + timedelta(minutes=10)})
    )
    await tracker_db.execute("DELETE FROM outbox")  # what the broker had, and forgot

    at_settling: list[str] = []

    async def settle() -> None:
        at_settling.extend(m["request_id"] for m in await outbox(tracker_db, topics.REQUEST_STATUS))

    touched = await recovery.recover(tracker_db, T0 + timedelta(minutes=5), timedelta(hours=1), settle=settle)
    # t-old finished a month ago: intake has long read it; t-later after the loss was noticed,
    # on the new broker. Open requests go first, finished ones once the stack has settled.
    assert touched == 2 and at_settling == ["t-lost"]
    assert [c["message_id"] for c in await outbox(tracker_db, topics.command_topic("crm"))] == [
        str(waiting.command_ids["crm"])
    ]
    statuses = {m["request_id"]: m for m in await outbox(tracker_db, topics.REQUEST_STATUS)}
    assert set(statuses) == {"t-lost", "t-recent"}
    assert statuses["t-lost"]["audit"][-1]["kind"] == "resent_after_broker_loss"
    assert [m["request_id"] for m in await outbox(tracker_db, topics.REQUESTS_COMPLETED)] == ["t-recent"]
    # The deferred erasure whose outcome never came is due again, as the same command.
    assert await schedule.dispatch_due(tracker_db, datetime(2027, 1, 2, tzinfo=UTC)) == 1
    assert (await outbox(tracker_db, topics.command_topic("crm")))[-1]["message_id"] == deferred_id
    # A broker lost, not shed: a completion time from a system's clock a little ahead of the
    # tracker's is no reason to leave it out.
    assert await recovery.recover(tracker_db, T0 + timedelta(minutes=5), timedelta(hours=1)) == 3


async def test_a_saga_changed_while_another_waited_for_it_is_read_as_changed(
    tracker_db: asyncpg.Pool,
) -> None:
    # A handler and the tracker's own timers (timeouts, broker-loss recovery) may change one
    # saga at once: the one that waited must read what the other wrote (its systems, its audit
    # trail), or it appends an audit entry under a number already taken and drops the change.
    await store.start_saga(tracker_db, accepted("race-1", "crm", "billing"), T0)
    first = await tracker_db.acquire()
    second = await tracker_db.acquire()
    try:
        tx = first.transaction()
        await tx.start()
        loaded = await repository.load(first, "race-1")
        assert loaded is not None
        loaded.saga.note(T0, "first_change")
        await saving.save(first, loaded, was_final=False)

        async def waiting() -> repository.Loaded | None:
            async with second.transaction():
                # Waits for the first to commit; the claim in the same statement is made.
                fresh, other = await repository.claim_and_load(second, [uuid4()], "race-1")
                assert other is not None and len(fresh) == 1
                other.saga.note(T0, "second_change")
                await saving.save(second, other, was_final=False)
                return other

        task = asyncio.create_task(waiting())
        await asyncio.sleep(0.2)
        assert not task.done()  # it waits on the saga's lock
        await tx.commit()
        other = await task
        assert other is not None
        assert [e.kind for e in other.trail][-2:] == ["first_change", "second_change"]
    finally:
        await tracker_db.release(first)
        await tracker_db.release(second)
    assert verify_chain(await repository.audit_trail(tracker_db, "race-1")) is None


async def test_a_reviewers_yes_on_a_restriction_sends_a_restriction_of_those_records(
    tracker_db: asyncpg.Pool,
) -> None:
    """'erase' is the one yes a reviewer has: on a restriction request, the records it names are
    restricted, as the person asked (the command says so), never erased."""
    event = accepted("t-rr", "crm").model_copy(update={"request_type": RequestType.RESTRICTION})
    await store.start_saga(tracker_db, event, T0)
    item = ReviewItem(
        review_id=uuid4(),
        groups=[("contacts", "CT-1")],
        records={"contacts": 1},
        reason="shared_phone",
        matched=["phones"],
        conflicting=["customer_ids"],
    )
    answer = outcome("t-rr", "crm").model_copy(update={"reviews": [item], "categories": []})
    await store.record_outcome(tracker_db, answer)
    decided = ReviewDecided(
        request_id="t-rr",
        review_id=item.review_id,
        decision=ReviewDecision.ERASE,
        reason_sha256="0" * 64,
        token_id="tok",
        role="compliance",
    )
    assert await store.decide_review(tracker_db, decided, T0 + timedelta(hours=1))
    rows = await tracker_db.fetch("SELECT value FROM outbox WHERE topic = $1", topics.command_topic("crm"))
    [command] = [decode(r["value"], EraseRecords) for r in rows if b"erase_records" in r["value"]]
    assert command.request_type is RequestType.RESTRICTION and command.groups == [("contacts", "CT-1")]
