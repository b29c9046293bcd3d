"""Fingerprints an earlier version stored unkeyed are keyed in place, at start-up: until then
they would still confirm a guessed identifier to anyone who reads the table (fingerprint.py).

Safe to run on every start and from several replicas at once: each row is rewritten only if it
still holds the unkeyed value read (compare-and-set), and a keyed one is never read again. A row
an older replica writes during a rolling upgrade is keyed at the next start; meanwhile it is
still recognised (Fingerprints.same keys it on the fly).
"""

from __future__ import annotations

import asyncpg

from services.intake.fingerprint import PREFIX, Fingerprints

_UNKEYED = """
SELECT request_id, fingerprint FROM requests
 WHERE NOT starts_with(fingerprint, $1) AND request_id > $2 ORDER BY request_id LIMIT $3"""

_KEY = """
UPDATE requests r SET fingerprint = u.keyed
  FROM unnest($1::text[], $2::text[], $3::text[]) AS u(request_id, unkeyed, keyed)
 WHERE r.request_id = u.request_id AND r.fingerprint = u.unkeyed"""


async def key_unkeyed_fingerprints(pool: asyncpg.Pool, fingerprints: Fingerprints, batch: int = 500) -> int:
    """Key every unkeyed fingerprint; returns how many were found unkeyed."""
    found, after = 0, ""
    while rows := await pool.fetch(_UNKEYED, PREFIX, after, batch):
        await pool.execute(
            _KEY,
            [r["request_id"] for r in rows],
            [r["fingerprint"] for r in rows],
            [fingerprints.rekeyed(r["fingerprint"]) for r in rows],
        )
        found += len(rows)
        after = rows[-1]["request_id"]
    return found
