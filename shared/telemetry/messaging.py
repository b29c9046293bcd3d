"""Spans for Kafka, following the OpenTelemetry messaging conventions: a PRODUCER span per
send, whose context travels in the message headers (W3C traceparent), and a CONSUMER span per
processed message, child of the producer's. Message keys are never recorded."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Any

from aiokafka import ConsumerRecord
from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.instrumentation.utils import suppress_instrumentation
from opentelemetry.trace import Link, Span, SpanKind

TRACER = trace.get_tracer("lethe")
TRACE_HEADERS = frozenset({"traceparent", "tracestate"})


def context_of(headers: Any) -> Context:
    return propagate.extract(
        {k: v.decode(errors="replace") for k, v in (headers or ()) if k in TRACE_HEADERS}
    )


@contextmanager
def producing(topic: str, parent: Context | None = None) -> Iterator[list[tuple[str, bytes]]]:
    """A PRODUCER span; yields the headers that carry its context to the consumer."""
    with TRACER.start_as_current_span(
        f"send {topic}",
        context=parent,
        kind=SpanKind.PRODUCER,
        attributes={
            "messaging.system": "kafka",
            "messaging.destination.name": topic,
            "messaging.operation.type": "send",
            "messaging.operation.name": "send",
        },
    ):
        carrier: dict[str, str] = {}
        propagate.inject(carrier)
        yield [(k, v.encode()) for k, v in carrier.items()]


@contextmanager
def consuming(
    record: ConsumerRecord[bytes, bytes], group: str, links: list[Any] | None = None
) -> Iterator[Span]:
    """A CONSUMER span, child of the record's producer span; `links` (other records' headers)
    when several messages are processed together."""
    with trace.use_span(consumer_span(record, group, links), end_on_exit=True) as span:
        yield span


def consumer_span(record: ConsumerRecord[bytes, bytes], group: str, links: list[Any] | None = None) -> Span:
    """The span of `consuming`, started but not made current: for a message whose work is done
    in parts (carried out, then reported after a batch's commit; `trace.use_span` each)."""
    linked = [
        Link(c)
        for c in (trace.get_current_span(context_of(h)).get_span_context() for h in links or [])
        if c.is_valid
    ]
    return TRACER.start_span(
        f"process {record.topic}",
        context=context_of(record.headers),
        kind=SpanKind.CONSUMER,
        links=linked,
        attributes={
            "messaging.system": "kafka",
            "messaging.destination.name": record.topic,
            "messaging.operation.type": "process",
            "messaging.operation.name": "process",
            "messaging.consumer.group.name": group,
            "messaging.destination.partition.id": str(record.partition),
            "messaging.kafka.offset": record.offset,
        },
    )


def link_to(traceparent: str | None) -> list[Link]:
    """A link to a request's original trace, for work started later (re-dispatch, deferred)."""
    if not traceparent:
        return []
    ctx = trace.get_current_span(propagate.extract({"traceparent": traceparent})).get_span_context()
    return [Link(ctx)] if ctx.is_valid else []


def current_traceparent() -> str | None:
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return carrier.get("traceparent")


def quiet() -> AbstractContextManager[None]:
    """For polling loops (the outbox relay, timers): their store calls would otherwise be a
    trace of their own every few hundred milliseconds. Spans Lethe starts itself still record."""
    return suppress_instrumentation()
