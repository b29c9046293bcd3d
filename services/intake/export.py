"""The CSV export for audits: every request in a period, one line each, streamed from a
server-side cursor in batches, so neither intake nor the database holds the whole set at once."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

import asyncpg

from services.intake.pages import PERIOD

BATCH = 500
COLUMNS = [
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
_ROWS = f"""SELECT request_id, request_type, status, subject_ref, received_at, deadline, extension_months,
    completed_at, systems, report, trace_id FROM requests WHERE {PERIOD}
  ORDER BY received_at DESC, request_id"""


def line(r: asyncpg.Record, now: datetime) -> list[Any]:
    """One request; the subject appears only as its pseudonymous reference."""
    systems = json.loads(r["report"])["systems"] if r["report"] else []
    return [
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


def _drain(out: io.StringIO) -> str:
    text = out.getvalue()
    out.seek(0)
    out.truncate()
    return text


async def requests_csv(
    pool: asyncpg.Pool, start: datetime | None, end: datetime | None, now: datetime, batch: int = BATCH
) -> AsyncIterator[str]:
    """The header, then the lines `batch` at a time, from one consistent snapshot."""
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(COLUMNS)
    yield _drain(out)
    async with pool.acquire() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
        written = 0
        async for row in conn.cursor(_ROWS, start, end, prefetch=batch):
            writer.writerow(line(row, now))
            written += 1
            if written % batch == 0:
                yield _drain(out)
    if out.tell():
        yield _drain(out)
