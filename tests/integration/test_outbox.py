"""The outbox and the processed-message journal against a real PostgreSQL: several messages of
one change go in one statement, in order, wake the relay only at commit, and leave with the
broker's acknowledgement; claims tell redeliveries apart."""

from __future__ import annotations

import asyncio
import json
from uuid import uuid4

import pytest

from shared.codec import decode
from shared.contracts.events import NotificationRequested, RetrySystem
from shared.db import apply_schema, create_pool, ensure_database
from shared.journal import JOURNAL_DDL, claim, claim_many
from shared.outbox import OUTBOX_DDL, enqueue, enqueue_many

pytestmark = pytest.mark.integration


async def test_messages_of_one_change_are_stored_in_order_and_wake_the_relay_at_commit(
    fresh_db: str,
) -> None:
    await ensure_database(fresh_db)
    pool = await create_pool(fresh_db, 3)
    try:
        await apply_schema(pool, OUTBOX_DDL)
        woken: asyncio.Queue[str] = asyncio.Queue()
        listener = await pool.acquire()
        await listener.add_listener("lethe_outbox", lambda *args: woken.put_nowait(args[2]))
        messages = [
            (f"topic.{n}", f"key-{n}", RetrySystem(request_id=f"r-{n}", system="crm")) for n in range(3)
        ]
        async with pool.acquire() as conn, conn.transaction():
            ids = await enqueue_many(conn, messages)
            single = await enqueue(
                conn,
                "topic.last",
                "key-last",
                NotificationRequested(
                    request_id="r-9", kind="restriction_lift", subject_ref="subj_" + "0" * 32
                ),
            )
            await asyncio.sleep(0.2)
            assert woken.empty()  # nothing is announced before the change is committed
        await asyncio.wait_for(woken.get(), 5)

        assert ids == sorted(ids) and single > ids[-1]
        rows = await pool.fetch("SELECT id, topic, key, value, headers FROM outbox ORDER BY id")
        assert [r["id"] for r in rows] == [*ids, single]
        assert [(r["topic"], r["key"]) for r in rows[:3]] == [(t, k) for t, k, _ in messages]
        assert [decode(r["value"], RetrySystem).request_id for r in rows[:3]] == ["r-0", "r-1", "r-2"]
        assert all(isinstance(json.loads(r["headers"]), list) for r in rows)
        await listener.remove_listener("lethe_outbox", lambda *args: None)
        await pool.release(listener)
    finally:
        await pool.close()


async def test_claim_many_returns_only_the_messages_not_seen_before(fresh_db: str) -> None:
    await ensure_database(fresh_db)
    pool = await create_pool(fresh_db, 2)
    try:
        await apply_schema(pool, JOURNAL_DDL)
        seen, new_a, new_b = uuid4(), uuid4(), uuid4()
        async with pool.acquire() as conn:
            assert await claim(conn, seen)
            assert await claim_many(conn, [seen, new_a, new_b, new_a]) == {new_a, new_b}
            assert await claim_many(conn, [new_a, new_b]) == set()
            assert await claim_many(conn, []) == set()
    finally:
        await pool.close()
