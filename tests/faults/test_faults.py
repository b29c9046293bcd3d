"""Each scenario: a batch of erasures, a fault in the middle, and then the same checks — every
request final (none stuck), every count exact (nothing double-counted), every erasable record
gone from the stores, every held record still there."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from cli import dlq
from cli.processes import stop
from cli.shedding import SheddingSettings
from cli.stack import Stack
from shared import topics
from shared.kafka import make_producer
from tests.faults.conftest import SCALE, check_reports, check_stores, prepare, submit, wait_all_final

pytestmark = pytest.mark.faults


def finish(stack: Stack, api: httpx.Client, batch, timeout_s: float = 240) -> None:  # type: ignore[no-untyped-def]
    reports = wait_all_final(api, batch, timeout_s, stack)
    check_reports(batch, reports)
    check_stores(stack, batch)


def test_worker_killed_mid_batch_and_restarted(stack: Stack, api: httpx.Client) -> None:
    batch = prepare(stack, api, "kill")
    third = len(batch.ids) // 3
    submit(api, batch, range(third))
    os.kill(stack.processes["billing"].pid, signal.SIGKILL)  # no goodbye, no commit
    stack.processes["billing"].wait()
    submit(api, batch, range(third, len(batch.ids)))
    time.sleep(1)
    stack.start_service("billing")
    stack.wait_ready("billing")
    finish(stack, api, batch)


def test_broker_paused_then_resumed(stack: Stack, api: httpx.Client) -> None:
    batch = prepare(stack, api, "pause")
    half = len(batch.ids) // 2
    submit(api, batch, range(half))
    broker = stack.processes["broker"]
    broker.send_signal(signal.SIGSTOP)
    try:
        # Intake keeps accepting: requests wait in its outbox until the broker is back.
        submit(api, batch, range(half, len(batch.ids)))
        time.sleep(SCALE.broker_pause_s)
    finally:
        broker.send_signal(signal.SIGCONT)
    finish(stack, api, batch)


def test_broker_killed_and_restarted_empty(stack: Stack, api: httpx.Client) -> None:
    """The embedded broker keeps everything in memory: killed and started again, it has no
    topics, no offsets, no holds. Requests in flight must still finish, held records must stay
    held, and no count may come out double. Recovery re-sends at once what the sagas wait for;
    in the burst right after its restart tansu itself sometimes loses a message (it logs
    `AlreadyExists` on a partition's first batches, and has exited: the stack starts it
    again), which the tracker's timeout (90 s here) sends again: so within two minutes."""
    batch = prepare(stack, api, "amnesia")
    half = len(batch.ids) // 2
    submit(api, batch, range(half))
    time.sleep(1)  # some done, some on the way
    stack.restart_broker()
    submit(api, batch, range(half, len(batch.ids)))
    finish(stack, api, batch, timeout_s=120)


def _postgres_cluster() -> tuple[str, str] | None:
    if shutil.which("pg_ctlcluster") is None or not Path("/etc/postgresql").is_dir():
        return None
    versions = sorted(os.listdir("/etc/postgresql"))
    return (versions[-1], "main") if versions else None


def test_postgres_restarted_while_requests_are_in_flight(stack: Stack, api: httpx.Client) -> None:
    cluster = _postgres_cluster()
    if cluster is None:
        pytest.skip("the PostgreSQL server is not a local cluster this test can restart")
    batch = prepare(stack, api, "pgrestart")
    half = len(batch.ids) // 2
    submit(api, batch, range(half))
    subprocess.run(
        ["pg_ctlcluster", "--skip-systemctl-redirect", *cluster, "restart", "-m", "fast"],
        check=True,
        capture_output=True,
    )
    deadline = time.monotonic() + 60
    while True:  # intake answers 5xx while its database is away; upstream retries
        try:
            submit(api, batch, range(half, len(batch.ids)))
            break
        except (AssertionError, httpx.HTTPError):
            assert time.monotonic() < deadline
            time.sleep(1)
    finish(stack, api, batch)


def test_slapd_stopped_then_started(stack: Stack, api: httpx.Client) -> None:
    batch = prepare(stack, api, "ldapdown")
    stop(stack.processes.pop("slapd"))
    try:
        submit(api, batch, range(len(batch.ids)))
        time.sleep(SCALE.slapd_down_s)
    finally:
        stack.start_slapd()
    finish(stack, api, batch)


async def _poison(stack: Stack, count: int) -> None:
    producer = make_producer(stack.kafka_settings())
    await producer.start()
    try:
        shapes = [
            b"not json",
            json.dumps({"schema_version": 2}).encode(),
            json.dumps({"schema_version": 1, "command": "erase_subject", "request_id": "p"}).encode(),
        ]
        for n in range(count):
            system = ("billing", "crm", "recordings", "directory", "mailing")[n % 5]
            await producer.send(topics.command_topic(system), shapes[n % 3], key=f"poison-{n}".encode())
        await producer.flush()
    finally:
        await producer.stop()


def test_poison_messages_interleaved_with_valid_ones(stack: Stack, api: httpx.Client) -> None:
    batch = prepare(stack, api, "poison")
    chunk = max(1, len(batch.ids) // 4)
    for start in range(0, len(batch.ids), chunk):
        asyncio.run(_poison(stack, SCALE.poison // 4))
        submit(api, batch, range(start, min(start + chunk, len(batch.ids))))
    finish(stack, api, batch)


def test_same_requests_submitted_twice_concurrently(stack: Stack, api: httpx.Client) -> None:
    batch = prepare(stack, api, "twice")
    submit(api, batch, range(len(batch.ids)), copies=2)
    finish(stack, api, batch)


def test_broker_history_shed_only_once_everything_was_read(stack: Stack, api: httpx.Client) -> None:
    """The embedded stack starts its broker again, empty, once it is past its memory limit,
    nothing has been produced for a while and every consumer group has read it all
    (cli/shedding.py). Not while intake, alive and ready, has an upstream submission unread on
    the ingress topic; the dead letters are carried over; holds placed before the shed stand
    after it, and requests complete with exact counts: nothing was lost."""
    batch = prepare(stack, api, "shed")
    kafka = stack.kafka_settings()
    before = len(asyncio.run(dlq.list_dead_letters(kafka)))
    asyncio.run(_poison(stack, 5))
    deadline = time.monotonic() + 30
    while len(letters := asyncio.run(dlq.list_dead_letters(kafka))) < before + 5:
        assert time.monotonic() < deadline, "the poison was not dead-lettered"
        time.sleep(0.5)
    supervisor = stack.supervisor
    kept, sheds = supervisor.shedder.settings, supervisor.sheds
    intake = stack.processes["intake"]
    intake.send_signal(signal.SIGSTOP)  # alive and ready, reading nothing
    try:
        asyncio.run(_submit_on_ingress(stack, batch.body(0)))
        supervisor.shedder.settings = SheddingSettings.model_validate({"mb": 1, "quiet_s": 2})
        supervisor.unread = None
        deadline = time.monotonic() + 60
        while supervisor.unread is None or not supervisor.unread[topics.INGRESS_GROUP]:
            assert time.monotonic() < deadline, f"the stack did not see the submission: {supervisor.unread}"
            time.sleep(0.2)
        time.sleep(5)  # a few more looks
        assert supervisor.sheds == sheds, "shed with a submission unread"
    finally:
        intake.send_signal(signal.SIGCONT)
    try:
        deadline = time.monotonic() + 60
        while supervisor.sheds == sheds:
            assert time.monotonic() < deadline, f"not shed once all was read: {supervisor.unread}"
            time.sleep(0.2)
    finally:
        supervisor.shedder.settings = kept
    assert asyncio.run(dlq.list_dead_letters(kafka)) == letters
    submit(api, batch, range(1, len(batch.ids)))
    finish(stack, api, batch)


async def _submit_on_ingress(stack: Stack, body: dict[str, object]) -> None:
    producer = make_producer(stack.kafka_settings())
    await producer.start()
    try:
        await producer.send_and_wait(topics.INGRESS, json.dumps(body).encode(), key=b"upstream")
    finally:
        await producer.stop()
