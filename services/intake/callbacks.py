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
    def __init__(
        self,
        pool: asyncpg.Pool,
        secret: str,
        max_attempts: int = 10,
        first_backoff_s: float = 1.0,
        client: httpx.AsyncClient | None = None,
    ) -> None:
        self.pool = pool
        self.secret = secret
        self.max_attempts = max_attempts
        self.first_backoff_s = first_backoff_s
        self.client = client or httpx.AsyncClient(timeout=10)

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
        """One pass over due callbacks; each row is locked while it is sent (SKIP LOCKED for
        other instances) and updated in the same transaction."""
        with quiet():
            return await self._send_due(now)

    async def _send_due(self, now: datetime) -> int:
        sent = 0
        async with self.pool.acquire() as conn, conn.transaction():
            rows = await conn.fetch(
                "SELECT * FROM callbacks WHERE delivered_at IS NULL AND attempts < $2 AND next_at <= $1"
                " ORDER BY next_at LIMIT 50 FOR UPDATE SKIP LOCKED",
                now,
                self.max_attempts,
            )
            for row in rows:
                error = await self._post(row["url"], row["body"].encode())
                if error is None:
                    sent += 1
                    await conn.execute(
                        "UPDATE callbacks SET delivered_at = $3, attempts = attempts + 1, last_error = NULL"
                        " WHERE request_id = $1 AND status_version = $2",
                        row["request_id"],
                        row["status_version"],
                        now,
                    )
                else:
                    delay = timedelta(seconds=self.first_backoff_s * 2 ** row["attempts"])
                    await conn.execute(
                        "UPDATE callbacks SET attempts = attempts + 1, next_at = $3, last_error = $4"
                        " WHERE request_id = $1 AND status_version = $2",
                        row["request_id"],
                        row["status_version"],
                        now + delay,
                        error,
                    )
        return sent

    async def _post(self, url: str, body: bytes) -> str | None:
        timestamp = str(int(datetime.now(UTC).timestamp()))
        headers = {
            "Content-Type": "application/json",
            "X-Lethe-Timestamp": timestamp,
            "X-Lethe-Signature": signature(self.secret, timestamp, body),
        }
        try:
            response = await self.client.post(url, content=body, headers=headers)
        except httpx.HTTPError as exc:
            return type(exc).__name__
        return None if response.is_success else f"HTTP {response.status_code}"
