"""Delivery that loses nothing while the broker comes and goes: sends retried with backoff,
commits that tolerate a rebalance, dead letters with the error attached (and the message
sealed: shared.dead_letters), and the retry-topic headers that carry a message's attempt count
and due time."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

import asyncpg
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord
from aiokafka.errors import CommitFailedError, KafkaError, MessageSizeTooLargeError
from opentelemetry import trace
from opentelemetry.trace import Span

from shared import fetching, topics, unreadable
from shared.codec import PoisonMessage
from shared.crypto import IdentifierSeal
from shared.dead_letters import (
    BODY_DROPPED,
    BODY_KEPT_MAX,
    ENVELOPE_VERSION,
    REPLAYED_FROM,
    SEALED,
    id_headers,
    seal_letter,
)
from shared.kafka import Headers
from shared.telemetry import metrics
from shared.telemetry.messaging import TRACE_HEADERS, consuming, producing
from shared.together import TOGETHER_MAX, GroupHandler, Together, handle_together

log = logging.getLogger(__name__)
ATTEMPT = "lethe-attempt"
DUE_MS = "lethe-due-ms"
ERROR = "lethe-error"
SOURCE_TOPIC = "lethe-source-topic"


class Publisher:
    """`seal` seals what is dead-lettered: a failed message is never copied in clear."""

    def __init__(
        self, producer: AIOKafkaProducer, seal: IdentifierSeal, stopping: asyncio.Event | None = None
    ) -> None:
        self.producer = producer
        self.seal = seal
        self.stopping = stopping or asyncio.Event()

    async def publish(
        self, topic: str, key: bytes | None, value: bytes, headers: Headers | None = None
    ) -> None:
        """Until the broker acknowledges. Raises only if the service is stopping meanwhile, so
        that the message's offset is not committed and it is processed again after restart.
        The message carries the context of its send span, whatever trace headers it had."""
        delay = 0.2
        kept = [(k, v) for k, v in (headers or ()) if k not in TRACE_HEADERS]
        while True:
            try:
                with producing(topic) as trace_context:
                    await self.producer.send_and_wait(
                        topic, value=value, key=key, headers=kept + trace_context
                    )
                return
            except MessageSizeTooLargeError:
                raise  # the same message never fits: the caller's to deal with, not a wait
            except KafkaError as exc:
                if self.stopping.is_set():
                    raise
                log.warning("send failed, retrying", extra={"topic": topic, "error": type(exc).__name__})
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    async def publish_all(self, messages: Sequence[Outgoing]) -> None:
        """Several messages, each sent in its own context (a span to continue), all handed to
        the producer before any is waited for: it packs them into a few produce requests where
        one at a time made one each. In the order given, so one key's keep theirs. If any
        send fails, every message is sent again one by one, as `publish` does (the ones that
        had gone through are repeated: their receivers de-duplicate them)."""
        try:
            sent = []
            for topic, key, value, context in messages:
                with trace.use_span(context, end_on_exit=False), producing(topic) as trace_context:
                    sent.append(await self.producer.send(topic, value=value, key=key, headers=trace_context))
            await asyncio.gather(*sent)
        except KafkaError as exc:
            log.warning("sends failed, sending one by one", extra={"error": type(exc).__name__})
            for topic, key, value, context in messages:
                with trace.use_span(context, end_on_exit=False):
                    await self.publish(topic, key, value)

    async def dead_letter(self, record: ConsumerRecord[bytes, bytes], error: str, body: bool = True) -> None:
        """The key and value sealed; in clear only the error, where it came from, the body's
        ids and how often it was tried or replayed (a submitter's own headers may say
        anything). No key: the original one is whatever a submitter chose, and dead letters
        need no order. A key and value too large to send sealed are left out, their size said
        (`BODY_DROPPED`: not replayed); a letter too large whatever else says where and why.
        `body`: False where there is none to keep (a record that could not be read)."""
        metrics.dead_letters.add(1, {"topic": record.topic})
        key, value = record.key, record.value
        size = len(key or b"") + len(value or b"")
        dropped = size > BODY_KEPT_MAX or not body
        if dropped:
            kept = f"; its {size} bytes not kept" if body else ""
            error, key, value = f"{error}{kept}", None, None
        # Of a sender's own headers only these two are copied, once each and bounded in length.
        copied = [(k, v[:64]) for k, v in dict(record.headers or ()).items() if k in (ATTEMPT, REPLAYED_FROM)]
        source = dict(record.headers or ()).get(SOURCE_TOPIC, record.topic.encode())[:256]
        where = [
            (SOURCE_TOPIC, source),
            ("lethe-source-partition", str(record.partition).encode()),
            ("lethe-source-offset", str(record.offset).encode()),
        ]
        ids = id_headers(record.value)  # a body's parse: once, whichever letter goes
        headers = [*copied, *ids, (ERROR, error.encode()[:1000]), *where, (SEALED, ENVELOPE_VERSION)]
        if dropped:
            headers.append((BODY_DROPPED, str(size).encode()))
        try:
            await self.publish(topics.DEAD_LETTERS, None, seal_letter(self.seal, key, value), headers)
        except MessageSizeTooLargeError:
            error = f"{error}; its letter too large to send"
            minimal = [*ids, (ERROR, error.encode()[:1000]), *where, (BODY_DROPPED, str(size).encode())]
            await self.publish(topics.DEAD_LETTERS, None, b"", minimal)

    async def retry_later(
        self, record: ConsumerRecord[bytes, bytes], retry_topic: str, attempt: int, delay_s: float, error: str
    ) -> None:
        metrics.retries.add(1, {"topic": record.topic})
        keep = [(k, v) for k, v in (record.headers or ()) if k not in (ATTEMPT, DUE_MS, ERROR, SOURCE_TOPIC)]
        source = dict(record.headers or ()).get(SOURCE_TOPIC, record.topic.encode())
        due = int((time.time() + delay_s) * 1000)
        headers = [
            *keep,
            (ATTEMPT, str(attempt).encode()),
            (DUE_MS, str(due).encode()),
            (ERROR, error.encode()),
            (SOURCE_TOPIC, source),
        ]

        await self.publish(retry_topic, record.key, record.value or b"", headers)


def retry_state(record: ConsumerRecord[bytes, bytes]) -> tuple[int, float]:
    """(attempt number, due time in epoch seconds) of a message on a retry topic."""
    headers = dict(record.headers or ())
    try:
        return int(headers.get(ATTEMPT, b"1")), int(headers.get(DUE_MS, b"0")) / 1000
    except ValueError:
        return 1, 0.0


COMMIT_TIMEOUT_S = 15.0


async def commit(consumer: AIOKafkaConsumer, fetched_at: int) -> None:
    """A failed commit (the group rebalanced meanwhile) means redelivery, which the handlers'
    idempotency absorbs; it must not stop the consumer. `fetched_at`, the consumer's count of
    rewinds when the batch was fetched: a batch of a log the broker has since forgotten is not
    committed (`fetching.rewinds`)."""
    if fetching.rewinds(consumer) != fetched_at:
        log.warning("a batch of a forgotten log: not committed")
        return
    try:
        # aiokafka retries a retriable coordinator error for ever, silently: bounded here, so
        # a consumer never stops on a commit (an uncommitted batch is only redelivered).
        await asyncio.wait_for(consumer.commit(), COMMIT_TIMEOUT_S)
    except (CommitFailedError, KafkaError, TimeoutError) as exc:
        log.warning("commit failed; messages may be redelivered", extra={"error": type(exc).__name__})


# A message to send: topic, key, value, and the span whose trace it continues.
Outgoing = tuple[str, bytes | None, bytes, Span]
Handler = Callable[[ConsumerRecord[bytes, bytes]], Awaitable[None]]
# Failures of a dependency that comes back: wait and try the same message again.
TRANSIENT: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    KafkaError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.CannotConnectNowError,
    asyncpg.TooManyConnectionsError,
    asyncpg.ConnectionDoesNotExistError,
    asyncpg.InternalClientError,  # seen when a connection dies mid-query during a server restart
    # A deadlock or serialization failure: the other transaction went on; this one, tried
    # again, will too (never a reason to dead-letter a message).
    asyncpg.exceptions.TransactionRollbackError,
)


async def consume_forever(
    consumer: AIOKafkaConsumer,
    handle: Handler,
    publisher: Publisher,
    what: str,
    concurrency: int = 8,
    handle_group: GroupHandler | None = None,
    together: Together | None = None,
) -> None:
    """Until `publisher.stopping`: in order per key (one request, one subject), different keys
    concurrently. A dependency that is away holds the line (the same message is tried again
    with backoff: order matters to a saga); a message that fails for any other reason is
    dead-lettered with the error, so nothing blocks the topic for ever and nothing is dropped
    without a trace. With `handle_group`, the messages of one key in a batch are handed over
    together (one transaction instead of many); if that fails for any reason other than a
    missing dependency, they are handled one by one, so a poison message stays isolated. With
    `together`, the keys of a batch are handled in one unit (one transaction: a BEGIN and a
    COMMIT for all), up to TOGETHER_MAX at a time; a unit that fails is undone whole, and its
    keys handled as above, each to its own end."""
    while not publisher.stopping.is_set():
        fetched_at = fetching.rewinds(consumer)  # before: a rewind during the fetch counts
        batches = await fetching.poll(consumer, what)
        if not batches:
            continue

        async def in_order(group: list[ConsumerRecord[bytes, bytes]]) -> bool:
            if handle_group is not None and len(group) > 1:
                together = await _handle_group(group, handle_group, publisher, what)
                if together is not None:
                    return together
            for record in group:
                if not await _handle_one(record, handle, publisher, what):
                    return False
            return True

        fetched = [r for partition in batches.values() for r in partition]
        groups = by_key(await set_aside_unreadable(fetched, publisher, what))
        size = TOGETHER_MAX if together is not None else max(len(groups), 1)
        for chunk in (groups[n : n + size] for n in range(0, len(groups), size)):
            if together is not None and len(chunk) > 1 and await handle_together(chunk, together, what):
                continue
            if not all(await in_groups(chunk, concurrency, in_order)):
                return  # stopping: the batch stays uncommitted and is redone after restart
        await commit(consumer, fetched_at)


async def set_aside_unreadable(
    records: list[ConsumerRecord[bytes, bytes]], publisher: Publisher, what: str
) -> list[ConsumerRecord[bytes, bytes]]:
    """The records that could be read; each that could not (shared/unreadable.py) dead-lettered,
    with its key and value where they were read."""
    for record in filter(unreadable.unreadable, records):
        log.warning("unreadable record dead-lettered", extra={"consumer": what, "offset": record.offset})
        await publisher.dead_letter(record, unreadable.why(record), body=record.value is not None)
    return [r for r in records if not unreadable.unreadable(r)]


T = TypeVar("T")


async def by_key_in_order(
    records: Sequence[ConsumerRecord[bytes, bytes]],
    concurrency: int,
    handle: Callable[[list[ConsumerRecord[bytes, bytes]]], Awaitable[T]],
) -> list[T]:
    """Hand each key's records (one request, one subject), in order, to `handle`; different
    keys run concurrently, at most `concurrency` at once. The results, one per key."""
    return await in_groups(by_key(records), concurrency, handle)


def by_key(records: Sequence[ConsumerRecord[bytes, bytes]]) -> list[list[ConsumerRecord[bytes, bytes]]]:
    """Each key's records, in order; the keys in the order they first came."""
    groups: dict[bytes | None, list[ConsumerRecord[bytes, bytes]]] = defaultdict(list)
    for record in records:
        groups[record.key].append(record)
    return list(groups.values())


async def in_groups(
    groups: Sequence[list[ConsumerRecord[bytes, bytes]]],
    concurrency: int,
    handle: Callable[[list[ConsumerRecord[bytes, bytes]]], Awaitable[T]],
) -> list[T]:
    """`by_key_in_order` for records already grouped by key."""
    gate = asyncio.Semaphore(concurrency)

    async def one(group: list[ConsumerRecord[bytes, bytes]]) -> T:
        async with gate:
            return await handle(group)

    return await asyncio.gather(*(one(group) for group in groups))


async def _while_away(attempt: Callable[[], Awaitable[None]], publisher: Publisher, what: str) -> bool:
    """Run `attempt` until it gets past a missing dependency: True once it ran, False if the
    service is stopping meanwhile. Any other exception is the caller's."""
    delay = 0.2
    while True:
        try:
            await attempt()
            return True
        except TRANSIENT as exc:
            log.warning(
                "dependency unavailable, retrying", extra={"consumer": what, "error": type(exc).__name__}
            )
            if publisher.stopping.is_set():
                return False
            await asyncio.sleep(delay)
            delay = min(delay * 2, 10.0)


async def _handle_one(
    record: ConsumerRecord[bytes, bytes], handle: Handler, publisher: Publisher, what: str
) -> bool:
    async def attempt() -> None:
        with consuming(record, what):
            await handle(record)

    try:
        return await _while_away(attempt, publisher, what)
    except PoisonMessage as exc:
        log.warning(
            "poison message dead-lettered",
            extra={"consumer": what, "offset": record.offset, "error": str(exc)},
        )
        error = str(exc)
    except Exception as exc:
        log.exception("message failed; dead-lettered", extra={"consumer": what, "offset": record.offset})
        error = f"{type(exc).__name__} while handling"
    await publisher.dead_letter(record, error)
    return True


async def _handle_group(
    records: list[ConsumerRecord[bytes, bytes]], handle_group: GroupHandler, publisher: Publisher, what: str
) -> bool | None:
    """True when handled, False when stopping, None to fall back to one by one."""

    async def attempt() -> None:
        # One span for the group, linked to each message's producer: a trace tool shows every
        # request's outcomes joining the same processing.
        with consuming(records[0], what, links=[r.headers for r in records[1:]]):
            await handle_group(records)

    try:
        return await _while_away(attempt, publisher, what)
    except Exception as exc:  # the type only: a message may quote the input
        log.warning("group failed; handled one by one", extra={"consumer": what, "error": type(exc).__name__})
        return None
