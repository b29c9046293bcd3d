"""Review items in intake: what the tracker's snapshots say waits for a person (folded in with
them), and the decisions people take here, each passed to the tracker once (and again, under
the same id, after a broker loss). The reviewer's evidence (what matched, masked) is opened
here and nowhere else; the reason for a decision stays here (the audit chain gets its digest)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any
from uuid import UUID

import asyncpg

from services.intake import store
from shared import topics
from shared.contracts import FINAL_STATUSES, RequestStatusChanged
from shared.contracts.events import ReviewDecided
from shared.contracts.report import ReviewDecision
from shared.crypto import IdentifierSeal, IdentifierSealError
from shared.outbox import enqueue, enqueue_many

SCHEMA = (
    """CREATE TABLE IF NOT EXISTS reviews (
        review_id uuid PRIMARY KEY,
        request_id text NOT NULL,
        system text,
        reason text NOT NULL,
        groups jsonb NOT NULL,
        records jsonb NOT NULL,
        matched text[] NOT NULL,
        conflicting text[] NOT NULL,
        evidence text,
        round integer NOT NULL,
        state text NOT NULL,
        opened_at timestamptz NOT NULL,
        decision text,
        decision_reason text,
        decided_by text,
        decided_role text,
        decided_at timestamptz,
        erased integer NOT NULL DEFAULT 0,
        retained integer NOT NULL DEFAULT 0)""",
    "CREATE INDEX IF NOT EXISTS reviews_request ON reviews (request_id)",
    "CREATE INDEX IF NOT EXISTS reviews_open ON reviews (opened_at) WHERE state = 'open'",
)

# A snapshot's review items: new ones inserted, known ones given the tracker's state (a decision
# taken here is in its own columns, which the tracker's state never overwrites).
_FOLD = """
INSERT INTO reviews (review_id, request_id, system, reason, groups, records, matched, conflicting,
    evidence, round, state, opened_at, erased, retained)
SELECT r.review_id, $1, r.system, r.reason, r.groups, r.records, r.matched, r.conflicting, r.evidence,
       r.round, r.state, r.opened_at, r.erased, r.retained
  FROM jsonb_to_recordset($2::jsonb) AS r(review_id uuid, system text, reason text, groups jsonb,
       records jsonb, matched text[], conflicting text[], evidence text, round integer, state text,
       opened_at timestamptz, erased integer, retained integer)
ON CONFLICT (review_id) DO UPDATE SET state = excluded.state, erased = excluded.erased,
    retained = excluded.retained"""


async def fold(conn: asyncpg.Connection | asyncpg.Pool, event: RequestStatusChanged) -> None:
    if event.report is None or not event.report.reviews:
        return
    items = [r.model_dump(mode="json") for r in event.report.reviews]
    await conn.execute(_FOLD, event.request_id, json.dumps(items))


@dataclass(frozen=True)
class Evidence:
    matched: list[str]
    conflicting: list[str]


def evidence(seal: IdentifierSeal, sealed: str | None) -> Evidence | None:
    """The masked identifiers a worker sealed for the reviewer."""
    if sealed is None:
        return None
    try:
        data: dict[str, Any] = json.loads(seal.open_text(sealed))
    except (IdentifierSealError, ValueError):
        return None
    return Evidence(list(data.get("matched", [])), list(data.get("conflicting", [])))


async def search(
    pool: asyncpg.Pool, request_id: str | None, state: str | None, limit: int, offset: int
) -> list[asyncpg.Record]:
    rows: list[asyncpg.Record] = await pool.fetch(
        "SELECT * FROM reviews WHERE ($1::text IS NULL OR request_id = $1)"
        " AND ($2::text IS NULL OR state = $2) ORDER BY opened_at, review_id LIMIT $3 OFFSET $4",
        request_id,
        state,
        limit,
        offset,
    )
    return rows


async def decided(pool: asyncpg.Pool, limit: int) -> list[asyncpg.Record]:
    rows: list[asyncpg.Record] = await pool.fetch(
        "SELECT * FROM reviews WHERE decision IS NOT NULL ORDER BY decided_at DESC LIMIT $1", limit
    )
    return rows


class NotDecidable(Exception):
    """Decided already, or its request is finished (the message says which)."""


async def decide(
    pool: asyncpg.Pool, review_id: UUID, decision: ReviewDecision, reason: str, token_id: str, role: str
) -> asyncpg.Record | None:
    """Take the decision once, and pass it to the tracker in the same transaction. None: no such
    review. Raises NotDecidable for a second decision or a finished request."""
    async with pool.acquire() as conn, conn.transaction():
        row = await conn.fetchrow(
            "SELECT v.*, q.status AS request_status FROM reviews v JOIN requests q USING (request_id)"
            " WHERE v.review_id = $1 FOR UPDATE OF v",
            review_id,
        )
        if row is None:
            return None
        if row["decision"] is not None or row["state"] != "open":
            raise NotDecidable("review_id: already decided")
        if row["request_status"] in {s.value for s in FINAL_STATUSES}:
            raise NotDecidable("review_id: its request is finished")
        decided: asyncpg.Record = await conn.fetchrow(
            "UPDATE reviews SET decision = $2, decision_reason = $3, decided_by = $4, decided_role = $5,"
            " decided_at = now() WHERE review_id = $1 RETURNING *",
            review_id,
            decision.value,
            reason,
            token_id,
            role,
        )
        await enqueue(conn, topics.REVIEWS, row["request_id"], decision_of(decided))
    return decided


def decision_of(row: asyncpg.Record) -> ReviewDecided:
    """The decision as the tracker is told it, with the same id however often it is sent."""
    return ReviewDecided(
        message_id=store.message_id(row["request_id"], f"decided/{row['review_id']}"),
        request_id=row["request_id"],
        review_id=row["review_id"],
        decision=ReviewDecision(row["decision"]),
        reason_sha256=hashlib.sha256(row["decision_reason"].encode()).hexdigest(),
        token_id=row["decided_by"],
        role=row["decided_role"],
    )


async def resend_decisions(pool: asyncpg.Pool) -> int:
    """After a broker loss: every decision the tracker's snapshots do not show taken yet (it
    may never have read it; a repeat changes nothing there). Without this the request would
    wait for ever, and intake refuses a second decision."""
    async with pool.acquire() as conn, conn.transaction():
        rows = await conn.fetch("SELECT * FROM reviews WHERE decision IS NOT NULL AND state = 'open'")
        if rows:
            await enqueue_many(conn, [(topics.REVIEWS, r["request_id"], decision_of(r)) for r in rows])
    return len(rows)
