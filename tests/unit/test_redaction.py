import json
from pathlib import Path

from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import Link, StatusCode

from shared.telemetry.jsonfile import JsonLinesSpanExporter
from shared.telemetry.redaction import RedactingExporter

LEAK = "alice.hartley@example.co.uk"


def test_an_instrumentation_that_leaks_an_email_leaks_nothing() -> None:
    memory = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(RedactingExporter(memory)))
    tracer = provider.get_tracer("careless-instrumentation")
    with tracer.start_as_current_span("GET /v1/requests/{request_id}") as span:
        span.set_attributes(
            {
                "http.url": f"http://x/?email={LEAK}",
                "user.email": LEAK,
                "messaging.kafka.message.key": LEAK,
                "db.statement": f"SELECT '{LEAK}'",
                "http.response.status_code": 200,
                "lethe.request_id": "r-1",
            }
        )
        try:
            raise ValueError(f"no such subscriber {LEAK}")
        except ValueError as exc:
            span.record_exception(exc)
    (exported,) = memory.get_finished_spans()
    assert dict(exported.attributes or {}) == {"http.response.status_code": 200, "lethe.request_id": "r-1"}
    assert exported.events[0].attributes == {"exception.type": "ValueError"}
    assert LEAK not in repr(exported.to_json())


def test_an_error_status_and_a_link_carry_no_message_or_attributes() -> None:
    memory = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(RedactingExporter(memory)))
    tracer = provider.get_tracer("careless-instrumentation")
    with tracer.start_as_current_span("first") as first:
        linked = first.get_span_context()
    try:
        with tracer.start_as_current_span("handle", links=[Link(linked, {"user.email": LEAK})]):
            raise ValueError(f"not an e-mail address: {LEAK}")  # the SDK sets the status from it
    except ValueError:
        pass
    exported = memory.get_finished_spans()[-1]
    assert exported.status.status_code is StatusCode.ERROR
    assert exported.status.description == "ValueError"
    assert exported.links[0].context == linked and not exported.links[0].attributes
    assert LEAK not in repr(exported.to_json())


def test_the_trace_file_writes_only_what_the_allow_list_lets_through(tmp_path: Path) -> None:
    """The file exporter redacts while it encodes, with no RedactingExporter in front of it."""
    path = tmp_path / "spans.jsonl"
    provider = TracerProvider(resource=Resource.create({SERVICE_NAME: "lethe-crm"}))
    provider.add_span_processor(SimpleSpanProcessor(JsonLinesSpanExporter(path)))
    tracer = provider.get_tracer("careless-instrumentation")
    try:
        with tracer.start_as_current_span(
            "process", attributes={"user.email": LEAK, "lethe.attempt": 2}
        ) as span:
            span.add_event("note", {"db.statement": f"SELECT '{LEAK}'", "lethe.status": "done"})
            raise ValueError(f"no such subscriber {LEAK}")
    except ValueError:
        pass
    written = path.read_text(encoding="utf-8")
    assert LEAK not in written and "SELECT" not in written
    (line,) = [json.loads(text) for text in written.splitlines()]
    (resource_spans,) = line["resourceSpans"]
    assert {"key": "service.name", "value": {"stringValue": "lethe-crm"}} in resource_spans["resource"][
        "attributes"
    ]
    (exported,) = resource_spans["scopeSpans"][0]["spans"]
    assert exported["attributes"] == [{"key": "lethe.attempt", "value": {"intValue": "2"}}]
    assert exported["events"][0]["attributes"] == [{"key": "lethe.status", "value": {"stringValue": "done"}}]
    assert exported["events"][1]["attributes"] == [
        {"key": "exception.type", "value": {"stringValue": "ValueError"}}
    ]
    assert exported["status"] == {"code": 2}


def test_a_span_named_with_a_lone_surrogate_is_still_written(tmp_path: Path) -> None:
    path = tmp_path / "spans.jsonl"
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(JsonLinesSpanExporter(path)))
    with provider.get_tracer("t").start_as_current_span(
        "process \ud800", attributes={"lethe.status": "\udcff"}
    ):
        pass
    (line,) = path.read_text(encoding="utf-8").splitlines()
    assert json.loads(line)["resourceSpans"][0]["scopeSpans"][0]["spans"][0]["name"] == "process \ud800"
