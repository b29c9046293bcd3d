"""The demo data decides the same on any day: loaded on days more than a year apart (and on
today), every demo subject's erasure keeps and erases the same records under the same rules,
each kept for as long after the load as on the day the file was written for.

A fixed date slipping back into the demo file (or a rule measured from the wrong anchor)
changes a decision on one of these days and fails here, instead of on the day it expires."""

from __future__ import annotations

import calendar
from collections.abc import AsyncIterator, Callable
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from uuid import uuid4

import pytest

from cli.seed import SeedFile
from services.billing import seed as billing_seed
from services.billing.store import BillingAdapter
from services.crm import seed as crm_seed
from services.crm.store import CrmAdapter
from services.mailing import seed as mailing_seed
from services.mailing.store import MailingAdapter
from services.recordings import seed as recordings_seed
from services.recordings.store import RecordingsAdapter
from shared.contracts import EraseSubject
from shared.crypto import subject_ref
from shared.identity import Identities
from shared.policy.evaluate import RetentionPolicy
from shared.policy.model import DEFAULT_POLICY_FILE, load_policy
from shared.worker.handler import execute
from shared.worker.pgstore import PostgresStoreAdapter
from tests.conftest import drop_database
from tests.demo_expected import DEMO_ERASURE

pytestmark = pytest.mark.integration
POLICY = RetentionPolicy(load_policy(DEFAULT_POLICY_FILE))
# (found, erased, [(rule, days from the load to the until-date)]) per system and category
Decisions = dict[tuple[str, str], tuple[int, int, list[tuple[str | None, int | None]]]]


def days_after(as_of: date) -> list[date]:
    """Days more than a year apart either side of the file's own, a leap day among them, and
    today: each rule's window and the calendar's irregularities get their chance to differ."""
    return [
        as_of,
        as_of + timedelta(days=400),
        date(next(y for y in range(as_of.year + 1, as_of.year + 9) if calendar.isleap(y)), 2, 29),
        as_of - timedelta(days=500),
        datetime.now(UTC).date(),
    ]


async def _adapters(server: str, root: Path) -> dict[str, PostgresStoreAdapter]:
    prefix = f"lethe_any_{uuid4().hex[:8]}"
    adapters: dict[str, PostgresStoreAdapter] = {
        "billing": BillingAdapter(f"{server}/{prefix}_billing"),
        "crm": CrmAdapter(f"{server}/{prefix}_crm"),
        "recordings": RecordingsAdapter(f"{server}/{prefix}_recordings", root),
        "mailing": MailingAdapter(f"{server}/{prefix}_mailing", "k"),
    }
    for adapter in adapters.values():
        await adapter.start()
    return adapters


async def _seed(adapters: dict[str, PostgresStoreAdapter], seed: SeedFile, root: Path) -> None:
    people = seed.people
    async with adapters["billing"].pool.acquire() as conn:
        await billing_seed.write(conn, [a for p in people for a in p.billing])
    async with adapters["crm"].pool.acquire() as conn:
        await crm_seed.write(conn, [c for p in people for c in p.crm])
    async with adapters["recordings"].pool.acquire() as conn:
        await recordings_seed.write(conn, root, [r for p in people for r in p.recordings])
    async with adapters["mailing"].pool.acquire() as conn:
        await mailing_seed.write_lists(conn, seed.mailing_lists)
        await mailing_seed.write(conn, "k", [s for p in people for s in p.mailing])


def _noon_of(day: date) -> Callable[[], datetime]:
    return lambda: datetime(day.year, day.month, day.day, 12, tzinfo=UTC)


async def decisions_on(day: date, demo: SeedFile, server: str, root: Path) -> dict[str, Decisions]:
    """Load the demo as it loads on `day` and erase every subject in it with the clock at noon."""
    adapters = await _adapters(server, root)
    try:
        await _seed(adapters, demo.on(day), root)
        result: dict[str, Decisions] = {}
        for person in demo.people:
            if person.subject is None:
                continue
            ids = Identities(
                customer_ids=[person.subject.customer_id] if person.subject.customer_id else [],
                emails=person.subject.emails,
                phones=person.subject.phones,
            )
            result[person.label] = {}
            for system, adapter in adapters.items():
                command = EraseSubject(
                    request_id=f"any-{person.label}",
                    system=system,
                    subject_ref=subject_ref("k", ids),
                    sealed_identifiers="x",
                )
                outcome = await execute(command, ids, adapter, POLICY, _noon_of(day))
                assert outcome.status == "done", (day, person.label, system, outcome.error)
                for c in outcome.categories:
                    result[person.label][(system, c.category)] = (
                        c.found,
                        c.erased,
                        sorted(
                            (
                                (r.rule_id, (r.retain_until - day).days if r.retain_until else None)
                                for r in c.retained
                                for _ in range(r.count)
                            ),
                            key=str,
                        ),
                    )
        return result
    finally:
        for adapter in adapters.values():
            await adapter.close()
            await drop_database(server, adapter.database_url.rsplit("/", 1)[1])


@pytest.fixture(scope="module")
def as_of(demo_seed: SeedFile) -> date:
    assert demo_seed.as_of is not None, "the demo file must say what day its dates were written for"
    return demo_seed.as_of


@pytest.fixture
async def on_the_files_own_day(
    as_of: date, demo_seed: SeedFile, pg_server: str, tmp_path: Path
) -> AsyncIterator[dict[str, Decisions]]:
    yield await decisions_on(as_of, demo_seed, pg_server, tmp_path / "as_of")


def _totals(decisions: Decisions) -> dict[str, tuple[int, int, int]]:
    totals: dict[str, tuple[int, int, int]] = {}
    for (system, _), (found, erased, retained) in decisions.items():
        f, e, r = totals.get(system, (0, 0, 0))
        totals[system] = (f + found, e + erased, r + len(retained))
    return totals


async def test_the_demo_erasure_is_what_the_end_to_end_test_expects(
    on_the_files_own_day: dict[str, Decisions],
) -> None:
    for label, expected in DEMO_ERASURE.items():
        assert _totals(on_the_files_own_day[label]) == expected


@pytest.mark.parametrize("shift", range(1, 5), ids=["+400d", "leap-day", "-500d", "today"])
async def test_every_decision_is_the_same_on_any_day(
    shift: int,
    as_of: date,
    demo_seed: SeedFile,
    on_the_files_own_day: dict[str, Decisions],
    pg_server: str,
    tmp_path: Path,
) -> None:
    day = days_after(as_of)[shift]
    other = await decisions_on(day, demo_seed, pg_server, tmp_path / "other")
    for label, decisions in on_the_files_own_day.items():
        for key, (found, erased, retained) in decisions.items():
            o_found, o_erased, o_retained = other[label][key]
            assert (o_found, o_erased) == (found, erased), (day, label, key)
            # The same rules, each until about as long after the load: months differ in
            # length, so an until-date measured in months may move by up to three days.
            assert [r for r, _ in o_retained] == [r for r, _ in retained], (day, label, key)
            for (_, days), (_, o_days) in zip(retained, o_retained, strict=True):
                assert (days is None) == (o_days is None), (day, label, key)
                assert days is None or o_days is None or abs(days - o_days) <= 3, (day, label, key)
