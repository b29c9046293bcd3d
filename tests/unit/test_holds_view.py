"""The holds view against a broker that forgets, stalls, or leaves holes (a scripted log in
place of the consumer): it never counts itself complete on a guess, and never stays stuck."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import uuid4

import pytest
from aiokafka import TopicPartition

from shared import topics
from shared.codec import encode
from shared.contracts.holds import SNAPSHOT_KEY, HoldsAnnounced, HoldUpdated
from shared.crypto import IdentifierSeal, new_identifier_key
from shared.identity import Identities
from shared.settings import KafkaSettings
from shared.unreadable import UNREADABLE
from shared.worker import holds, holds_topic
from shared.worker.holds import HoldsBehind, HoldsUnavailable, HoldsView

TP = TopicPartition(topics.HOLDS, 0)
SEAL = IdentifierSeal(new_identifier_key())
T0 = datetime(2026, 11, 27, tzinfo=UTC)


class Record:
    def __init__(self, offset: int, key: bytes, value: bytes | None, headers: tuple[Any, ...] = ()) -> None:
        self.topic, self.partition, self.offset, self.key, self.value = TP.topic, 0, offset, key, value
        self.headers = headers


class ScriptedLog:
    """One partition as a broker keeps it: `None` at an offset is a hole (assigned, never
    readable); `answering` False is a paused broker."""

    def __init__(self) -> None:
        self.entries: list[tuple[Any, ...] | None] = []  # key, value (None: a tombstone), headers
        self.at = 0
        self.answering = True
        self.paused: set[TopicPartition] = set()
        self.asked_behind_a_poll = 0  # end offsets asked while a fetch could be waiting

    def append(self, key: str, message: HoldUpdated | HoldsAnnounced | None) -> None:
        self.entries.append(None if message is None else (key.encode(), encode(message)))

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def topics(self) -> set[str]:
        return {TP.topic}

    def partitions_for_topic(self, topic: str) -> set[int]:
        return {0}

    def assign(self, partitions: list[TopicPartition]) -> None: ...

    def pause(self, *partitions: TopicPartition) -> None:
        self.paused.update(partitions)

    def resume(self, *partitions: TopicPartition) -> None:
        self.paused.difference_update(partitions)

    async def seek_to_beginning(self, *partitions: TopicPartition) -> None:
        self.at = 0

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self.at = offset

    async def position(self, tp: TopicPartition) -> int:
        return self.at

    async def end_offsets(self, partitions: list[TopicPartition]) -> dict[TopicPartition, int]:
        if not self.answering:
            raise TimeoutError
        if TP not in self.paused:  # aiokafka would have a long poll on the connection before it
            self.asked_behind_a_poll += 1
        return {TP: len(self.entries)}

    async def getmany(
        self, *partitions: TopicPartition, timeout_ms: int = 0
    ) -> dict[TopicPartition, list[Any]]:
        out = []
        if TP in self.paused:
            return {}
        while self.answering and self.at < len(self.entries) and self.entries[self.at]:
            out.append(Record(self.at, *self.entries[self.at]))  # type: ignore[misc]
            self.at += 1
        return {TP: out} if out else {}


def hold(case: str, version: int = 1) -> HoldUpdated:
    return HoldUpdated(
        hold_id=uuid4(),
        version=version,
        case_reference=case,
        subject_ref="subj_" + "0" * 32,
        sealed_identifiers=SEAL.seal(Identities(customer_ids=["C-1"])),
        placed_at=T0,
    )


def announce(log: ScriptedLog, *held: HoldUpdated) -> None:
    for h in held:
        log.append(str(h.hold_id), h)
    log.append(SNAPSHOT_KEY, HoldsAnnounced(versions={h.hold_id: h.version for h in held}))


@pytest.fixture
def fast(monkeypatch: pytest.MonkeyPatch) -> Callable[[float], None]:
    """No real waiting: the catch-up gives up at once, and the clock is ours to move."""
    now = [0.0]
    monkeypatch.setattr(holds_topic, "CATCH_UP_S", 0.0)
    monkeypatch.setattr(holds_topic.time, "monotonic", lambda: now[0])

    def advance(seconds: float) -> None:
        now[0] += seconds

    return advance


async def view_on(log: ScriptedLog) -> HoldsView:
    view = HoldsView(KafkaSettings(), SEAL)
    await view.start(log)  # type: ignore[arg-type]
    return view


async def test_a_broker_that_forgot_is_noticed_by_the_marker_and_the_view_waits_for_a_new_one(
    fast: Callable[[float], None],
) -> None:
    log = ScriptedLog()
    a = hold("LIT-A")
    announce(log, a)
    view = await view_on(log)
    await view.refresh()
    assert view.incomplete() is None
    # The broker restarts empty; a hold B is placed (acknowledged), the log is as long as before.
    b = hold("LIT-B")
    log.entries = []
    log.append(str(b.hold_id), b)
    log.append("x", hold("LIT-X"))
    await view.refresh()
    assert view.incomplete() is not None  # the old marker is gone: no decision on what was read
    with pytest.raises(HoldsUnavailable):
        await view.active("billing", T0)
    announce(log, a, b)  # intake noticed and announced every hold again
    await view.refresh()
    assert view.incomplete() is None
    assert {h.case_reference for h in await view.active("billing", T0)} == {"LIT-A", "LIT-B", "LIT-X"}


async def test_a_broker_that_does_not_answer_leaves_the_view_not_current(
    fast: Callable[[float], None],
) -> None:
    log = ScriptedLog()
    announce(log, hold("LIT-A"))
    view = await view_on(log)
    await view.refresh()
    log.answering = False
    with pytest.raises(TimeoutError):
        await view.refresh()
    assert view.incomplete() == "the holds topic could not be read up to its end (broker unreachable?)"
    log.answering = True
    await view.refresh()
    assert view.incomplete() is None  # a pause is not a loss: no new marker needed


async def test_a_hole_is_stepped_over_only_after_the_broker_answered_around_it_for_a_while(
    fast: Callable[[float], None],
) -> None:
    log = ScriptedLog()
    a = hold("LIT-A")
    log.append("lost", None)  # a produce that failed after taking an offset
    announce(log, a)
    view = await view_on(log)
    with pytest.raises(HoldsBehind):
        await view.refresh()
    fast(holds_topic.HOLE_AFTER_S - 1)
    with pytest.raises(HoldsBehind):
        await view.refresh()  # still waiting: it might be a slow write
    assert view.incomplete() is not None
    fast(2)
    with pytest.raises(HoldsBehind):
        await view.refresh()  # stepped over now; the rest is read on the next refresh
    await view.refresh()
    assert view.incomplete() is None
    assert [h.case_reference for h in await view.active("crm", T0)] == ["LIT-A"]


async def test_an_unreadable_hold_stands_until_a_readable_version_of_it_supersedes_it() -> None:
    log = ScriptedLog()
    a = hold("LIT-A")
    other_key = IdentifierSeal(new_identifier_key()).seal(Identities(customer_ids=["C-1"]))
    log.append(str(a.hold_id), a.model_copy(update={"sealed_identifiers": other_key}))
    announce(log, a)
    view = await view_on(log)
    await view.refresh()
    assert view.incomplete() is None  # the readable version came after the unreadable one
    log.append(str(a.hold_id), a.model_copy(update={"version": 2, "sealed_identifiers": other_key}))
    await view.refresh()
    assert view.incomplete() == "1 unreadable hold message(s)"


async def test_an_unreadable_message_of_a_forgotten_log_stands_only_if_it_is_read_again(
    fast: Callable[[float], None],
) -> None:
    log = ScriptedLog()
    a = hold("LIT-A")
    other_key = IdentifierSeal(new_identifier_key()).seal(Identities(customer_ids=["C-1"]))
    stray = str(uuid4())  # a hold's key, after the marker: a hold placed since, for all it knows
    announce(log, a)
    log.append(stray, a.model_copy(update={"hold_id": uuid4(), "sealed_identifiers": other_key}))
    view = await view_on(log)
    await view.refresh()
    assert view.incomplete() == "1 unreadable hold message(s)"
    log.entries = []  # the broker forgot; intake announces again, without the stray message
    announce(log, a)
    await view.refresh()
    assert view.incomplete() is None
    log.entries = []  # forgotten again, and this time the stray message is sent again too
    announce(log, a)
    log.append(stray, a.model_copy(update={"hold_id": uuid4(), "sealed_identifiers": other_key}))
    await view.refresh()
    assert view.incomplete() == "1 unreadable hold message(s)"


async def test_a_hold_whose_identifiers_were_dropped_is_read_and_covers_nothing() -> None:
    log = ScriptedLog()
    a, b = hold("LIT-A"), hold("LIT-B")
    # Intake drops them a day after the end; a worker whose clock is behind still sees it in force.
    ended = b.model_copy(
        update={"version": 2, "expires_at": T0 + timedelta(days=2), "sealed_identifiers": None}
    )
    log.append(str(b.hold_id), ended)
    announce(log, a, ended)
    view = await view_on(log)
    await view.refresh()
    assert view.incomplete() is None  # not an unreadable message: a hold that is over
    assert [h.case_reference for h in await view.active("crm", T0 + timedelta(days=1))] == ["LIT-A"]


def test_a_hold_without_an_end_must_carry_its_identifiers() -> None:
    with pytest.raises(ValueError, match="sealed_identifiers"):
        HoldUpdated.model_validate({**hold("LIT-C").model_dump(), "sealed_identifiers": None})
    assert HoldUpdated.model_validate(
        {**hold("LIT-C").model_dump(), "sealed_identifiers": None, "released_at": T0}
    )


class SlowLog(ScriptedLog):
    """A broker that answers, slowly: a refresh is in progress while other work goes on."""

    def __init__(self) -> None:
        super().__init__()
        self.release = asyncio.Event()

    async def end_offsets(self, partitions: list[TopicPartition]) -> dict[TopicPartition, int]:
        await self.release.wait()
        return await super().end_offsets(partitions)


async def test_a_refresh_in_progress_leaves_what_the_last_one_read_in_force() -> None:
    """A worker refreshes before each batch and every few seconds, from more than one consumer:
    a batch whose own refresh succeeded decides on it while another refresh runs (it once held
    back every erasure that ran beside a refresh)."""
    log = SlowLog()
    announce(log, hold("LIT-A"))
    view = await view_on(log)
    log.release.set()
    await view.refresh()
    log.release.clear()
    running = asyncio.create_task(view.refresh())
    await asyncio.sleep(0.01)
    assert not running.done()
    assert view.incomplete() is None
    assert [h.case_reference for h in await view.active("crm", T0)] == ["LIT-A"]
    log.release.set()
    await running
    assert view.incomplete() is None


async def test_the_view_asks_for_end_offsets_with_no_fetch_of_its_own_waiting() -> None:
    """A broker answers one connection's requests in order: with the holds partitions fetchable
    between refreshes, each refresh's end-offsets request queued behind the consumer's own long
    poll (83 ms at the median in a soak, before every batch of every worker). They are fetched
    only while a refresh reads them, and a refresh still reads what arrived since the last."""
    log = ScriptedLog()
    announce(log, hold("LIT-A"))
    view = await view_on(log)
    await view.refresh()
    later = hold("LIT-B")
    log.append(str(later.hold_id), later)
    await view.refresh()
    await view.refresh()
    assert sorted(h.case_reference for h in await view.active("crm", T0)) == ["LIT-A", "LIT-B"]
    assert log.paused == {TP}
    assert log.asked_behind_a_poll == 0


async def test_each_change_between_complete_and_not_is_logged_once_at_a_decision(
    fast: Callable[[float], None], caplog: pytest.LogCaptureFixture
) -> None:
    log = ScriptedLog()
    announce(log, hold("LIT-A"), hold("LIT-B"))
    view = await view_on(log)
    await view.refresh()
    with caplog.at_level("INFO", logger=holds.__name__):
        await view.active("billing", T0)
        await view.active("billing", T0)
        log.entries = []  # the broker forgot
        await view.refresh()
        for _ in range(2):
            with pytest.raises(HoldsUnavailable):
                await view.active("billing", T0)
    said = [(r.getMessage(), r.__dict__) for r in caplog.records if r.getMessage().startswith("holds view")]
    assert [m for m, _ in said] == ["holds view complete", "holds view not complete: erasures wait"]
    complete = said[0][1]
    assert (complete["holds"], complete["announced"], complete["marker"], complete["partitions"]) == (
        2,
        2,
        "0/2",
        1,
    )
    assert (
        said[1][1]["reason"]
        == "no holds announcement read yet (intake publishes one at start and after a broker loss)"
    )


async def test_what_is_in_force_is_what_it_was_at_every_moment_however_often_it_is_asked() -> None:
    """The view keeps its last answer while no hold changes and no hold starts, ends or is
    released: asked at moments on both sides of each of those, and after a new version is
    read, it answers as if it had worked it out afresh."""
    log = ScriptedLog()
    early, later = (
        hold("LIT-EARLY"),
        hold("LIT-LATER").model_copy(update={"placed_at": T0 + timedelta(hours=2)}),
    )
    expiring = hold("LIT-EXPIRES").model_copy(update={"expires_at": T0 + timedelta(hours=5)})
    other_system = hold("LIT-BILLING").model_copy(update={"systems": ["billing"]})
    announce(log, early, later, expiring, other_system)
    view = await view_on(log)
    await view.refresh()

    def fresh(moment: datetime, *current: HoldUpdated) -> list[str]:
        return sorted(h.case_reference for h in current if h.active_at(moment) and h.covers("crm"))

    moments = [T0 + timedelta(minutes=m) for m in (0, 60, 119, 120, 121, 240, 299, 300, 301, 240, 0, 600)]
    for moment in moments:
        assert sorted(h.case_reference for h in await view.active("crm", moment)) == fresh(
            moment, early, later, expiring
        )
    kept, again = await view.active("crm", T0), await view.active("crm", T0 + timedelta(minutes=30))
    assert kept == again and all(a is b for a, b in zip(kept, again, strict=True))  # kept, not made again
    kept.clear()  # each caller's own list: what the view keeps is not changed
    assert len(await view.active("crm", T0)) == 3  # LIT-LATER too: read, so in force
    # Released in the span the last answer was for: the answer must not stand.
    assert "LIT-EARLY" in [h.case_reference for h in await view.active("crm", T0 + timedelta(hours=10))]
    released = early.model_copy(update={"version": 2, "released_at": T0 + timedelta(hours=6)})
    log.append(str(early.hold_id), released)
    await view.refresh()
    for moment in reversed(moments):
        assert sorted(h.case_reference for h in await view.active("crm", moment)) == fresh(
            moment, released, later, expiring
        )
    billing = sorted(h.case_reference for h in await view.active("billing", T0))
    assert billing == ["LIT-BILLING", "LIT-EARLY", "LIT-EXPIRES", "LIT-LATER"]


async def test_a_hold_read_is_in_force_though_the_workers_clock_is_behind_intakes() -> None:
    """Intake stamps `placed_at` with its clock and acknowledges; a worker whose clock is two
    seconds behind decides a moment later, by its clock before `placed_at`: the hold holds."""
    log = ScriptedLog()
    placed = hold("LIT-SKEW").model_copy(update={"placed_at": T0 + timedelta(seconds=1)})
    announce(log, placed)
    view = await view_on(log)
    await view.refresh()
    worker_now = T0 - timedelta(seconds=1)
    assert [h.case_reference for h in await view.active("crm", worker_now)] == ["LIT-SKEW"]


async def test_an_unreadable_message_that_cannot_be_a_hold_stops_nothing() -> None:
    """Any producer on the topic: ten bytes under a key no hold has, a tombstone, a corrupted
    message under a hold's key that the next marker does not list. None is a hold intake has,
    so none holds erasure back for good; a corrupted hold the marker lists still does."""
    log = ScriptedLog()
    a = hold("LIT-A")
    announce(log, a)
    log.entries.append((b"junk", b"not a hold"))
    view = await view_on(log)
    await view.refresh()
    assert view.incomplete() is None  # not a hold's key: dead-lettered by intake, nothing more
    stray = str(uuid4()).encode()
    log.entries.append((stray, b"not a hold either"))
    await view.refresh()
    assert view.incomplete() == "1 unreadable hold message(s)"  # a new hold, for all it knows
    announce(log, a)  # intake's next marker: every hold it has, and that is not one
    await view.refresh()
    assert view.incomplete() is None
    log.entries.append((stray, b"again"))
    log.entries.append((stray, None))  # the compacted topic's way to say the key is gone
    await view.refresh()
    assert view.incomplete() is None
    log.entries.append((str(a.hold_id).encode(), b"corrupted"))
    log.append(SNAPSHOT_KEY, HoldsAnnounced(versions={a.hold_id: a.version}))  # lists LIT-A: it stands
    await view.refresh()
    assert view.incomplete() == "1 unreadable hold message(s)"


@pytest.mark.parametrize("under_a_holds_key", [True, False])
async def test_a_record_that_could_not_be_read_holds_erasures_back_until_a_marker(
    under_a_holds_key: bool,
) -> None:
    """Handed out with nothing read of its value (shared/unreadable.py), under a hold's key, it
    read as a tombstone, and the view as complete. With no key (the one record that stands for
    the rest of a batch whose framing was lost) it may have been any hold: intake sends them in
    batches. Either is an unreadable hold message, until a marker that does not list it."""
    log = ScriptedLog()
    a = hold("LIT-A")
    log.append(str(a.hold_id), a)
    announce(log, a)
    view = await view_on(log)
    await view.refresh()
    assert [h.case_reference for h in await view.active("crm", T0)] == ["LIT-A"]
    key = str(a.hold_id).encode() if under_a_holds_key else None
    log.entries.append((key, None, ((UNREADABLE, b"it could not be read"),)))
    await view.refresh()
    assert view.incomplete() == "1 unreadable hold message(s)"
    with pytest.raises(HoldsUnavailable):
        await view.active("crm", T0)
    if not under_a_holds_key:
        announce(log, a)  # intake's next marker: every hold it has
        await view.refresh()
        assert view.incomplete() is None
