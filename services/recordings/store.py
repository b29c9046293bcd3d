"""Recordings: the index says which file holds which call; erasure unlinks the audio first and
then drops the index row, so a crash in between leaves a row whose file is already gone, which
the next delivery finishes (unlinking a missing file counts as done)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path
from typing import Self

import asyncpg
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from shared.contracts.outcomes import Action
from shared.identity import Identities, phone_prefilter_sql
from shared.settings import DatabaseSettings
from shared.telemetry.messaging import TRACER
from shared.worker.pgstore import Candidate, CategoryTable, PostgresStoreAdapter
from shared.worker.ports import Decision, Record

SCHEMA = (
    """CREATE TABLE IF NOT EXISTS recordings (
        recording_id text PRIMARY KEY CHECK (recording_id ~ '^[A-Za-z0-9_-]+$'),
        customer_id text,
        caller text NOT NULL,
        callee text NOT NULL,
        recorded_at timestamptz NOT NULL,
        duration_s integer NOT NULL,
        path text NOT NULL,
        legal_tags text[] NOT NULL DEFAULT '{}',
        restricted boolean NOT NULL DEFAULT false)""",
    # Calls recorded for a business customer's own callers: we are its processor (seed 003).
    "ALTER TABLE recordings ADD COLUMN IF NOT EXISTS processed_for text",
    "CREATE INDEX IF NOT EXISTS recordings_customer ON recordings (customer_id)",
    f"CREATE INDEX IF NOT EXISTS recordings_caller_key ON recordings ({phone_prefilter_sql('caller')})",
    f"CREATE INDEX IF NOT EXISTS recordings_callee_key ON recordings ({phone_prefilter_sql('callee')})",
)

_FIND = f"""
SELECT NULL AS parent, recording_id, customer_id, caller, callee, recorded_at::date AS d, restricted,
       legal_tags, processed_for
  FROM recordings
 WHERE customer_id = ANY($1::text[])
    OR {phone_prefilter_sql("caller")} = ANY($2::text[])
    OR {phone_prefilter_sql("callee")} = ANY($2::text[])
"""


class RecordingsSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LETHE_", extra="ignore")
    recordings_dir: Path = Field(description="Root of the call-recording storage directory.")


def resolve(root: Path, relative: str) -> Path:
    """The file of an index row, refusing any path that escapes the storage root."""
    path = (root / relative).resolve()
    if not path.is_relative_to(root.resolve()):
        raise ValueError("recordings.path: escapes the storage directory")
    return path


class RecordingsAdapter(PostgresStoreAdapter):
    system = "recordings"
    schema = SCHEMA
    tables = (CategoryTable("call_recordings", "recordings", "recording_id", ("caller", "callee")),)

    def __init__(self, database_url: str, root: Path, pool_max: int = 10) -> None:
        super().__init__(database_url, pool_max)
        self.root = root

    @classmethod
    def from_env(cls) -> Self:
        db = DatabaseSettings()
        return cls(db.database_url, RecordingsSettings().recordings_dir, db.db_pool_max)

    async def start(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        await super().start()

    find_sql = _FIND
    find_params = ("customer_ids", "phone_keys")

    def head(self, row: asyncpg.Record) -> Candidate:
        # Whose call it is: the customer's. Either party's number finds it, but neither says
        # whose it is (the other party is someone else), so neither is learnt from it.
        record = Record(
            category="call_recordings",
            record_id=row["recording_id"],
            restricted=row["restricted"],
            dates={"call_date": row["d"]},
            facts={"legal_tags": list(row["legal_tags"]), "processed_for": row["processed_for"]},
            owner=Identities.lenient(customer_ids=[row["customer_id"]]),
        )
        matchable = Identities.lenient(
            customer_ids=[row["customer_id"]], phones=[row["caller"], row["callee"]]
        )
        return Candidate(record, matchable)

    async def apply_decisions(self, conn: asyncpg.Connection, decisions: Sequence[Decision]) -> None:
        def ids(action: Action) -> list[str]:
            return [d.record.record_id for d in decisions if d.action is action]

        erased = ids(Action.ERASED)
        if erased:
            rows = await conn.fetch(
                "SELECT path FROM recordings WHERE recording_id = ANY($1::text[])", erased
            )
            await asyncio.to_thread(_unlink_all, [resolve(self.root, r["path"]) for r in rows])
        await self._move(conn, ids(Action.RESTRICTED), restricted=True)
        await self._move(conn, ids(Action.UNRESTRICTED), restricted=False)
        await super().apply_decisions(conn, decisions)

    async def _move(self, conn: asyncpg.Connection, recording_ids: list[str], restricted: bool) -> None:
        """Restricted audio moves under restricted/, out of the tree playback serves; lifting
        moves it back. Idempotent: a file already in place stays; the index follows the file."""
        if not recording_ids:
            return
        rows = await conn.fetch(
            "SELECT recording_id, path FROM recordings WHERE recording_id = ANY($1::text[])", recording_ids
        )
        for row in rows:
            path = row["path"]
            target = (
                f"{RESTRICTED_DIR}/{path}"
                if restricted and not path.startswith(f"{RESTRICTED_DIR}/")
                else path.removeprefix(f"{RESTRICTED_DIR}/")
                if not restricted
                else path
            )
            if target != path:
                await asyncio.to_thread(_move_file, resolve(self.root, path), resolve(self.root, target))
                await conn.execute(
                    "UPDATE recordings SET path = $2 WHERE recording_id = $1", row["recording_id"], target
                )


RESTRICTED_DIR = "restricted"


def _unlink_all(paths: Sequence[Path]) -> None:
    with TRACER.start_as_current_span(
        "file unlink", attributes={"lethe.file.operation": "unlink", "lethe.file.count": len(paths)}
    ):
        for path in paths:
            path.unlink(missing_ok=True)


def _move_file(source: Path, target: Path) -> None:
    with TRACER.start_as_current_span(
        "file move", attributes={"lethe.file.operation": "move", "lethe.file.count": 1}
    ):
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.exists():
            source.replace(target)
