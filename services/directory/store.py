"""The directory worker's adapter: entries live in LDAP, which has no transactions, so the
command journal lives in a small PostgreSQL database of the worker's own and every step is
committed as it happens (see shared.worker.ports.StoreSession)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Self

import asyncpg

from services.directory.ldap import THREADS, Directory, LdapError, LdapSettings
from shared.contracts.outcomes import Action
from shared.db import apply_schema, create_pool, ensure_database
from shared.identity import Identities
from shared.settings import DatabaseSettings, DeploymentSettings
from shared.worker.journal import (
    JOURNAL_STRIP_DDL,
    WORKER_JOURNAL_COMPRESSION,
    WORKER_JOURNAL_DDL,
    PostgresJournal,
)
from shared.worker.matching import match, unread_match
from shared.worker.ports import Decision, Record, SearchTooBroad
from shared.worker.settings import RetrySettings

CATEGORY = "directory_entries"


# sizeLimitExceeded, adminLimitExceeded (RFC 4511): the server would answer fewer at a time.
SIZE_LIMITS = frozenset({4, 11})


class DirectorySession(PostgresJournal):
    def __init__(self, conn: asyncpg.Connection, directory: Directory) -> None:
        super().__init__(conn)
        self.directory = directory
        self.located: dict[str, str] = {}  # entryUUID -> DN, as this command's searches saw them

    async def find(self, identities: Identities) -> list[Record]:
        try:
            entries = await self.directory.find(identities)
        except LdapError as exc:
            if exc.code in SIZE_LIMITS:
                raise SearchTooBroad(str(exc)) from exc
            raise
        self.located.update((e.entry_uuid, e.dn) for e in entries)
        records = []
        for e in entries:
            owner, unreadable = Identities.read(ldap_uids=e.uid, emails=e.mail, phones=e.phones)
            matched, variants = match(owner, identities)
            # LDAP matched a spelling; the normalised forms decide (or a person: unread_match).
            texts = (*e.uid, *e.mail, *e.phones)
            if matched or variants or unread_match(unreadable, texts, identities):
                records.append(
                    Record(
                        category=CATEGORY,
                        record_id=e.entry_uuid,
                        restricted=self.directory.is_restricted(e.dn),
                        owner=owner,
                        matched=matched,
                        variants=variants,
                        unreadable=unreadable,
                        searchable=owner,
                        unread_texts=texts if unreadable else (),
                    )
                )
        return records

    async def apply(self, decisions: Sequence[Decision]) -> None:
        def ids(action: Action) -> list[str]:
            return [d.record.record_id for d in decisions if d.action is action]

        await self.directory.delete(ids(Action.ERASED), self.located)
        await self.directory.move(ids(Action.RESTRICTED), restricted=True, known=self.located)
        await self.directory.move(ids(Action.UNRESTRICTED), restricted=False, known=self.located)

    async def unconfirmed(self, decisions: Sequence[Decision]) -> list[tuple[str, str]]:
        return []  # the entries are the store: `find` re-reads them, nothing else to look at

    async def existing(self, keys: Sequence[tuple[str, str]]) -> set[tuple[str, str]]:
        present = await self.directory.existing([record_id for _, record_id in keys])
        return {(CATEGORY, u) for u in present}


class DirectoryAdapter:
    system = "directory"
    categories = (CATEGORY,)
    personal_fields: dict[str, tuple[str, ...]] = {
        CATEGORY: ("cn", "sn", "mail", "telephoneNumber", "mobile")
    }
    record_terms: dict[str, tuple[str, ...]] = {CATEGORY: ()}  # an entry carries no dates

    def __init__(
        self, database_url: str, ldap: LdapSettings, development: bool = False, concurrency: int = THREADS
    ) -> None:
        self.database_url = database_url
        self.directory = Directory(ldap, development, threads=concurrency)
        self._pool: asyncpg.Pool | None = None

    @classmethod
    def from_env(cls) -> Self:
        return cls(
            DatabaseSettings().database_url,
            LdapSettings(),
            DeploymentSettings().development,
            RetrySettings().concurrency,
        )

    async def start(self) -> None:
        await ensure_database(self.database_url)
        self._pool = await create_pool(self.database_url)
        await apply_schema(self._pool, WORKER_JOURNAL_DDL, WORKER_JOURNAL_COMPRESSION, JOURNAL_STRIP_DDL)
        await self.directory.call(self.directory.ensure_tree)

    async def ping(self) -> bool:
        """The directory answers a search (the journal database is checked by the runtime)."""
        await self.directory.find(Identities(ldap_uids=["lethe-readiness-probe"]))
        return True

    async def close(self) -> None:
        self.directory.close()
        if self._pool is not None:
            await self._pool.close()

    @asynccontextmanager
    async def session(self) -> AsyncIterator[DirectorySession]:
        assert self._pool is not None, "start() first"
        async with self._pool.acquire() as conn:
            yield DirectorySession(conn, self.directory)
