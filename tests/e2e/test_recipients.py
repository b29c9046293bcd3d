"""Recipients are told (Art. 19), and the report proves it: a stack of its own whose register
names three recipients of the mailing list's subscribers, two of them webhooks served by HTTP
receivers this test starts (one of them down at first), one a manual task for compliance."""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import threading
import time
from collections.abc import Iterator
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import pytest

from cli import synthetic
from cli.processes import free_port
from cli.stack import Stack
from tests.conftest import admin_client, client_for, running_stack
from tests.e2e.conftest import seed, submit_erasure

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]
PEOPLE = synthetic.people(3, prefix="recip")
MAILER_SECRET, ARCHIVE_SECRET = secrets.token_hex(32), secrets.token_hex(32)


class Receiver(BaseHTTPRequestHandler):
    """A recipient's webhook: keeps what it was sent, with when it arrived."""

    received: list[tuple[float, dict[str, str], bytes]]

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.received.append((time.time(), dict(self.headers), body))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


def serve(port: int) -> tuple[ThreadingHTTPServer, list[tuple[float, dict[str, str], bytes]]]:
    received: list[tuple[float, dict[str, str], bytes]] = []
    handler = type("Handler", (Receiver,), {"received": received})
    server = ThreadingHTTPServer(("127.0.0.1", port), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, received


@pytest.fixture(scope="module")
def ports() -> dict[str, int]:
    return {"mailer": free_port(), "archive": free_port()}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, pg_server: str, ports: dict[str, int]) -> Iterator[Stack]:
    state = tmp_path_factory.mktemp("recipients")
    register = state / "recipients.yaml"
    register.write_text(
        json.dumps(
            {
                "version": "e2e",
                "recipients": [
                    {
                        "id": "mailer",
                        "name": "Bulk mailer",
                        "role": "processor",
                        "receives": {"mailing": ["subscribers"]},
                        "identifiers": ["emails"],
                        "notify": {
                            "channel": "webhook",
                            "url": f"http://127.0.0.1:{ports['mailer']}/notices",
                            "secret_env": "LETHE_RECIPIENT_MAILER_SECRET",
                        },
                        "must_acknowledge": True,
                    },
                    {
                        "id": "archive",
                        "name": "Mail archive",
                        "role": "processor",
                        "receives": {"mailing": ["subscribers"]},
                        "notify": {
                            "channel": "webhook",
                            "url": f"http://127.0.0.1:{ports['archive']}/hook",
                            "secret_env": "LETHE_RECIPIENT_ARCHIVE_SECRET",
                        },
                    },
                    {
                        "id": "printer",
                        "name": "Direct-mail printer",
                        "role": "controller",
                        "receives": {"mailing": ["subscribers"], "crm": ["contacts"]},
                        "identifiers": ["emails", "phones"],
                        "notify": {"channel": "manual", "contact": "printer's privacy desk"},
                    },
                ],
            }
        )
    )
    env = {
        "LETHE_RECIPIENTS_FILE": str(register),
        "LETHE_RECIPIENT_MAILER_SECRET": MAILER_SECRET,
        "LETHE_RECIPIENT_ARCHIVE_SECRET": ARCHIVE_SECRET,
        "LETHE_NOTICE_FIRST_BACKOFF_S": "0.2",
        "LETHE_NOTICE_MAX_BACKOFF_S": "1",
        "LETHE_NOTICE_ATTEMPTS": "100",
    }
    with running_stack(state, "recipients", env) as running:
        seed(running, PEOPLE)
        yield running


@pytest.fixture(scope="module")
def api(stack: Stack) -> Iterator[httpx.Client]:
    with admin_client(stack) as client:
        yield client


@pytest.fixture(scope="module")
def mailer(ports: dict[str, int]) -> Iterator[list[tuple[float, dict[str, str], bytes]]]:
    server, received = serve(ports["mailer"])
    yield received
    server.shutdown()


def recipient_client(stack: Stack, api: httpx.Client, recipient_id: str) -> httpx.Client:
    made = api.post("/v1/tokens", json={"role": "recipient", "recipient_id": recipient_id})
    assert made.status_code == 201, made.text
    return client_for(stack, made.json()["token"])


def wait_for(what: str, check: Any, timeout_s: float = 60) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if result := check():
            return result
        time.sleep(0.2)
    raise AssertionError(f"not within {timeout_s}s: {what}")


def status(api: httpx.Client, request_id: str) -> str:
    return str(api.get(f"/v1/requests/{request_id}").json()["status"])


def notice(api: httpx.Client, request_id: str, recipient: str) -> dict[str, Any]:
    report = api.get(f"/v1/requests/{request_id}/report").json()
    return next(n for n in report.get("recipients", []) if n["recipient_id"] == recipient)


def signed_notice(received: list[tuple[float, dict[str, str], bytes]], request_id: str, secret: str) -> Any:
    """The notice for `request_id`, once its signature checks out (as a recipient must check it)."""
    for _, headers, body in received:
        expected = hmac.new(
            secret.encode(), headers["X-Lethe-Timestamp"].encode() + b"." + body, hashlib.sha256
        ).hexdigest()
        payload = json.loads(body)
        if payload["request_id"] == request_id:
            assert hmac.compare_digest(headers["X-Lethe-Signature"], f"sha256={expected}")
            return payload
    return None


def test_erasure_notices_are_signed_retried_acknowledged_and_reported(
    stack: Stack, api: httpx.Client, mailer: list[tuple[float, dict[str, str], bytes]], ports: dict[str, int]
) -> None:
    person = PEOPLE.people[0]
    assert person.subject is not None
    subject = person.subject.model_dump(exclude_none=True)
    response = submit_erasure(api, "recip-1", subject, systems=["mailing", "crm"])
    assert response.status_code == 202, response.text

    # The mailer is told, signed; its acknowledgement is awaited: not complete until it comes.
    body = wait_for("the mailer's notice", lambda: signed_notice(mailer, "recip-1", MAILER_SECRET))
    schema = json.loads((ROOT / "deploy" / "notice.schema.json").read_text())
    jsonschema.validate(body, schema)
    assert body["type"] == "erasure" and body["must_acknowledge"] is True
    assert body["identifiers"] == {"emails": [person.subject.emails[0].lower()]}  # nothing else
    assert body["categories"] == [{"system": "mailing", "category": "subscribers", "counts": {"erased": 1}}]
    wait_for("awaiting the mailer", lambda: status(api, "recip-1") == "awaiting_recipients")

    # The archive's receiver is down: its notice is tried again and again, and never blocks.
    wait_for("archive retried", lambda: notice(api, "recip-1", "archive")["attempts"] >= 3)
    assert notice(api, "recip-1", "archive")["error"] == "ConnectError"
    archive, archived = serve(ports["archive"])
    try:
        wait_for("archive delivered", lambda: notice(api, "recip-1", "archive")["state"] == "acknowledged")
        assert signed_notice(archived, "recip-1", ARCHIVE_SECRET)["identifiers"] == {}  # it holds none
    finally:
        archive.shutdown()
    told = notice(api, "recip-1", "archive")
    assert told["acknowledged_via"] == "response" and told["attempts"] >= 4 and told["error"] is None

    # The manual recipient: a task for compliance, with what it needs to tell the printer.
    tasks = api.get("/v1/notices", params={"state": "pending", "request_id": "recip-1"}).json()
    task = next(t for t in tasks if t["recipient_id"] == "printer")
    assert task["channel"] == "manual" and task["contact"] == "printer's privacy desk"
    assert task["identifiers"]["emails"] == body["identifiers"]["emails"]
    assert {c["category"] for c in task["categories"]} == {"subscribers", "contacts"}
    closed = api.post(f"/v1/notices/{task['id']}/close", json={"note": "told the printer's desk by phone"})
    assert closed.status_code == 200 and closed.json()["state"] == "acknowledged"
    again = api.post(f"/v1/notices/{task['id']}/close", json={"note": "again"})  # idempotent
    assert again.status_code == 200 and again.json()["note"] == "told the printer's desk by phone"
    wait_for("printer closed", lambda: notice(api, "recip-1", "printer")["acknowledged_via"] == "compliance")

    # Not even an admin may acknowledge for a recipient; another recipient cannot either (404);
    # the mailer can, and again changes nothing.
    assert api.post(f"/v1/notices/{body['notice_id']}/ack").status_code == 403
    with recipient_client(stack, api, "archive") as other:
        assert other.post(f"/v1/notices/{body['notice_id']}/ack").status_code == 404
        assert {n["recipient_id"] for n in other.get("/v1/notices").json()} == {"archive"}
    with recipient_client(stack, api, "mailer") as own:
        mine = own.get("/v1/notices").json()
        assert [n["id"] for n in mine] == [body["notice_id"]] and mine[0]["identifiers"] is None
        acked = own.post(f"/v1/notices/{body['notice_id']}/ack")
        assert acked.status_code == 200 and acked.json()["acknowledged_via"] == "recipient"
        assert own.post(f"/v1/notices/{body['notice_id']}/ack").status_code == 200
        assert own.get("/v1/requests/recip-1").status_code == 403

    wait_for("completed", lambda: status(api, "recip-1") == "completed")
    report = api.get("/v1/requests/recip-1/report").json()
    by_id = {n["recipient_id"]: n for n in report["recipients"]}
    assert set(by_id) == {"mailer", "archive", "printer"}
    assert by_id["mailer"]["acknowledged_via"] == "recipient" and by_id["mailer"]["delivered_at"]
    assert by_id["mailer"]["acknowledged_by"]  # the recipient token's id
    assert report["completed_at"] >= by_id["mailer"]["acknowledged_at"]
    kinds = [e["kind"] for e in api.get("/v1/requests/recip-1/audit").json()["entries"]]
    assert "notice_planned" in kinds and "notice_acknowledged" in kinds

    # Who received the person's data (Art. 19, second sentence).
    who = api.get("/v1/requests/recip-1/recipients").json()
    assert {r["recipient_id"]: r["notice_state"] for r in who["recipients"]} == {
        "mailer": "acknowledged",
        "archive": "acknowledged",
        "printer": "acknowledged",
    }
    assert who["register_version"] == "e2e"


def test_a_lift_is_notified_before_it_takes_effect(
    stack: Stack, api: httpx.Client, mailer: list[tuple[float, dict[str, str], bytes]], ports: dict[str, int]
) -> None:
    archive, _ = serve(ports["archive"])
    person = PEOPLE.people[1]
    assert person.subject is not None
    subject = {"emails": person.subject.emails}
    try:
        with recipient_client(stack, api, "mailer") as own:
            for request_id, kind in (("recip-r", "restriction"), ("recip-l", "lift_restriction")):
                sent = api.post(
                    "/v1/requests",
                    json={
                        "request_id": request_id,
                        "type": kind,
                        "identity_verified": True,
                        "subject": subject,
                        "systems": ["mailing"],
                    },
                )
                assert sent.status_code == 202, sent.text
                body = wait_for(kind, lambda rid=request_id: signed_notice(mailer, rid, MAILER_SECRET))
                assert body["type"] == kind
                assert own.post(f"/v1/notices/{body['notice_id']}/ack").status_code == 200
                wait_for(f"{kind} completed", lambda rid=request_id: status(api, rid) == "completed")
    finally:
        archive.shutdown()
    lift = next(json.loads(b) for _, _, b in mailer if b'"recip-l"' in b)
    assert lift["categories"] == [{"system": "mailing", "category": "subscribers", "counts": {}}]
    arrived = next(t for t, _, b in mailer if b'"recip-l"' in b)
    report = api.get("/v1/requests/recip-l/report").json()
    mailing = next(s for s in report["systems"] if s["system"] == "mailing")
    assert next(c for c in mailing["categories"] if c["category"] == "subscribers")["unrestricted"] == 1
    lifted = datetime.fromisoformat(mailing["finished_at"]).timestamp()
    assert arrived < lifted  # the mailer heard of it before the worker lifted anything
    kinds = [e["kind"] for e in api.get("/v1/requests/recip-l/audit").json()["entries"]]
    assert kinds.index("notice_planned") < kinds.index("lift_dispatched") < kinds.index("outcome_recorded")
