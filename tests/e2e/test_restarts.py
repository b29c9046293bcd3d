"""Holds outlive anything the broker forgets. A stack of its own (it is stopped and started):
a hold placed, then the whole stack restarted with an empty broker, and an erasure keeps the
held recording and cites the hold; then the same with only the broker restarted."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from cli import synthetic
from cli.seed import PersonSeed
from cli.stack import Stack
from tests.conftest import admin_client, running_stack
from tests.e2e.conftest import seed, submit_erasure, wait_final

pytestmark = pytest.mark.e2e
PEOPLE = synthetic.people(2, prefix="restart")


@pytest.fixture(scope="module")
def restartable(tmp_path_factory: pytest.TempPathFactory, pg_server: str) -> Iterator[Stack]:
    # A long system timeout: requests must finish because the stack recovers, not because the
    # tracker gave up waiting and re-sent.
    with running_stack(
        tmp_path_factory.mktemp("restarts"), "restarts", {"LETHE_TRACKER_SYSTEM_TIMEOUT_S": "600"}
    ) as stack:
        seed(stack, PEOPLE)
        yield stack


def hold(api: httpx.Client, person: PersonSeed, case: str) -> None:
    assert person.subject is not None
    placed = api.post(
        "/v1/holds",
        json={
            "subject": {"customer_id": person.subject.customer_id},
            "systems": ["recordings"],
            "case_reference": case,
            "reason": "complaint under investigation",
        },
    )
    assert placed.status_code == 201 and placed.json()["propagated"], placed.text


def erase(api: httpx.Client, person: PersonSeed, request_id: str) -> dict[str, Any]:
    assert person.subject is not None
    assert submit_erasure(api, request_id, person.subject.model_dump(exclude_none=True)).status_code == 202
    wait_final(api, request_id, timeout_s=60)
    report: dict[str, Any] = api.get(f"/v1/requests/{request_id}/report").json()
    return next(s for s in report["systems"] if s["system"] == "recordings")


def test_a_hold_survives_a_whole_stack_restart_with_an_empty_broker(restartable: Stack) -> None:
    person = PEOPLE.people[0]
    with admin_client(restartable) as api:
        hold(api, person, "LIT-RESTART-1")
    restartable.stop()  # every process; the broker's memory with it
    restartable.start_infrastructure()
    restartable.start_services()
    with admin_client(restartable) as api:
        assert any(h["case_reference"] == "LIT-RESTART-1" for h in api.get("/v1/holds").json())
        recordings = erase(api, person, "restart-whole")
    assert recordings["erased"] == 0 and recordings["retained"] == 1
    assert recordings["categories"][0]["retained"][0]["hold_reference"] == "LIT-RESTART-1"
    assert list(restartable.recordings_dir.rglob(f"R-{person.subject.customer_id}.wav"))  # type: ignore[union-attr]


def test_a_hold_survives_a_broker_restart_under_running_services(restartable: Stack) -> None:
    person = PEOPLE.people[1]
    with admin_client(restartable) as api:
        hold(api, person, "LIT-RESTART-2")
        restartable.restart_broker()
        recordings = erase(api, person, "restart-broker")
    assert recordings["erased"] == 0 and recordings["retained"] == 1
    assert recordings["categories"][0]["retained"][0]["hold_reference"] == "LIT-RESTART-2"
    assert list(restartable.recordings_dir.rglob(f"R-{person.subject.customer_id}.wav"))  # type: ignore[union-attr]
