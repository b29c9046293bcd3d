"""The fault-injection suite: batches of requests against the real broker, PostgreSQL and slapd
while something breaks. LETHE_FAULTS_SCALE=full (`make faults`) runs the sizes of the issue;
the default, short, is what CI runs."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from cli.main import seed_targets
from cli.seed import SeedFile, load
from cli.stack import Stack
from cli.synthetic import EXPECTED_ERASED, EXPECTED_RETAINED, people
from services.directory.ldap import Directory
from tests.conftest import admin_client, running_stack

FULL = os.environ.get("LETHE_FAULTS_SCALE", "short") == "full"


@dataclass(frozen=True)
class Scale:
    requests: int
    broker_pause_s: float
    slapd_down_s: float
    poison: int


SCALE = Scale(300, 30, 60, 1000) if FULL else Scale(40, 5, 8, 100)
FINAL = {"completed", "completed_with_exceptions", "failed"}


# pytest keeps the last three runs' temporary folders: a failed run's logs are copied here (or
# to LETHE_FAULTS_KEEP_LOGS), so that the run that found something can still be read later.
KEEP_LOGS = Path(os.environ.get("LETHE_FAULTS_KEEP_LOGS", "/tmp/lethe-fault-logs"))


@pytest.fixture(scope="session")
def stack(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, pg_server: str
) -> Iterator[Stack]:
    # Outlast the longest outage (60 s without slapd, after the submissions): 16 tries with
    # backoff capped at 8 s keep a command alive ~100 s; the tracker waits 90 s a try.
    with running_stack(
        tmp_path_factory.mktemp("faults"),
        "faults",
        {
            "LETHE_WORKER_ATTEMPTS": "16",
            "LETHE_WORKER_BACKOFF_MAX_S": "8",
            "LETHE_TRACKER_SYSTEM_TIMEOUT_S": "90",
            "LETHE_TRACKER_MAX_ATTEMPTS": "3",
            "LETHE_RATE_LIMIT_PER_S": "1000",
            "LETHE_RATE_LIMIT_BURST": "5000",
        },
    ) as running:
        yield running
        if request.session.testsfailed:
            kept = KEEP_LOGS / datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
            shutil.copytree(running.log_dir, kept)
            print(f"\nfault suite failed: its logs are kept in {kept}")


@pytest.fixture(scope="session")
def api(stack: Stack) -> Iterator[httpx.Client]:
    with admin_client(stack, timeout_s=30) as client:
        yield client


@dataclass
class Batch:
    prefix: str
    seed: SeedFile
    held: set[str]  # customer ids whose recordings are under a hold
    started: str  # ISO time before the first submission

    def body(self, index: int) -> dict[str, Any]:
        subject = self.seed.people[index].subject
        assert subject is not None
        return {
            "request_id": f"{self.prefix}-{index}",
            "type": "erasure",
            "identity_verified": True,
            "subject": subject.model_dump(exclude_none=True),
        }

    @property
    def ids(self) -> list[str]:
        return [f"{self.prefix}-{i}" for i in range(len(self.seed.people))]


def prepare(stack: Stack, api: httpx.Client, prefix: str, count: int | None = None) -> Batch:
    """Seed a batch of people; put a tenth of them under a hold on their recordings."""
    seed = people(count or SCALE.requests, prefix=prefix)
    asyncio.run(load(seed, seed_targets(stack)))
    held = {p.subject.customer_id for p in seed.people[::10] if p.subject and p.subject.customer_id}
    for customer_id in held:
        response = api.post(
            "/v1/holds",
            json={
                "subject": {"customer_id": customer_id},
                "systems": ["recordings"],
                "case_reference": f"LIT-{customer_id}",
                "reason": "fault suite",
            },
        )
        assert response.status_code == 201
    return Batch(prefix, seed, held, datetime.now(UTC).isoformat())


def submit(api: httpx.Client, batch: Batch, indexes: range | list[int], copies: int = 1) -> None:
    def post(index: int) -> None:
        response = api.post("/v1/requests", json=batch.body(index))
        assert response.status_code == 202, response.text

    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(post, [i for i in indexes for _ in range(copies)]))


def wait_all_final(
    api: httpx.Client, batch: Batch, timeout_s: float, stack: Stack
) -> dict[str, dict[str, Any]]:
    deadline = time.monotonic() + timeout_s
    pending = set(batch.ids)
    while pending and time.monotonic() < deadline:
        listed = api.get("/v1/requests", params={"limit": 1000, "received_from": batch.started}).json()
        pending -= {r["request_id"] for r in listed if r["status"] in FINAL}
        time.sleep(0.5)
    if pending:  # say where they wait: the status and each system's state, and each task's line
        for process in stack.processes.values():
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGUSR1)
        waits = {
            rid: (body["status"], {p["system"]: p["state"] for p in body["progress"]})
            for rid in sorted(pending)[:5]
            for body in [api.get(f"/v1/requests/{rid}").json()]
        }
        raise AssertionError(f"{len(pending)} requests stuck, e.g. {waits}")
    return {rid: api.get(f"/v1/requests/{rid}/report").json() for rid in batch.ids}


def check_reports(batch: Batch, reports: dict[str, dict[str, Any]]) -> None:
    """Every request finished, and every count is exactly what one erasure does: nothing was
    double-counted and nothing was missed."""
    for index, rid in enumerate(batch.ids):
        report = reports[rid]
        customer = batch.seed.people[index].subject.customer_id  # type: ignore[union-attr]
        assert report["status"] == "completed_with_exceptions", (rid, report["status"])
        for system in report["systems"]:
            name = system["system"]
            held = name == "recordings" and customer in batch.held
            assert system["erased"] == (0 if held else EXPECTED_ERASED[name]), (rid, name, system)
            assert system["retained"] == (1 if held else EXPECTED_RETAINED[name]), (rid, name, system)


async def _count(stack: Stack, system: str, sql: str, *args: Any) -> int:
    conn = await asyncpg.connect(stack.database_url(system))
    try:
        return int(await conn.fetchval(sql, *args))
    finally:
        await conn.close()


def check_stores(stack: Stack, batch: Batch) -> None:
    """In the stores themselves: every erasable record is gone, every held record is there."""
    ids = [p.subject.customer_id for p in batch.seed.people]  # type: ignore[union-attr]
    q = asyncio.run
    assert q(_count(stack, "billing", "SELECT count(*) FROM accounts WHERE customer_id = ANY($1)", ids)) == 0
    assert q(
        _count(
            stack,
            "billing",
            "SELECT count(*) FROM invoices WHERE account_id = ANY($1)",
            [f"A-{c}" for c in ids],
        )
    ) == len(ids)  # only the HMAC-retained one each
    assert q(_count(stack, "crm", "SELECT count(*) FROM contacts WHERE customer_id = ANY($1)", ids)) == 0
    assert (
        q(
            _count(
                stack,
                "mailing",
                "SELECT count(*) FROM subscribers WHERE subscriber_id = ANY($1)",
                [f"S-{c}" for c in ids],
            )
        )
        == 0
    )
    kept = q(_count(stack, "recordings", "SELECT count(*) FROM recordings WHERE customer_id = ANY($1)", ids))
    assert kept == len(batch.held)
    files = {p.stem for p in stack.recordings_dir.rglob(f"R-{batch.prefix.upper()}-*.wav")}
    assert files == {f"R-{c}" for c in batch.held}
    ldap = seed_targets(stack).ldap
    assert Directory(ldap).search_all(f"(uid={batch.prefix}*)") == []
