"""Where every asyncio task of a process waits, on SIGUSR1: a consumer that stopped without an
error (a library retrying something for ever, silently) shows the line it waits on. Code
locations only: no arguments, no values, nothing personal."""

from __future__ import annotations

import asyncio
import logging
import types
from collections.abc import Iterator
from typing import Any

log = logging.getLogger(__name__)


def await_chain(coro: Any, depth: int = 40) -> Iterator[str]:
    """file:line:function of each coroutine a task is awaiting through, outermost first."""
    while coro is not None and depth > 0:
        frame = getattr(coro, "cr_frame", None) or getattr(coro, "gi_frame", None)
        if isinstance(frame, types.FrameType):
            code = frame.f_code
            yield f"{code.co_filename.rsplit('/', 1)[-1]}:{frame.f_lineno}:{code.co_name}"
        coro = getattr(coro, "cr_await", None) or getattr(coro, "gi_yieldfrom", None)
        depth -= 1


def dump_tasks() -> None:
    for task in asyncio.all_tasks():
        log.warning(
            "task waiting",
            extra={"task": task.get_name(), "where": " > ".join(await_chain(task.get_coro()))},
        )
    from shared import fetching  # here: fetching's metrics import this package

    for place in fetching.standing():
        log.warning("consumer standing", extra=place)
