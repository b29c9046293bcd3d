"""Callbacks to upstream: when a request that gave a `callback_url` reaches a final status, its
status is POSTed there, signed with HMAC-SHA256 (`X-Lethe-Signature: sha256=<hex>` over the raw
body, with `X-Lethe-Timestamp` included in the signed text against replays), and retried with
backoff until the receiver answers 2xx or the attempts run out."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
from datetime import UTC, datetime, timedelta

import asyncpg
import httpx

from services.intake.egress import Egress, ForbiddenTarget
from shared.delivery import TRANSIENT
from shared.telemetry.messaging import quiet

log = logging.getLogger(__name__)

SCHEMA = (
    """CREATE TABLE IF NOT EXISTS callbacks (
        request_id text NOT NULL,
        status_version integer NOT NULL,
        url text NOT NULL,
        body jsonb NOT NULL,
        attempts integer NOT NULL DEFAULT 0,
        next_at timestamptz NOT NULL DEFAULT now(),
        delivered_at timestamptz,
        last_error text,
        PRIMARY KEY (request_id, status_version))""",
    "CREATE INDEX IF NOT EXISTS callbacks_due ON callbacks (next_at) WHERE delivered_at IS NULL",
)


def signature(secret: str, timestamp: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()


class CallbackSender:
    """Due callbacks are leased in a short transaction (SKIP LOCKED: other instances take
    others), sent with no row locked, a few at a time, each within a total deadline and without
    reading what the receiver answers beyond its status; the result is written afterwards. A
    slow or hostile receiver holds up nobody else's callback, and no transaction waits on it."""

    LEASE = timedelta(seconds=60)  # a sender that died mid-send: its callbacks are due again then

    def __init__(
        self,
        pool: asyncpg.Pool,
        secret: str,
        max_attempts: int = 10,
        first_backoff_s: float = 1.0,
        client: httpx.AsyncClient | None = None,
        egress: Egress | None = None,
        deadline_s: float = 10.0,
        parallel: int = 8,
    ) -> None:
        self.pool = pool
        self.secret = secret
        self.max_attempts = max_attempts
        self.first_backoff_s = first_backoff_s
        self.client = client or (egress or Egress()).client(deadline_s)
        self.deadline_s = deadline_s
        self.parallel = asyncio.Semaphore(parallel)

    async def run(self, interval_s: float = 0.5) -> None:
        while True:
            try:
                await self.send_due(datetime.now(UTC))
            except TRANSIENT as exc:
                log.warning("callbacks paused", extra={"error": type(exc).__name__})
            except Exception:
                log.exception("callback pass failed")
            await asyncio.sleep(interval_s)

    async def send_due(self, now: datetime) -> int:
        with quiet():
            rows = await self.pool.fetch(
                "UPDATE callbacks c SET next_at = $3 FROM (SELECT request_id, status_version FROM callbacks"
                " WHERE delivered_at IS NULL AND attempts < $2 AND next_at <= $1 ORDER BY next_at LIMIT 50"
                " FOR UPDATE SKIP LOCKED) due WHERE c.request_id = due.request_id"
                " AND c.status_version = due.status_version RETURNING c.*",
                now,
                self.max_attempts,
                now + self.LEASE,
            )
            results = await asyncio.gather(*(self._send(row, now) for row in rows))
        return sum(results)

    async def _send(self, row: asyncpg.Record, now: datetime) -> bool:
        async with self.parallel:
            error = await self._post(row["url"], row["body"].encode())
        attempts = row["attempts"] + 1
        if error is not None and error.startswith("forbidden"):
            attempts = self.max_attempts  # it will never be allowed: not retried
        delay = timedelta(seconds=self.first_backoff_s * 2 ** row["attempts"])
        with quiet():
            await self.pool.execute(
                "UPDATE callbacks SET attempts = $3, delivered_at = $4, next_at = $5, last_error = $6"
                " WHERE request_id = $1 AND status_version = $2",
                row["request_id"],
                row["status_version"],
                attempts,
                now if error is None else None,
                now + delay,
                error,
            )
        return error is None

    async def _post(self, url: str, body: bytes) -> str | None:
        return await post_signed(self.client, url, body, self.secret, self.deadline_s)


async def post_signed(
    client: httpx.AsyncClient, url: str, body: bytes, secret: str, deadline_s: float
) -> str | None:
    """POST `body` signed with `secret`; None on a 2xx, else what went wrong (no body is read,
    and nothing of the receiver's answer beyond its status is kept). Callbacks and notices to
    recipients are signed and sent alike."""
    timestamp = str(int(datetime.now(UTC).timestamp()))
    headers = {
        "Content-Type": "application/json",
        "X-Lethe-Timestamp": timestamp,
        "X-Lethe-Signature": signature(secret, timestamp, body),
    }
    try:
        async with asyncio.timeout(deadline_s):  # the whole exchange, not each read
            async with client.stream("POST", url, content=body, headers=headers) as response:
                status = response.status_code  # the body is not read: nothing to trickle
    except ForbiddenTarget:
        return "forbidden target: a loopback, private, link-local or reserved address"
    except TimeoutError:
        return "no answer within the deadline"
    except httpx.HTTPError as exc:
        return type(exc).__name__
    return None if 200 <= status < 300 else f"HTTP {status}"
