"""The tracker's saga and the compliance surface on the running stack: silence, failure and
retry, extension rules, the audit chain, the ingress topic, signed callbacks, and the report,
dashboard and CSV for people."""

from __future__ import annotations

import asyncio
import csv
import hashlib
import hmac
import io
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any

import httpx
import pytest

from cli.processes import stop
from cli.stack import Stack
from shared import topics
from shared.kafka import make_consumer, make_producer
from tests.e2e.conftest import submit_erasure, wait_final

pytestmark = pytest.mark.e2e
NOBODY = {"emails": ["nobody.at.all@example.com"]}


def submit(api: httpx.Client, request_id: str, **extra: Any) -> httpx.Response:
    return submit_erasure(api, request_id, NOBODY, **extra)


def test_a_silent_system_is_resent_then_failed_and_a_late_answer_completes_it(
    stack: Stack, api: httpx.Client
) -> None:
    stop(stack.processes.pop("mailing"))
    try:
        assert submit(api, "saga-silent", systems=["mailing"]).status_code == 202
        deadline = time.monotonic() + 15
        stuck_seen = False
        while (status := api.get("/v1/requests/saga-silent").json())["status"] != "failed":
            stuck = api.get("/v1/requests", params={"stuck": "true"}).json()
            stuck_seen |= any(r["request_id"] == "saga-silent" for r in stuck)
            assert time.monotonic() < deadline, status
            time.sleep(0.1)
        assert stuck_seen
        assert status["progress"][0]["attempts"] == 2
        assert status["progress"][0]["error"] == "no answer after 2 attempts"
    finally:
        stack.start_service("mailing")
        stack.wait_ready("mailing", timeout_s=30)
    # The worker, back, answers the command it was sent (twice, one id): the work was done.
    final = wait_final(api, "saga-silent")
    deadline = time.monotonic() + 15
    while (final := api.get("/v1/requests/saga-silent").json())["status"] == "failed":
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert final["status"] == "completed"
    kinds = [e["kind"] for e in api.get("/v1/requests/saga-silent/audit").json()["entries"]]
    assert (
        kinds[:4] == ["accepted", "redispatched", "system_failed", "completed"]
        and "outcome_recorded" in kinds
    )


def test_a_failed_system_can_be_retried_by_an_operator(stack: Stack, api: httpx.Client) -> None:
    stop(stack.processes.pop("slapd"))
    try:
        submit(api, "saga-retry", systems=["directory"])
        failed = wait_final(api, "saga-retry")
        assert failed["status"] == "failed"
    finally:
        stack.start_slapd()
    assert api.post("/v1/requests/saga-retry/systems/payroll/retry").status_code == 404
    assert api.post("/v1/requests/saga-retry/systems/directory/retry").status_code == 202
    deadline = time.monotonic() + 20
    while (status := api.get("/v1/requests/saga-retry").json())["status"] != "completed":
        assert time.monotonic() < deadline, status
        time.sleep(0.1)
    assert status["progress"][0]["attempts"] >= 2  # the tracker may also have re-sent it meanwhile
    audit = api.get("/v1/requests/saga-retry/audit").json()

    assert audit["chain_valid"] and "retry_dispatched" in [e["kind"] for e in audit["entries"]]


def test_extension_rules(api: httpx.Client, stack: Stack) -> None:
    stop(stack.processes.pop("crm"))  # keeps the request open while we extend it
    try:
        submit(api, "saga-extend", systems=["crm"])
        assert api.post("/v1/requests/saga-extend/extension", json={"months": 2}).status_code == 422
        assert (
            api.post(
                "/v1/requests/saga-extend/extension", json={"months": 3, "reason": "complex"}
            ).status_code
            == 422
        )
        extended = api.post(
            "/v1/requests/saga-extend/extension",
            json={"months": 2, "reason": "Records span five systems and two archives"},
        )
        assert extended.status_code == 200 and extended.json()["extension_months"] == 2
        again = api.post("/v1/requests/saga-extend/extension", json={"months": 1, "reason": "more"})
        assert again.status_code == 409 and "once" in again.json()["detail"]
        assert (
            api.post("/v1/requests/nope/extension", json={"months": 1, "reason": "x y z"}).status_code == 404
        )
    finally:
        stack.start_service("crm")
    report = _report_when(api, "saga-extend", lambda r: r["status"] == "completed" and r["extension"])
    assert report["extension"]["months"] == 2 and report["deadline"] == extended.json()["deadline"].replace(
        "+00:00", "Z"
    )
    done = api.post("/v1/requests/saga-extend/extension", json={"months": 1, "reason": "late"})
    assert done.status_code == 409


def _report_when(api: httpx.Client, request_id: str, ready: Any) -> dict[str, Any]:
    deadline = time.monotonic() + 20
    while True:
        response = api.get(f"/v1/requests/{request_id}/report")
        if response.status_code == 200 and ready(report := response.json()):
            return report
        assert time.monotonic() < deadline, response.text
        time.sleep(0.1)


async def _ingress_round_trip(stack: Stack) -> list[dict[str, Any]]:
    producer = make_producer(stack.kafka_settings())
    consumer = make_consumer(stack.kafka_settings(), [topics.INGRESS_REPLIES], "e2e-ingress")
    await producer.start()
    await consumer.start()
    try:
        valid = {"request_id": "ingress-1", "type": "erasure", "identity_verified": True, "subject": NOBODY}
        for key, value in [
            (b"k1", json.dumps(valid).encode()),
            (b"k2", b"{not json"),
            (b"k3", json.dumps({**valid, "request_id": "ingress-2", "subject": {"phones": ["12"]}}).encode()),
            # A lone surrogate is bad input, answered; an address in place of an id is not echoed.
            (
                b"k4",
                json.dumps({**valid, "request_id": "ingress-3", "subject": {"emails": ["LONE"]}})
                .replace("LONE", "a\\ud800@example.com")
                .encode(),
            ),
            (b"k5", json.dumps({**valid, "request_id": "jane.doe@example.com"}).encode()),
        ]:
            await producer.send_and_wait(topics.INGRESS, value, key=key)
        replies: list[dict[str, Any]] = []
        deadline = time.monotonic() + 20
        while len(replies) < 5 and time.monotonic() < deadline:
            for records in (await consumer.getmany(timeout_ms=500)).values():
                replies += [json.loads(r.value or b"") | {"key": r.key} for r in records]
        return replies
    finally:
        await producer.stop()
        await consumer.stop()


def test_ingress_topic_accepts_and_answers_every_submission(stack: Stack, api: httpx.Client) -> None:
    # Replies are keyed by the validated request id, never by the submitter's keys (k1..k5).
    everything = asyncio.run(_ingress_round_trip(stack))
    replies = {r["key"]: r for r in everything if r["key"] != b"unknown"}
    assert replies[b"ingress-1"]["accepted"] and replies[b"ingress-1"]["request_id"] == "ingress-1"
    assert not replies[b"ingress-2"]["accepted"]
    assert replies[b"ingress-2"]["error"].startswith("subject.phones.0")
    assert not replies[b"ingress-3"]["accepted"]
    assert replies[b"ingress-3"]["error"].startswith("subject.emails")
    unknown = {r["error"].split(":")[0]: r for r in everything if r["key"] == b"unknown"}
    assert set(unknown) == {"(body)", "request_id"}  # not JSON; an address in place of an id
    assert not any(r["accepted"] or r["request_id"] for r in unknown.values())
    assert "not JSON" in unknown["(body)"]["error"] and "jane.doe" not in str(unknown["request_id"])
    assert wait_final(api, "ingress-1")["status"] == "completed"


class _Receiver(BaseHTTPRequestHandler):
    calls: list[tuple[dict[str, str], bytes]] = []
    failures_left = 2

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        type(self).calls.append((dict(self.headers), body))
        failing = type(self).failures_left > 0
        type(self).failures_left -= 1
        self.send_response(503 if failing else 204)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def receiver() -> Iterator[str]:
    server = HTTPServer(("127.0.0.1", 0), _Receiver)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}/lethe-callback"
    server.shutdown()


def test_callback_is_signed_and_retried_until_it_succeeds(
    stack: Stack, api: httpx.Client, receiver: str
) -> None:
    assert submit(api, "saga-callback", systems=["mailing"], callback_url=receiver).status_code == 202
    deadline = time.monotonic() + 30
    while len(_Receiver.calls) < 3:
        assert time.monotonic() < deadline, _Receiver.calls
        time.sleep(0.2)
    headers, body = _Receiver.calls[-1]
    payload = json.loads(body)
    assert payload["request_id"] == "saga-callback" and payload["status"] == "completed"
    expected = hmac.new(
        stack.secrets.callback_secret.encode(),
        headers["X-Lethe-Timestamp"].encode() + b"." + body,
        hashlib.sha256,
    ).hexdigest()
    assert headers["X-Lethe-Signature"] == f"sha256={expected}"
    time.sleep(1.5)
    assert len(_Receiver.calls) == 3  # delivered: no more attempts


def test_report_as_html_dashboard_and_csv(api: httpx.Client) -> None:
    submit(api, "saga-pages", systems=["mailing", "crm"])
    wait_final(api, "saga-pages")
    html = api.get("/v1/requests/saga-pages/report", headers={"Accept": "text/html"})
    assert html.headers["content-type"].startswith("text/html")
    assert "saga-pages" in html.text and "Deadline met" in html.text and "mailing" in html.text
    assert api.get("/v1/requests/saga-pages/report").json()["request_id"] == "saga-pages"
    dashboard = api.get("/dashboard")
    assert (
        dashboard.status_code == 200 and "Requests by status" in dashboard.text and "<svg" in dashboard.text
    )
    exported = api.get("/v1/exports/requests.csv", params={"received_from": "2020-01-01"})
    rows = list(csv.DictReader(io.StringIO(exported.text)))
    mine = next(r for r in rows if r["request_id"] == "saga-pages")
    assert (
        mine["status"] == "completed"
        and mine["systems"] == "crm mailing"
        and mine["subject_ref"].startswith("subj_")
    )
    assert "nobody.at.all" not in exported.text
