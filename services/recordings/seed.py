"""Recordings' section of the seed file: each entry becomes a real WAV file and an index row."""

from __future__ import annotations

import math
import struct
import wave
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

import asyncpg
from pydantic import Field

from services.recordings.files import present, resolve
from shared.seeding import SeedModel

SAMPLE_RATE = 8_000  # narrow-band telephony


class RecordingSeed(SeedModel):
    recording_id: str = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")
    customer_id: str | None = None
    caller: str
    callee: str
    recorded_at: datetime
    duration_s: int = Field(ge=1, le=3600)
    legal_tags: list[str] = Field(default_factory=list, description="e.g. 'evidence_of_transaction'")
    processed_for: str | None = Field(
        None, description="The controller, when the call was recorded as its processor (seed 003)."
    )


def write_tone(path: Path, seconds: int, frequency_hz: float = 425.0) -> None:
    """A short tone stands in for speech: a real, playable 16-bit mono WAV. Seed files are
    capped at 5 s of audio whatever the call length, to keep demo data small."""
    frames = SAMPLE_RATE * min(seconds, 5)
    samples = b"".join(
        struct.pack("<h", int(8000 * math.sin(2 * math.pi * frequency_hz * n / SAMPLE_RATE)))
        for n in range(frames)
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(SAMPLE_RATE)
        out.writeframes(samples)


async def write(conn: asyncpg.Connection, root: Path, recordings: Sequence[RecordingSeed]) -> int:
    """Idempotent: a recording already indexed keeps its row and path (a file loaded on another
    day would name another month's folder), and gets its audio back only if that is missing."""
    for r in recordings:
        path = await conn.fetchval(
            "INSERT INTO recordings (recording_id, customer_id, caller, callee, recorded_at,"
            " duration_s, path, legal_tags, processed_for) VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9)"
            " ON CONFLICT (recording_id) DO NOTHING RETURNING path",
            r.recording_id,
            r.customer_id,
            r.caller,
            r.callee,
            r.recorded_at,
            r.duration_s,
            f"{r.recorded_at:%Y/%m}/{r.recording_id}.wav",
            r.legal_tags,
            r.processed_for,
        ) or await conn.fetchval("SELECT path FROM recordings WHERE recording_id = $1", r.recording_id)
        if not present(root, path):  # a link there counts: nothing is written through it
            write_tone(resolve(root, path), r.duration_s)
    return len(recordings)
