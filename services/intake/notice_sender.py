"""Webhook notices, sent as callbacks are (services/intake/callbacks.py): leased with SKIP
LOCKED, sent outside any transaction a few at a time within a deadline, signed with the
recipient's own secret, retried with backoff until a 2xx; then delivered (acknowledged too,
unless the register asks for the recipient's own acknowledgement), or failed once the tries
are spent. The identifiers are opened only to build the body, at the moment of sending, and
dropped from the row once delivered."""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import asyncpg
import httpx

from services.intake import notices
from services.intake.callbacks import post_signed
from services.intake.egress import Egress
from shared.contracts.notices import NoticeBody, NoticeCategory
from shared.crypto import IdentifierSeal
from shared.delivery import TRANSIENT
from shared.identity import KINDS
from shared.recipients.register import RegisterFile, Webhook
from shared.telemetry.messaging import quiet

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Retries:
    attempts: int = 10
    first_backoff_s: float = 1.0
    max_backoff_s: float = 3600.0

    def backoff(self, attempts: int) -> timedelta:
        return timedelta(seconds=min(self.first_backoff_s * 2 ** (attempts - 1), self.max_backoff_s))


class NoticeSender:
    LEASE = timedelta(seconds=60)  # a sender that died mid-send: its notices are due again then

    def __init__(
        self,
        pool: asyncpg.Pool,
        register: RegisterFile,
        secrets: dict[str, str],
        seal: IdentifierSeal,
        retries: Retries,
        egress: Egress | None = None,
        deadline_s: float = 10.0,
        parallel: int = 8,
    ) -> None:
        self.pool = pool
        self.register = register
        self.secrets = secrets  # recipient id -> its signing secret
        self.seal = seal
        self.retries = retries
        self.client: httpx.AsyncClient = (egress or Egress()).client(deadline_s)
        self.deadline_s = deadline_s
        self.parallel = asyncio.Semaphore(parallel)

    async def run(self, interval_s: float = 0.5) -> None:
        while True:
            try:
                await self.send_due(datetime.now(UTC))
            except TRANSIENT as exc:
                log.warning("notices paused", extra={"error": type(exc).__name__})
            except Exception:
                log.exception("notice pass failed")
            await asyncio.sleep(interval_s)

    async def send_due(self, now: datetime) -> int:
        with quiet():
            rows = await self.pool.fetch(
                "UPDATE notices n SET next_at = $2 FROM (SELECT notice_id FROM notices"
                " WHERE state = 'pending' AND channel = 'webhook' AND next_at <= $1 ORDER BY next_at"
                " LIMIT 50 FOR UPDATE SKIP LOCKED) due WHERE n.notice_id = due.notice_id RETURNING n.*",
                now,
                now + self.LEASE,
            )
            results = await asyncio.gather(*(self._send(row) for row in rows))
        return sum(results)

    async def _send(self, row: asyncpg.Record) -> bool:
        recipient = self.register.get(row["recipient_id"])
        assert recipient is not None and isinstance(recipient.notify, Webhook)  # take() saw to it
        sent_at = datetime.now(UTC)
        body = self.body(row, sent_at).model_dump_json().encode()
        async with self.parallel:
            error = await post_signed(
                self.client, recipient.notify.url, body, self.secrets[recipient.id], self.deadline_s
            )
        await self._record(row, error, datetime.now(UTC))
        return error is None

    def body(self, row: asyncpg.Record, sent_at: datetime) -> NoticeBody:
        identifiers = self.seal.open(row["sealed_identifiers"]) if row["sealed_identifiers"] else None
        return NoticeBody(
            notice_id=row["notice_id"],
            request_id=row["request_id"],
            type=row["request_type"],
            recipient_id=row["recipient_id"],
            categories=[NoticeCategory.model_validate(c) for c in json.loads(row["categories"])],
            identifiers={
                k: list(getattr(identifiers, k)) for k in KINDS if identifiers and getattr(identifiers, k)
            },
            must_acknowledge=row["must_acknowledge"],
            acknowledge_by=row["acknowledge_by"],
            acknowledge_url=f"/v1/notices/{row['notice_id']}/ack" if row["must_acknowledge"] else None,
            sent_at=sent_at,
        )

    async def _record(self, row: asyncpg.Record, error: str | None, now: datetime) -> None:
        """The try's result, unless the notice was acknowledged or closed meanwhile."""
        attempts = row["attempts"] + 1
        if error is None:
            state, via = ("delivered", None) if row["must_acknowledge"] else ("acknowledged", "response")
        else:
            forbidden = error.startswith("forbidden")  # it will never be allowed: not retried
            state, via = ("failed" if forbidden or attempts >= self.retries.attempts else "pending"), None
        async with self.pool.acquire() as conn, conn.transaction():
            updated = await conn.fetchrow(
                "UPDATE notices SET state = $2, attempts = $3, last_error = $4::text, next_at = $5,"
                " delivered_at = CASE WHEN $4::text IS NULL THEN $6::timestamptz END,"
                " acknowledged_at = CASE WHEN $7::text IS NULL THEN NULL ELSE $6::timestamptz END,"
                " acknowledged_via = $7::text,"
                " sealed_identifiers = CASE WHEN $4::text IS NULL THEN NULL ELSE sealed_identifiers END"
                " WHERE notice_id = $1 AND state = 'pending' RETURNING *",
                row["notice_id"],
                state,
                attempts,
                error,
                now + self.retries.backoff(attempts),
                now,
                via,
            )
            if updated is not None:
                await notices.report(conn, updated, now)
        if error is not None:
            log.warning(
                "notice not delivered",
                extra={"notice_id": str(row["notice_id"]), "recipient": row["recipient_id"], "error": error},
            )
