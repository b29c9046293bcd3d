"""The embedded stack starts its broker again when it exits on its own (tansu did, in the
fault suite, under the burst of messages re-sent just after a restart)."""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from cli.processes import free_port, port_open
from cli.stack import Stack, StackConfig
from shared import topics
from shared.kafka import client_options, partitions_of
from tests.conftest import POSTGRES_URL

pytestmark = pytest.mark.integration


async def _partitions(stack: Stack, names: list[str]) -> list[TopicPartition]:
    """The topics' partitions, or none while any of them is not made yet."""
    probe = AIOKafkaConsumer(**client_options(stack.kafka_settings()), group_id=None)
    await probe.start()
    try:
        found = await partitions_of(probe, names)
    finally:
        await probe.stop()
    return found if {tp.topic for tp in found} == set(names) else []


def test_a_broker_that_dies_is_started_again(tmp_path: Path, pg_server: str) -> None:
    config = StackConfig(
        state_dir=tmp_path,
        kafka_port=free_port(),
        ldap_port=free_port(),
        postgres_url=POSTGRES_URL,
        services=(),
    )
    stack = Stack(config)
    try:
        stack.start_infrastructure()
        first = stack.processes["broker"]
        first.send_signal(signal.SIGKILL)  # not through restart_broker: a crash
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            current = stack.processes.get("broker")
            if current is not None and current.pid != first.pid and port_open(config.kafka_port):
                break
            time.sleep(0.2)
        else:
            raise AssertionError("the broker was not started again")
        assert current.poll() is None
        # With its topics, each with its own partition count: no client makes one by naming it.
        made: list[TopicPartition] = []
        while time.monotonic() < deadline and not made:
            made = asyncio.run(_partitions(stack, [topics.HOLDS, topics.command_topic("crm")]))
            time.sleep(0 if made else 0.2)
        assert made == [
            TopicPartition(topics.HOLDS, 0),
            *(TopicPartition(topics.command_topic("crm"), p) for p in range(4)),
        ]
    finally:
        stack.stop()
    time.sleep(1)  # stopped on purpose: not started again
    assert "broker" not in stack.processes and not port_open(config.kafka_port)
