"""Poison messages go to the dead-letter topic at once and the consumer moves on; a command that
failed for good is dead-lettered with its error (sealed) and, once the cause is fixed, replayed
(opened with the identifier key)."""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import pytest
from typer.testing import CliRunner

from cli.main import app
from cli.processes import stop
from cli.stack import Stack
from shared import topics
from shared.kafka import make_producer
from tests.e2e.conftest import submit_erasure, wait_final

pytestmark = pytest.mark.e2e
RUNNER = CliRunner()


async def produce(stack: Stack, topic: str, *values: bytes) -> None:
    producer = make_producer(stack.kafka_settings())
    await producer.start()
    try:
        for value in values:
            await producer.send_and_wait(topic, value, key=b"poison")
    finally:
        await producer.stop()


def dlq(stack: Stack, *args: str) -> str:
    """As an operator runs it: the broker, and the identifier key that opens sealed letters."""
    env = {
        "LETHE_KAFKA_BOOTSTRAP": stack.kafka_bootstrap,
        "LETHE_IDENTIFIER_KEY": stack.secrets.identifier_key,
    }
    result = RUNNER.invoke(app, ["dlq", *args], env=env)
    assert result.exit_code == 0, result.output
    return result.output


def test_poison_is_dead_lettered_at_once_and_the_consumer_moves_on(stack: Stack, api: httpx.Client) -> None:
    wrong_version = json.dumps({"schema_version": 9, "command": "erase_subject"}).encode()
    other_system = json.dumps(
        {
            "schema_version": 1,
            "command": "erase_subject",
            "request_id": "poison-x",
            "system": "billing",
            "subject_ref": "subj_" + "0" * 32,
            "sealed_identifiers": "x",
        }
    ).encode()
    asyncio.run(produce(stack, topics.command_topic("crm"), b"\x00garbage", wrong_version, other_system))
    submit_erasure(api, "after-poison", {"emails": ["after.poison@example.com"]}, systems=["crm"])
    assert wait_final(api, "after-poison")["status"] == "completed"
    listing = dlq(stack, "list")
    assert "(value): not JSON" in listing
    assert "schema_version: unsupported version 9" in listing
    assert "system: 'billing' is not handled by this worker" in listing
    assert "lethe.commands.crm.v1" in listing


def test_a_command_that_failed_for_good_is_replayed_after_the_fix(stack: Stack, api: httpx.Client) -> None:
    stop(stack.processes.pop("slapd"))
    try:
        submit_erasure(api, "dlq-replay", {"ldap_uid": "nobody"}, systems=["directory"])
        deadline = time.monotonic() + 30
        while "dlq-replay" not in (listing := dlq(stack, "list")):
            assert time.monotonic() < deadline
            time.sleep(0.5)
        assert "gave up after 4 tries" in listing
        assert wait_final(api, "dlq-replay")["status"] == "failed"
    finally:
        stack.start_slapd()
    out = dlq(stack, "replay", "--all")
    assert "to lethe.commands.directory.v1" in out
    deadline = time.monotonic() + 30
    while api.get("/v1/requests/dlq-replay").json()["status"] != "completed":
        assert time.monotonic() < deadline
        time.sleep(0.2)
    # Each letter goes back once: the directory command is not sent again; the poison from the
    # other test came back as new letters when replayed, and only those go back now.
    again = dlq(stack, "replay", "--all")
    assert "lethe.commands.directory.v1" not in again
