"""Two instances of one worker in one consumer group share its command topic's partitions; when
one is killed, the other takes its partitions over and no request is lost."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time

import httpx
import pytest

from cli import synthetic
from cli.main import seed_targets
from cli.seed import SeedFile, load
from cli.stack import Stack

pytestmark = pytest.mark.e2e


def handled(stack: Stack, name: str, prefix: str) -> set[str]:
    """The requests whose command this instance handled (a rebalance may hand one over while
    it is being handled, so both may: at least once, and harmless, the reports are exact)."""
    log = (stack.log_dir / f"{name}.log").read_text()
    lines = (json.loads(line) for line in log.splitlines() if '"command handled"' in line)
    return {r for line in lines if (r := line.get("request_id", "")).startswith(f"{prefix}-")}


def submit_and_wait(api: httpx.Client, seed: SeedFile, prefix: str, indexes: range) -> None:
    for i in indexes:
        subject = seed.people[i].subject
        assert subject is not None
        response = api.post(
            "/v1/requests",
            json={
                "request_id": f"{prefix}-{i}",
                "type": "erasure",
                "identity_verified": True,
                "systems": ["billing"],
                "subject": subject.model_dump(exclude_none=True),
            },
        )
        assert response.status_code == 202
    deadline = time.monotonic() + 60
    for i in indexes:
        while (status := api.get(f"/v1/requests/{prefix}-{i}").json())[
            "status"
        ] != "completed_with_exceptions":
            assert status["status"] in ("received", "in_progress"), status
            assert time.monotonic() < deadline, status
            time.sleep(0.1)
        report = api.get(f"/v1/requests/{prefix}-{i}/report").json()
        billing = report["systems"][0]
        assert (billing["erased"], billing["retained"]) == (3, 1)  # exactly once


def test_two_instances_share_the_partitions_and_one_survives_the_other(
    stack: Stack, api: httpx.Client
) -> None:
    prefix = "scale"
    seed = synthetic.people(60, prefix=prefix)
    asyncio.run(load(seed, seed_targets(stack)))
    second = stack.start_service("billing", instance="2")
    stack.wait_ready(second)
    time.sleep(3)  # the group rebalances over both members
    submit_and_wait(api, seed, prefix, range(30))
    first, both = handled(stack, "billing", prefix), handled(stack, second, prefix)
    assert first and both, (first, both)  # both took work
    assert first | both == {f"{prefix}-{i}" for i in range(30)}
    os.kill(stack.processes[second].pid, signal.SIGKILL)
    stack.processes.pop(second).wait()
    submit_and_wait(api, seed, prefix, range(30, 60))
    # The survivor took every partition over (a redelivered message may be handled twice:
    # harmless, the counts above are exact).
    assert handled(stack, "billing", prefix) >= {f"{prefix}-{i}" for i in range(30, 60)}
