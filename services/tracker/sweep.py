"""The timer's sweep: commands re-sent to silent systems, or the systems failed after their
last try. A saga at a time, each in a transaction of its own that takes the saga's lock only
if it is free (a handler takes the lock, then the row): a saga in hand elsewhere is left for
the next tick, several tracker instances share the work, and the sweep never holds one saga
while it waits for another, so it has no part in a cycle of locks. One saga that cannot be
handled is said loudly and skipped; the others go on."""

from __future__ import annotations

import logging
from datetime import datetime

import asyncpg
from pydantic import ValidationError

from services.tracker.repository import dispatch, load, saga_lock
from services.tracker.saga import Timeouts
from services.tracker.saving import save

log = logging.getLogger(__name__)

# Due by each system's own wait (Timeouts.wait: the first, times the backoff for each further
# try), not the first's alone: tries not yet due would fill the page and hold back a due one.
# The first condition is the index's (backoff is at least 1). The longest waiting first.
_CANDIDATES = """SELECT request_id FROM saga_systems s
WHERE s.state = 'dispatched' AND s.dispatched_at <= $1::timestamptz - $2::interval
    AND s.dispatched_at + $2::interval * power($3::float8, s.attempts - 1) <= $1::timestamptz
GROUP BY request_id ORDER BY min(s.dispatched_at) LIMIT $4::integer"""
PAGE = 200
_CLAIM = f"SELECT {saga_lock('$1::text', wait=False)}"


async def check_timeouts(pool: asyncpg.Pool, now: datetime, timeouts: Timeouts, page: int = PAGE) -> int:
    """Returns the sagas changed."""
    changed = 0
    for row in await pool.fetch(_CANDIDATES, now, timeouts.first, timeouts.backoff, page):
        try:
            async with pool.acquire() as conn, conn.transaction():
                changed += await _time_out(conn, row["request_id"], now, timeouts)
        except (ValidationError, ValueError):
            log.exception("a silent system's saga cannot be handled", extra={"request_id": row["request_id"]})
    return changed


async def _time_out(conn: asyncpg.Connection, request_id: str, now: datetime, timeouts: Timeouts) -> int:
    if not await conn.fetchval(_CLAIM, request_id):
        return 0  # in hand elsewhere: the next tick
    loaded = await load(conn, request_id)
    if loaded is None:
        return 0
    was_final = loaded.saga.status.is_final
    actions = {name: loaded.saga.time_out(name, now, timeouts) for name in list(loaded.saga.slots)}
    if not any(actions.values()):
        return 0
    await dispatch(conn, loaded, [name for name, action in actions.items() if action == "redispatch"])
    await save(conn, loaded, was_final)
    return 1
