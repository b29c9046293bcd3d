"""The tracker's database: sagas, their systems, the audit chain, outcomes that arrived before
their request (and extensions), deferred erasures and holds, the broker sentinel, and the outbox."""

from __future__ import annotations

from services.tracker.forgetting import SCHEMA as FORGETTING_DDL
from services.tracker.repository import LOAD_DDL, START_DDL
from services.tracker.schedule import SCHEDULE_DDL
from shared.db import lz4
from shared.journal import JOURNAL_DDL
from shared.outbox import OUTBOX_COMPRESSION, OUTBOX_DDL

SCHEMA = (
    """CREATE TABLE IF NOT EXISTS sagas (
        request_id text PRIMARY KEY,
        request_type text NOT NULL,
        subject_ref text NOT NULL,
        received_at timestamptz NOT NULL,
        deadline timestamptz NOT NULL,
        trace_id text,
        status text NOT NULL,
        version integer NOT NULL DEFAULT 0,
        completed_at timestamptz,
        extension jsonb,
        sealed_identifiers text NOT NULL)""",
    "ALTER TABLE sagas ADD COLUMN IF NOT EXISTS traceparent text",
    # Identity expansion: the search's round, the identifiers learnt this round and not yet
    # searched with (sealed), and what waits for a person.
    "ALTER TABLE sagas ADD COLUMN IF NOT EXISTS round integer NOT NULL DEFAULT 1",
    "ALTER TABLE sagas ADD COLUMN IF NOT EXISTS pending_learnt text",
    "ALTER TABLE sagas ADD COLUMN IF NOT EXISTS reviews jsonb NOT NULL DEFAULT '[]'",
    # Notices to recipients (services/tracker/recipients.py): ids, states and counts, no identifiers.
    "ALTER TABLE sagas ADD COLUMN IF NOT EXISTS recipients jsonb",
    # A lift's notices go to the recipients of what the person's restrictions restricted.
    "CREATE INDEX IF NOT EXISTS sagas_subject ON sagas (subject_ref) WHERE request_type = 'restriction'",
    """CREATE TABLE IF NOT EXISTS saga_systems (
        request_id text NOT NULL REFERENCES sagas,
        system text NOT NULL,
        state text NOT NULL,
        attempts integer NOT NULL,
        dispatched_at timestamptz NOT NULL,
        command_id uuid NOT NULL,
        answered_at timestamptz,
        outcome jsonb,
        error text,
        deferred jsonb NOT NULL DEFAULT '[]',
        PRIMARY KEY (request_id, system))""",
    "ALTER TABLE saga_systems ADD COLUMN IF NOT EXISTS rounds jsonb NOT NULL DEFAULT '[]'",
    "CREATE INDEX IF NOT EXISTS saga_systems_waiting ON saga_systems (dispatched_at)"
    " WHERE state = 'dispatched'",
    """CREATE TABLE IF NOT EXISTS early_outcomes (
        message_id uuid PRIMARY KEY,
        request_id text NOT NULL,
        outcome jsonb NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS early_outcomes_request ON early_outcomes (request_id)",
    # An extension granted right after submission may be read before its request's acceptance
    # (another topic): kept here until the saga starts, as early outcomes are.
    """CREATE TABLE IF NOT EXISTS early_extensions (
        message_id uuid PRIMARY KEY,
        request_id text NOT NULL,
        event jsonb NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS early_extensions_request ON early_extensions (request_id)",
    """CREATE TABLE IF NOT EXISTS audit_log (
        request_id text NOT NULL,
        seq integer NOT NULL,
        at timestamptz NOT NULL,
        kind text NOT NULL,
        detail jsonb NOT NULL,
        prev_hash text NOT NULL,
        hash text NOT NULL,
        PRIMARY KEY (request_id, seq))""",
    # Append-only in the database itself: an edit needs a superuser to drop the trigger first,
    # and even then the hash chain (copied into every status event) shows it.
    """CREATE OR REPLACE FUNCTION lethe_audit_append_only() RETURNS trigger LANGUAGE plpgsql AS
       $$ BEGIN RAISE EXCEPTION 'audit_log is append-only'; END $$""",
    """CREATE OR REPLACE TRIGGER audit_log_append_only BEFORE UPDATE OR DELETE ON audit_log
       FOR EACH ROW EXECUTE FUNCTION lethe_audit_append_only()""",
    *SCHEDULE_DDL,
    *FORGETTING_DDL,
    LOAD_DDL,
    START_DDL,
    JOURNAL_DDL,
    OUTBOX_DDL,
    OUTBOX_COMPRESSION,
    lz4("saga_systems", "outcome", "deferred", "rounds"),
)
