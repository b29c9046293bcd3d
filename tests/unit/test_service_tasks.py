"""How a service stops (shared/service.py): a background task that ends while it runs stops
the service (intake's status consumer died of one message and intake answered ready for good);
a bad setting stops it before it starts, naming the variable."""

from __future__ import annotations

import asyncio
from datetime import UTC, date, datetime

import pytest

from services.intake import pages
from shared.service import run_service, stop_if_any_ends


async def test_a_task_that_raises_or_returns_stops_the_service_and_is_named() -> None:
    async def fails() -> None:
        raise RecursionError

    async def returns() -> None:
        return None

    for body, name in ((fails, "status consumer"), (returns, "relay")):
        stop, ended = asyncio.Event(), []
        task = asyncio.create_task(body(), name=name)
        stop_if_any_ends([task], stop, ended)
        await asyncio.wait_for(stop.wait(), 5)
        assert ended == [name]


async def test_a_task_cancelled_at_shutdown_stops_nothing() -> None:
    stop, ended = asyncio.Event(), []
    task = asyncio.create_task(asyncio.sleep(60), name="waiting")
    stop_if_any_ends([task], stop, ended)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    await asyncio.sleep(0)
    assert not stop.is_set() and ended == []


def test_a_log_level_that_is_no_level_stops_the_service_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("LETHE_LOG_LEVEL", "LOUD")
    with pytest.raises(SystemExit) as stopped:
        run_service("lethe-test", _never_runs)
    assert stopped.value.code == 2
    assert capsys.readouterr().err.strip() == (
        "lethe-test: configuration error: LETHE_LOG_LEVEL: expected one of DEBUG, INFO, WARNING,"
        " ERROR, CRITICAL, got 'LOUD'"
    )


async def _never_runs(stop: asyncio.Event) -> None:
    raise AssertionError("a service with a bad log level must not start")


def test_a_period_to_the_last_day_there_is_has_no_end() -> None:
    """`received_to=9999-12-31` on the export and the dashboard: a 500 (a day past date.max)."""
    assert pages.period(None, date.max) == (None, None)
    assert pages.period(date(2026, 1, 1), date(2026, 1, 31))[1] == datetime(2026, 2, 1, tzinfo=UTC)
