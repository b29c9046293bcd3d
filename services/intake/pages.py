"""Pages for people: the report as HTML (the same content as the JSON), the compliance
dashboard, and the CSV export for audits."""

from __future__ import annotations

import csv
import io
import json
import statistics
from collections import Counter
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Any

import asyncpg
from jinja2 import Environment, FileSystemLoader, select_autoescape

from shared.contracts import RequestStatus

TEMPLATES = Environment(
    loader=FileSystemLoader(Path(__file__).parent / "templates"), autoescape=select_autoescape(["html"])
)
ARTICLES = {"erasure": "GDPR Art. 17", "restriction": "GDPR Art. 18", "lift_restriction": "GDPR Art. 18(3)"}
BUCKETS = [
    (timedelta(minutes=1), "<1 min"),
    (timedelta(hours=1), "<1 h"),
    (timedelta(days=1), "<1 day"),
    (timedelta(days=7), "<1 week"),
    (timedelta(days=31), "<1 month"),
    (timedelta.max, "later"),
]


def report_html(report: dict[str, Any]) -> str:
    return TEMPLATES.get_template("report.html").render(r=report, articles=ARTICLES)


def period(received_from: date | None, received_to: date | None) -> tuple[datetime | None, datetime | None]:
    """Whole days, the end day included."""
    start = datetime.combine(received_from, time.min, UTC) if received_from else None
    end = datetime.combine(received_to + timedelta(days=1), time.min, UTC) if received_to else None
    return start, end


async def rows_in(pool: asyncpg.Pool, start: datetime | None, end: datetime | None) -> list[asyncpg.Record]:
    rows: list[asyncpg.Record] = await pool.fetch(
        "SELECT * FROM requests WHERE ($1::timestamptz IS NULL OR received_at >= $1)"
        " AND ($2::timestamptz IS NULL OR received_at < $2) ORDER BY received_at DESC",
        start,
        end,
    )
    return rows


def _duration(d: timedelta) -> str:
    seconds = d.total_seconds()
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 86400:.1f} days"


def dashboard_html(
    rows: list[asyncpg.Record],
    received_from: date | None,
    received_to: date | None,
    query: str,
    now: datetime,
    open_reviews: int = 0,
) -> str:
    counts = Counter(r["status"] for r in rows)
    durations = [r["completed_at"] - r["received_at"] for r in rows if r["completed_at"]]
    histogram, chart_height = [], 160
    if durations:
        per_bucket = Counter(next(label for limit, label in BUCKETS if d < limit) for d in durations)
        tallest = max(per_bucket.values())
        histogram = [
            {
                "label": label,
                "count": per_bucket.get(label, 0),
                "height": round(chart_height * per_bucket.get(label, 0) / tallest),
            }
            for _, label in BUCKETS
        ]
    overdue = [r for r in rows if (r["completed_at"] or now) > r["deadline"]]
    return TEMPLATES.get_template("dashboard.html").render(
        by_status=[(s.value, counts.get(s.value, 0)) for s in RequestStatus],
        total=len(rows),
        overdue=overdue,
        latest=rows[:25],
        histogram=histogram,
        chart_height=chart_height,
        bar_width=90,
        completed_count=len(durations),
        median=_duration(statistics.median(durations)) if durations else "—",
        slowest=_duration(max(durations)) if durations else "—",
        received_from=received_from,
        received_to=received_to,
        query=query,
        open_reviews=open_reviews,
    )


CSV_COLUMNS = [
    "request_id",
    "type",
    "status",
    "subject_ref",
    "received_at",
    "deadline",
    "extension_months",
    "completed_at",
    "deadline_met",
    "overdue",
    "systems",
    "records_found",
    "erased",
    "retained",
    "failed_systems",
    "trace_id",
]


def requests_csv(rows: list[asyncpg.Record], now: datetime) -> str:
    """One line per request; the subject appears only as its pseudonymous reference."""
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(CSV_COLUMNS)
    for r in rows:
        report = json.loads(r["report"]) if r["report"] else {"systems": []}
        systems = report["systems"]
        writer.writerow(
            [
                r["request_id"],
                r["request_type"],
                r["status"],
                r["subject_ref"],
                r["received_at"].isoformat(),
                r["deadline"].isoformat(),
                r["extension_months"] or "",
                r["completed_at"].isoformat() if r["completed_at"] else "",
                "" if not r["completed_at"] else r["completed_at"] <= r["deadline"],
                (r["completed_at"] or now) > r["deadline"],
                " ".join(r["systems"]),
                sum(s["records_found"] for s in systems),
                sum(s["erased"] for s in systems),
                sum(s["retained"] for s in systems),
                " ".join(s["system"] for s in systems if s["state"] == "failed"),
                r["trace_id"] or "",
            ]
        )
    return out.getvalue()
