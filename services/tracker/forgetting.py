"""When the tracker stops keeping a request's identifiers.

The tracker keeps the subject's identifiers (sealed) only to send commands: the rounds of the
identity search, re-sends to silent systems, an operator's retry, and the erasures deferred
until a retention period or a hold ends. Once none of these can happen any more they are
dropped (the report, the audit trail and the subject reference stay):

- the request is final (no round, review or system still open);
- no deferred erasure is waiting, or was sent without its outcome coming back;
- no record was kept under a hold that has not ended: its erasure is scheduled only when the
  hold is released or expires, which may be years away (an expiry already known is a
  scheduled erasure, so this is the open-ended hold). Outcomes cite a hold by its case
  reference, which several holds may share (one lawsuit, many people): while any hold of that
  reference is open-ended, or none is known to the tracker yet, the identifiers stay;
- no system failed, or the request completed longer ago than `keep_failed`: a failed system
  may be retried by compliance (`POST /v1/requests/{id}/retry`) until then.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

import asyncpg


@dataclass(frozen=True)
class Needs:
    completed_at: datetime | None
    failed: bool
    deferred_open: bool
    unended_hold: bool


def identifiers_needed(needs: Needs, now: datetime, keep_failed: timedelta) -> bool:
    if needs.completed_at is None or needs.deferred_open or needs.unended_hold:
        return True
    return needs.failed and now - needs.completed_at < keep_failed


# What each final request that still has identifiers may yet need them for; the rule above
# decides. Outcomes are the first, every round's and every deferred one (as _citing reads them).
_NEEDS = """
SELECT g.request_id, g.completed_at,
  EXISTS (SELECT 1 FROM saga_systems s WHERE s.request_id = g.request_id AND s.state = 'failed') AS failed,
  EXISTS (SELECT 1 FROM scheduled_erasures e WHERE e.request_id = g.request_id AND (
          e.dispatched_at IS NULL OR NOT EXISTS (
            SELECT 1 FROM saga_systems s, jsonb_array_elements(s.deferred) AS d
             WHERE s.request_id = e.request_id AND s.system = e.system
               AND (d->>'command_id')::uuid = e.command_id))) AS deferred_open,
  EXISTS (SELECT 1 FROM saga_systems s,
          LATERAL (SELECT s.outcome AS o WHERE s.outcome IS NOT NULL
                   UNION ALL SELECT d FROM jsonb_array_elements(s.deferred) AS d
                   UNION ALL SELECT r FROM jsonb_array_elements(s.rounds) AS r) AS outcomes,
          jsonb_array_elements(o->'categories') AS c, jsonb_array_elements(c->'retained') AS kept
          WHERE s.request_id = g.request_id AND kept->>'hold_reference' IS NOT NULL
            AND (NOT EXISTS (SELECT 1 FROM holds h WHERE h.case_reference = kept->>'hold_reference')
                 OR EXISTS (SELECT 1 FROM holds h WHERE h.case_reference = kept->>'hold_reference'
                              AND h.released_at IS NULL AND h.expires_at IS NULL))) AS unended_hold
  FROM sagas g
 WHERE g.sealed_identifiers IS NOT NULL AND g.completed_at IS NOT NULL
   AND (g.identifiers_checked_at IS NULL OR g.identifiers_checked_at < $2)
 ORDER BY g.identifiers_checked_at NULLS FIRST LIMIT $1"""
# Every lookup of the sweep is by request id, in an index. A planner without statistics (where
# autovacuum is off, as on the machine the hour soak ran on, no ANALYZE ever runs) estimated
# hundreds of systems per request, took each EXISTS for a quick hit and scanned the whole of
# saga_systems once per request instead: 2 s a sweep at 33,000 rows, every minute, and the soak's
# requests slowed every 67 s. Its inflated cost estimate also started JIT compilation (55 ms).
SWEEP_PLAN = "SET LOCAL enable_seqscan = off; SET LOCAL jit = off"
# A request that still needs its identifiers is looked at again this much later, not at every
# sweep: what it waits for (a hold's end, a deferred erasure) is rarely minutes away, and each
# look expands its outcomes in SQL.
RECHECK_AFTER = timedelta(hours=1)

SCHEMA = (
    # Each sweep looks at those it looked at longest ago: a request that keeps its identifiers
    # for years (an open-ended hold) does not stop the sweep from reaching the others.
    "ALTER TABLE sagas ALTER COLUMN sealed_identifiers DROP NOT NULL",
    "ALTER TABLE sagas ADD COLUMN IF NOT EXISTS identifiers_checked_at timestamptz",
    "CREATE INDEX IF NOT EXISTS sagas_identifiers_kept ON sagas (identifiers_checked_at NULLS FIRST)"
    " WHERE sealed_identifiers IS NOT NULL AND completed_at IS NOT NULL",
)


async def forget_identifiers(
    pool: asyncpg.Pool, now: datetime, keep_failed: timedelta, batch: int = 200
) -> int:
    """Drop the identifiers of requests that can no longer need them; returns how many."""
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute(SWEEP_PLAN)
        rows = await conn.fetch(_NEEDS, batch, now - RECHECK_AFTER)
    if not rows:
        return 0
    await pool.execute(
        "UPDATE sagas SET identifiers_checked_at = $2 WHERE request_id = ANY($1::text[])",
        [r["request_id"] for r in rows],
        now,
    )
    done = [
        r["request_id"]
        for r in rows
        if not identifiers_needed(
            Needs(r["completed_at"], r["failed"], r["deferred_open"], r["unended_hold"]), now, keep_failed
        )
    ]
    if not done:
        return 0
    # Only if still final: an operator's retry may have reopened one since it was read.
    status: str = await pool.execute(
        "UPDATE sagas SET sealed_identifiers = NULL, pending_learnt = NULL"
        " WHERE request_id = ANY($1::text[]) AND completed_at IS NOT NULL",
        done,
    )
    return int(status.split()[-1])
