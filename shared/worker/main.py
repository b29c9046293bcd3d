"""Entry point shared by every system worker: `run_worker("billing", BillingAdapter.from_env)`."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

from shared.crypto import IdentifierSeal
from shared.kafka import ensure_topics
from shared.service import run_service
from shared.settings import KafkaSettings, SecretsSettings
from shared.topics import all_topics
from shared.worker.policy import ActOnEverything
from shared.worker.ports import StoreAdapter
from shared.worker.runtime import RetrySettings, WorkerRuntime


def run_worker(system: str, make_adapter: Callable[[], StoreAdapter]) -> None:
    async def main(stop: asyncio.Event) -> None:
        kafka = KafkaSettings()
        secrets = SecretsSettings()
        runtime = WorkerRuntime(
            adapter=make_adapter(),
            policy=ActOnEverything(),
            seal=IdentifierSeal(secrets.identifier_key.get_secret_value()),
            kafka=kafka,
            retry=RetrySettings(),
        )
        await ensure_topics(kafka, all_topics())
        task = asyncio.create_task(runtime.run())
        stopper = asyncio.create_task(stop.wait())
        await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
        runtime.stop()
        stopper.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task  # finishes the batch in hand and commits before leaving the group

    run_service(f"lethe-{system}", main)
