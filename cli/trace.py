"""`lethe trace REQUEST_ID`: a request's spans, from the OTLP JSON lines every service of the
embedded stack writes, as an indented waterfall. Work started later and linked to the request
(re-dispatches, deferred erasures) is shown after it, as linked traces."""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class Span:
    trace_id: str
    span_id: str
    parent_id: str
    name: str
    service: str
    start: int
    end: int
    error: bool
    links: list[str]
    children: list[Span] = field(default_factory=list)

    @property
    def duration_ms(self) -> float:
        return (self.end - self.start) / 1e6


def read_spans(paths: Iterable[Path]) -> list[Span]:
    spans = []
    for path in paths:
        for line in path.read_text(encoding="utf-8").splitlines():
            for resource_spans in json.loads(line)["resourceSpans"]:
                attrs = {a["key"]: a["value"] for a in resource_spans["resource"]["attributes"]}
                service = attrs.get("service.name", {}).get("stringValue", "?")
                for scope in resource_spans["scopeSpans"]:
                    spans += [_span(s, service) for s in scope["spans"]]
    return spans


def _span(raw: dict[str, Any], service: str) -> Span:
    return Span(
        raw["traceId"],
        raw["spanId"],
        raw["parentSpanId"],
        raw["name"],
        service,
        int(raw["startTimeUnixNano"]),
        int(raw["endTimeUnixNano"]),
        raw["status"]["code"] == 2,
        [link["traceId"] for link in raw.get("links", [])],
    )


def request_traces(spans: list[Span], trace_id: str) -> list[list[Span]]:
    """The request's own trace, then every trace that links to it, each as a list of roots."""
    by_trace: dict[str, list[Span]] = defaultdict(list)
    for span in spans:
        by_trace[span.trace_id].append(span)
    linked = sorted(
        {s.trace_id for s in spans if trace_id in s.links and s.trace_id != trace_id},
        key=lambda t: min(s.start for s in by_trace[t]),
    )
    return [_roots(by_trace[t]) for t in [trace_id, *linked] if by_trace.get(t)]


def _roots(spans: list[Span]) -> list[Span]:
    index = {s.span_id: s for s in spans}
    roots: list[Span] = []
    for span in sorted(spans, key=lambda s: s.start):
        parent = index.get(span.parent_id)
        (parent.children if parent else roots).append(span)
    return roots


SQL_SPANS = frozenset(
    {
        "SELECT",
        "INSERT",
        "UPDATE",
        "DELETE",
        "WITH",
        "BEGIN;",
        "COMMIT;",
        "ROLLBACK;",
        "NOTIFY",
        "CREATE",
        "ALTER",
        "LISTEN",
        "UNLISTEN",
    }
)


def without_sql(roots: list[Span]) -> list[Span]:
    """Database statements are many and short; their time is inside their parent's anyway."""
    for span in roots:
        span.children = without_sql([c for c in span.children if c.name not in SQL_SPANS or c.error])
    return roots


def waterfall(roots: list[Span], width: int = 40) -> list[str]:

    start = min(s.start for s in roots)
    end = max(_last_end(s) for s in roots)
    scale = max(end - start, 1) / width
    lines = []

    def walk(span: Span, depth: int) -> None:
        left = int((span.start - start) / scale)
        bar = " " * left + "█" * max(1, int((span.end - span.start) / scale))
        status = " ERROR" if span.error else ""
        label = f"{'  ' * depth}{span.name}"
        lines.append(
            f"{label:<52.52} {span.service:<18.18} {span.duration_ms:>9.1f} ms |{bar:<{width}}|{status}"
        )
        for child in span.children:
            walk(child, depth + 1)

    for root in roots:
        walk(root, 0)
    return lines


def _last_end(span: Span) -> int:
    return max([span.end, *(_last_end(c) for c in span.children)])
