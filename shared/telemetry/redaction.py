"""An allow-list for span attributes, applied to every span before any exporter sees it.

Instrumentations (HTTP, database, anything added later) may set whatever attributes they like;
only keys on this list leave the process. An exception event keeps its type and loses its
message and stack trace, which may quote data."""

from __future__ import annotations

from collections.abc import Sequence

from opentelemetry.sdk.trace import Event, ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from opentelemetry.trace import Link, Status
from opentelemetry.util.types import Attributes, AttributeValue

ALLOWED = frozenset(
    {
        # OpenTelemetry messaging conventions
        "messaging.system",
        "messaging.destination.name",
        "messaging.operation.type",
        "messaging.operation.name",
        "messaging.consumer.group.name",
        "messaging.destination.partition.id",
        "messaging.kafka.offset",
        "messaging.message.id",
        "messaging.batch.message_count",
        # HTTP and database conventions (templates and codes, never URLs, queries or statements)
        "http.request.method",
        "http.response.status_code",
        "http.route",
        "http.method",
        "http.status_code",
        "url.scheme",
        "network.protocol.version",
        "server.port",
        "db.system",
        "db.system.name",
        "db.name",
        "db.namespace",
        "db.operation",
        "db.operation.name",
        "error.type",
        "exception.type",
        # Lethe's own: ids, counts and states
        "lethe.request_id",
        "lethe.request_type",
        "lethe.subject_ref",
        "lethe.system",
        "lethe.command_id",
        "lethe.attempt",
        "lethe.status",
        "lethe.records.found",
        "lethe.records.erased",
        "lethe.records.retained",
        "lethe.holds.active",
        "lethe.verification.passed",
        "lethe.ldap.operation",
        "lethe.ldap.entries",
        "lethe.file.operation",
        "lethe.file.count",
        "lethe.outbox.rows",
        "lethe.resume_of",
        "lethe.records.in_review",  # counts of the identity search: never which identifiers
        "lethe.round",
        "lethe.batch.commands",  # a worker's commands carried out in one transaction
        "lethe.batch.undone",
    }
)


def kept(attributes: Attributes) -> dict[str, AttributeValue]:
    """What of `attributes` may leave the process."""
    return {k: v for k, v in (attributes or {}).items() if k in ALLOWED}


def _status(status: Status) -> Status:
    """An error's description is the exception's message, which may quote the input (an
    address that failed to parse): only the exception's type is kept."""
    if not status.description:
        return status
    kind = status.description.split(":", 1)[0].strip()
    return Status(status.status_code, kind if kind.isidentifier() else None)


def redact(span: ReadableSpan) -> ReadableSpan:
    return ReadableSpan(
        name=span.name,
        context=span.context,
        parent=span.parent,
        resource=span.resource,
        attributes=kept(span.attributes),
        events=[Event(e.name, kept(e.attributes), e.timestamp) for e in span.events],
        links=[Link(link.context, kept(link.attributes)) for link in span.links],
        kind=span.kind,
        status=_status(span.status),
        start_time=span.start_time,
        end_time=span.end_time,
        instrumentation_scope=span.instrumentation_scope,
    )


class RedactingExporter(SpanExporter):
    def __init__(self, delegate: SpanExporter) -> None:
        self.delegate = delegate

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return self.delegate.export([redact(s) for s in spans])

    def shutdown(self) -> None:
        self.delegate.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self.delegate.force_flush(timeout_millis)
