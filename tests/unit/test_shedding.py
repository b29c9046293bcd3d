"""When the embedded stack sheds its broker's history (cli/shedding.py), and how a service is
told to check the broker at once."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from datetime import timedelta
from pathlib import Path

import pytest

from cli import carry_over, shedding, supervision
from cli.carry_over import Carried, Letter, resume_offsets
from cli.shedding import RETRY_S, Shedder, SheddingSettings, drained, groups_of, rss_mb
from cli.stack import Stack, StackConfig
from services.tracker import recovery
from services.tracker.settings import TrackerSettings
from shared import broker_memory, topics
from shared.relay_hold import LONGEST_S, RelayHold
from shared.settings import KafkaSettings


def shedder(mb: int = 100, quiet_s: float = 10) -> Shedder:
    return Shedder(SheddingSettings.model_validate({"mb": mb, "quiet_s": quiet_s}))


def test_only_past_the_limit() -> None:
    assert not shedder().over(99.9)
    assert shedder().over(100)
    assert not shedder(mb=0).over(10_000)  # 0: never


def test_only_once_nothing_was_produced_for_the_quiet_time() -> None:
    s = shedder(quiet_s=10)
    assert not s.observe(500, now=0)
    assert not s.observe(500, now=9)
    assert not s.observe(501, now=9.5)  # a message: the quiet starts again
    assert not s.observe(501, now=19)
    assert s.observe(501, now=19.5)
    assert not s.observe(None, now=20)  # the broker could not say: the quiet starts again
    assert not s.observe(501, now=25)
    assert s.observe(501, now=35)
    s.shed()  # a new broker: its offsets start again
    assert not s.observe(501, now=36)


def test_due_past_the_limit_and_not_again_soon_after_a_drain_given_up() -> None:
    s = shedder(mb=100)
    assert not s.due(99, now=0)
    assert s.due(100, now=0)
    assert not s.observe(7, now=0)
    s.put_off(now=10)  # a drain given up: tried again RETRY_S later, its quiet counted afresh
    assert not s.due(500, now=10 + RETRY_S - 1)
    assert s.due(500, now=10 + RETRY_S)
    assert not s.observe(7, now=100)
    assert s.observe(7, now=110)


def test_a_relay_is_held_while_the_file_is_there_and_not_for_ever(tmp_path: Path) -> None:
    path = tmp_path / "relay.hold"
    now = [time.time()]
    held = RelayHold(path, clock=lambda: now[0])
    assert not held() and not RelayHold(None)()
    path.touch()
    assert held()
    now[0] += LONGEST_S + 1  # a supervisor that died mid-drain left it: requests go out anyway
    assert not held()


def test_a_bad_setting_names_its_variable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LETHE_BROKER_SHED_QUIET_S", "0.01")
    with pytest.raises(RuntimeError, match="LETHE_BROKER_SHED_QUIET_S"):
        Stack(StackConfig(state_dir=tmp_path))


def test_memory_of_a_process() -> None:
    assert rss_mb(os.getpid()) > 1
    assert rss_mb(2**22 + 12345) == 0  # gone


async def test_sigusr2_ends_the_wait_for_the_next_broker_check_and_says_the_broker_was_shed() -> None:
    loop = asyncio.get_running_loop()
    broker_memory.listen_for_nudges(loop)
    try:
        stopping = asyncio.Event()
        started = time.monotonic()
        loop.call_later(0.05, os.kill, os.getpid(), signal.SIGUSR2)
        await broker_memory.until_next_check(stopping, 30)
        assert time.monotonic() - started < 5
        # The recovery it leads to publishes again only what finished since just before the
        # shed, however much later it sees the empty broker.
        since = broker_memory.since_shed_notice()
        assert since is not None and 0 <= since < 5
        await asyncio.sleep(0.1)
        assert broker_memory.since_shed_notice() > since  # type: ignore[operator]
        started = time.monotonic()  # the nudge was used up: the next wait is a whole one
        await broker_memory.until_next_check(stopping, 0.2)
        assert time.monotonic() - started >= 0.19
    finally:
        loop.remove_signal_handler(signal.SIGUSR2)
        broker_memory._nudge = broker_memory._told_at = None


def test_no_shed_if_anything_was_produced_since_the_look_before(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The last look at the broker's end offsets is taken just before the restart: a message
    produced after the checks (an upstream submission) stops the shed instead of being dropped."""
    stack = Stack(StackConfig(state_dir=tmp_path))
    ends = iter([11, 10])
    restarts: list[str] = []

    async def nothing(*_: object) -> None:
        return None

    async def no_letters(*_: object) -> Carried:
        return Carried([], {})

    async def end_offsets(*_: object) -> int:
        return next(ends)

    monkeypatch.setattr(carry_over, "keep", no_letters)
    monkeypatch.setattr(carry_over, "restore", nothing)
    monkeypatch.setattr(supervision, "ensure_topics", nothing)
    monkeypatch.setattr(supervision, "produced", end_offsets)
    monkeypatch.setattr(stack, "restart_broker", lambda: restarts.append("broker"))
    assert not stack.supervisor.shed(unless_produced_past=10)
    assert restarts == [] and stack.supervisor.sheds == 0
    assert stack.supervisor.shed(unless_produced_past=10)
    assert restarts == ["broker"] and stack.supervisor.sheds == 1
    assert not (tmp_path / "run" / "dead-letters.json").exists()  # restored: nothing left to retry


def test_the_replay_group_resumes_at_the_first_letter_it_had_not_passed_wherever_it_landed(
    tmp_path: Path,
) -> None:
    letters = [Letter(0, o, None, "c2VhbGVk", [("lethe-error", "Ym9vbQ==")]) for o in (0, 1, 2)]
    letters += [Letter(3, o, "aw==", None) for o in (0, 1)]
    carried = Carried(letters, {0: 2, 3: 2})
    carried.save(tmp_path / "carried.json")
    assert Carried.load(tmp_path / "carried.json") == carried
    # Partition 0's letters landed after one a service dead-lettered meanwhile: offsets 1, 2, 3.
    landed = {(0, 0): 1, (0, 1): 2, (0, 2): 3, (3, 0): 0, (3, 1): 1}
    assert resume_offsets(carried, landed) == {0: 3, 3: 2}  # 3 passed them all: past its last


def test_a_stack_of_some_services_waits_only_for_their_groups() -> None:
    assert set(groups_of(["intake", "billing"])) == {
        topics.INGRESS_GROUP,
        topics.INTAKE_STATUS_GROUP,
        topics.NOTICES_GROUP,
        topics.worker_group("billing"),
        topics.worker_retry_group("billing"),
    }


class _Broker:
    """A consumer whose partitions' end offsets add up to each of `totals` in turn (then the
    last one), for `drained`."""

    def __init__(self, totals: list[int]) -> None:
        self.totals = totals

    def __call__(self, **_: object) -> _Broker:
        return self

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass

    async def end_offsets(self, found: list[object]) -> dict[object, int]:
        return {"p": self.totals.pop(0) if len(self.totals) > 1 else self.totals[0]}


def _drain(
    monkeypatch: pytest.MonkeyPatch, totals: list[int], behind: int, drain_s: float = 5
) -> tuple[int | None, dict[str, int] | None]:
    async def partitions(*_: object) -> list[str]:
        return ["p"]

    async def unread(_: object, groups: dict[str, object]) -> dict[str, int]:
        return dict.fromkeys(groups, behind)

    monkeypatch.setattr(shedding, "AIOKafkaConsumer", _Broker(totals))
    monkeypatch.setattr(shedding, "partitions_of", partitions)
    monkeypatch.setattr(shedding, "unread", unread)
    monkeypatch.setattr(shedding, "DRAIN_LOOK_S", 0.01)
    settings = SheddingSettings.model_validate({"mb": 100, "quiet_s": 0.1, "drain_s": drain_s})
    kafka = KafkaSettings()
    return asyncio.run(drained(kafka, ["t"], {"g": ["t"]}, Shedder(settings), lambda: False))


def test_drained_once_nothing_moves_for_the_quiet_time_and_all_was_read(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert _drain(monkeypatch, [5, 9, 12], behind=0) == (12, {"g": 0})


def test_a_drain_that_does_not_finish_is_given_up(monkeypatch: pytest.MonkeyPatch) -> None:
    """A group behind (its service's database down, say) keeps the broker from draining."""
    started = time.monotonic()
    assert _drain(monkeypatch, [12], behind=3, drain_s=1) == (None, {"g": 3})
    assert 1 <= time.monotonic() - started < 3


@pytest.mark.parametrize("total", [12, None])
def test_intakes_relay_is_held_for_the_drain_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, total: int | None
) -> None:
    """Held while the supervisor drains the broker, let go after the shed or once the drain was
    given up: requests go on at once."""
    stack = Stack(StackConfig(state_dir=tmp_path))
    stack.relay_hold_file.parent.mkdir(parents=True)
    held: list[bool] = []
    shed: list[int | None] = []

    async def drained(*_: object) -> tuple[int | None, dict[str, int]]:
        held.append(stack.relay_hold_file.exists())
        return total, {}

    def shed_unless(unless_produced_past: int | None) -> bool:
        held.append(stack.relay_hold_file.exists())
        shed.append(unless_produced_past)
        return True

    monkeypatch.setattr(supervision, "drained", drained)
    monkeypatch.setattr(stack.supervisor, "shed", shed_unless)
    assert stack.supervisor._drain_and_shed() == (total is not None)
    assert all(held) and shed == ([] if total is None else [total])
    assert not stack.relay_hold_file.exists()


def test_a_recovery_after_a_shed_publishes_again_only_the_last_seconds_of_completions() -> None:
    settings = TrackerSettings.model_validate({"recovery_window_s": 3600, "shed_recovery_window_s": 3})
    assert recovery.window(settings, None) == timedelta(hours=1)  # a broker lost: all the hour's
    assert recovery.window(settings, 0.5) == timedelta(seconds=3.5)  # a shed: read up to it
    assert recovery.window(settings, 7200) == timedelta(hours=1)  # never more than a loss's
