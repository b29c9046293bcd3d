"""Admission: an overloaded intake sheds submissions at once with 503 and Retry-After, without
reading them, and lets everything else through."""

from __future__ import annotations

import asyncio
from typing import Any

from services.intake.admission import Admission, AdmissionLimits, Load, refusal

LIMITS = AdmissionLimits(max_in_flight=2, target_s=0.1, retry_after_s=1.0)


def test_refusal_follows_the_limit() -> None:
    assert refusal(Load(in_flight=1, limit=2), LIMITS) is None
    assert refusal(Load(in_flight=2, limit=2), LIMITS) == 1.0
    assert refusal(Load(in_flight=0, limit=1), LIMITS) is None  # a lone sender always gets in


def test_retry_after_spreads_senders_over_the_time_intake_needs_for_them() -> None:
    load = Load(limit=1, in_flight=1)
    load.count(admitted=True, now=10.0)
    for _ in range(40):
        load.count(admitted=False, now=10.5)
    assert refusal(load, LIMITS) == 1.0  # the second is not over: the last one's figure stands
    load.count(admitted=True, now=11.1)
    assert load.wait_s == 30.0  # forty refused for one taken, capped
    assert refusal(load, LIMITS) == 30.0
    load.count(admitted=True, now=12.2)  # one taken, none refused in the second before
    assert refusal(load, LIMITS) == 1.0
    for _ in range(40):
        load.count(admitted=False, now=12.5)
    load.count(admitted=True, now=600.0)  # after a quiet spell the old second says nothing
    assert refusal(load, LIMITS) == 1.0


def test_the_limit_shrinks_while_submissions_are_slow_and_grows_back() -> None:
    limits = AdmissionLimits(max_in_flight=64, target_s=0.1)
    load = Load(limit=32)
    for i in range(40):
        load.answered(0.5, limits, now=i * 0.1)
    assert load.limit < 1.5  # past the target: down to one at a time, never to none
    assert refusal(Load(in_flight=0, limit=load.limit), limits) is None
    for _ in range(200):
        load.answered(0.01, limits, now=10.0)
    assert 15 < load.limit <= 64  # additive: a few hundred fast answers to get back
    for _ in range(10_000):
        load.answered(0.01, limits, now=10.0)
    assert load.limit == 64


def test_submissions_slow_together_shrink_the_limit_once() -> None:
    limits = AdmissionLimits(max_in_flight=64, target_s=0.25)
    load = Load(limit=20)
    for _ in range(16):  # a batch answered late together: the process was descheduled once
        load.answered(0.4, limits, now=5.0)
    assert load.limit == 18.0
    load.answered(0.4, limits, now=5.3)  # a target interval later: a new signal
    assert load.limit == 18.0 * 0.9


class Inner:
    def __init__(self) -> None:
        self.calls = 0
        self.release = asyncio.Event()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        self.calls += 1
        await self.release.wait()
        await send({"type": "http.response.start", "status": 202, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})


async def _call(app: Admission, method: str, path: str) -> list[dict[str, Any]]:
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"{}", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app({"type": "http", "method": method, "path": path, "headers": []}, receive, send)
    return sent


async def test_submissions_past_the_limit_are_shed_and_others_pass() -> None:
    inner = Inner()
    load = Load(limit=2)
    app = Admission(inner, LIMITS, load)
    first = [asyncio.create_task(_call(app, "POST", "/v1/requests")) for _ in range(2)]
    await asyncio.sleep(0.01)
    assert load.in_flight == 2

    shed = await _call(app, "POST", "/v1/requests")
    assert shed[0]["status"] == 503
    assert (b"retry-after", b"1") in shed[0]["headers"]
    assert inner.calls == 2

    reads = asyncio.create_task(_call(app, "GET", "/v1/requests"))  # not a submission: let through
    await asyncio.sleep(0.01)
    assert inner.calls == 3
    inner.release.set()
    answers = await asyncio.gather(*first, reads)
    assert [a[0]["status"] for a in answers] == [202, 202, 202]
    assert load.in_flight == 0


async def test_a_body_still_arriving_holds_no_place_and_is_not_counted_slow() -> None:
    """A sender trickling its body (no token needed to do it) must not have intake refuse
    everyone else: the body is read before a place is taken and the clock starts."""
    chunks: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    inner = Inner()
    inner.release.set()
    seen: list[bytes] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.append((await receive())["body"])
        await inner(scope, receive, send)

    load = Load(limit=1)
    admission = Admission(app, LIMITS, load)
    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/v1/requests", "headers": []}
    slow = asyncio.create_task(admission(scope, chunks.get, send))
    await chunks.put({"type": "http.request", "body": b'{"a"', "more_body": True})
    await asyncio.sleep(0.3)
    assert load.in_flight == 0  # still receiving: no place taken
    assert refusal(load, LIMITS) is None  # another sender would get in
    await chunks.put({"type": "http.request", "body": b": 1}", "more_body": False})
    await slow
    assert seen == [b'{"a": 1}'] and sent[0]["status"] == 202
    assert load.limit >= 1.0 and load.in_flight == 0
