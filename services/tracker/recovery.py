"""The tracker's side of surviving a broker that forgot (`shared/broker_memory.py`): it holds
every saga, so it knows what may have been lost on the way and sends it again.

- every command still waiting for its outcome, as the same command (the worker's journal
  answers a repeat with the outcome it recorded, or does the work if it never got it);
- every deferred erasure sent whose outcome has not come back;
- the latest status snapshot of every open request, and of every request finished within
  `LETHE_TRACKER_RECOVERY_WINDOW_S` with its completion event (intake and upstream may not have
  read them; intake keeps the newest snapshot, upstream de-duplicates by request id).

Requests wait a minute at most after the broker is back, not the system timeout."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta

import asyncpg

from services.tracker import repository, saving, schedule
from services.tracker.settings import TrackerSettings
from shared.telemetry import metrics

log = logging.getLogger(__name__)


def window(settings: TrackerSettings, since_shed_notice: float | None) -> timedelta:
    """How far back finished requests are published again. After a shed (the embedded stack
    said so `since_shed_notice` seconds ago), everything produced before it had been read by
    Lethe's consumers, and nothing for the drain's quiet time before it: only readers outside
    Lethe that lag can have missed a completion, so only the last few seconds are sent again
    (each is a saga loaded and two messages, at the moment the held submissions flow)."""
    seconds = settings.recovery_window_s
    if since_shed_notice is not None:
        seconds = min(seconds, settings.shed_recovery_window_s + since_shed_notice)
    return timedelta(seconds=seconds)


async def recover(
    pool: asyncpg.Pool,
    now: datetime,
    window: timedelta,
    batch: int = 200,
    settle: Callable[[], Awaitable[None]] | None = None,
) -> int:
    """Re-send what the broker may have lost. Returns the requests touched. Open requests
    first: their commands may be what was lost. Then those finished within `window` before
    `now`; with `settle` (a shed: the stack on one host, one clock), only after it, once the
    submissions held during the shed are through (the tracker is the step each passes twice),
    and not those finished after `now`, which were announced to the new broker. Without it,
    `completed_at` (the systems' clocks) may be a little ahead of `now` (the tracker's)."""
    async with pool.acquire() as conn:
        deferred = await schedule.undispatch_unanswered(conn)
    touched = await _resend_each(pool, now, "completed_at IS NULL", batch)
    if settle is not None:
        await settle()
    touched += await _resend_each(
        pool,
        now,
        "completed_at >= $3 AND ($4::timestamptz IS NULL OR completed_at < $4)",
        batch,
        now - window,
        now if settle is not None else None,
    )
    log.warning("re-sent after a broker loss", extra={"requests": touched, "deferred": deferred})
    return touched


async def _resend_each(pool: asyncpg.Pool, now: datetime, which: str, batch: int, *args: object) -> int:
    """Every saga `which` selects, in pages of `batch`, a transaction each: one saga locked at a
    time, as every handler does."""
    touched, after = 0, ""
    while True:
        ids = await pool.fetch(
            f"SELECT request_id FROM sagas WHERE {which} AND request_id > $1 ORDER BY request_id LIMIT $2",
            after,
            batch,
            *args,
        )
        if not ids:
            return touched
        for row in ids:
            async with pool.acquire() as conn, conn.transaction():
                await _resend(conn, row["request_id"], now)
        touched += len(ids)
        after = ids[-1]["request_id"]


async def _resend(conn: asyncpg.Connection, request_id: str, now: datetime) -> None:
    loaded = await repository.load(conn, request_id)
    if loaded is None:
        return
    saga = loaded.saga
    # Notices intake may never have received, or whose delivery or acknowledgement it reported
    # into the lost broker (the same ids: one it has is not stored twice, and its state is
    # reported again); a lift held for its notices keeps its commands until they are settled.
    saga.recipients.new = saga.recipients.unsettled()
    held = saga.recipients.held
    waiting = [] if held else await repository.enqueue_waiting(conn, loaded, "resend after broker loss")
    if not waiting and not saga.recipients.new:
        await saving.announce(conn, loaded, completed=saga.status.is_final)
        return
    for system in waiting:
        metrics.redispatches.add(1, {"system": system})
    notices = [n.recipient_id for n in saga.recipients.new]
    saga.note(now, "resent_after_broker_loss", systems=waiting, **({"notices": notices} if notices else {}))
    await saving.save(conn, loaded, was_final=saga.status.is_final)
