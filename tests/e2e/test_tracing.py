"""One request, one trace: every service takes part, parents and children link up across Kafka
(and the outbox), messaging attributes follow the conventions, and no span attribute, log line
or metric carries the subject's identifiers."""

from __future__ import annotations

import json
import time
from collections import defaultdict
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from cli import synthetic
from cli.main import app
from cli.stack import Stack
from cli.trace import read_spans
from shared.identity import normalise_phone
from tests.e2e.conftest import seed, wait_final

pytestmark = pytest.mark.e2e
PERSON = synthetic.person(77, prefix="trace")
SUBJECT = PERSON.subject.model_dump(exclude_none=True)  # type: ignore[union-attr]
PHONE = normalise_phone(SUBJECT["phones"][0])
NEEDLES = [SUBJECT["emails"][0], SUBJECT["customer_id"], PHONE, PHONE[3:], SUBJECT["phones"][0], "Person 77"]
SERVICES = {
    "lethe-intake",
    "lethe-tracker",
    "lethe-billing",
    "lethe-crm",
    "lethe-recordings",
    "lethe-directory",
    "lethe-mailing",
}


@pytest.fixture(scope="module")
def traced(stack: Stack, api: httpx.Client) -> dict[str, Any]:
    seed(stack, synthetic.people(0).model_copy(update={"people": [PERSON]}))
    response = api.post(
        "/v1/requests",
        json={"request_id": "trace-1", "type": "erasure", "identity_verified": True, "subject": SUBJECT},
    )
    assert response.status_code == 202
    final = wait_final(api, "trace-1")
    time.sleep(1.5)  # the batch span processors flush every 300 ms
    spans = [
        s for s in read_spans(sorted(stack.trace_dir.glob("*.jsonl"))) if s.trace_id == final["trace_id"]
    ]
    raw = [json.loads(line) for p in stack.trace_dir.glob("*.jsonl") for line in p.read_text().splitlines()]
    return {"final": final, "spans": spans, "raw": raw}


def raw_spans(traced: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        s
        for line in traced["raw"]
        for rs in line["resourceSpans"]
        for ss in rs["scopeSpans"]
        for s in ss["spans"]
        if s["traceId"] == traced["final"]["trace_id"]
    ]


def test_every_service_takes_part_in_one_trace_with_one_root(traced: dict[str, Any]) -> None:
    spans = traced["spans"]
    assert traced["final"]["trace_id"] and len(spans) > 30
    assert {s.service for s in spans} >= SERVICES
    ids = {s.span_id for s in spans}
    roots = [s for s in spans if s.parent_id not in ids]
    assert len(roots) == 1 and roots[0].service == "lethe-intake" and roots[0].name.startswith("POST")


def test_kafka_hops_are_producer_to_consumer_with_messaging_attributes(traced: dict[str, Any]) -> None:
    spans = {s["spanId"]: s for s in raw_spans(traced)}
    consumers = [s for s in spans.values() if s["kind"] == 5]
    assert {s["name"] for s in consumers} >= {
        f"process lethe.commands.{n}.v1" for n in ("billing", "crm", "recordings", "directory", "mailing")
    }
    assert "process lethe.outcomes.v1" in {s["name"] for s in consumers}
    for span in consumers:
        parent = spans[span["parentSpanId"]]
        assert parent["kind"] == 4 and parent["name"] == span["name"].replace("process", "send")
        attrs = {a["key"]: next(iter(a["value"].values())) for a in span["attributes"]}
        assert attrs["messaging.system"] == "kafka" and attrs["messaging.operation.type"] == "process"
        assert attrs["messaging.destination.name"] == span["name"].split(" ", 1)[1]
        assert attrs["messaging.consumer.group.name"].startswith("lethe-")


def test_worker_steps_are_children_of_the_processing_span(traced: dict[str, Any]) -> None:
    spans = {s["spanId"]: s for s in raw_spans(traced)}
    steps: dict[str, list[str]] = defaultdict(list)  # processing span id -> its steps
    for span in spans.values():
        if span["name"] in ("match", "holds", "decide", "act", "verify"):
            steps[span["parentSpanId"]].append(span["name"])
    # An erasure that arrives before the worker holds every announced hold is held back on the
    # retry topic after its holds step, so its steps may end under the retry's processing span.
    complete = {
        spans[p]["name"].removesuffix(".retry.v1").removesuffix(".v1")
        for p, s in steps.items()
        if len(s) == 5
    }
    assert all(spans[p]["name"].startswith("process lethe.commands.") for p in steps)
    assert complete >= {
        f"process lethe.commands.{n}" for n in ("billing", "crm", "recordings", "directory", "mailing")
    }, steps
    names = {s["name"] for s in spans.values()}
    assert {"ldap search", "ldap delete", "file unlink"} <= names  # store calls of our own
    assert any(s["attributes"] and s["name"] in ("SELECT", "INSERT", "DELETE") for s in spans.values())


def test_no_identifier_in_spans_logs_or_metrics(
    traced: dict[str, Any], stack: Stack, api: httpx.Client
) -> None:
    texts = {f"trace {p.name}": p.read_text() for p in stack.trace_dir.glob("*.jsonl")}
    texts |= {f"log {p.name}": p.read_text() for p in stack.log_dir.glob("*.log")}
    ports = json.loads((stack.config.state_dir / "run" / "metrics-ports.json").read_text())
    for service, port in ports.items():  # intake's too: its metrics are not on the API port
        texts[f"metrics {service}"] = httpx.get(f"http://127.0.0.1:{port}/metrics").text
    assert "lethe_records_total" in texts["metrics billing"]
    assert "lethe_requests_submitted_total" in texts["metrics intake"]
    for where, text in texts.items():
        for needle in NEEDLES:
            assert needle.lower() not in text.lower(), f"{needle!r} found in {where}"


def test_health_endpoints_say_what_is_ready(stack: Stack) -> None:
    ports = json.loads((stack.config.state_dir / "run" / "metrics-ports.json").read_text())
    for service in ("intake", "billing", "directory", "tracker"):
        ready = httpx.get(f"http://127.0.0.1:{ports[service]}/readyz")
        assert ready.status_code == 200 and ready.json()["ready"], (service, ready.text)
        assert httpx.get(f"http://127.0.0.1:{ports[service]}/healthz").status_code == 200
    assert httpx.get(f"{stack.api_url}/readyz").json() == {
        "ready": True,
        "checks": {"database": True, "broker": True},
    }


def test_lethe_trace_prints_the_waterfall(traced: dict[str, Any], stack: Stack) -> None:
    result = CliRunner().invoke(
        app,
        ["trace", "trace-1", "--traces", str(stack.trace_dir)],
        env={"LETHE_API_URL": stack.api_url, "LETHE_TOKEN": stack.secrets.admin_token},
    )
    assert result.exit_code == 0, result.output
    assert result.output.startswith(f"trace {traced['final']['trace_id']}")
    for service in SERVICES:
        assert service in result.output
    assert "  process lethe.commands.billing.v1" in result.output and " ms |" in result.output
