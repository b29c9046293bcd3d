"""When the embedded stack sheds its broker's history (cli/shedding.py), and how a service is
told to check the broker at once."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path

import pytest

from cli import carry_over, supervision
from cli.carry_over import Carried, Letter, resume_offsets
from cli.shedding import Shedder, SheddingSettings, groups_of, rss_mb
from cli.stack import Stack, StackConfig
from shared import broker_memory, topics


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


def test_asked_only_past_the_limit_and_while_the_memory_stays_still() -> None:
    s = shedder(mb=100)
    assert not s.worth_asking(99)
    assert s.worth_asking(100)
    assert not s.observe(7, now=0)
    assert s.worth_asking(100.5)  # still: allocator noise
    assert not s.worth_asking(110)  # growing: the broker is being given work, and the quiet is reset
    assert s.worth_asking(110)
    assert not s.observe(7, now=100)  # counted from here, not from the first look
    assert s.observe(7, now=110)


def test_a_bad_setting_names_its_variable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LETHE_BROKER_SHED_QUIET_S", "0")
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
