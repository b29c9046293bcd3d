"""A service's background task that ends while it runs stops the service (shared/service.py):
intake's status consumer died of one message and intake answered ready for good."""

from __future__ import annotations

import asyncio

from shared.service import stop_if_any_ends


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
