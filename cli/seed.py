"""`lethe seed FILE`: one JSON format describing people and their records in every system,
written into the real stores. Its JSON Schema is `deploy/seed.schema.json` (`lethe seed
--schema` prints it). Demo data and tests use this loader."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Literal

from pydantic import Field

from services.billing import seed as billing_seed
from services.billing.store import SCHEMA as BILLING_SCHEMA
from services.crm import seed as crm_seed
from services.crm.store import SCHEMA as CRM_SCHEMA
from services.directory import seed as directory_seed
from services.directory.ldap import Directory, LdapSettings
from services.mailing import seed as mailing_seed
from services.mailing.store import SCHEMA as MAILING_SCHEMA
from services.recordings import seed as recordings_seed
from services.recordings.store import SCHEMA as RECORDINGS_SCHEMA
from shared.seeding import SeedModel, shift_dates
from shared.worker.pgstore import open_store


class SubjectSeed(SeedModel):
    """How an upstream DSAR tool would name this person in a request (used by the demo)."""

    customer_id: str | None = None
    emails: list[str] = Field(default_factory=list)
    phones: list[str] = Field(default_factory=list)
    ldap_uid: str | None = None


class PersonSeed(SeedModel):
    label: str = Field(description="A name for people reading the file and for tests; not stored.")
    subject: SubjectSeed | None = None
    billing: list[billing_seed.BillingAccountSeed] = Field(default_factory=list)
    crm: list[crm_seed.CrmContactSeed] = Field(default_factory=list)
    recordings: list[recordings_seed.RecordingSeed] = Field(default_factory=list)
    directory: list[directory_seed.DirectoryEntrySeed] = Field(default_factory=list)
    mailing: list[mailing_seed.SubscriptionSeed] = Field(default_factory=list)


class SeedFile(SeedModel):
    schema_version: Literal[1] = 1
    as_of: date | None = Field(
        None,
        description="The day this file's dates were written for. The loader moves every date and"
        " time in the file by the days between as_of and the day it loads, so each record is as old"
        " on any day as it was on as_of and every retention rule decides the same. Without it,"
        " dates load as written (an export of real records).",
    )
    mailing_lists: list[mailing_seed.MailingListSeed] = Field(default_factory=list)
    people: list[PersonSeed] = Field(default_factory=list)

    def on(self, today: date) -> SeedFile:
        """The file as it loads on `today`: dates moved so that as_of falls on today."""
        if self.as_of is None:
            return self
        return shift_dates(self, today - self.as_of)  # as_of itself moves to today

    def only(self, *labels: str) -> SeedFile:
        """The same file with only the people named (keeping its lists and its as_of)."""
        return self.model_copy(update={"people": [p for p in self.people if p.label in labels]})


@dataclass(frozen=True)
class SeedTargets:
    database_urls: dict[str, str]
    ldap: LdapSettings
    recordings_dir: Path
    suppression_key: str


@dataclass
class SeedReport:
    rows: dict[str, int]
    refused_suppressed: int


async def load(seed: SeedFile, targets: SeedTargets, today: date | None = None) -> SeedReport:
    """Idempotent: loading a file twice on one day writes each record once. Dates are moved to
    `today` (UTC's, unless given) when the file says what day it was written for."""
    seed = seed.on(today or datetime.now(UTC).date())
    people = seed.people
    rows: dict[str, int] = {}
    pool = await open_store(targets.database_urls["billing"], *BILLING_SCHEMA)
    async with pool.acquire() as conn, conn.transaction():
        rows["billing"] = await billing_seed.write(conn, [a for p in people for a in p.billing])
    await pool.close()
    pool = await open_store(targets.database_urls["crm"], *CRM_SCHEMA)
    async with pool.acquire() as conn, conn.transaction():
        rows["crm"] = await crm_seed.write(conn, [c for p in people for c in p.crm])
    await pool.close()
    pool = await open_store(targets.database_urls["recordings"], *RECORDINGS_SCHEMA)
    async with pool.acquire() as conn, conn.transaction():
        rows["recordings"] = await recordings_seed.write(
            conn, targets.recordings_dir, [r for p in people for r in p.recordings]
        )
    await pool.close()
    pool = await open_store(targets.database_urls["mailing"], *MAILING_SCHEMA)
    async with pool.acquire() as conn, conn.transaction():
        await mailing_seed.write_lists(conn, seed.mailing_lists)
        rows["mailing"], refused = await mailing_seed.write(
            conn, targets.suppression_key, [s for p in people for s in p.mailing]
        )
    await pool.close()
    rows["directory"] = await directory_seed.write(
        Directory(targets.ldap), [e for p in people for e in p.directory]
    )
    return SeedReport(rows=rows, refused_suppressed=refused)


def read(path: Path) -> SeedFile:
    return SeedFile.model_validate_json(path.read_text())
