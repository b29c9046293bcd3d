"""Callbacks cannot be turned against us: loopback, private, link-local and reserved targets are
refused on the address actually connected to (unless allowed), every send has a total deadline,
a slow receiver holds up no other callback, and no row stays locked while a receiver answers."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import asyncpg
import pytest

from services.intake import callbacks
from services.intake.callbacks import CallbackSender
from services.intake.egress import Egress, ForbiddenTarget
from shared.db import apply_schema, create_pool, ensure_database

pytestmark = pytest.mark.integration
LOOPBACK = Egress([ipaddress.ip_network("127.0.0.0/8")])


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "::1",
        "169.254.169.254",
        "10.1.2.3",
        "192.168.0.1",
        "100.64.0.1",
        "::ffff:127.0.0.1",
        "0.0.0.0",
        "64:ff9b::a00:1",  # NAT64 of 10.0.0.1
        "64:ff9b::a9fe:a9fe",  # NAT64 of the metadata service
        "64:ff9b:1::a00:1",  # local-use NAT64
        "2002:a00:1::1",  # 6to4 of 10.0.0.1
        "::127.0.0.1",  # IPv4-compatible
        "::ffff:0:7f00:1",  # SIIT
        "fec0::1",  # site-local
        "224.0.0.1",
        "239.255.255.250",
        "ff02::1",
        "ff0e::1",
        "192.88.99.1",  # 6to4 relay anycast
    ],
)
def test_addresses_that_are_not_public_are_refused(address: str) -> None:
    assert not Egress().permitted(address)


def test_public_addresses_and_allowed_networks_are_reached() -> None:
    assert Egress().permitted("8.8.8.8") and Egress().permitted("2001:4860:4860::8888")
    assert Egress().permitted("64:ff9b::808:808")  # NAT64 judged by the IPv4 it reaches
    assert LOOPBACK.permitted("127.0.0.1") and not LOOPBACK.permitted("10.0.0.1")


async def test_a_name_is_judged_by_what_it_resolves_to() -> None:
    with pytest.raises(ForbiddenTarget):
        await Egress().check_url("http://localhost:8080/hook")
    with pytest.raises(ForbiddenTarget):
        await Egress().check_url("https://[::1]/hook")


@pytest.fixture
async def pool(fresh_db: str) -> AsyncIterator[asyncpg.Pool]:
    await ensure_database(fresh_db)
    db = await create_pool(fresh_db)
    await apply_schema(db, *callbacks.SCHEMA)
    yield db
    await db.close()


async def receiver(answer: bool) -> tuple[asyncio.Server, str, list[bytes]]:
    """A receiver on loopback: answers 200 at once, or accepts and never answers."""
    seen: list[bytes] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen.append(await reader.read(65536))
        if answer:
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
            await writer.drain()
            writer.close()
        else:
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.sleep(3600)

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    return server, f"http://127.0.0.1:{port}/hook", seen


async def queue(pool: asyncpg.Pool, request_id: str, url: str) -> None:
    await pool.execute(
        "INSERT INTO callbacks (request_id, status_version, url, body) VALUES ($1, 1, $2, $3::jsonb)",
        request_id,
        url,
        json.dumps({"request_id": request_id}),
    )


async def state(pool: asyncpg.Pool, request_id: str) -> asyncpg.Record:
    row: asyncpg.Record = await pool.fetchrow("SELECT * FROM callbacks WHERE request_id = $1", request_id)
    return row


async def test_a_private_target_is_refused_once_and_not_retried(pool: asyncpg.Pool) -> None:
    server, url, seen = await receiver(answer=True)
    try:
        await queue(pool, "to-loopback", url)
        sender = CallbackSender(pool, "k" * 64, max_attempts=5, egress=Egress())
        assert await sender.send_due(datetime.now(UTC)) == 0
        row = await state(pool, "to-loopback")
        assert (
            row["delivered_at"] is None and row["attempts"] == 5 and row["last_error"].startswith("forbidden")
        )
        assert seen == []  # not even connected to
    finally:
        server.close()


async def test_a_silent_receiver_holds_up_no_other_callback_and_no_lock(pool: asyncpg.Pool) -> None:
    silent, silent_url, _ = await receiver(answer=False)
    prompt, prompt_url, seen = await receiver(answer=True)
    try:
        await queue(pool, "to-silent", silent_url)
        await queue(pool, "to-prompt", prompt_url)
        sender = CallbackSender(pool, "k" * 64, egress=LOOPBACK, deadline_s=1.0)
        sending = asyncio.create_task(sender.send_due(datetime.now(UTC)))
        await asyncio.sleep(0.3)
        # While the silent receiver keeps the send waiting, its row is not locked.
        async with pool.acquire() as conn, conn.transaction():
            locked = await conn.fetch(
                "SELECT 1 FROM callbacks WHERE request_id = 'to-silent' FOR UPDATE NOWAIT"
            )
            assert len(locked) == 1
        assert await sending == 1
        assert (await state(pool, "to-prompt"))["delivered_at"] is not None and seen
        silent_row = await state(pool, "to-silent")
        assert silent_row["last_error"] == "no answer within the deadline" and silent_row["attempts"] == 1
    finally:
        silent.close()
        prompt.close()
