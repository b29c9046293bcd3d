"""The embedded stack starts its broker again when it exits on its own (tansu did, in the
fault suite, under the burst of messages re-sent just after a restart)."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest

from cli.processes import free_port, port_open
from cli.stack import Stack, StackConfig
from tests.conftest import POSTGRES_URL

pytestmark = pytest.mark.integration


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
    finally:
        stack.stop()
    time.sleep(1)  # stopped on purpose: not started again
    assert "broker" not in stack.processes and not port_open(config.kafka_port)
