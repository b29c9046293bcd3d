"""Bootstrap tokens follow their configuration: one removed from it stops working."""

from __future__ import annotations

import os

import pytest

from services.intake import auth
from shared.db import apply_schema, create_pool, ensure_database

pytestmark = pytest.mark.integration


async def test_a_bootstrap_token_no_longer_configured_is_revoked(fresh_db: str) -> None:
    await ensure_database(fresh_db)
    pool = await create_pool(fresh_db)
    try:
        await apply_schema(pool, *auth.SCHEMA)
        first, second = (f"lethe_boot{n}_{os.urandom(32).hex()}" for n in (1, 2))
        made = await auth.create(pool, auth.Role.SUBMITTER, "made by an admin")
        assert (
            await auth.sync_bootstrap(pool, auth.parse_bootstrap(f"admin:{first},compliance:{second}")) == 0
        )
        assert await auth.sync_bootstrap(pool, auth.parse_bootstrap(f"admin:{first}")) == 1  # second removed
        live = {r["token_id"]: r["revoked_at"] for r in await auth.listing(pool)}
        assert live["boot1"] is None and live["boot2"] is not None
        assert live[made.split("_")[1]] is None  # tokens made through the API are not bootstrap's to revoke
    finally:
        await pool.close()
