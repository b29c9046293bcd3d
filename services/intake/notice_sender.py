"""Webhook notices, sent as callbacks are (services/intake/callbacks.py): leased with SKIP
LOCKED, sent outside any transaction a few at a time within a deadline, signed with the
recipient's own secret, retried with backoff a bounded number of times; then delivered
(acknowledged too, unless the register asks for the recipient's own acknowledgement), or failed
once the tries are spent, or at once when it can never be sent. The identifiers are opened only
to build the body, at the moment of sending, and dropped from the row once delivered."""

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
from shared.crypto import IdentifierSeal, IdentifierSealError
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


class Unsendable(Exception):
    """A notice this intake cannot send, however often it tries; the message is fixed text
    (it is stored, reported and logged: no personal data)."""


BATCH = 50  # notices leased per pass


def lease_for(batch: int, parallel: int, deadline_s: float) -> timedelta:
    """How long a pass's notices stay leased: twice its worst case (every send taking its whole
    deadline, `parallel` at a time), so a slow pass's notices are not leased again and sent twice
    while it is still at work; a sender that died mid-send has them due again after that."""
    waves = -(-batch // parallel)
    return timedelta(seconds=2 * waves * deadline_s + 30)


class NoticeSender:
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
        keep_task_identifiers: timedelta = timedelta(days=30),
    ) -> None:
        self.pool = pool
        self.register = register
        self.secrets = secrets  # recipient id -> its signing secret
        self.seal = seal
        self.retries = retries
        self.client: httpx.AsyncClient = (egress or Egress()).client(deadline_s)
        self.deadline_s = deadline_s
        self.parallel = asyncio.Semaphore(parallel)
        self.lease = lease_for(BATCH, parallel, deadline_s)
        self.keep_task_identifiers = keep_task_identifiers
        self.forgotten_at: datetime | None = None

    async def run(self, interval_s: float = 0.5) -> None:
        while True:
            try:
                await self.send_due(datetime.now(UTC))
                await self.forget_task_identifiers(datetime.now(UTC))
            except TRANSIENT as exc:
                log.warning("notices paused", extra={"error": type(exc).__name__})
            except Exception:
                log.exception("notice pass failed")
            await asyncio.sleep(interval_s)

    async def forget_task_identifiers(self, now: datetime, every: timedelta = timedelta(minutes=1)) -> int:
        """Identifiers kept for compliance to pass on (a manual task, a failed webhook) are
        dropped once closed, or after `keep_task_identifiers` if never closed (a task that needs
        no acknowledgement may never be): compliance then has the request's own record."""
        if self.forgotten_at is not None and now - self.forgotten_at < every:
            return 0
        self.forgotten_at = now
        with quiet():
            done: str = await self.pool.execute(
                "UPDATE notices SET sealed_identifiers = NULL WHERE sealed_identifiers IS NOT NULL"
                " AND (channel = 'manual' OR state = 'failed') AND created_at < $1",
                now - self.keep_task_identifiers,
            )
        return int(done.split()[-1])

    async def send_due(self, now: datetime) -> int:
        with quiet():
            # The try is counted as it is leased, before anything is sent: a recipient may
            # acknowledge from its webhook handler, before this pass records the answer, and
            # a notice that may have arrived is one that can be acknowledged (notices.acknowledge).
            rows = await self.pool.fetch(
                "UPDATE notices n SET next_at = $2, attempts = n.attempts + 1"
                " FROM (SELECT notice_id FROM notices WHERE state = 'pending' AND channel = 'webhook'"
                " AND next_at <= $1 ORDER BY next_at LIMIT $3 FOR UPDATE SKIP LOCKED) due"
                " WHERE n.notice_id = due.notice_id RETURNING n.*",
                now,
                now + self.lease,
                BATCH,
            )
            results = await asyncio.gather(*(self._send(row) for row in rows))
        return sum(results)

    async def _send(self, row: asyncpg.Record) -> bool:
        """One notice; one that can never be sent (the register changed, a secret or key is
        missing) is failed at once, for compliance, instead of holding up the others."""
        try:
            url, secret = self._target(row["recipient_id"])
            body = self.body(row, datetime.now(UTC)).model_dump_json().encode()
        except Unsendable as exc:
            await self._record(row, str(exc), datetime.now(UTC), final=True)
            return False
        except (ValueError, KeyError, TypeError):  # a stored row this version cannot read
            await self._record(
                row, "notice cannot be built from its stored row", datetime.now(UTC), final=True
            )
            return False
        async with self.parallel:
            error = await post_signed(self.client, url, body, secret, self.deadline_s)
        await self._record(row, error, datetime.now(UTC))
        return error is None

    def _target(self, recipient_id: str) -> tuple[str, str]:
        recipient = self.register.get(recipient_id)
        if recipient is None:
            raise Unsendable("recipient not in intake's register")
        if not isinstance(recipient.notify, Webhook):
            raise Unsendable("recipient is not a webhook in intake's register")
        secret = self.secrets.get(recipient.id)
        if not secret:
            raise Unsendable("recipient's signing secret is not configured")
        return recipient.notify.url, secret

    def body(self, row: asyncpg.Record, sent_at: datetime) -> NoticeBody:
        """The notice as sent; identifiers only of the kinds intake's own register says the
        recipient holds (the tracker chose them from its register, which may differ)."""
        recipient = self.register.get(row["recipient_id"])
        kinds = set(recipient.identifiers) if recipient else set()
        try:
            identifiers = self.seal.open(row["sealed_identifiers"]) if row["sealed_identifiers"] else None
        except IdentifierSealError:
            raise Unsendable("identifiers cannot be opened with the identifier key") from None
        return NoticeBody(
            notice_id=row["notice_id"],
            request_id=row["request_id"],
            type=row["request_type"],
            recipient_id=row["recipient_id"],
            categories=[NoticeCategory.model_validate(c) for c in json.loads(row["categories"])],
            identifiers={
                k: list(getattr(identifiers, k))
                for k in KINDS
                if k in kinds and identifiers and getattr(identifiers, k)
            },
            must_acknowledge=row["must_acknowledge"],
            acknowledge_by=row["acknowledge_by"],
            acknowledge_url=f"/v1/notices/{row['notice_id']}/ack" if row["must_acknowledge"] else None,
            sent_at=sent_at,
        )

    async def _record(
        self, row: asyncpg.Record, error: str | None, now: datetime, final: bool = False
    ) -> None:
        """The try's result, unless the notice was acknowledged or closed meanwhile (`final`:
        it can never succeed, so it is failed now)."""
        attempts = row["attempts"] - (1 if final else 0)  # counted at the lease; `final`: nothing was sent
        if error is None:
            state, via = ("delivered", None) if row["must_acknowledge"] else ("acknowledged", "response")
        else:
            final = final or error.startswith("forbidden")  # it will never be allowed: not retried
            state, via = ("failed" if final or attempts >= self.retries.attempts else "pending"), None
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
