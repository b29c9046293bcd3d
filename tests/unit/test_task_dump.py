"""SIGUSR1 makes a service log where each of its tasks waits: the await chain down to the line."""

from __future__ import annotations

import asyncio
import logging

import pytest

from shared.telemetry.tasks import dump_tasks


async def _inner() -> None:
    await asyncio.sleep(10)


async def _stuck() -> None:
    await _inner()


async def test_the_dump_names_each_task_and_the_line_it_waits_on(caplog: pytest.LogCaptureFixture) -> None:
    task = asyncio.create_task(_stuck(), name="consumer")
    await asyncio.sleep(0.01)
    with caplog.at_level(logging.WARNING):
        dump_tasks()
    task.cancel()
    [record] = [r for r in caplog.records if getattr(r, "task", None) == "consumer"]
    where = record.where  # type: ignore[attr-defined]
    assert "test_task_dump.py" in where and "_stuck" in where and "_inner" in where and "sleep" in where
