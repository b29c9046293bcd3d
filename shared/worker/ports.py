"""What the worker runtime needs from a system: a store adapter. Everything else (decoding,
idempotency, policy, verification, outcome, retries) is the runtime's."""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from datetime import date
from typing import Any, ClassVar, Protocol
from uuid import UUID

from pydantic import Field

from shared.contracts.base import Frozen
from shared.contracts.outcomes import Action
from shared.identity import Identities, Kind


class Record(Frozen):
    """One record the subject's identifiers found, as the store holds it. `record_id` is the
    store's own key (opaque: never an e-mail or phone). `dates` are the anchors retention rules
    count from (e.g. invoice date), `facts` anything else a rule may ask about (e.g. an active
    contract).

    Whose it is (shared/worker/matching.py): `owner` are the identifiers on it that say whose
    it is (an account's customer id, e-mail and phone; not a call's other party), `matched`
    the subject's identifiers that found it, `variants` the subject's e-mails of which it holds
    another sub-address. A record found through another (an invoice, through its account)
    names that one as its `group` and carries its identifiers: they are decided together."""

    category: str
    record_id: str
    restricted: bool = False
    dates: dict[str, date] = Field(default_factory=dict)
    facts: dict[str, Any] = Field(default_factory=dict)
    owner: Identities = Field(default_factory=Identities)
    matched: Identities = Field(default_factory=Identities)
    variants: Identities = Field(default_factory=Identities)
    # Kinds of identifier the record holds a value of that could not be read (Identities.read):
    # whose it is cannot be ruled out by what `owner` lacks.
    unreadable: tuple[Kind, ...] = ()
    group: tuple[str, str] | None = None
    # Every identifier on it (under a group, on the group's head) a search may match, a call's
    # other party too: which holds cover it is then known without searching the store for
    # each hold (shared/worker/hold_cover.py). None: not known (a record an earlier command
    # kept, read back from its journal). Never stored with a plan nor sent.
    searchable: Identities | None = Field(None, exclude=True, repr=False)
    # Where a value on it cannot be read (`unreadable`), the record's texts as the store holds
    # them: a hold's identifier written in one covers it (`07700 900461 / 01632 960000` under a
    # hold on the first), as a subject's puts it to a person. Never stored nor sent, as above.
    unread_texts: tuple[str, ...] = Field((), exclude=True, repr=False)

    @property
    def key(self) -> tuple[str, str]:
        return (self.category, self.record_id)


class Decision(Frozen):
    record: Record
    action: Action
    rule_id: str | None = None
    legal_basis: str | None = None
    retain_until: date | None = None
    hold_reference: str | None = None
    controller: str | None = None
    found_by: str | None = Field(None, description="kind:source of what found it, e.g. emails:learnt")
    review_id: str | None = None
    review_reason: str | None = None
    keep_fields: tuple[str, ...] = ()
    strip_fields: tuple[str, ...] = ()


class JournalEntry(Frozen):
    plan: list[Decision] | None = None
    outcome: dict[str, Any] | None = None


class SearchTooBroad(Exception):
    """A search found more than the store answers at once (an LDAP server's size limit): the
    same identifiers, fewer to a search, are answered."""


class StoreSession(Protocol):
    """One unit of work against the store. For a transactional store (PostgreSQL) it is one
    transaction, journal included; for LDAP or files the journal commits each step, and
    `apply` must tolerate records that are already gone."""

    async def load_journal(self, command_id: UUID) -> JournalEntry | None: ...

    async def save_plan(self, command_id: UUID, plan: Sequence[Decision]) -> list[Decision]:
        """Store the plan unless one exists; return the plan that won."""
        ...

    async def save_outcome(self, command_id: UUID, outcome: dict[str, Any]) -> None: ...

    async def find(self, identities: Identities) -> list[Record]:
        """Every record any of these identifiers (or a sub-address variant of an e-mail among
        them) finds, with `owner`, `matched`, `variants` and `group` filled in."""
        ...

    async def apply(self, decisions: Sequence[Decision]) -> None: ...

    async def unconfirmed(self, decisions: Sequence[Decision]) -> list[tuple[str, str]]:
        """Verification beyond what `find` re-reads, called after `apply` in the same session:
        the keys of the plan's records whose change is not yet true of what the store indexes
        (a recording's audio file still on disk). Any makes the command fail and be tried again,
        so a transactional store keeps the index rows that lead to what is left."""
        ...

    async def existing(self, keys: Sequence[tuple[str, str]]) -> set[tuple[str, str]]:
        """Which of these records are still in the store."""
        ...


class StoreAdapter(Protocol):
    @property
    def system(self) -> str: ...

    @property
    def categories(self) -> tuple[str, ...]:
        """Every category the system holds, so a report can say `not_found` for each."""
        ...

    @property
    def personal_fields(self) -> dict[str, tuple[str, ...]]:
        """Per category, the fields anonymisation clears and retention rules may strip."""
        ...

    @property
    def record_terms(self) -> dict[str, tuple[str, ...]]:
        """Per category, the dates and facts its records may carry (`Record.dates`, `facts`):
        what a retention rule may name as its anchor or `while_fact`."""
        ...

    async def start(self) -> None:
        """Connect and create the store's schema if needed."""
        ...

    async def close(self) -> None: ...

    def session(self) -> AbstractAsyncContextManager[StoreSession]: ...


class StoreBatch(Protocol):
    """Several commands' work in one unit of the store (one transaction), kept or undone whole."""

    def session(self) -> AbstractAsyncContextManager[StoreSession]:
        """A session for one of the commands, inside the batch's unit."""
        ...


class BatchingAdapter(StoreAdapter, Protocol):
    """A store that can do several commands' work in one unit: the unit's cost (a transaction's
    BEGIN and COMMIT, the journal's reads and writes) shared by all of them. `batching` False:
    it can, but had better not (what it changes outside the unit would not be undone with it)."""

    batching: ClassVar[bool]

    def batch(self, command_ids: Sequence[UUID]) -> AbstractAsyncContextManager[StoreBatch]:
        """Committed if the block completes, undone whole if it raises."""
        ...
