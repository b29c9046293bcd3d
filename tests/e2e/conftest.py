from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any
from uuid import uuid4

import httpx
import pytest

from cli.main import seed_targets
from cli.seed import SeedFile, load
from cli.stack import Stack
from tests.conftest import admin_client, running_stack

# A token a deployment or CI script provisions: the stack's own admin token must work beside it.
DEPLOYMENT_TOKEN = f"lethe_e2ecompliance_{uuid4().hex}"


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory, pg_server: str) -> Iterator[Stack]:
    # Short enough for a test to watch a silent system be re-sent and then failed.
    with running_stack(
        tmp_path_factory.mktemp("stack"),
        "e2e",
        {
            "LETHE_TRACKER_SYSTEM_TIMEOUT_S": "2",
            "LETHE_TRACKER_MAX_ATTEMPTS": "2",
            "LETHE_STUCK_AFTER_S": "1",
            "LETHE_WORKER_BACKOFF_INITIAL_S": "0.2",
            "LETHE_WORKER_BACKOFF_MAX_S": "1",
            "LETHE_WORKER_ATTEMPTS": "4",
            # Statement spans on: the tracing test checks they join the trace and leak nothing.
            "LETHE_TRACE_SQL": "true",
            "LETHE_BOOTSTRAP_TOKENS": f"compliance:{DEPLOYMENT_TOKEN}",
            # Every test calls from 127.0.0.1 and several send wrong tokens on purpose (the role
            # walk two per route): the address's allowance of failures must outlast the session.
            "LETHE_AUTH_FAILURE_BURST": "1000",
        },
    ) as running:
        yield running


@pytest.fixture(scope="session")
def api(stack: Stack) -> Iterator[httpx.Client]:
    with admin_client(stack) as client:
        yield client


def seed(stack: Stack, seed_file: SeedFile) -> None:
    asyncio.run(load(seed_file, seed_targets(stack)))


def submit_erasure(
    api: httpx.Client, request_id: str, subject: dict[str, Any], **extra: Any
) -> httpx.Response:
    """An identity-verified erasure request, as an upstream DSAR tool sends it."""
    body = {"request_id": request_id, "type": "erasure", "identity_verified": True, "subject": subject}
    return api.post("/v1/requests", json=body | extra)


def wait_final(api: httpx.Client, request_id: str, timeout_s: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        body: dict[str, Any] = api.get(f"/v1/requests/{request_id}").json()
        if body["status"] in ("completed", "completed_with_exceptions", "failed"):
            return body
        time.sleep(0.1)
    raise AssertionError(f"{request_id} not final after {timeout_s}s: {body}")
