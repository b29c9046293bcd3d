"""How a changed saga is written back: the saga row, the systems that changed, its new audit
entries chained onto the trail, and what the change announces (notices it planned, its status
snapshot, its completion) in the outbox: one statement, one round trip.

A round trip costs more here than what most of these statements do (about 75 µs of the
client's CPU and 48 µs of the server's for a bare `SELECT $1` over a Unix socket, 100 and 65
over TCP loopback: docs/performance.md, tenth part): a saga's save was four of them, and the
tracker saves about four times a request."""

from __future__ import annotations

import json
from typing import Any

import asyncpg
from pydantic import BaseModel

from services.tracker import reviews
from services.tracker.notices_out import planned_notices
from services.tracker.repository import Loaded, enqueue_waiting
from shared import topics
from shared.contracts import RequestCompleted, RequestStatusChanged
from shared.contracts.audit import GENESIS, AuditEntry
from shared.outbox import enqueue_many, outbox_args, outbox_sql
from shared.telemetry import metrics

Messages = list[tuple[str, str, BaseModel]]

# Data-modifying CTEs each run once and to completion, whether or not the query reads them;
# an empty array for the systems or the audit entries updates or adds nothing.
_SAVE = """WITH saga_saved AS (
    UPDATE sagas SET status = $2, version = $3, completed_at = $4, deadline = $5,
        extension = $6::jsonb, round = $7, reviews = $8::jsonb, sealed_identifiers = $9,
        pending_learnt = $10, recipients = $11::jsonb
    WHERE request_id = $1),
systems_saved AS (
    UPDATE saga_systems s SET state = u.state, attempts = u.attempts,
        dispatched_at = u.dispatched_at, command_id = u.command_id, answered_at = u.answered_at,
        outcome = u.outcome::jsonb, error = u.error, deferred = u.deferred::jsonb,
        rounds = u.rounds::jsonb
    FROM unnest($12::text[], $13::text[], $14::integer[], $15::timestamptz[], $16::uuid[],
        $17::timestamptz[], $18::text[], $19::text[], $20::text[], $21::text[])
        AS u(system, state, attempts, dispatched_at, command_id, answered_at, outcome, error,
        deferred, rounds)
    WHERE s.request_id = $1 AND s.system = u.system),
audit_added AS (
    INSERT INTO audit_log (request_id, seq, at, kind, detail, prev_hash, hash)
    SELECT $1, seq, at, kind, detail::jsonb, prev_hash, hash FROM unnest($22::integer[],
        $23::timestamptz[], $24::text[], $25::text[], $26::text[], $27::text[])
        AS e(seq, at, kind, detail, prev_hash, hash)),
{outbox}
SELECT count(*) FROM outbox_wake"""
_SAVE_SQL = _SAVE.format(outbox=outbox_sql(first_param=28))


async def save(conn: asyncpg.Connection, loaded: Loaded, was_final: bool) -> None:
    """Persist the saga, chain its audit events and announce the new snapshot, in the caller's
    transaction; announce completion once each time the request reaches a final status."""
    saga = loaded.saga
    notices = planned_notices(loaded)  # planned by this change (services/tracker/recipients.py)
    if saga.recipients.release_now:  # a lift whose recipients were told: its commands go now
        saga.recipients.release_now = False
        await enqueue_waiting(conn, loaded, "lift after notices")  # in a span of its own
    loaded.version += 1
    added = chain(loaded)
    just_finished = saga.status.is_final and not was_final
    messages = notices + announcement(loaded, completed=just_finished)
    await conn.execute(
        _SAVE_SQL, *_saga_args(loaded), *_systems_args(loaded), *_audit_args(added), *outbox_args(messages)
    )
    if just_finished:
        labels = {"type": saga.request_type.value, "status": saga.status.value}
        metrics.requests_completed.add(1, labels)
        if saga.completed_at is not None:
            metrics.request_duration.record((saga.completed_at - saga.received_at).total_seconds(), labels)


def chain(loaded: Loaded) -> list[AuditEntry]:
    """The saga's new audit events as entries chained onto its trail (as loaded with the locked
    saga), which they join; returns the new ones."""
    saga, trail = loaded.saga, loaded.trail
    prev = trail[-1].hash if trail else GENESIS
    added: list[AuditEntry] = []
    for at, kind, raw in saga.audit:
        detail = json.loads(json.dumps(raw, default=str))  # as stored, so the hash checks out
        seq = len(trail) + len(added) + 1
        digest = AuditEntry.digest(saga.request_id, seq, at, kind, detail, prev)
        entry = AuditEntry(
            request_id=saga.request_id, seq=seq, at=at, kind=kind, detail=detail, prev_hash=prev, hash=digest
        )
        added.append(entry)
        prev = entry.hash
    saga.audit.clear()
    loaded.trail = trail + added
    return added


def announcement(loaded: Loaded, completed: bool) -> Messages:
    """The saga's snapshot as it stands (its version: intake keeps the newest it has seen), and
    with `completed` the completion event for upstream."""
    saga = loaded.saga
    report = saga.report()
    snapshot = RequestStatusChanged(
        request_id=saga.request_id,
        version=loaded.version,
        status=saga.status,
        systems=[s.progress() for s in saga.slots.values()],
        report=report,
        audit=loaded.trail,
    )
    messages: Messages = [(topics.REQUEST_STATUS, saga.request_id, snapshot)]
    if completed:
        done = RequestCompleted(request_id=saga.request_id, status=saga.status, report=report)
        messages.append((topics.REQUESTS_COMPLETED, saga.request_id, done))
    return messages


async def announce(conn: asyncpg.Connection, loaded: Loaded, completed: bool) -> None:
    """The snapshot (and completion) again, with nothing changed: after a broker loss."""
    await enqueue_many(conn, announcement(loaded, completed))


def _saga_args(loaded: Loaded) -> list[Any]:
    saga = loaded.saga
    return [
        saga.request_id,
        saga.status.value,
        loaded.version,
        saga.completed_at,
        saga.deadline,
        saga.extension.model_dump_json() if saga.extension else None,
        saga.round,
        json.dumps([reviews.to_json(r) for r in saga.reviews.values()]),
        loaded.sealed_identifiers,
        loaded.pending_learnt,
        json.dumps(saga.recipients.to_json()),
    ]


def _systems_args(loaded: Loaded) -> list[list[Any]]:
    """The systems that changed (an answer changes one slot, not five; an extension none)."""
    changed = [s for s in loaded.saga.slots.values() if s != loaded.as_loaded.get(s.system)]
    return [
        [s.system for s in changed],
        [s.state.value for s in changed],
        [s.attempts for s in changed],
        [s.dispatched_at for s in changed],
        [s.command_id for s in changed],
        [s.answered_at for s in changed],
        [s.outcome.model_dump_json() if s.outcome else None for s in changed],
        [s.error for s in changed],
        [json.dumps([d.model_dump(mode="json") for d in s.deferred]) for s in changed],
        [json.dumps([r.model_dump(mode="json") for r in s.rounds]) for s in changed],
    ]


def _audit_args(added: list[AuditEntry]) -> list[list[Any]]:
    return [
        [e.seq for e in added],
        [e.at for e in added],
        [e.kind for e in added],
        [json.dumps(e.detail) for e in added],
        [e.prev_hash for e in added],
        [e.hash for e in added],
    ]
