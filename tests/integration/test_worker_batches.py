"""A fetch's commands carried out in one transaction of a real PostgreSQL store
(shared/worker/batching.py, shared/worker/pgbatch.py): the same outcomes and the same store as
one by one; nothing reported before the commit; a batch that fails anywhere undone whole, its
commands then carried out one by one, each to its own outcome, retry or dead letter."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any
from uuid import uuid4

import asyncpg
import pytest
from aiokafka import AIOKafkaConsumer, ConsumerRecord
from opentelemetry.sdk.trace import TracerProvider

from cli.seed import SeedFile
from services.billing import seed as billing_seed
from services.billing.store import BillingAdapter
from services.recordings.store import RecordingsAdapter
from shared import topics
from shared.codec import decode, encode
from shared.contracts import EraseSubject, OutcomeReported, RestrictSubject, SubjectCommand
from shared.crypto import IdentifierSeal, new_identifier_key, subject_ref
from shared.delivery import Publisher
from shared.identity import Identities
from shared.kafka import ensure_topics, make_producer
from shared.settings import KafkaSettings
from shared.worker.attempts import Attempts
from shared.worker.batching import carry_out_together
from shared.worker.pgstore import PostgresStoreSession
from shared.worker.policy import ActOnEverything
from shared.worker.runtime import WorkerRuntime, utc_clock
from shared.worker.settings import RetrySettings
from tests.conftest import drop_database

pytestmark = pytest.mark.integration
SEAL = IdentifierSeal(new_identifier_key())
SYSTEM = topics.command_topic("billing")


class Sent:
    """The publisher's part the attempts use: what was sent where, in order. With `committed`,
    the store's pool: what a batch sends must be committed there already."""

    def __init__(self, committed: asyncpg.Pool | None = None) -> None:
        self.committed = committed
        self.outcomes: list[OutcomeReported] = []
        self.dead: list[int] = []  # offsets
        self.retried: list[int] = []

    async def publish(self, topic: str, key: bytes | None, value: bytes, headers: Any = None) -> None:
        assert topic == topics.OUTCOMES
        self.outcomes.append(decode(value, OutcomeReported))

    async def publish_all(self, messages: Sequence[tuple[str, bytes | None, bytes, Any]]) -> None:
        if self.committed is not None:  # seen from another connection: only what was committed
            ids = list({decode(value, OutcomeReported).command_id for _, _, value, _ in messages})
            journal = "SELECT count(*) FROM lethe_command_journal WHERE command_id = ANY($1::uuid[])"
            assert await self.committed.fetchval(journal, ids) == len(ids)
        for topic, key, value, _ in messages:
            await self.publish(topic, key, value)

    async def dead_letter(self, record: ConsumerRecord[bytes, bytes], error: str) -> None:
        self.dead.append(record.offset)

    async def retry_later(self, record: ConsumerRecord[bytes, bytes], *args: Any) -> None:
        self.retried.append(record.offset)


def people(seed: SeedFile) -> dict[str, Identities]:
    return {
        p.label: Identities.lenient(
            customer_ids=[p.subject.customer_id] if p.subject.customer_id else [],
            emails=p.subject.emails,
            phones=p.subject.phones,
        )
        for p in seed.people
        if p.subject is not None
    } | {"nobody": Identities(emails=["nobody@example.org"])}


def as_record(offset: int, command: SubjectCommand | bytes) -> ConsumerRecord[bytes, bytes]:
    value = command if isinstance(command, bytes) else encode(command)
    key = b"poison" if isinstance(command, bytes) else command.subject_ref.encode()
    return ConsumerRecord(SYSTEM, 0, offset, 0, 0, key, value, None, len(key), len(value), [])


def commands(who: dict[str, Identities]) -> list[SubjectCommand]:
    made: list[SubjectCommand] = []
    for n, (label, identities) in enumerate(sorted(who.items())):
        kind = RestrictSubject if label == "dev" else EraseSubject
        made.append(
            kind(
                request_id=f"batch-{n}",
                system="billing",
                subject_ref=subject_ref("k", identities),
                sealed_identifiers=SEAL.seal(identities),
            )
        )
    return made


@pytest.fixture
async def two_stores(
    pg_server: str, demo_seed: SeedFile
) -> AsyncIterator[tuple[BillingAdapter, BillingAdapter]]:
    """The demo's billing data twice: one store for a batch, one for one by one."""
    names = [f"lethe_it_batch_{uuid4().hex[:12]}" for _ in (1, 2)]
    adapters = [BillingAdapter(f"{pg_server}/{name}") for name in names]
    try:
        for adapter in adapters:
            await adapter.start()
            async with adapter.pool.acquire() as conn:
                await billing_seed.write(conn, [a for p in demo_seed.people for a in p.billing])
        yield adapters[0], adapters[1]
    finally:
        for adapter, name in zip(adapters, names, strict=True):
            await adapter.close()
            await drop_database(pg_server, name)


def attempts_on(adapter: BillingAdapter, sent: Sent, **retry: Any) -> Attempts:
    return Attempts(
        adapter,
        ActOnEverything(),
        SEAL,
        sent,
        utc_clock,
        None,
        RetrySettings(**retry),  # type: ignore[arg-type]
    )


async def table_counts(pool: asyncpg.Pool) -> dict[str, int]:
    tables = ("accounts", "invoices", "payments", "cdrs", "radius_sessions", "lethe_command_journal")
    return {t: await pool.fetchval(f"SELECT count(*) FROM {t}") for t in tables}


def comparable(outcome: OutcomeReported) -> dict[str, Any]:
    """What was decided and done; not when, nor the seal's random bytes around what was learnt."""
    learnt = SEAL.open_known(outcome.learnt_identifiers) if outcome.learnt_identifiers else None
    moments = {"occurred_at", "started_at", "finished_at", "verification", "learnt_identifiers"}
    return outcome.model_dump(exclude=moments) | {
        "learnt": learnt,
        "verified": (v.passed, v.remaining) if (v := outcome.verification) else None,
    }


async def test_a_batch_does_what_one_by_one_does_and_reports_after_its_commit(
    two_stores: tuple[BillingAdapter, BillingAdapter], demo_seed: SeedFile
) -> None:
    batched, single = two_stores
    made = commands(people(demo_seed))
    # A twin of the first command in the same fetch (a producer's retry), and a poison message.
    records = [as_record(n, c) for n, c in enumerate(made)]
    records.insert(2, as_record(90, made[0]))
    records.insert(3, as_record(91, b"{not json"))

    sent = Sent(committed=batched.pool)
    left = await carry_out_together(attempts_on(batched, sent), batched, records, "g")
    assert left == [] and sent.dead == [91]
    one_by_one = Sent()
    for command in made:
        identities = SEAL.open_known(command.sealed_identifiers)
        await attempts_on(single, one_by_one).attempt(as_record(0, command), command, identities, 1)

    by_request = {o.request_id: comparable(o) for o in one_by_one.outcomes}
    assert len(sent.outcomes) == len(made) + 1  # the twin reported too: the same outcome
    for o in sent.outcomes:
        assert comparable(o) == by_request[o.request_id]
    assert sum(c.erased for o in sent.outcomes for c in o.categories) > 0
    assert await table_counts(batched.pool) == await table_counts(single.pool)
    # The journal was written with the batch: a redelivered batch reports from it, changing nothing.
    again = Sent()
    assert await carry_out_together(attempts_on(batched, again), batched, records, "g") == []
    assert [comparable(o) for o in again.outcomes] == [comparable(o) for o in sent.outcomes]


async def test_a_failing_command_undoes_its_batch_and_each_ends_on_its_own(
    two_stores: tuple[BillingAdapter, BillingAdapter], demo_seed: SeedFile, monkeypatch: pytest.MonkeyPatch
) -> None:
    adapter, _ = two_stores
    alice, *others = commands(people(demo_seed))
    made = [*others, alice]  # the others are carried out before the failure
    failing = alice  # the others find less or nothing here
    before = await table_counts(adapter.pool)
    original = PostgresStoreSession.apply

    async def apply_or_fail(self: PostgresStoreSession, decisions: Sequence[Any]) -> None:
        await original(self, decisions)  # the change is made, then the store fails
        if any(d.record.key in failing_keys for d in decisions):
            raise asyncpg.exceptions.CheckViolationError("a constraint of the store")

    failing_keys: set[tuple[str, str]] = set()
    async with adapter.session() as store:
        failing_keys = {r.key for r in await store.find(SEAL.open_known(failing.sealed_identifiers).all)}
    assert failing_keys  # it finds something to change
    monkeypatch.setattr(PostgresStoreSession, "apply", apply_or_fail)

    sent = Sent()
    records = [as_record(n, c) for n, c in enumerate(made)]
    left = await carry_out_together(attempts_on(adapter, sent), adapter, records, "g")
    assert left == records and sent.outcomes == []  # undone whole, nothing reported
    assert await table_counts(adapter.pool) == before

    attempts = attempts_on(adapter, sent, attempts=3)
    for record, command in zip(left, made, strict=True):
        await attempts.attempt(record, command, SEAL.open_known(command.sealed_identifiers), 1)
    assert sent.retried == [len(made) - 1]  # the failing one waits for another try; the others are done
    assert sorted(o.request_id for o in sent.outcomes) == sorted(
        c.request_id for c in made if c is not failing
    )
    assert (await table_counts(adapter.pool))["lethe_command_journal"] == len(made) - 1


async def test_outcomes_sent_together_arrive_in_order_each_in_its_own_trace(broker: KafkaSettings) -> None:
    """`Publisher.publish_all` hands every message to the producer before waiting: one key's
    arrive in the order given, and each continues the trace of the span it was given."""
    topic = f"lethe.test.sent-together.{uuid4().hex[:8]}"  # the session's topics stay clean
    await ensure_topics(broker, [topic])
    reader = AIOKafkaConsumer(
        topic, bootstrap_servers=broker.bootstrap, group_id=None, auto_offset_reset="earliest"
    )
    await reader.start()
    producer = make_producer(broker)
    await producer.start()
    tracer = TracerProvider().get_tracer("test")
    keys = [f"pa-{uuid4().hex[:8]}-{n}" for n in range(4)]
    spans = [tracer.start_span(f"message {n}") for n in range(40)]
    try:
        await Publisher(producer, SEAL).publish_all(
            [(topic, keys[n % 4].encode(), str(n).encode(), span) for n, span in enumerate(spans)]
        )
        got: dict[str, list[tuple[int, str]]] = {key: [] for key in keys}
        deadline = asyncio.get_running_loop().time() + 20
        while sum(map(len, got.values())) < len(spans) and asyncio.get_running_loop().time() < deadline:
            for records in (await reader.getmany(timeout_ms=200)).values():
                for record in records:
                    if record.key is not None and record.key.decode() in got:
                        parent = dict(record.headers)["traceparent"].decode().split("-")[1]
                        got[record.key.decode()].append((int(record.value), parent))
    finally:
        await producer.stop()
        await reader.stop()
    for n, key in enumerate(keys):
        assert [value for value, _ in got[key]] == list(range(n, 40, 4))
        assert all(
            trace_id == format(spans[v].get_span_context().trace_id, "032x") for v, trace_id in got[key]
        )


async def test_a_command_waiting_on_a_row_lock_does_not_hold_its_batch(
    two_stores: tuple[BillingAdapter, BillingAdapter], demo_seed: SeedFile
) -> None:
    """The store's own application holds one person's row: the batch gives up on its lock
    within a second and is undone, so its commands go one by one, where only that one waits."""
    adapter, _ = two_stores
    alice, *others = commands(people(demo_seed))
    records = [as_record(n, c) for n, c in enumerate([*others, alice])]  # hers waits, last
    async with adapter.pool.acquire() as application, application.transaction():
        await application.execute("SELECT 1 FROM accounts WHERE customer_id = 'C-1001' FOR UPDATE")
        sent = Sent()
        left = await asyncio.wait_for(
            carry_out_together(attempts_on(adapter, sent), adapter, records, "g"), 30
        )
        assert left == records and sent.outcomes == []


def test_a_store_that_changes_files_before_its_commit_is_not_batched(tmp_path: Path) -> None:
    def runtime(adapter: Any) -> WorkerRuntime:
        return WorkerRuntime(adapter, ActOnEverything(), SEAL, KafkaSettings(), RetrySettings())

    assert runtime(BillingAdapter("postgresql://unused/x"))._batching() is not None
    assert runtime(RecordingsAdapter("postgresql://unused/x", tmp_path))._batching() is None
