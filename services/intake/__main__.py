"""Intake's process: the API, the outbox relay, the status read-model consumer, the ingress
topic consumer and the callback sender."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta

import asyncpg
import uvicorn
from aiokafka import AIOKafkaProducer
from fastapi import FastAPI

from services.intake import auth, callbacks, holds, ingress, notices, recovery, rekey, reviews, store
from services.intake.app import create_app
from services.intake.notice_sender import NoticeSender
from services.intake.notice_settings import NoticeSettings, webhook_secrets
from services.intake.service import IntakeContext
from services.intake.settings import IntakeSettings
from services.intake.statuses import fold_status, fold_statuses
from shared import topics
from shared.broker_memory import SENTINEL_DDL
from shared.codec import decode
from shared.contracts.notices import NotifyRecipient
from shared.db import apply_schema, create_pool, ensure_database
from shared.delivery import Handler, Publisher, consume_forever
from shared.kafka import ensure_topics, make_consumer, make_producer, start_with_retry, warn_if_unencrypted
from shared.outbox import OUTBOX_COMPRESSION, OUTBOX_DDL, OutboxRelay
from shared.policy.model import categories_by_system, load_policy
from shared.policy.settings import PolicySettings
from shared.recipients.settings import RegisterSettings
from shared.relay_hold import RelayHold
from shared.service import mark_ready, run_service, set_readiness, stop_if_any_ends
from shared.settings import (
    DatabaseSettings,
    DeploymentSettings,
    KafkaSettings,
    RecoverySettings,
    SecretsSettings,
)
from shared.together import GroupHandler

log = logging.getLogger("lethe.intake")


async def consume(
    kafka: KafkaSettings,
    topic: str,
    group: str,
    handle: Handler,
    publisher: Publisher,
    handle_group: GroupHandler | None = None,
) -> None:
    consumer = make_consumer(kafka, [topic], group)
    await start_with_retry(consumer, group)
    try:
        await consume_forever(consumer, handle, publisher, group, handle_group=handle_group)
    finally:
        await consumer.stop()


async def readiness(pool: asyncpg.Pool, producer: AIOKafkaProducer) -> dict[str, bool]:
    checks = {"database": False, "broker": False}
    with contextlib.suppress(OSError, asyncpg.PostgresError, TimeoutError):
        checks["database"] = await asyncio.wait_for(pool.fetchval("SELECT true"), 2) is True
    with contextlib.suppress(Exception):
        checks["broker"] = bool(await asyncio.wait_for(producer.partitions_for(topics.OUTCOMES), 2))
    return checks


class _Server(uvicorn.Server):
    """Signals are the service runner's: it stops the relay and consumers too, in order."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


async def main(stop: asyncio.Event) -> None:
    settings = IntakeSettings()
    kafka = KafkaSettings()
    db = DatabaseSettings()
    secrets = SecretsSettings()
    recovery_settings = RecoverySettings()
    seal = secrets.seal()
    development = DeploymentSettings().development
    warn_if_unencrypted(kafka, development)
    # Fails fast, naming the variable: a weak or placeholder token outside a development stack.
    bootstrap = auth.parse_bootstrap(settings.bootstrap_tokens.get_secret_value(), development)
    # So does a bad register of recipients, a webhook's missing secret or forbidden URL.
    register = RegisterSettings().load()
    notice_secrets = webhook_secrets(register, os.environ, development, settings.egress())
    notice_settings = NoticeSettings()
    categories = categories_by_system(load_policy(PolicySettings().policy_file))  # a bad file stops it

    ended: list[str] = []

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await ensure_database(db.database_url)
        pool = await create_pool(db.database_url, db.db_pool_max)
        await apply_schema(
            pool,
            *store.SCHEMA,
            *holds.SCHEMA,
            *reviews.SCHEMA,
            *callbacks.SCHEMA,
            *notices.SCHEMA,
            *auth.SCHEMA,
            OUTBOX_DDL,
            OUTBOX_COMPRESSION,
            SENTINEL_DDL,
        )
        if revoked := await auth.sync_bootstrap(pool, bootstrap):
            log.warning("bootstrap tokens no longer configured were revoked", extra={"count": revoked})
        ctx = IntakeContext(
            pool,
            settings.systems,
            seal,
            secrets.pseudonym_key.get_secret_value(),
            callbacks_enabled=bool(settings.callback_secret.get_secret_value()),
            egress=settings.egress(),
            callbacks_https_only=not development,
            categories=categories,
        )
        if keyed := await rekey.key_unkeyed_fingerprints(pool, ctx.fingerprints):
            log.info(
                "unkeyed request fingerprints stored by an earlier version keyed", extra={"count": keyed}
            )
        await ensure_topics(kafka, topics.all_topics(tuple(settings.systems)))
        producer = make_producer(kafka)
        await start_with_retry(producer, "producer")
        secret = settings.callback_secret.get_secret_value()
        app.state.ctx = ctx
        app.state.register = register
        app.state.relay = relay = OutboxRelay(
            pool, producer, service="intake", held=RelayHold(settings.relay_hold_file)
        )
        app.state.readiness = lambda: readiness(pool, producer)
        set_readiness(app.state.readiness)  # the same answer on LETHE_METRICS_PORT, beside /metrics
        stopping = asyncio.Event()
        publisher = Publisher(producer, seal, stopping)
        tasks = [
            asyncio.create_task(relay.run(), name="outbox relay"),
            asyncio.create_task(
                recovery.BrokerWatch(pool, producer, kafka, seal, settings.systems, recovery_settings).run(
                    stopping
                ),
                name="broker watch",
            ),
            asyncio.create_task(
                consume(
                    kafka,
                    topics.REQUEST_STATUS,
                    topics.INTAKE_STATUS_GROUP,
                    lambda record: fold_status(pool, record),
                    publisher,
                    lambda records: fold_statuses(pool, records),
                ),
                name="status consumer",
            ),
            asyncio.create_task(
                consume(
                    kafka,
                    topics.INGRESS,
                    topics.INGRESS_GROUP,
                    lambda record: ingress.reply(ctx, publisher, record),
                    publisher,
                ),
                name="ingress consumer",
            ),
            asyncio.create_task(
                consume(
                    kafka,
                    topics.NOTICES,
                    topics.NOTICES_GROUP,
                    lambda record: notices.take(
                        pool, register, decode(record.value, NotifyRecipient), datetime.now(UTC)
                    ),
                    publisher,
                    lambda records: notices.take_many(
                        pool, register, [decode(r.value, NotifyRecipient) for r in records], datetime.now(UTC)
                    ),
                ),
                name="notices consumer",
            ),
            asyncio.create_task(
                NoticeSender(
                    pool,
                    register,
                    notice_secrets,
                    seal,
                    notice_settings.retries(),
                    egress=ctx.egress,
                    keep_task_identifiers=timedelta(days=notice_settings.task_identifiers_days),
                ).run(),
                name="notice sender",
            ),
        ]
        if secret:
            sender = callbacks.CallbackSender(pool, secret, egress=ctx.egress)
            tasks.append(asyncio.create_task(sender.run(), name="callback sender"))
        stop_if_any_ends(tasks, stop, ended)
        mark_ready()
        try:
            yield
        finally:
            stopping.set()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await producer.stop()
            await pool.close()

    server = _Server(
        uvicorn.Config(
            create_app(lifespan, settings.limits(), development),
            host=settings.http_host,
            port=settings.http_port,
            log_config=None,
            access_log=False,
        )
    )
    serving = asyncio.create_task(server.serve())
    stopping = asyncio.create_task(stop.wait())
    await asyncio.wait({serving, stopping}, return_when=asyncio.FIRST_COMPLETED)
    server.should_exit = True
    stopping.cancel()
    await serving
    if not server.started:
        raise SystemExit("lethe-intake: failed to start (see the log above)")
    if ended:
        raise SystemExit(f"lethe-intake: stopped, its task {ended[0]} having ended (see the log above)")


if __name__ == "__main__":
    run_service("lethe-intake", main)
