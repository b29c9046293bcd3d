"""Pages for people: the report as HTML (the same content as the JSON) and the compliance
dashboard. The dashboard's figures are counted by the database and its lists are bounded (the
overdue ones capped, the latest paged), so a year of requests costs the page no more than a day."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

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
PAGE_SIZE = 25  # latest requests a page
OVERDUE_SHOWN = 100  # the overdue with the earliest deadlines; the CSV export has them all
# $1, $2: the period (either end open).
PERIOD = "($1::timestamptz IS NULL OR received_at >= $1) AND ($2::timestamptz IS NULL OR received_at < $2)"
_SUMMARY = f"""SELECT count(*) AS total,
    count(*) FILTER (WHERE coalesce(completed_at, $3) > deadline) AS overdue,
    count(completed_at) AS completed,
    percentile_cont(0.5) WITHIN GROUP (ORDER BY completed_at - received_at) AS median,
    max(completed_at - received_at) AS slowest
  FROM requests WHERE {PERIOD}"""
_BY_STATUS = f"SELECT status, count(*) AS n FROM requests WHERE {PERIOD} GROUP BY status"
# width_bucket: 0 below the first bound, i from the i-th: the index into BUCKETS.
_HISTOGRAM = f"""SELECT width_bucket(extract(epoch FROM completed_at - received_at)::float8, $3::float8[])
    AS bucket, count(*) AS n FROM requests WHERE {PERIOD} AND completed_at IS NOT NULL GROUP BY 1"""
_OVERDUE = f"""SELECT request_id, request_type, status, received_at, deadline FROM requests
  WHERE {PERIOD} AND coalesce(completed_at, $3) > deadline ORDER BY deadline, request_id LIMIT $4"""
_LATEST = f"""SELECT request_id, request_type, status, received_at, completed_at FROM requests
  WHERE {PERIOD} ORDER BY received_at DESC, request_id LIMIT $3 OFFSET $4"""


def report_html(report: dict[str, Any]) -> str:
    return TEMPLATES.get_template("report.html").render(r=report, articles=ARTICLES)


def period(received_from: date | None, received_to: date | None) -> tuple[datetime | None, datetime | None]:
    """Whole days, the end day included (the last day there is: no end)."""
    start = datetime.combine(received_from, time.min, UTC) if received_from else None
    end = None
    if received_to and received_to < date.max:
        end = datetime.combine(received_to + timedelta(days=1), time.min, UTC)
    return start, end


def _duration(d: timedelta) -> str:
    seconds = d.total_seconds()
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 86400:.1f} days"


@dataclass(frozen=True)
class Dashboard:
    summary: asyncpg.Record
    by_status: dict[str, int]
    per_bucket: dict[int, int]
    overdue: list[asyncpg.Record]
    latest: list[asyncpg.Record]
    page: int


async def dashboard(
    pool: asyncpg.Pool, start: datetime | None, end: datetime | None, now: datetime, page: int
) -> Dashboard:
    bounds = [limit.total_seconds() for limit, _ in BUCKETS[:-1]]
    async with pool.acquire() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
        return Dashboard(
            summary=await conn.fetchrow(_SUMMARY, start, end, now),
            by_status={r["status"]: r["n"] for r in await conn.fetch(_BY_STATUS, start, end)},
            per_bucket={r["bucket"]: r["n"] for r in await conn.fetch(_HISTOGRAM, start, end, bounds)},
            overdue=await conn.fetch(_OVERDUE, start, end, now, OVERDUE_SHOWN),
            latest=await conn.fetch(_LATEST, start, end, PAGE_SIZE, (page - 1) * PAGE_SIZE),
            page=page,
        )


def _histogram(per_bucket: dict[int, int], chart_height: int) -> list[dict[str, Any]]:
    tallest = max(per_bucket.values(), default=0)
    if not tallest:
        return []
    return [
        {
            "label": label,
            "count": per_bucket.get(i, 0),
            "height": round(chart_height * per_bucket.get(i, 0) / tallest),
        }
        for i, (_, label) in enumerate(BUCKETS)
    ]


def dashboard_html(
    view: Dashboard,
    received_from: date | None,
    received_to: date | None,
    open_reviews: int = 0,
    recipients: dict[str, Any] | None = None,
) -> str:
    summary, chart_height = view.summary, 160
    filters = {
        k: v.isoformat() for k, v in (("received_from", received_from), ("received_to", received_to)) if v
    }
    total = summary["total"]
    first = (view.page - 1) * PAGE_SIZE
    return TEMPLATES.get_template("dashboard.html").render(
        by_status=[(s.value, view.by_status.get(s.value, 0)) for s in RequestStatus],
        total=total,
        overdue_total=summary["overdue"],
        overdue=view.overdue,
        latest=view.latest,
        first=first + 1,
        last=first + len(view.latest),
        previous_page=urlencode({**filters, "page": view.page - 1}) if view.page > 1 else None,
        next_page=urlencode({**filters, "page": view.page + 1}) if first + PAGE_SIZE < total else None,
        histogram=_histogram(view.per_bucket, chart_height),
        chart_height=chart_height,
        recipients=recipients,
        bar_width=90,
        completed_count=summary["completed"],
        median=_duration(summary["median"]) if summary["median"] is not None else "—",
        slowest=_duration(summary["slowest"]) if summary["slowest"] is not None else "—",
        received_from=received_from,
        received_to=received_to,
        filters=urlencode(filters),
        open_reviews=open_reviews,
    )
