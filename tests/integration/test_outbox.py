"""The outbox and the processed-message journal against a real PostgreSQL: several messages of
one change go in one statement, in order, wake the relay only at commit, and leave with the
broker's acknowledgement; claims tell redeliveries apart."""

from __future__ import annotations

import asyncio
import contextlib
import json
from pathlib import Path
from uuid import uuid4

import pytest

from shared import outbox, topics
from shared.codec import decode
from shared.contracts import RequestStatus, RequestStatusChanged
from shared.contracts.events import NotificationRequested, RetrySystem
from shared.db import apply_schema, create_pool, ensure_database
from shared.journal import JOURNAL_DDL, claimed
from shared.outbox import OUTBOX_COMPRESSION, OUTBOX_DDL, OutboxRelay, enqueue, enqueue_many
from shared.relay_hold import RelayHold

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


async def test_a_claim_returns_only_the_messages_not_seen_before(fresh_db: str) -> None:
    await ensure_database(fresh_db)
    pool = await create_pool(fresh_db, 2)
    claim = f"WITH {claimed(1)} SELECT ARRAY(SELECT message_id FROM claimed)"
    try:
        await apply_schema(pool, JOURNAL_DDL)
        seen, new_a, new_b = uuid4(), uuid4(), uuid4()
        async with pool.acquire() as conn:
            assert await conn.fetchval(claim, [seen]) == [seen]
            assert set(await conn.fetchval(claim, [seen, new_a, new_b, new_a])) == {new_a, new_b}
            assert await conn.fetchval(claim, [new_a, new_b]) == []
            assert await conn.fetchval(claim, []) == []
    finally:
        await pool.close()


class _Producer:
    """Takes what the relay sends (the hold is the relay's, not the broker's, to test)."""

    def __init__(self) -> None:
        self.keys: list[bytes] = []
        self.sent: list[tuple[str, bytes]] = []

    async def send(
        self, topic: str, value: bytes, key: bytes, headers: object, partition: int | None = None
    ) -> asyncio.Future[None]:
        self.keys.append(key)
        self.sent.append((topic, value))
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done


async def test_a_held_relay_keeps_its_rows_until_the_hold_goes_but_publishes_what_a_caller_waits_for(
    fresh_db: str, tmp_path: Path
) -> None:
    """The embedded stack holds intake's relay while it drains the broker (shared/relay_hold.py):
    accepted work waits in the outbox, and goes out as soon as the hold file is removed. A hold
    placed meanwhile (wait_published) is not kept waiting."""
    await ensure_database(fresh_db)
    pool = await create_pool(fresh_db, 3)
    hold = tmp_path / "relay.hold"
    hold.touch()
    producer = _Producer()
    relay = OutboxRelay(pool, producer, held=RelayHold(hold))  # type: ignore[arg-type]
    running = asyncio.create_task(relay.run())
    message = RetrySystem(request_id="r-1", system="crm")
    try:
        await apply_schema(pool, OUTBOX_DDL)
        async with pool.acquire() as conn, conn.transaction():
            await enqueue(conn, "topic", "held", message)
        await asyncio.sleep(1.0)  # the relay was woken by the NOTIFY and looked twice over
        assert producer.keys == [] and await pool.fetchval("SELECT count(*) FROM outbox") == 1
        hold.unlink()
        async with asyncio.timeout(5):
            while await pool.fetchval("SELECT count(*) FROM outbox"):  # noqa: ASYNC110 (another task's)
                await asyncio.sleep(0.05)
        assert producer.keys == [b"held"]
        hold.touch()
        async with pool.acquire() as conn, conn.transaction():
            row = await enqueue(conn, "topic", "awaited", message)
        assert await relay.wait_published(row, timeout_s=5)
        assert producer.keys == [b"held", b"awaited"]
    finally:
        running.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await running
        await pool.close()


async def test_the_relay_sends_only_the_newest_unsent_snapshot_of_a_request(fresh_db: str) -> None:
    """A status snapshot is the request's whole state (intake keeps the newest version): one
    that a later row of the same batch supersedes is deleted unsent. Everything else goes, in
    order, each snapshot of another request too."""
    await ensure_database(fresh_db)
    pool = await create_pool(fresh_db, 2)
    producer = _Producer()
    relay = OutboxRelay(pool, producer)  # type: ignore[arg-type]

    def status(request_id: str, version: int) -> tuple[str, str, RequestStatusChanged]:
        snapshot = RequestStatusChanged(
            request_id=request_id, version=version, status=RequestStatus.IN_PROGRESS, systems=[]
        )
        return (topics.REQUEST_STATUS, request_id, snapshot)

    try:
        await apply_schema(pool, OUTBOX_DDL)
        command = ("topic.commands", "r-1", RetrySystem(request_id="r-1", system="crm"))
        async with pool.acquire() as conn, conn.transaction():
            await enqueue_many(conn, [status("r-1", 1), command, status("r-2", 1), status("r-1", 2)])
        async with pool.acquire() as conn, conn.transaction():
            await enqueue_many(conn, [status("r-1", 3)])
        assert await relay.publish_batch() == 5  # taken: the superseded ones are gone too
        sent = [
            (topic, decode(value, RequestStatusChanged).version if topic == topics.REQUEST_STATUS else 0)
            for topic, value in producer.sent
        ]
        assert sent == [("topic.commands", 0), (topics.REQUEST_STATUS, 1), (topics.REQUEST_STATUS, 3)]
        assert producer.keys == [b"r-1", b"r-2", b"r-1"]
        assert await pool.fetchval("SELECT count(*) FROM outbox") == 0
    finally:
        await pool.close()


async def test_a_full_batch_reports_the_backlog_left_though_it_sent_fewer(
    fresh_db: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The backlog is what is left after a full batch was taken, however many of it were
    superseded snapshots: under load, when it matters, it must not read 0."""
    await ensure_database(fresh_db)
    pool = await create_pool(fresh_db, 2)
    reported: list[float] = []
    monkeypatch.setattr(outbox.outbox_backlog, "set", lambda value, labels: reported.append(value))
    relay = OutboxRelay(pool, _Producer(), batch_size=3)  # type: ignore[arg-type]
    try:
        await apply_schema(pool, OUTBOX_DDL)
        snapshots = [
            (
                topics.REQUEST_STATUS,
                "r-1",
                RequestStatusChanged(
                    request_id="r-1", version=v, status=RequestStatus.IN_PROGRESS, systems=[]
                ),
            )
            for v in range(1, 6)
        ]
        async with pool.acquire() as conn, conn.transaction():
            await enqueue_many(conn, snapshots)
        assert await relay.publish_batch() == 3
        assert reported == [2]
    finally:
        await pool.close()


async def test_large_values_are_compressed_with_lz4_where_the_server_has_it(fresh_db: str) -> None:
    """Snapshots in the outbox are written compressed with lz4, not pglz (cheaper for the
    server): set on the column by the schema, idempotently, where an operator left it at the
    default, and not on the session (a pooler such as PgBouncer refuses a startup parameter it
    does not know)."""
    await ensure_database(fresh_db)
    pool = await create_pool(fresh_db, 2)
    try:
        await apply_schema(pool, OUTBOX_DDL, OUTBOX_COMPRESSION)
        await apply_schema(pool, OUTBOX_DDL, OUTBOX_COMPRESSION)  # again, as each start does
        has_lz4 = "lz4" in await pool.fetchval(
            "SELECT enumvals FROM pg_settings WHERE name = 'default_toast_compression'"
        )
        big = RequestStatusChanged(
            request_id="r-1", version=1, status=RequestStatus.IN_PROGRESS, systems=[], audit=[]
        ).model_copy(update={"request_id": "r-" + "x" * 20_000})
        async with pool.acquire() as conn:
            await enqueue(conn, "t", "k", big)
            assert await conn.fetchval("SHOW default_toast_compression") == await conn.fetchval(
                "SELECT boot_val FROM pg_settings WHERE name = 'default_toast_compression'"
            )
        used = await pool.fetchval("SELECT pg_column_compression(value) FROM outbox")
        assert used == ("lz4" if has_lz4 else "pglz")
        # An operator's choice stands: a column set to pglz is not set back at the next start.
        await pool.execute("ALTER TABLE outbox ALTER COLUMN value SET COMPRESSION pglz")
        await apply_schema(pool, OUTBOX_DDL, OUTBOX_COMPRESSION)
        assert await pool.fetchval("SELECT pg_column_compression(value) FROM outbox") == used  # kept
        chosen = "SELECT attcompression::text FROM pg_attribute WHERE attrelid = 'outbox'::regclass"
        assert await pool.fetchval(chosen + " AND attname = 'value'") == "p"
    finally:
        await pool.close()
