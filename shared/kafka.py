"""Kafka clients configured the one way Lethe uses them.

Consumers commit by hand after their work is durable (at-least-once); every timing that
matters on the embedded broker comes from `KafkaSettings`. Every client, here or anywhere else,
is built with `client_options`: the bootstrap servers and the transport security (TLS, SASL)
come from one place, so that no client reaches the broker unauthenticated by oversight.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import ssl
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import aiokafka.admin.client
import aiokafka.client
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaConnectionError, KafkaError, TopicAlreadyExistsError
from aiokafka.helpers import create_ssl_context
from aiokafka.protocol.metadata import MetadataRequest
from opentelemetry import propagate

from shared import fetching, unreadable
from shared.settings import KafkaSettings
from shared.topics import CONTROL_TOPICS, topic_config

log = logging.getLogger(__name__)
Headers = list[tuple[str, bytes]]


class NoAutoCreateMetadataRequest(MetadataRequest):  # type: ignore[misc]
    """A metadata request that never asks the broker to create the topics it names.

    aiokafka asks for creation by default, and a broker that allows it (tansu always does)
    makes a topic a client names with the broker's default: 4 partitions on tansu, where a
    control topic has 1, and no retention. After a broker restart, a client that asked about
    the holds topic before the services' recovery made it again gave it 4 partitions: a reader
    that had assigned its one partition never saw holds sent to the other three. Lethe's
    topics are made only by `ensure_topics`; a send to one that is not there yet waits for it
    (aiokafka asks again until its request timeout), as a group member waits for its topics."""

    def __init__(
        self, topics: list[str] | None = None, allow_auto_topic_creation: bool | None = False
    ) -> None:
        super().__init__(topics, allow_auto_topic_creation)


# Every aiokafka client of the process builds its metadata requests from these modules' names,
# and every consumer reads its fetches with the fetcher's (shared/unreadable.py).
aiokafka.client.MetadataRequest = NoAutoCreateMetadataRequest
aiokafka.admin.client.MetadataRequest = NoAutoCreateMetadataRequest
unreadable.install()


def trace_headers() -> Headers:
    """W3C trace context of the current span, for the message about to be sent."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return [(k, v.encode()) for k, v in carrier.items()]


def client_options(settings: KafkaSettings) -> dict[str, Any]:
    """The keyword arguments every AIOKafkaProducer, AIOKafkaConsumer and AIOKafkaAdminClient
    gets: where the broker is and how to reach it (a test checks every construction)."""
    options: dict[str, Any] = {
        "bootstrap_servers": settings.bootstrap,
        "security_protocol": settings.security_protocol,
        "metadata_max_age_ms": settings.metadata_max_age_ms,
    }
    if settings.security_protocol in ("SSL", "SASL_SSL"):
        files = (settings.ssl_cafile, settings.ssl_certfile, settings.ssl_keyfile)
        options["ssl_context"] = _ssl_context(*files)
    if settings.security_protocol in ("SASL_PLAINTEXT", "SASL_SSL"):
        options["sasl_mechanism"] = settings.sasl_mechanism
        options["sasl_plain_username"] = settings.sasl_username
        options["sasl_plain_password"] = settings.sasl_password.get_secret_value()
    return options


@functools.cache
def _ssl_context(cafile: Path | None, certfile: Path | None, keyfile: Path | None) -> ssl.SSLContext:
    """Certificate and host name checked against the CA file. Built once per process: the broker
    check builds a consumer every few seconds. A bad file stops the service, naming it."""
    try:
        context: ssl.SSLContext = create_ssl_context(cafile=cafile)
    except (ssl.SSLError, OSError) as exc:
        raise ValueError(f"LETHE_KAFKA_SSL_CAFILE: not a PEM certificate ({type(exc).__name__})") from exc
    if certfile is not None:
        try:
            # An empty password, not None: an encrypted key fails instead of prompting on a tty.
            context.load_cert_chain(certfile, keyfile, password="")
        except (ssl.SSLError, OSError) as exc:
            raise ValueError(
                "LETHE_KAFKA_SSL_CERTFILE / LETHE_KAFKA_SSL_KEYFILE: not a certificate and its"
                f" unencrypted key, in PEM ({type(exc).__name__})"
            ) from exc
    return context


def warn_if_unencrypted(settings: KafkaSettings, development: bool) -> bool:
    """Outside a development stack, say loudly that Kafka traffic (ingress bodies carry e-mails
    and phone numbers) crosses the network in clear. Not refused: compose on one host may
    accept it. True when it warned."""
    if development or settings.security_protocol.endswith("SSL"):
        return False
    log.warning(
        "Kafka connections are not encrypted (and with PLAINTEXT not authenticated either): use"
        " LETHE_KAFKA_SECURITY_PROTOCOL=SASL_SSL beyond a single host",
        extra={"security_protocol": settings.security_protocol},
    )
    return True


def make_producer(settings: KafkaSettings) -> AIOKafkaProducer:
    return AIOKafkaProducer(
        **client_options(settings),
        enable_idempotence=settings.idempotent_producer,
        acks="all",
        linger_ms=2,
    )


# Consumers off the hot path (retry topics, the holds view) wait longer between empty fetches:
# an idle consumer polling every 10 ms costs the broker CPU that the hot path needs.
COLD_FETCH_WAIT_MS = 250


def make_consumer(
    settings: KafkaSettings, topics: Sequence[str], group_id: str, cold: bool = False
) -> AIOKafkaConsumer:
    busy_ms = max(settings.fetch_max_wait_ms, COLD_FETCH_WAIT_MS) if cold else settings.fetch_max_wait_ms
    options: dict[str, Any] = {
        "group_id": group_id,
        "enable_auto_commit": False,
        "auto_offset_reset": "earliest",
        "fetch_max_wait_ms": busy_ms,
        "session_timeout_ms": settings.session_timeout_ms,
        "heartbeat_interval_ms": settings.heartbeat_interval_ms,
        "max_poll_records": 200,
    }
    consumer: AIOKafkaConsumer
    if settings.group_membership == "assign":
        consumer = AssigningConsumer(settings, topics, **client_options(settings), **options)
    else:
        consumer = AIOKafkaConsumer(**client_options(settings), **options)
        consumer.subscribe(list(topics), listener=fetching.RewindLater(consumer))
    fetching.register(consumer, busy_ms, settings.idle_fetch_max_wait_ms, settings.quiet_fetch_max_wait_ms)
    return consumer


class AssigningConsumer(AIOKafkaConsumer):  # type: ignore[misc]
    """A consumer that reads every partition of its topics, joining no group (it still commits
    to its group, and starts where its group committed): KafkaSettings.group_membership."""

    reads_by_assignment = True  # fetching.by_assignment

    def __init__(self, settings: KafkaSettings, topics: Sequence[str], **options: Any) -> None:
        super().__init__(**options)
        self._lethe_assign = (settings, tuple(topics))
        self._lethe_started = False

    async def start(self) -> None:
        if not self._lethe_started:  # start_with_retry may call again: aiokafka starts only once
            await super().start()
            self._lethe_started = True
        partitions = await every_partition(*self._lethe_assign)
        self.assign(partitions)
        fetching.assigned(self, partitions)


ASSIGN_WARN_S = 30.0  # how often a consumer waiting for its topics says so


async def every_partition(settings: KafkaSettings, names: Sequence[str]) -> list[TopicPartition]:
    """Every partition of `names`, as the broker has them (a count taken from the settings could
    miss a partition of a topic made otherwise, and with it every message sent there). A topic
    not made yet is waited for, as a group member would wait for its assignment: whoever starts
    first makes them all, and after a broker's crash the services' recovery makes them again.
    Asked each time with a client of its own: a started client's metadata knows only the topics
    it knew at its start."""
    loop = asyncio.get_running_loop()
    warned = loop.time()
    while True:
        probe = AIOKafkaConsumer(**client_options(settings), group_id=None, enable_auto_commit=False)
        try:
            await probe.start()
            found = await partitions_of(probe, names)
        except KafkaError:  # the broker away for a moment: asked again
            found = []
        finally:
            await probe.stop()
        if not (missing := [n for n in names if not any(tp.topic == n for tp in found)]):
            return found
        if loop.time() - warned > ASSIGN_WARN_S:
            warned = loop.time()
            log.warning("waiting for topics to be made", extra={"topics": ",".join(missing)})
        await asyncio.sleep(0.2)


async def start_with_retry(client: AIOKafkaProducer | AIOKafkaConsumer, what: str) -> None:
    """The broker may come up after us (or restart): keep trying with backoff."""
    delay = 0.2
    while True:
        try:
            await client.start()
            return
        except KafkaConnectionError:
            log.warning("kafka not reachable, retrying", extra={"component": what, "delay_s": delay})
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)


async def ensure_topics(settings: KafkaSettings, names: Sequence[str]) -> None:
    """Create topics explicitly, with their retention (`topics.topic_config`): auto-created ones
    get the broker's default partition count and retention. A topic that exists is left as it
    is: its configuration is the cluster's (Strimzi's KafkaTopic, or kafka-configs.sh)."""
    admin = AIOKafkaAdminClient(**client_options(settings))
    delay = 0.2
    for _ in range(50):
        try:
            await admin.start()
            break
        except KafkaConnectionError:
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)
    else:
        raise RuntimeError(f"LETHE_KAFKA_BOOTSTRAP: no broker at {settings.bootstrap}")
    try:
        existing = set(await admin.list_topics())
        missing = [n for n in names if n not in existing]
        if missing:
            try:
                await admin.create_topics(
                    [
                        NewTopic(
                            n,
                            partitions_for(settings, n),
                            settings.replication_factor,
                            topic_configs=topic_config(n),
                        )
                        for n in missing
                    ]
                )
            except TopicAlreadyExistsError:
                pass  # another service created it first
    finally:
        await admin.close()


def partitions_for(settings: KafkaSettings, name: str) -> int:
    if name in CONTROL_TOPICS and settings.control_topic_partitions is not None:
        return settings.control_topic_partitions
    return settings.topic_partitions


async def partitions_of(consumer: AIOKafkaConsumer, names: Sequence[str]) -> list[TopicPartition]:
    """Every partition of the topics `names` the broker knows, in order (a consumer that is
    assigned rather than subscribed knows none until it asks)."""
    await consumer.topics()
    return [TopicPartition(n, p) for n in names for p in sorted(consumer.partitions_for_topic(n) or ())]
