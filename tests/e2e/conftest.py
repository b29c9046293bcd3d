from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from uuid import uuid4

import httpx
import pytest

from cli.main import seed_targets
from cli.processes import free_port
from cli.seed import SeedFile, load
from cli.stack import Stack, StackConfig
from tests.conftest import POSTGRES_URL


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory, pg_server: str) -> Iterator[Stack]:
    """The whole system, every service its own process, as `make up` runs it."""
    config = StackConfig(
        state_dir=Path(tmp_path_factory.mktemp("stack")),
        http_port=free_port(),
        kafka_port=free_port(),
        ldap_port=free_port(),
        postgres_url=POSTGRES_URL,
        db_prefix=f"lethe_e2e_{uuid4().hex[:8]}",
        # Short enough for a test to watch a silent system be re-sent and then failed.
        extra_env={
            "LETHE_TRACKER_SYSTEM_TIMEOUT_S": "2",
            "LETHE_TRACKER_MAX_ATTEMPTS": "2",
            "LETHE_STUCK_AFTER_S": "1",
            "LETHE_WORKER_BACKOFF_INITIAL_S": "0.2",
            "LETHE_WORKER_BACKOFF_MAX_S": "1",
            "LETHE_WORKER_ATTEMPTS": "4",
        },
    )

    running = Stack(config)
    try:
        running.start_infrastructure()
        running.start_services()
        yield running
    finally:
        running.stop()
        asyncio.run(running.drop_databases())


@pytest.fixture(scope="session")
def api(stack: Stack) -> Iterator[httpx.Client]:
    headers = {"Authorization": f"Bearer {stack.secrets.admin_token}"}
    with httpx.Client(base_url=stack.api_url, timeout=10, headers=headers) as client:
        yield client


def seed(stack: Stack, seed_file: SeedFile) -> None:
    asyncio.run(load(seed_file, seed_targets(stack)))


def wait_final(api: httpx.Client, request_id: str, timeout_s: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        body: dict[str, Any] = api.get(f"/v1/requests/{request_id}").json()
        if body["status"] in ("completed", "completed_with_exceptions", "failed"):
            return body
        time.sleep(0.1)
    raise AssertionError(f"{request_id} not final after {timeout_s}s: {body}")
