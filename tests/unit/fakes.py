"""An in-memory store adapter, for testing the worker runtime without a database."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any
from uuid import UUID

from shared.contracts import Action
from shared.identity import Identities
from shared.worker.matching import match
from shared.worker.ports import Decision, JournalEntry, Record


class FakeStore:
    system = "fake"
    categories = ("things", "other")

    def __init__(self, rows: dict[str, tuple[str, str]]) -> None:
        # record_id -> (category, email)
        self.rows = dict(rows)
        self.restricted: set[str] = set()
        self.journal: dict[UUID, JournalEntry] = {}
        self.fail_apply = 0
        self.applied = 0
        self.resurrect: dict[str, tuple[str, str]] = {}
        self.left_outside: set[str] = set()  # records whose change the world does not show yet

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    @asynccontextmanager
    async def session(self) -> AsyncIterator[FakeStore]:
        yield self

    async def load_journal(self, command_id: UUID) -> JournalEntry | None:
        return self.journal.get(command_id)

    async def save_plan(self, command_id: UUID, plan: Sequence[Decision]) -> list[Decision]:
        entry = self.journal.setdefault(command_id, JournalEntry(plan=list(plan)))
        assert entry.plan is not None
        return entry.plan

    async def save_outcome(self, command_id: UUID, outcome: dict[str, Any]) -> None:
        self.journal[command_id] = JournalEntry(plan=self.journal[command_id].plan, outcome=outcome)

    async def find(self, identities: Identities) -> list[Record]:
        found = []
        for rid, (cat, email) in sorted(self.rows.items()):
            owner = Identities(emails=[email])
            matched, variants = match(owner, identities)
            if matched or variants:
                record = Record(category=cat, record_id=rid, restricted=rid in self.restricted, owner=owner)
                found.append(record.model_copy(update={"matched": matched, "variants": variants}))
        return found

    async def apply(self, decisions: Sequence[Decision]) -> None:
        if self.fail_apply:
            self.fail_apply -= 1
            raise ConnectionError("store away")
        self.applied += 1
        for d in decisions:
            rid = d.record.record_id
            if d.action is Action.ERASED:
                self.rows.pop(rid, None)
            elif d.action is Action.RESTRICTED:
                self.restricted.add(rid)
            elif d.action is Action.UNRESTRICTED:
                self.restricted.discard(rid)
        self.rows.update(self.resurrect)

    async def unconfirmed(self, decisions: Sequence[Decision]) -> list[tuple[str, str]]:
        return [d.record.key for d in decisions if d.record.record_id in self.left_outside]
