"""Entry point shared by every system worker: `run_worker("billing", BillingAdapter.from_env)`."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

from shared.kafka import ensure_topics, warn_if_unencrypted
from shared.policy.evaluate import RetentionPolicy
from shared.policy.model import check_categories, load_policy
from shared.policy.settings import PolicySettings
from shared.service import run_service, set_readiness
from shared.settings import DeploymentSettings, KafkaSettings, RecoverySettings, SecretsSettings
from shared.topics import all_topics
from shared.worker.holds import HoldsView
from shared.worker.ports import StoreAdapter
from shared.worker.runtime import WorkerRuntime
from shared.worker.settings import RetrySettings


def run_worker(system: str, make_adapter: Callable[[], StoreAdapter]) -> None:
    async def main(stop: asyncio.Event) -> None:
        kafka = KafkaSettings()
        warn_if_unencrypted(kafka, DeploymentSettings().development)
        secrets = SecretsSettings()
        adapter = make_adapter()
        policy = load_policy(PolicySettings().policy_file)
        check_categories(policy, system, adapter.personal_fields, adapter.record_terms)
        seal = secrets.seal()
        runtime = WorkerRuntime(
            adapter=adapter,
            policy=RetentionPolicy(policy),
            seal=seal,
            kafka=kafka,
            retry=RetrySettings(),
            holds=HoldsView(kafka, seal),
            broker_check_s=RecoverySettings().broker_check_s,
        )
        set_readiness(runtime.readiness)
        await ensure_topics(kafka, all_topics())
        task = asyncio.create_task(runtime.run())
        stopper = asyncio.create_task(stop.wait())
        await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
        runtime.stop()
        stopper.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task  # finishes the batch in hand and commits before leaving the group

    run_service(f"lethe-{system}", main)
