"""The benchmark's fallback for completions it could not read off the topic after a shed."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

from bench.run import recorded_by_intake
from services.intake import store
from shared.db import apply_schema, create_pool, ensure_database


async def test_completions_missed_on_the_topic_are_taken_from_intakes_record_at_when_they_completed(
    fresh_db: str,
) -> None:
    await ensure_database(fresh_db)
    pool = await create_pool(fresh_db)
    try:
        await apply_schema(pool, *store.SCHEMA)
        now = datetime.now(UTC)
        for request_id, completed in (
            ("soak-1", now - timedelta(seconds=40)),
            ("soak-2", None),
            ("other-3", now),
            ("soak-4", now - timedelta(seconds=1)),
        ):
            await pool.execute(
                "INSERT INTO requests (request_id, fingerprint, request_type, subject_ref,"
                " sealed_identifiers, systems, received_at, deadline, completed_at)"
                " VALUES ($1, 'f', 'erasure', 's', NULL, '{}', $2, $2, $3)",
                request_id,
                now - timedelta(seconds=60),
                completed,
            )
    finally:
        await pool.close()

    recorded = await recorded_by_intake(fresh_db, "soak", {"soak-1", "soak-2", "other-3"})

    assert set(recorded) == {"soak-1"}  # asked for, this run's, completed
    assert abs(recorded["soak-1"] - (time.monotonic() - 40)) < 1.0  # when, on the run's clock
