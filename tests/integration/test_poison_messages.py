"""A poison message of any size or shape is dead-lettered and its consumer goes on: one too
large to keep sealed (it could never be sent, and was retried for good) leaves a letter with
its size and no body; one nested deeper than a parser goes (whose ids were read again while
dead-lettering it, raising past every handler) leaves a letter as any other."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from uuid import uuid4

import pytest
from aiokafka import AIOKafkaProducer, ConsumerRecord
from cryptography.fernet import Fernet

from cli.dlq import DeadLetter, read_topic
from shared import topics
from shared.codec import decode
from shared.contracts import OutcomeReported
from shared.crypto import IdentifierSeal
from shared.dead_letters import id_headers, open_letter
from shared.delivery import Publisher, consume_forever
from shared.kafka import ensure_topics, make_consumer, make_producer
from shared.settings import KafkaSettings

pytestmark = pytest.mark.integration
GOOD = b'{"good": true}'


async def handled_after(
    broker: KafkaSettings, poison: bytes, key: bytes = b"k", headers: list[tuple[str, bytes]] | None = None
) -> tuple[list[bytes], list[DeadLetter]]:
    """What a consumer handles of [poison, a good message] on a topic of its own, and the dead
    letters that came from that topic."""
    topic = f"lethe.poison.{uuid4().hex[:8]}.v1"
    await ensure_topics(broker, [topic, topics.DEAD_LETTERS])
    # Any client may write up to the broker's limit, past the producer's default request size.
    hostile = AIOKafkaProducer(bootstrap_servers=broker.bootstrap, max_request_size=4 * 1024 * 1024)
    await hostile.start()
    await hostile.send_and_wait(topic, key=key, value=poison, headers=headers or [])
    await hostile.send_and_wait(topic, key=b"k", value=GOOD)
    await hostile.stop()
    handled: list[bytes] = []

    async def handle(record: ConsumerRecord[bytes, bytes]) -> None:
        if record.value != GOOD:
            decode(record.value, OutcomeReported)  # raises PoisonMessage
        handled.append(record.value)

    async def done() -> bool:
        return bool(handled)

    await consume_until(broker, topic, handle, IdentifierSeal(Fernet.generate_key().decode()), done)
    source = dict(headers or ()).get("lethe-source-topic", topic.encode())[:256].decode()
    letters = [DeadLetter.of(r) for r in await read_topic(broker, topics.DEAD_LETTERS)]
    return handled, [letter for letter in letters if letter.source_topic == source]


async def consume_until(
    broker: KafkaSettings,
    topic: str,
    handle: Callable[[ConsumerRecord[bytes, bytes]], Awaitable[None]],
    seal: IdentifierSeal,
    done: Callable[[], Awaitable[bool]],
) -> None:
    """A consume loop on `topic` until `done` (15 s at most); it must not have died."""
    producer = make_producer(broker)
    await producer.start()
    consumer = make_consumer(broker, [topic], f"poison-{uuid4().hex[:8]}")
    await consumer.start()
    publisher = Publisher(producer, seal)
    task = asyncio.create_task(consume_forever(consumer, handle, publisher, "poison"))
    try:
        for _ in range(150):
            if await done() or task.done():
                break
            await asyncio.sleep(0.1)
        assert not task.done(), f"the consumer died: {task.exception()!r}"
    finally:
        publisher.stopping.set()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await consumer.stop()
        await producer.stop()


async def test_a_poison_message_too_large_to_keep_is_dead_lettered_without_its_body(
    broker: KafkaSettings,
) -> None:
    handled, [letter] = await handled_after(broker, b"x" * 700_000)
    assert handled == [GOOD]
    assert letter.body_dropped and "700001 bytes not kept" in letter.error


async def test_a_poison_message_nested_past_the_parser_is_dead_lettered(broker: KafkaSettings) -> None:
    assert id_headers(b"[" * 5000) == []
    # Not JSON throughout (a byte that is no UTF-8), its ids still named from its first bytes.
    assert id_headers(b'{"request_id": "req-1", "x": "\xff"}') == [("lethe-request-id", b"req-1")]
    handled, [letter] = await handled_after(broker, b"[" * 5000)
    assert handled == [GOOD]
    assert not letter.body_dropped and "RecursionError" in letter.error


async def test_a_poison_message_with_a_key_or_header_too_large_to_keep_is_dead_lettered(
    broker: KafkaSettings,
) -> None:
    """The upstream tool may write the ingress topic: a 600 kB key made a letter that could
    never be sent, and the consumer (then intake, stopped when a task ends) went down with it."""
    handled, [letter] = await handled_after(broker, b"not json", key=b"k" * 600_000)
    assert handled == [GOOD] and letter.body_dropped and "600008 bytes not kept" in letter.error
    claimed = f"lethe.{uuid4().hex}.".encode() + b"t" * 600_000  # a retried message's origin, says it
    handled, [letter] = await handled_after(broker, b"not json", headers=[("lethe-source-topic", claimed)])
    assert handled == [GOOD] and not letter.body_dropped and len(letter.source_topic) == 256


async def test_a_poison_message_under_the_limit_is_kept_and_named_by_its_request(
    broker: KafkaSettings,
) -> None:
    """400 kB of a message that is not what the topic holds: kept (sealed, it fits), and the
    letter names its request though the body is too large to parse for the headers."""
    body = b'{"request_id": "R-400", "x": "' + b"a" * 400_000 + b'"}'
    handled, [letter] = await handled_after(broker, body)
    assert handled == [GOOD] and not letter.body_dropped and letter.request_id == "R-400"


# A record's headers as aiokafka's pure-Python builder writes `[("x", b"v")]` (a count, then
# each name's and value's length and bytes, lengths as zigzag varints), and what a hostile client
# writes instead: a name that is not UTF-8, a negative length, a negative count (with bytes left).
HEADERS = bytes([0x02, 0x02, 0x78, 0x02, 0x76])
HOSTILE = {
    "name not utf-8": bytes([0x02, 0x02, 0xFF, 0x02, 0x76]),
    "negative name length": bytes([0x02, 0x01, 0x04, 0x76, 0x76]),
    "negative header count": bytes([0x01, 0x00, 0x00, 0x00, 0x00]),
    "batch checksum": HEADERS,
    # A name not UTF-8 on a record whose offset delta jumps 40 ahead: the records after it in
    # the batch had been skipped as read already.
    "name not utf-8, offset ahead": bytes([0x02, 0x02, 0xFF, 0x02, 0x76]),
}


def _builder(kind: str) -> type:
    from aiokafka.record.default_records import _DefaultRecordBatchBuilderPy

    class Hostile(_DefaultRecordBatchBuilderPy):  # type: ignore[misc]
        def append(self, offset: int, timestamp: int, key: bytes, value: bytes, headers: list, **kw: object):  # type: ignore[no-untyped-def]
            ahead = 40 if headers and kind.endswith("offset ahead") else 0
            meta = super().append(offset + ahead, timestamp, key, value, headers, **kw)
            if headers:
                assert self._buffer[-5:] == HEADERS
                self._buffer[-5:] = HOSTILE[kind]
            return meta

        def build(self) -> bytearray:
            built: bytearray = super().build()
            if kind == "batch checksum":
                built[17] ^= 0xFF  # a byte of the CRC
            return built

    return Hostile


@pytest.mark.parametrize("kind", sorted(HOSTILE))
async def test_a_record_that_cannot_be_read_is_dead_lettered_and_its_neighbours_handled(
    broker: KafkaSettings, monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    """aiokafka raised from every fetch of the partition that held such a record (tansu stores
    what a client sends), dropping the readable records fetched with it: the consumer died or
    fetched again for ever. Now the records around it, in its own batch, are handled, and it is
    dead-lettered with its key and value (sealed: an operator may replay it) and where it was.
    A batch whose checksum fails has each of its records dead-lettered so."""
    import aiokafka.producer.message_accumulator as accumulator
    import aiokafka.producer.producer as producing

    topic = f"lethe.poison.{uuid4().hex[:8]}.v1"
    await ensure_topics(broker, [topic, topics.DEAD_LETTERS])
    for module in (accumulator, producing):
        monkeypatch.setattr(module, "DefaultRecordBatchBuilder", _builder(kind))
    hostile = AIOKafkaProducer(bootstrap_servers=broker.bootstrap, linger_ms=200)
    await hostile.start()
    values = [b'{"n": 1}', b'{"n": 2}', b'{"n": 3}']
    sent = [  # one batch: the producer lingers
        await hostile.send(topic, key=b"k", value=v, partition=0, headers=[("x", b"v")] if n == 1 else [])
        for n, v in enumerate(values)
    ]
    offsets = [m.offset for m in await asyncio.gather(*sent)]
    await hostile.stop()
    monkeypatch.undo()
    bad = values if kind == "batch checksum" else values[1:2]
    handled: list[bytes] = []

    async def handle(record: ConsumerRecord[bytes, bytes]) -> None:
        handled.append(record.value)

    async def done() -> bool:
        letters = [r for r in await read_topic(broker, topics.DEAD_LETTERS) if topic in str(r.headers)]
        return len(handled) + len(letters) >= len(values)

    seal = IdentifierSeal(Fernet.generate_key().decode())
    await consume_until(broker, topic, handle, seal, done)
    assert handled == [v for v in values if v not in bad]
    letters = sorted(  # no key: any partition
        (r for r in await read_topic(broker, topics.DEAD_LETTERS) if DeadLetter.of(r).source_topic == topic),
        key=lambda r: int(dict(r.headers)["lethe-source-offset"]),
    )
    assert [open_letter(seal, r.value) for r in letters] == [(b"k", v) for v in bad]
    assert all(
        "could not be read" in DeadLetter.of(r).error or "checksum" in DeadLetter.of(r).error for r in letters
    )
    # Where each was in its batch (a delta that jumps ahead is not believed).
    assert [dict(r.headers)["lethe-source-offset"] for r in letters] == [
        str(offsets[0] + values.index(v)).encode() for v in bad
    ]
