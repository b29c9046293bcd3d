"""Recordings: the index says which file holds which call. Erasure unlinks the audio at both
of its places (services/recordings/files.py) first and then drops the index row, so a crash in
between leaves a row whose file is already gone, which the next delivery finishes (unlinking a
missing file counts as done). Verification looks at the files; no two rows share a place."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path
from typing import Self

import asyncpg
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from services.recordings import files
from shared.contracts.outcomes import Action
from shared.identity import Identities
from shared.keys import id_key_index, id_key_sql, phone_key_index, phone_match_sql
from shared.settings import DatabaseSettings
from shared.telemetry.messaging import TRACER
from shared.worker.pgbatch import CommandBatch
from shared.worker.pgstore import Candidate, CategoryTable, PostgresStoreAdapter, PostgresStoreSession
from shared.worker.ports import Decision, Record

CATEGORY = "call_recordings"
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
    *id_key_index("recordings_customer", "recordings", "customer_id"),
    *phone_key_index("recordings_caller_key", "recordings", "caller"),
    *phone_key_index("recordings_callee_key", "recordings", "callee"),
    # Unique by playback path: no two rows share a file at either of its places (path itself
    # and its restricted/ counterpart), so erasing one recording's places cannot hit another's.
    """CREATE UNIQUE INDEX IF NOT EXISTS recordings_place
        ON recordings ((regexp_replace(path, '^restricted/', '')))""",
)

_FIND = f"""
SELECT NULL AS parent, recording_id, customer_id, caller, callee, recorded_at::date AS d, restricted,
       legal_tags, processed_for
  FROM recordings
 WHERE {id_key_sql("customer_id")} = ANY($1::text[])
    OR {phone_match_sql("caller", "$2::text[]")}
    OR {phone_match_sql("callee", "$2::text[]")}
"""


class RecordingsSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LETHE_", extra="ignore")
    recordings_dir: Path = Field(description="Root of the call-recording storage directory.")


class RecordingsAdapter(PostgresStoreAdapter):
    system = "recordings"
    schema = SCHEMA
    tables = (
        CategoryTable(
            CATEGORY,
            "recordings",
            "recording_id",
            ("caller", "callee"),
            ("call_date", "legal_tags", "processed_for"),
        ),
    )
    # Audio is unlinked or moved before the rows commit: a command's files wait for no neighbour.
    batching = False

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
        owner, unreadable = Identities.read(customer_ids=[row["customer_id"]])
        record = Record(
            category=CATEGORY,
            record_id=row["recording_id"],
            restricted=row["restricted"],
            dates={"call_date": row["d"]},
            facts={"legal_tags": list(row["legal_tags"]), "processed_for": row["processed_for"]},
            owner=owner,
            unreadable=unreadable,
        )
        matchable = Identities.lenient(
            customer_ids=[row["customer_id"]], phones=[row["caller"], row["callee"]]
        )
        return Candidate(record, matchable)

    def open_session(self, conn: asyncpg.Connection, batch: CommandBatch | None = None) -> RecordingsSession:
        return RecordingsSession(conn, self, batch)


class RecordingsSession(PostgresStoreSession):
    """One command's transaction over the index, and the files it indexes. The files change
    first, then the rows; verification looks at the files before the commit. A failure
    anywhere rolls the rows back, so they still lead the next try to any file left over."""

    def __init__(
        self, conn: asyncpg.Connection, adapter: RecordingsAdapter, batch: CommandBatch | None = None
    ) -> None:
        super().__init__(conn, adapter, batch)
        self.root = adapter.root
        self.erased: dict[str, str] = {}  # recording id -> its path, as its row said before it went

    async def apply(self, decisions: Sequence[Decision]) -> None:
        located = await _paths(self.conn, _ids(decisions, *MOVES, Action.ERASED))
        self.erased = {rid: located[rid] for rid in _ids(decisions, Action.ERASED) if rid in located}
        # The file may be at either of its places (a move whose commit was lost): both go.
        doomed = [place for path in self.erased.values() for place in files.places(path)]
        await asyncio.to_thread(_remove_all, self.root, doomed)
        for d in decisions:
            if d.action in MOVES and d.record.record_id in located:
                await self._move(d.record.record_id, located[d.record.record_id], MOVES[d.action])
        await super().apply(decisions)

    async def _move(self, recording_id: str, path: str, restricted: bool) -> None:
        """Restricted audio moves under restricted/, out of the tree playback serves; lifting
        moves it back. The move is made whatever the row says (a lost commit may have left the
        file at the other place) and is idempotent; the index follows the file."""
        playback, hidden = files.places(path)
        source, target = (playback, hidden) if restricted else (hidden, playback)
        await asyncio.to_thread(files.move, self.root, source, target)
        if path != target:
            await self.conn.execute(
                "UPDATE recordings SET path = $2 WHERE recording_id = $1", recording_id, target
            )

    async def unconfirmed(self, decisions: Sequence[Decision]) -> list[tuple[str, str]]:
        """The files themselves, not the rows: an erased recording's audio at either of its
        places; a restricted one's at its playback path, or its row not under restricted/;
        a lifted one's the reverse. Audio missing from both places is not looked for: nothing
        of it can be served, kept or moved (erasure already counted a missing file as done)."""
        must_be_empty: dict[str, tuple[str, ...]] = {
            rid: files.places(path) for rid, path in self.erased.items()
        }
        misindexed: set[str] = set()
        for action, restricted in MOVES.items():
            for rid, path in (await _paths(self.conn, _ids(decisions, action))).items():
                playback, hidden = files.places(path)
                must_be_empty[rid] = (playback,) if restricted else (hidden,)
                if path != (hidden if restricted else playback):
                    misindexed.add(rid)
        left = await asyncio.to_thread(_occupied, self.root, must_be_empty)
        return [(CATEGORY, rid) for rid in sorted(misindexed | left)]


MOVES = {Action.RESTRICTED: True, Action.UNRESTRICTED: False}  # action -> restricted after it


def _ids(decisions: Sequence[Decision], *actions: Action) -> list[str]:
    return [d.record.record_id for d in decisions if d.action in actions]


async def _paths(conn: asyncpg.Connection, recording_ids: list[str]) -> dict[str, str]:
    """The rows' paths, locked until the commit: no other command moves or erases these files
    meanwhile (all of a plan's in one statement and in id order: two commands cannot deadlock)."""
    if not recording_ids:
        return {}
    rows = await conn.fetch(
        "SELECT recording_id, path FROM recordings WHERE recording_id = ANY($1::text[])"
        " ORDER BY recording_id FOR UPDATE",
        recording_ids,
    )
    return {r["recording_id"]: r["path"] for r in rows}


def _remove_all(root: Path, paths: Sequence[str]) -> None:
    with TRACER.start_as_current_span(
        "file unlink", attributes={"lethe.file.operation": "unlink", "lethe.file.count": len(paths)}
    ):
        for path in paths:
            files.remove(root, path)


def _occupied(root: Path, must_be_empty: dict[str, tuple[str, ...]]) -> set[str]:
    return {rid for rid, paths in must_be_empty.items() if any(files.present(root, p) for p in paths)}
