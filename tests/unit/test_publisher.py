"""Sends handed to the producer together (`Publisher.publish_all`): in the order given, and,
when one fails, all sent again one by one until acknowledged."""

from __future__ import annotations

import asyncio
from typing import Any

from aiokafka.errors import KafkaTimeoutError
from opentelemetry import trace

from shared import topics
from shared.crypto import IdentifierSeal, new_identifier_key
from shared.delivery import Publisher

SEAL = IdentifierSeal(new_identifier_key())


class Failing:
    """Takes sends; the acknowledgement of the third fails (a broker that went away)."""

    def __init__(self) -> None:
        self.queued: list[bytes] = []
        self.sent: list[bytes] = []

    async def send(self, topic: str, **message: Any) -> asyncio.Future[None]:
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.queued.append(message["value"])
        if len(self.queued) == 3:
            done.set_exception(KafkaTimeoutError())
        else:
            done.set_result(None)
        return done

    async def send_and_wait(self, topic: str, **message: Any) -> None:
        self.sent.append(message["value"])


async def test_sends_handed_over_together_that_fail_are_sent_again_one_by_one_in_order() -> None:
    producer = Failing()
    messages = [(topics.OUTCOMES, b"k", str(n).encode(), trace.INVALID_SPAN) for n in range(5)]
    await Publisher(producer, SEAL).publish_all(messages)  # type: ignore[arg-type]
    assert producer.queued == [b"0", b"1", b"2", b"3", b"4"]
    assert producer.sent == [b"0", b"1", b"2", b"3", b"4"]
