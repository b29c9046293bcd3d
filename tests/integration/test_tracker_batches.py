"""Several requests' messages handled in one tracker transaction (shared/delivery.py's
`together`, services/tracker/handlers.py): the same sagas, audit trails and outbox as a
transaction per request; a batch with one failing message undone whole."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from uuid import uuid4

import asyncpg
import pytest
from aiokafka import ConsumerRecord
from pydantic import BaseModel

from services.tracker import handlers, repository, store, sweep
from services.tracker.saga import Timeouts
from shared import topics
from shared.codec import encode
from shared.contracts import RequestAccepted, RequestType
from shared.contracts.audit import verify_chain
from shared.contracts.events import DeadlineExtended
from shared.crypto import subject_ref
from shared.db import apply_schema, create_pool
from shared.delivery import by_key
from shared.identity import Identities
from shared.together import GroupHandler, handle_together
from tests.conftest import drop_database
from tests.integration.test_tracker_and_holds import first_command, outcome

pytestmark = pytest.mark.integration
T0 = datetime.now(UTC).replace(microsecond=0)


def accepted(request_id: str) -> RequestAccepted:
    return RequestAccepted(
        request_id=request_id,
        request_type=RequestType.ERASURE,
        subject_ref=subject_ref("k", Identities(emails=[f"{request_id}@example.com"])),
        systems=["crm", "billing"],
        received_at=T0,
        deadline=T0 + timedelta(days=30),
        sealed_identifiers="sealed",
        occurred_at=T0,
        command_ids={system: first_command(request_id, system) for system in ("crm", "billing")},
    )


def as_record(offset: int, message: BaseModel | bytes, key: str) -> ConsumerRecord[bytes, bytes]:
    topic = topics.REQUESTS_ACCEPTED if isinstance(message, RequestAccepted) else topics.OUTCOMES
    value = message if isinstance(message, bytes) else encode(message)
    return ConsumerRecord(topic, 0, offset, 0, 0, key.encode(), value, None, len(key), len(value), [])


def batch() -> list[ConsumerRecord[bytes, bytes]]:
    """Three requests: one answered in full (one answer delivered twice), one in part, one
    whose answer overtakes its acceptance."""
    a_crm = outcome("a", "crm")
    made = [
        as_record(0, accepted("a"), "a"),
        as_record(1, accepted("b"), "b"),
        as_record(2, a_crm, "a"),
        as_record(3, outcome("c", "crm"), "c"),
        as_record(4, outcome("b", "billing"), "b"),
        as_record(5, a_crm, "a"),
        as_record(6, outcome("a", "billing"), "a"),
        as_record(7, accepted("c"), "c"),
    ]
    return made


@pytest.fixture
async def two_dbs(pg_server: str) -> AsyncIterator[tuple[asyncpg.Pool, asyncpg.Pool]]:
    names = [f"lethe_it_tb_{uuid4().hex[:12]}" for _ in (1, 2)]
    pools = []
    try:
        for name in names:
            conn = await asyncpg.connect(f"{pg_server}/postgres")
            await conn.execute(f'CREATE DATABASE "{name}"')
            await conn.close()
            pool = await create_pool(f"{pg_server}/{name}")
            await apply_schema(pool, *store.SCHEMA)
            pools.append(pool)
        yield pools[0], pools[1]
    finally:
        for pool in pools:
            await pool.close()
        for name in names:
            await drop_database(pg_server, name)


async def state(pool: asyncpg.Pool) -> dict[str, object]:
    """What the tracker holds of each request, less its moments and ids made at random."""
    sagas = await pool.fetch("SELECT request_id, status FROM sagas ORDER BY request_id")
    trails = {r["request_id"]: await repository.audit_trail(pool, r["request_id"]) for r in sagas}
    outbox = await pool.fetch("SELECT topic, key, value FROM outbox ORDER BY id")
    statuses = [
        (json.loads(r["value"])["request_id"], json.loads(r["value"])["status"])
        for r in outbox
        if r["topic"] == topics.REQUEST_STATUS
    ]
    assert all(verify_chain(trail) is None for trail in trails.values())
    return {
        "sagas": [(r["request_id"], r["status"]) for r in sagas],
        "trails": {k: [e.kind for e in trail] for k, trail in trails.items()},
        "messages": sorted((r["topic"], r["key"]) for r in outbox),
        "statuses": sorted(statuses),
        "early": await pool.fetchval("SELECT count(*) FROM early_outcomes"),
    }


async def test_requests_handled_together_end_as_one_request_at_a_time(
    two_dbs: tuple[asyncpg.Pool, asyncpg.Pool],
) -> None:
    together_db, single_db = two_dbs
    records = batch()
    tracker = handlers.Tracker(together_db)
    assert await handle_together(by_key(records), lambda: handlers.together(tracker), "tracker")
    single = handlers.Tracker(single_db)
    for group in by_key(records):  # as without `together`: a transaction per request
        await handlers.handle_group(single, group)

    got = await state(together_db)
    assert got == await state(single_db)
    assert got["sagas"] == [("a", "completed"), ("b", "in_progress"), ("c", "in_progress")]
    assert got["trails"]["a"].count("outcome_recorded") == 2  # the twin changed nothing
    # Handled again (a batch redelivered after a lost commit of its offsets): nothing changes.
    assert await handle_together(by_key(records), lambda: handlers.together(tracker), "tracker")
    assert await state(together_db) == got


async def test_a_message_that_fails_undoes_its_batch(two_dbs: tuple[asyncpg.Pool, asyncpg.Pool]) -> None:
    pool, _ = two_dbs
    records = batch()
    records.insert(3, as_record(9, b'{"not": "an outcome"}', "b"))
    tracker = handlers.Tracker(pool)
    assert not await handle_together(by_key(records), lambda: handlers.together(tracker), "tracker")
    assert await pool.fetchval("SELECT count(*) FROM sagas") == 0  # undone whole
    assert await pool.fetchval("SELECT count(*) FROM outbox") == 0


async def test_a_saga_locked_elsewhere_does_not_hold_up_its_batch(
    two_dbs: tuple[asyncpg.Pool, asyncpg.Pool],
) -> None:
    """Another instance (or a timer) holds one request's saga: the batch gives up on it within
    a second and is undone; its requests are then handled one at a time, only that one waiting."""
    pool, _ = two_dbs
    tracker = handlers.Tracker(pool)
    await handlers.handle(tracker, as_record(0, accepted("a"), "a"))
    records = [as_record(1, outcome("a", "crm"), "a"), as_record(2, accepted("b"), "b")]
    async with pool.acquire() as elsewhere, elsewhere.transaction():
        await elsewhere.execute("SELECT 1 FROM sagas WHERE request_id = 'a' FOR UPDATE")
        together = handle_together(by_key(records), lambda: handlers.together(tracker), "tracker")
        assert not await asyncio.wait_for(together, 30)  # without the bound, it waits for ever
    assert await pool.fetchval("SELECT count(*) FROM sagas") == 1  # b's start undone with it


async def test_a_started_saga_is_the_one_a_load_reads(two_dbs: tuple[asyncpg.Pool, asyncpg.Pool]) -> None:
    """The start returns the saga as inserted (no load after it): it must be what
    `lethe_saga_load` reads of the same rows, defaults and all; a second start returns none."""
    pool, _ = two_dbs
    event = accepted("a")
    async with pool.acquire() as conn, conn.transaction():
        started = await repository.start(conn, event)
        assert started is not None and started.early == [] and started.extensions == []
        loaded = await repository.load(conn, "a")
        assert loaded is not None and started.loaded == loaded
        assert list(started.loaded.saga.slots) == ["billing", "crm"]  # by name, not as given
        # In the order of their names whatever the plan: read from the heap, where an update
        # moved billing's row after crm's.
        await conn.execute("UPDATE saga_systems SET attempts = 2 WHERE system = 'billing'")
        await conn.execute("SET LOCAL enable_indexscan = off; SET LOCAL enable_bitmapscan = off")
        heap = [r["system"] for r in await conn.fetch("SELECT system FROM saga_systems")]
        reloaded = await repository.load(conn, "a")
        assert heap == ["crm", "billing"] and reloaded is not None
        assert list(reloaded.saga.slots) == ["billing", "crm"]
    async with pool.acquire() as conn, conn.transaction():
        assert await repository.start(conn, event) is None


async def _crm_state(pool: asyncpg.Pool) -> tuple[str, int]:
    state = await pool.fetchval("SELECT state FROM saga_systems WHERE request_id = 'a' AND system = 'crm'")
    return state, await pool.fetchval("SELECT count(*) FROM early_outcomes")


async def test_an_outcome_that_comes_while_its_saga_starts_waits_and_is_recorded(
    two_dbs: tuple[asyncpg.Pool, asyncpg.Pool],
) -> None:
    """Two tracker instances: one starts the saga, the other takes its first answer meanwhile.
    Before the start commits the saga is invisible; the answer waits for it, rather than being
    kept as early where the start, already past its look for early ones, would never take it."""
    pool, _ = two_dbs
    async with pool.acquire() as starting, starting.transaction():
        assert await repository.start(starting, accepted("a")) is not None
        recording = asyncio.create_task(store.record_outcome(pool, outcome("a", "crm")))
        await asyncio.sleep(0.3)
        assert not recording.done()
    await asyncio.wait_for(recording, 10)
    assert await _crm_state(pool) == ("done", 0)


async def test_a_saga_that_starts_while_an_early_answer_is_kept_takes_it(
    two_dbs: tuple[asyncpg.Pool, asyncpg.Pool],
) -> None:
    """The other order: the answer is being kept as early when the acceptance comes; the start
    waits for it to commit, then takes it."""
    pool, _ = two_dbs
    async with pool.acquire() as answering, answering.transaction():
        await store.record_outcome(answering, outcome("a", "crm"))
        starting = asyncio.create_task(store.start_saga(pool, accepted("a"), T0))
        await asyncio.sleep(0.3)
        assert not starting.done()
    await asyncio.wait_for(starting, 10)
    assert await _crm_state(pool) == ("done", 0)


async def test_the_timeout_sweep_skips_a_saga_a_handler_holds(
    two_dbs: tuple[asyncpg.Pool, asyncpg.Pool],
) -> None:
    """A handler takes a saga's lock, then its row; the sweep takes the lock only where it is
    free, so it never holds the row while waiting for the lock (a deadlock, which undid the
    whole sweep): it skips that saga this time and times it out once the handler is done."""
    pool, _ = two_dbs
    await store.start_saga(pool, accepted("a"), T0)
    await store.start_saga(pool, accepted("b"), T0)
    timeouts = Timeouts(first=timedelta(minutes=5), attempts=2, backoff=2.0)
    late = T0 + timedelta(minutes=6)
    async with pool.acquire() as handling, handling.transaction():
        await handling.execute("SELECT " + repository.saga_lock("'a'"))  # a handler, its lock taken
        sweeping = asyncio.create_task(sweep.check_timeouts(pool, late, timeouts))
        await asyncio.sleep(0.3)
        assert await repository.load(handling, "a") is not None  # then its row: the sweep let it be
        assert await asyncio.wait_for(sweeping, 5) == 1  # b alone
    assert await sweep.check_timeouts(pool, late, timeouts) == 1  # a, now free
    redispatched = await pool.fetchval(
        "SELECT count(*) FROM saga_systems WHERE attempts = 2 AND request_id IN ('a', 'b')"
    )
    assert redispatched == 4


async def test_answers_left_as_early_for_a_saga_that_exists_are_taken_by_the_tick(
    two_dbs: tuple[asyncpg.Pool, asyncpg.Pool],
) -> None:
    """What a tracker of an earlier version left behind (its start took no lock): an answer and
    an extension kept as early for a saga that exists. The tick takes them, once; what waits
    for a saga not yet started stays."""
    pool, _ = two_dbs
    await store.start_saga(pool, accepted("a"), T0)
    stranded, waiting = outcome("a", "crm"), outcome("z", "crm")
    extended = DeadlineExtended(request_id="a", months=2, deadline=T0 + timedelta(days=90))
    for answer in (stranded, waiting):
        await pool.execute(
            "INSERT INTO early_outcomes (message_id, request_id, outcome) VALUES ($1, $2, $3::jsonb)",
            answer.message_id,
            answer.request_id,
            answer.model_dump_json(),
        )
    await pool.execute(
        "INSERT INTO early_extensions (message_id, request_id, event) VALUES ($1, $2, $3)",
        extended.message_id,
        "a",
        extended.model_dump_json(),
    )
    assert await store.take_stranded(pool) == 1
    assert await store.take_stranded(pool) == 0
    assert await _crm_state(pool) == ("done", 1)  # z's answer still waits for its saga
    assert await pool.fetchval("SELECT count(*) FROM early_extensions") == 0
    assert await pool.fetchval("SELECT deadline FROM sagas WHERE request_id = 'a'") == extended.deadline


async def test_one_saga_that_cannot_be_handled_holds_up_neither_the_sweep_nor_the_stranded(
    two_dbs: tuple[asyncpg.Pool, asyncpg.Pool],
) -> None:
    """A saga whose silent system cannot be sent again (its identifiers gone) and an early
    answer that cannot be read: each is said and skipped, and the others are handled."""
    pool, _ = two_dbs
    for request_id in ("a", "b", "c"):
        await store.start_saga(pool, accepted(request_id), T0)
    await pool.execute("UPDATE sagas SET sealed_identifiers = NULL WHERE request_id = 'a'")
    timeouts = Timeouts(first=timedelta(minutes=5), attempts=2, backoff=2.0)
    assert await sweep.check_timeouts(pool, T0 + timedelta(minutes=6), timeouts) == 2  # b and c
    readable = outcome("c", "crm")
    for request_id, value in (("b", '{"request_id": "b"}'), ("c", readable.model_dump_json())):
        await pool.execute(
            "INSERT INTO early_outcomes (message_id, request_id, outcome) VALUES ($1, $2, $3::jsonb)",
            uuid4(),
            request_id,
            value,
        )
    assert await store.take_stranded(pool) == 1  # c's
    assert await pool.fetchval("SELECT request_id FROM early_outcomes") == "b"  # kept, for a person


async def test_the_sweep_finds_a_due_system_among_tries_not_yet_due(
    two_dbs: tuple[asyncpg.Pool, asyncpg.Pool],
) -> None:
    """Second tries wait twice the first: sagas whose second try is not yet due do not fill the
    sweep's page and hold back one whose first try is."""
    pool, _ = two_dbs
    for request_id in ("a", "b", "c"):
        await store.start_saga(pool, accepted(request_id), T0)
    await pool.execute(  # a and b waiting longer, for their second try
        "UPDATE saga_systems SET attempts = 2, dispatched_at = $1 WHERE request_id IN ('a', 'b')",
        T0 - timedelta(minutes=1),
    )
    timeouts = Timeouts(first=timedelta(minutes=5), attempts=3, backoff=2.0)
    assert await sweep.check_timeouts(pool, T0 + timedelta(minutes=6), timeouts, page=2) == 1
    tried = await pool.fetch("SELECT DISTINCT request_id FROM saga_systems WHERE attempts = 2 ORDER BY 1")
    assert [r["request_id"] for r in tried] == ["a", "b", "c"]  # c's first try timed out; a, b wait


async def test_two_batches_sharing_requests_wait_for_each_other_rather_than_deadlock(
    two_dbs: tuple[asyncpg.Pool, asyncpg.Pool],
) -> None:
    """Two instances' batches with the same two requests, come in opposite orders: each takes
    its first saga, and both then want the other's. Taken in one order (the keys'), the second
    waits for the first to commit; in the order they came, both were undone at the lock limit."""
    pool, _ = two_dbs
    tracker = handlers.Tracker(pool)
    for rid in ("a", "b"):
        await handlers.handle(tracker, as_record(0, accepted(rid), rid))
    both_hold_one = asyncio.Barrier(2)

    @asynccontextmanager
    async def together_pausing() -> AsyncIterator[GroupHandler]:
        async with handlers.together(tracker) as handle_group:
            first = True

            async def handle(records: list[ConsumerRecord[bytes, bytes]]) -> None:
                nonlocal first
                await handle_group(records)
                if first:  # holds its first saga: let the other batch take its own first
                    first = False
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(both_hold_one.wait(), 0.5)

            yield handle

    ab = [as_record(1, outcome("a", "crm"), "a"), as_record(2, outcome("b", "crm"), "b")]
    ba = [as_record(1, outcome("b", "billing"), "b"), as_record(2, outcome("a", "billing"), "a")]
    done = await asyncio.gather(
        handle_together(by_key(ab), together_pausing, "tracker"),
        handle_together(by_key(ba), together_pausing, "tracker"),
    )
    assert done == [True, True]
    assert (await state(pool))["sagas"] == [("a", "completed"), ("b", "completed")]
