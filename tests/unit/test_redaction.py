from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import Link, StatusCode

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
