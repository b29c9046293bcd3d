"""Rotating the identifier key: after `reseal` every sealed value stored anywhere in intake's,
the tracker's and the workers' databases opens with the new key alone, so the old one can be
dropped. The scan reads every text and jsonb column, so a sealed column the job does not know
of fails it."""

from __future__ import annotations

import asyncio
import re

import asyncpg
import httpx
import pytest
from cryptography.fernet import Fernet

from cli.keys import sealed_databases
from cli.stack import Stack
from shared.crypto import IdentifierSeal, IdentifierSealError
from shared.rotation import SEALED, reseal
from tests.e2e.conftest import submit_erasure, wait_final

pytestmark = pytest.mark.e2e
TOKEN = re.compile(r"gAAAAA[A-Za-z0-9_\-]+=*")


async def _sealed_values(url: str) -> list[tuple[str, str, str]]:
    conn = await asyncpg.connect(url)
    try:
        columns = await conn.fetch(
            "SELECT table_name, column_name FROM information_schema.columns"
            " WHERE table_schema = 'public' AND data_type IN ('text', 'jsonb')"
        )
        found = []
        for c in columns:
            rows = await conn.fetch(
                f'SELECT "{c["column_name"]}"::text AS v FROM "{c["table_name"]}"'
                f""" WHERE "{c["column_name"]}"::text LIKE '%gAAAAA%'"""
            )
            found += [(c["table_name"], c["column_name"], t) for r in rows for t in TOKEN.findall(r["v"])]
        return found
    finally:
        await conn.close()


async def _reseal_all(stack: Stack, seal: IdentifierSeal) -> int:
    unopenable = 0
    for kind, url in sealed_databases(stack):
        pool = await asyncpg.create_pool(url, min_size=1, max_size=2)
        try:
            unopenable += (await reseal(pool, seal, SEALED[kind])).unopenable
        finally:
            await pool.close()
    return unopenable


def unopenable_with(stack: Stack, key: str) -> list[tuple[str, str]]:
    only = IdentifierSeal(key)
    bad = []
    for _, url in sealed_databases(stack):
        for table, column, token in asyncio.run(_sealed_values(url)):
            try:
                only.open_text(token)
            except IdentifierSealError:
                bad.append((f"{url.rsplit('/', 1)[-1]}.{table}", column))
    return bad


def test_after_a_reseal_the_new_key_alone_opens_everything_stored(stack: Stack, api: httpx.Client) -> None:
    hold = api.post(
        "/v1/holds",
        json={"subject": {"customer_id": "C-ROT-1"}, "case_reference": "ROT-1", "reason": "rotation test"},
    )
    assert hold.status_code == 201, hold.text
    assert submit_erasure(api, "rotation-1", {"customer_id": "C-ROT-1"}).status_code == 202
    wait_final(api, "rotation-1")
    old = stack.secrets.identifier_key
    assert not unopenable_with(stack, old)
    new = Fernet.generate_key().decode()
    try:
        assert asyncio.run(_reseal_all(stack, IdentifierSeal(new, [old]))) == 0
        assert not unopenable_with(stack, new)
        assert unopenable_with(stack, old)  # really re-sealed: the old key alone opens none of it
    finally:
        # Back to the stack's key, for the tests that follow on the same stack.
        assert asyncio.run(_reseal_all(stack, IdentifierSeal(old, [new]))) == 0
    assert not unopenable_with(stack, old)
