"""Intake's process: the API, the outbox relay, the status read-model consumer, the ingress
topic consumer and the callback sender."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Iterator

import asyncpg
import uvicorn
from aiokafka import AIOKafkaProducer, ConsumerRecord
from fastapi import FastAPI
from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from services.intake import auth, callbacks, holds, ingress, store
from services.intake.api import ApiLimits, create_app
from services.intake.service import IntakeContext
from shared import topics
from shared.codec import decode
from shared.contracts import RequestStatusChanged
from shared.crypto import IdentifierSeal
from shared.db import apply_schema, create_pool, ensure_database
from shared.delivery import GroupHandler, Handler, Publisher, consume_forever
from shared.kafka import ensure_topics, make_consumer, make_producer, start_with_retry
from shared.outbox import OUTBOX_DDL, OutboxRelay
from shared.service import mark_ready, run_service
from shared.settings import DatabaseSettings, KafkaSettings, SecretsSettings

log = logging.getLogger("lethe.intake")


class IntakeSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LETHE_", extra="ignore")

    http_host: str = Field("127.0.0.1", description="Address the HTTP API binds to.")
    http_port: int = Field(8080, ge=1, le=65535, description="Port of the HTTP API.")
    systems: list[str] = Field(list(topics.SYSTEMS), description="Systems requests may target (JSON list).")
    stuck_after_s: float = Field(3600, gt=0, description="A request unchanged this long is listed as stuck.")
    callback_secret: SecretStr = Field(
        SecretStr(""), description="HMAC key signing callbacks; callbacks are not sent without one."
    )
    bootstrap_tokens: SecretStr = Field(
        SecretStr(""), description="role:token,role:token provisioned at start-up (scripts, CI, first admin)."
    )
    rate_limit_per_s: float = Field(50, gt=0, description="Requests a second allowed per token (sustained).")
    rate_limit_burst: int = Field(200, ge=1, description="Requests a token may make in a burst.")
    max_body_bytes: int = Field(65536, ge=1024, le=16 * 1024 * 1024, description="Largest request body.")

    def limits(self) -> ApiLimits:
        return ApiLimits(
            self.stuck_after_s, self.rate_limit_per_s, self.rate_limit_burst, self.max_body_bytes
        )


async def fold_status(pool: asyncpg.Pool, record: ConsumerRecord[bytes, bytes]) -> None:
    await fold_statuses(pool, [record])


async def fold_statuses(pool: asyncpg.Pool, records: list[ConsumerRecord[bytes, bytes]]) -> None:
    """Snapshots of one request: only the newest matters (each carries the whole state)."""
    event = max((decode(r.value, RequestStatusChanged) for r in records), key=lambda e: e.version)
    await store.apply_status(pool, event)


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
    seal = IdentifierSeal(secrets.identifier_key.get_secret_value())
    bootstrap = auth.parse_bootstrap(settings.bootstrap_tokens.get_secret_value())  # fails fast, naming it

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await ensure_database(db.database_url)
        pool = await create_pool(db.database_url, db.db_pool_max)
        await apply_schema(pool, *store.SCHEMA, *holds.SCHEMA, *callbacks.SCHEMA, *auth.SCHEMA, OUTBOX_DDL)
        for role, token in bootstrap:
            await auth.create(pool, role, "bootstrap", token)
        await ensure_topics(kafka, topics.all_topics(tuple(settings.systems)))
        producer = make_producer(kafka)
        await start_with_retry(producer, "producer")
        secret = settings.callback_secret.get_secret_value()
        ctx = IntakeContext(
            pool,
            settings.systems,
            seal,
            secrets.pseudonym_key.get_secret_value(),
            callbacks_enabled=bool(secret),
        )
        app.state.ctx = ctx
        app.state.relay = relay = OutboxRelay(pool, producer, service="intake")
        app.state.readiness = lambda: readiness(pool, producer)
        stopping = asyncio.Event()
        publisher = Publisher(producer, stopping)
        tasks = [
            asyncio.create_task(relay.run()),
            asyncio.create_task(
                consume(
                    kafka,
                    topics.REQUEST_STATUS,
                    "lethe-intake-status",
                    lambda record: fold_status(pool, record),
                    publisher,
                    lambda records: fold_statuses(pool, records),
                )
            ),
            asyncio.create_task(
                consume(
                    kafka,
                    topics.INGRESS,
                    "lethe-intake-ingress",
                    lambda record: ingress.reply(ctx, publisher, record),
                    publisher,
                )
            ),
        ]
        if secret:
            tasks.append(asyncio.create_task(callbacks.CallbackSender(pool, secret).run()))
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
            create_app(lifespan, settings.limits()),
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


if __name__ == "__main__":
    run_service("lethe-intake", main)
