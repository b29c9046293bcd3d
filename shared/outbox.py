"""Transactional outbox: a service writes its change and the messages announcing it in one
database transaction; the relay publishes them afterwards, at least once.

Several relays may run (one per service instance): rows are taken with SKIP LOCKED, so each is
published by one of them at a time. Per-key order across relays is not guaranteed, and no
consumer depends on it: every message is idempotent and self-contained.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import asyncpg
from aiokafka import AIOKafkaProducer
from pydantic import BaseModel

from shared.codec import encode
from shared.db import lz4
from shared.delivery import TRANSIENT
from shared.kafka import trace_headers
from shared.telemetry.messaging import TRACE_HEADERS, context_of, producing, quiet
from shared.telemetry.metrics import outbox_backlog
from shared.topics import SNAPSHOTS, fixed_partition

log = logging.getLogger(__name__)

OUTBOX_DDL = """
CREATE TABLE IF NOT EXISTS outbox (
    id bigserial PRIMARY KEY,
    topic text NOT NULL,
    key text NOT NULL,
    value bytea NOT NULL,
    headers jsonb NOT NULL DEFAULT '[]',
    created_at timestamptz NOT NULL DEFAULT now()
)"""
OUTBOX_COMPRESSION = lz4("outbox", "value")
_CHANNEL = "lethe_outbox"
HELD_LOOK_S = 0.05  # how often a held relay looks whether it may go on


async def enqueue(conn: asyncpg.Connection, topic: str, key: str, message: BaseModel) -> int:
    """Must run inside the caller's transaction. The trace context is stored with the row so
    that the relay's send continues the trace of the request that caused it."""
    (row_id,) = await enqueue_many(conn, [(topic, key, message)])
    return row_id


async def enqueue_many(conn: asyncpg.Connection, messages: Sequence[tuple[str, str, BaseModel]]) -> list[int]:
    """Several messages of one change in one statement, in order (the relay publishes by id).
    The NOTIFY rides in the same statement and is delivered at commit: it wakes the relay at
    once. One round trip instead of two per message: a request's dispatch is six messages."""
    ctes, args = outbox_ctes(messages, first_param=1)
    ids: list[int] = await conn.fetchval(
        f"WITH {ctes} SELECT array_agg(id ORDER BY id) FROM outbox_added, outbox_wake", *args
    )
    return ids


def outbox_ctes(
    messages: Sequence[tuple[str, str, BaseModel]], first_param: int, only_if: str = "true"
) -> tuple[str, list[Any]]:
    """The outbox rows of `messages` as two CTEs, `outbox_added` (their ids) and `outbox_wake`
    (the NOTIFY; the main query must read it, or PostgreSQL skips it), for a caller that folds
    them into its own statement; `only_if` is a condition on the caller's CTEs. Parameters are
    numbered from `first_param`; the returned arguments go in that order."""
    return outbox_sql(first_param, only_if), outbox_args(messages)


def outbox_sql(first_param: int, only_if: str = "true") -> str:
    """`outbox_ctes`' statement alone, for a caller that prepares it once."""
    t, k, v, h = (f"${first_param + n}" for n in range(4))
    return (
        "outbox_added AS (INSERT INTO outbox (topic, key, value, headers)"
        f" SELECT t, k, v, {h}::jsonb FROM unnest({t}::text[], {k}::text[], {v}::bytea[])"
        f" WITH ORDINALITY AS m(t, k, v, n) WHERE {only_if} ORDER BY n RETURNING id),"
        f" outbox_wake AS (SELECT pg_notify('{_CHANNEL}', '') WHERE EXISTS (SELECT 1 FROM outbox_added))"
    )


def outbox_args(messages: Sequence[tuple[str, str, BaseModel]]) -> list[Any]:
    """`outbox_ctes`' arguments alone: four, in the order of its parameters."""
    return [
        [topic for topic, _, _ in messages],
        [key for _, key, _ in messages],
        [encode(message) for _, _, message in messages],
        json.dumps([[name, value.decode()] for name, value in trace_headers()]),
    ]


def newest_snapshots(rows: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """The rows (in order) less each snapshot a later row of the batch supersedes
    (shared.topics.SNAPSHOTS): under load a request's status changes several times before the
    relay runs, and each snapshot carries its whole report and audit trail to every reader."""
    last = {(r["topic"], r["key"]): n for n, r in enumerate(rows) if r["topic"] in SNAPSHOTS}
    return [r for n, r in enumerate(rows) if r["topic"] not in SNAPSHOTS or last[(r["topic"], r["key"])] == n]


class OutboxRelay:
    def __init__(
        self,
        pool: asyncpg.Pool,
        producer: AIOKafkaProducer,
        batch_size: int = 500,
        poll_interval_s: float = 0.5,
        service: str = "lethe",
        held: Callable[[], bool] = lambda: False,
    ) -> None:
        self._name = service
        self._held = held  # shared/relay_hold.py: the embedded stack draining its broker
        self._pool = pool
        self._producer = producer
        self._batch_size = batch_size
        self._poll_interval_s = poll_interval_s
        self._wake = asyncio.Event()

    async def run(self) -> None:
        """Publish until cancelled. The database or the broker going away pauses it; it never
        dies quietly, since a dead relay means requests that are accepted and never dispatched."""
        while True:
            try:
                await self._run_listening()
            except TRANSIENT as exc:
                log.warning("outbox relay interrupted, resuming", extra={"error": type(exc).__name__})
            except Exception:
                log.exception("outbox relay failed, resuming")
            await asyncio.sleep(1.0)

    async def _run_listening(self) -> None:
        wake = lambda *_: self._wake.set()  # noqa: E731
        listener = await self._pool.acquire()
        try:
            await listener.add_listener(_CHANNEL, wake)
            while not listener.is_closed():
                if self._held():
                    await asyncio.sleep(HELD_LOOK_S)
                    continue
                sent = await self.publish_batch()
                if sent < self._batch_size:
                    self._wake.clear()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._wake.wait(), self._poll_interval_s)
        finally:
            with contextlib.suppress(Exception):
                await listener.remove_listener(_CHANNEL, wake)
            with contextlib.suppress(Exception):
                await self._pool.release(listener)

    async def wait_published(self, row_id: int, timeout_s: float = 10.0) -> bool:
        """Publish now and wait until this row is on the broker (another relay instance may be
        the one sending it). For answers that promise the message is out, e.g. a placed hold:
        a held relay publishes for it too (a drain of the broker waits a little longer)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while loop.time() < deadline:
            with contextlib.suppress(*TRANSIENT, asyncpg.PostgresError):
                await self.publish_batch()
                if not await self._pool.fetchval("SELECT 1 FROM outbox WHERE id = $1", row_id):
                    return True
            await asyncio.sleep(0.02)
        return False

    async def publish_batch(self) -> int:
        """Publish up to one batch; rows are deleted only after the broker acknowledged them,
        in the same transaction that locked them."""
        with quiet():
            return await self._publish_batch()

    async def _publish_batch(self) -> int:
        async with self._pool.acquire() as conn, conn.transaction():
            # Taken and deleted in one statement; the delete commits only after the broker
            # acknowledged every send (a failed send rolls it back: the rows stay).
            taken = await conn.fetch(
                "DELETE FROM outbox WHERE id IN (SELECT id FROM outbox ORDER BY id"
                " LIMIT $1 FOR UPDATE SKIP LOCKED) RETURNING id, topic, key, value, headers",
                self._batch_size,
            )
            if not taken:
                return 0
            rows = newest_snapshots(sorted(taken, key=lambda r: r["id"]))  # RETURNING has no order
            futures = []
            for row in rows:
                stored = [(k, v.encode()) for k, v in json.loads(row["headers"])]
                # The send continues the trace of whatever wrote the row (an HTTP request, a saga step).
                with producing(row["topic"], parent=context_of(stored)) as trace_context:
                    futures.append(
                        await self._producer.send(
                            row["topic"],
                            value=row["value"],
                            key=row["key"].encode(),
                            partition=fixed_partition(row["topic"]),
                            headers=[h for h in stored if h[0] not in TRACE_HEADERS] + trace_context,
                        )
                    )
            await asyncio.gather(*futures)
            # A partial batch emptied the outbox; only a full one leaves a backlog worth counting.
            backlog = (
                0 if len(taken) < self._batch_size else await conn.fetchval("SELECT count(*) FROM outbox")
            )
            outbox_backlog.set(backlog, {"service": self._name})
            return len(taken)
