"""Re-sealing stored identifiers with the current identifier key, so that the old key can be
dropped (README, Key rotation).

Intake, the tracker and each worker keep sealed identifiers in their databases; `SEALED` lists
every column that holds them (a test scans every one of those databases for any sealed value
the new key alone cannot open, so a column added later and forgotten here fails it). Each value
is rewritten only if it is still the value read (a live service may have written the row
meanwhile, with the new key), so the job runs safely beside the services and can be run again."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import asyncpg

from shared.crypto import IdentifierSeal, IdentifierSealError

# Every Fernet token starts with its version byte 0x80, base64: "gAAAAA".
FERNET_PREFIX = "gAAAAA"


@dataclass(frozen=True)
class SealedColumn:
    table: str
    column: str
    json: bool = False  # a jsonb document with sealed strings somewhere inside


SEALED: dict[str, tuple[SealedColumn, ...]] = {
    "intake": (
        SealedColumn("requests", "sealed_identifiers"),
        SealedColumn("holds", "sealed_identifiers"),
        SealedColumn("reviews", "evidence"),
        # A notice's identifiers, until it is delivered or closed.
        SealedColumn("notices", "sealed_identifiers"),
        # Compliance's note on closing a notice (it may name the person or how they were reached).
        SealedColumn("notices", "note"),
    ),
    "tracker": (
        SealedColumn("sagas", "sealed_identifiers"),
        SealedColumn("sagas", "pending_learnt"),
        SealedColumn("sagas", "reviews", json=True),
        # Outcomes carry what a worker learnt and a reviewer's evidence, sealed.
        SealedColumn("saga_systems", "outcome", json=True),
        SealedColumn("saga_systems", "deferred", json=True),
        SealedColumn("saga_systems", "rounds", json=True),
        SealedColumn("early_outcomes", "outcome", json=True),
    ),
    # Each worker's journal keeps the outcome it reported (re-sent on a redelivery).
    "worker": (SealedColumn("lethe_command_journal", "outcome", json=True),),
}


@dataclass
class ResealCount:
    rewritten: int = 0
    unopenable: int = 0  # sealed with a key this job was not given: left as they are


def rotated(value: Any, rotate: Callable[[str], str]) -> Any:
    """A JSON value with every sealed string in it re-sealed."""
    if isinstance(value, str) and value.startswith(FERNET_PREFIX):
        return rotate(value)
    if isinstance(value, list):
        return [rotated(v, rotate) for v in value]
    if isinstance(value, dict):
        return {k: rotated(v, rotate) for k, v in value.items()}
    return value


async def reseal(pool: asyncpg.Pool, seal: IdentifierSeal, columns: tuple[SealedColumn, ...]) -> ResealCount:
    count = ResealCount()
    for column in columns:
        await _reseal_column(pool, seal, column, count)
    return count


async def _reseal_column(
    pool: asyncpg.Pool, seal: IdentifierSeal, column: SealedColumn, count: ResealCount
) -> None:
    cast = "::jsonb" if column.json else ""
    select = f"SELECT ctid, {column.column}::text AS v FROM {column.table} WHERE {column.column} IS NOT NULL"
    update = (
        f"UPDATE {column.table} SET {column.column} = $1{cast} WHERE ctid = $2 AND {column.column}::text = $3"
    )
    async with pool.acquire() as reader, reader.transaction():
        async for row in reader.cursor(select, prefetch=500):
            text = row["v"]
            if FERNET_PREFIX not in text:
                continue  # e.g. a saga's reviews with no evidence
            try:
                new = json.dumps(rotated(json.loads(text), seal.rotate)) if column.json else seal.rotate(text)
            except IdentifierSealError:
                count.unopenable += 1
                continue
            await pool.execute(update, new, row["ctid"], text)
            count.rewritten += 1
