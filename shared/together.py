"""Several keys' messages of a batch handled in one unit of work (one transaction: a BEGIN and
a COMMIT for all, not a pair a key), by a consumer that can (`consume_forever`'s `together`).
A unit that fails is undone whole and its keys handled one at a time, each to its own end."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager

from aiokafka import ConsumerRecord

from shared.telemetry.messaging import consuming

log = logging.getLogger(__name__)
GroupHandler = Callable[[list[ConsumerRecord[bytes, bytes]]], Awaitable[None]]
# Opens one unit of work (a transaction) for several keys' groups: the handler it yields does
# a group's work in it; committed when the block completes, undone whole if it raises.
Together = Callable[[], AbstractAsyncContextManager[GroupHandler]]
TOGETHER_MAX = 64  # keys to a unit: each holds its locks (a saga's row) until the commit


def _key(group: list[ConsumerRecord[bytes, bytes]]) -> bytes:
    return group[0].key or b""


async def handle_together(
    groups: list[list[ConsumerRecord[bytes, bytes]]], together: Together, what: str
) -> bool:
    """True once every group was handled in one unit and it was committed; False (undone) to
    handle them one key at a time. The keys are taken in their sorted order: two units that
    share keys (instances of a service reading a request's messages from different topics, a
    timer) then lock them in one order and wait for each other, where in the order they came
    each could hold what the other waits for, until the lock limit or PostgreSQL's deadlock
    check undoes one or both."""
    try:
        async with together() as handle_group:
            for group in sorted(groups, key=_key):
                with consuming(group[0], what, links=[r.headers for r in group[1:]]) as span:
                    span.set_attribute("messaging.batch.message_count", len(group))
                    await handle_group(group)
        return True
    except Exception as exc:  # the type only: a message may quote the input
        log.warning(
            "batch undone; handled one key at a time",
            extra={"consumer": what, "keys": len(groups), "error": type(exc).__name__},
        )
        return False
