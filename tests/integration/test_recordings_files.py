"""Recordings against real PostgreSQL and real files: no audio left on disk after a lost
transaction, no link followed, no file overwritten, and verification that looks at the files."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path
from uuid import uuid4

import asyncpg
import pytest

from cli.seed import SeedFile
from services.recordings import files
from services.recordings import seed as recordings_seed
from services.recordings.store import RecordingsAdapter
from shared.contracts import Action, EraseSubject, LiftRestriction, RestrictSubject
from shared.crypto import subject_ref
from shared.identity import Identities
from shared.worker.handler import UnconfirmedChanges, execute
from shared.worker.policy import ActOnEverything
from shared.worker.ports import Decision
from shared.worker.runtime import utc_clock
from tests.conftest import person

pytestmark = pytest.mark.integration
ALICE = Identities(customer_ids=["C-1001"])
ALICES = ["2026/02/REC-1001-01.wav", "2026/02/REC-1001-02.wav"]
BENS = "2026/10/REC-1002-01.wav"
Command = type[EraseSubject] | type[RestrictSubject] | type[LiftRestriction]


def command(cls: Command) -> EraseSubject | RestrictSubject | LiftRestriction:
    ref = subject_ref("k", ALICE)
    return cls(request_id="rf-1", system="recordings", subject_ref=ref, sealed_identifiers="x")


async def run(adapter: RecordingsAdapter, cls: Command, message: EraseSubject | None = None) -> str:
    outcome = await execute(message or command(cls), ALICE, adapter, ActOnEverything(), utc_clock)
    return outcome.status


@pytest.fixture
async def adapter(fresh_db: str, tmp_path: Path, demo_seed: SeedFile) -> AsyncIterator[RecordingsAdapter]:
    store = RecordingsAdapter(fresh_db, tmp_path / "root")
    await store.start()
    try:
        async with store.pool.acquire() as conn:
            people = person(demo_seed, "alice").recordings + person(demo_seed, "ben").recordings
            await recordings_seed.write(conn, store.root, people)
        yield store
    finally:
        await store.close()


async def lost_transaction(adapter: RecordingsAdapter, action: Action) -> None:
    """The files change, then the transaction fails before its commit (a crash, a lost
    connection): the rows still say where the files were."""
    with pytest.raises(RuntimeError):
        async with adapter.session() as store:
            records = await store.find(ALICE)
            await store.apply([Decision(record=r, action=action) for r in records])
            raise RuntimeError("commit lost")


async def indexed(adapter: RecordingsAdapter) -> dict[str, str]:
    rows = await adapter.pool.fetch("SELECT recording_id, path FROM recordings ORDER BY 1")
    return {r["recording_id"]: r["path"] for r in rows}


def audio(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*.wav"))


async def test_audio_moved_by_a_lost_transaction_is_erased_with_its_row(adapter: RecordingsAdapter) -> None:
    await lost_transaction(adapter, Action.RESTRICTED)
    assert audio(adapter.root) == sorted([BENS, *(f"restricted/{p}" for p in ALICES)])
    assert set((await indexed(adapter)).values()) == {*ALICES, BENS}  # the rows never knew
    assert await run(adapter, EraseSubject) == "done"
    assert audio(adapter.root) == [BENS] and list(await indexed(adapter)) == ["REC-1002-01"]


async def test_commands_tried_again_after_a_lost_transaction_end_where_they_should(
    adapter: RecordingsAdapter,
) -> None:
    await lost_transaction(adapter, Action.RESTRICTED)
    assert await run(adapter, RestrictSubject) == "done"  # the files had moved: the rows follow
    hidden = [f"restricted/{p}" for p in ALICES]
    assert audio(adapter.root) == sorted([BENS, *hidden])
    assert [p for p in (await indexed(adapter)).values() if p != BENS] == hidden
    # A lift moves the files back and loses its commit; the rows still say restricted/. A
    # restriction asked again must not take the rows' word that the files are in place.
    await lost_transaction(adapter, Action.UNRESTRICTED)
    assert audio(adapter.root) == sorted([*ALICES, BENS])
    assert await run(adapter, RestrictSubject) == "done"
    assert audio(adapter.root) == sorted([BENS, *hidden])
    assert await run(adapter, LiftRestriction) == "done"
    assert audio(adapter.root) == sorted([*ALICES, BENS])


async def test_erasure_removes_links_never_their_targets(adapter: RecordingsAdapter, tmp_path: Path) -> None:
    outside = tmp_path / "outside.wav"
    outside.write_bytes(b"not ours")
    first, second = (adapter.root / p for p in ALICES)
    first.unlink()
    first.symlink_to(outside)  # a link to a file outside the storage root
    second.unlink()
    second.symlink_to(adapter.root / BENS)  # a link to another subject's recording
    assert await run(adapter, EraseSubject) == "done"
    assert not first.is_symlink() and not second.is_symlink()
    assert outside.read_bytes() == b"not ours" and audio(adapter.root) == [BENS]


async def test_a_folder_linked_outside_the_root_is_refused(
    adapter: RecordingsAdapter, tmp_path: Path
) -> None:
    month = adapter.root / "2026/02"
    elsewhere = tmp_path / "elsewhere"
    month.rename(elsewhere)
    month.symlink_to(elsewhere)
    with pytest.raises(files.UnsafePath):
        await run(adapter, EraseSubject)
    assert sorted(p.name for p in elsewhere.iterdir()) == ["REC-1001-01.wav", "REC-1001-02.wav"]
    assert len(await indexed(adapter)) == 3  # rolled back: the rows still lead to the files


async def test_a_move_never_overwrites_a_file_at_its_target(adapter: RecordingsAdapter) -> None:
    occupant = adapter.root / "restricted" / ALICES[0]
    occupant.parent.mkdir(parents=True)
    occupant.write_bytes(b"someone else's")
    with pytest.raises(files.TargetExists):
        await run(adapter, RestrictSubject)
    assert occupant.read_bytes() == b"someone else's"
    assert (adapter.root / ALICES[0]).stat().st_size > 44  # the subject's audio, untouched
    assert set((await indexed(adapter)).values()) == {*ALICES, BENS}


async def test_a_file_written_at_the_target_during_a_move_is_not_overwritten(
    adapter: RecordingsAdapter, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another process writes the target just after the move found it free: the move is
    refused and rolled back, both files intact."""
    occupant, real = adapter.root / "restricted" / ALICES[0], files._lstat

    def then_someone_writes(folder: int, name: str) -> os.stat_result | None:
        found = real(folder, name)
        month = occupant.parent
        if month.exists() and os.fstat(folder).st_ino == month.stat().st_ino and not occupant.exists():
            occupant.write_bytes(b"someone else's")
        return found

    monkeypatch.setattr(files, "_lstat", then_someone_writes)
    with pytest.raises(files.TargetExists):
        await run(adapter, RestrictSubject)
    assert occupant.read_bytes() == b"someone else's"
    assert (adapter.root / ALICES[0]).stat().st_size > 44  # the subject's audio, untouched
    assert set((await indexed(adapter)).values()) == {*ALICES, BENS}


async def test_verification_looks_at_the_files(
    adapter: RecordingsAdapter, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An unlink or a move that did not happen (a storage that lost it, a file written again):
    the rows would say done, the files do not; the command is not reported, and its rows stay
    to lead the next try to the files."""
    monkeypatch.setattr(files, "remove", lambda root, path: None)
    erase = command(EraseSubject)
    with pytest.raises(UnconfirmedChanges, match="2 records"):
        await run(adapter, EraseSubject, erase)
    assert len(await indexed(adapter)) == 3 and len(audio(adapter.root)) == 3
    monkeypatch.setattr(files, "move", lambda root, source, target: None)
    with pytest.raises(UnconfirmedChanges):
        await run(adapter, RestrictSubject)
    assert set((await indexed(adapter)).values()) == {*ALICES, BENS}
    monkeypatch.undo()
    assert await run(adapter, EraseSubject, erase) == "done"  # the same command, tried again
    assert audio(adapter.root) == [BENS]


async def test_no_two_recordings_share_a_place(adapter: RecordingsAdapter) -> None:
    await adapter.start()  # the schema again: idempotent
    insert = (
        "INSERT INTO recordings (recording_id, caller, callee, recorded_at, duration_s, path)"
        " VALUES ($1, '1', '2', now(), 1, $2)"
    )
    for path in (ALICES[0], f"restricted/{ALICES[0]}"):
        with pytest.raises(asyncpg.UniqueViolationError):
            await adapter.pool.execute(insert, f"R-{uuid4().hex[:8]}", path)
