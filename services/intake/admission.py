"""Admission: a submission is answered fast whatever the load. When the pipeline is saturated the
work waits in the outbox and on the topics, which is what they are for, and intake goes on
accepting; only when intake itself falls behind (submissions taking longer than the target)
does it shed new ones with `503` and `Retry-After`, before checking their token, validating
them or writing anything: a refused submission costs next to nothing and stores
nothing, and the client sends it again (a submission is idempotent by its request id).

Measured without it, on a saturated 2-core machine: submissions took 0.6 s inside intake at
the median and 3 s at p99 (its event loop and its database share the CPU with the pipeline),
and an upstream DSAR tool waited that long for each answer."""

from __future__ import annotations

import time
from dataclasses import dataclass

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services.intake.limits import refuse, retry_after
from shared.telemetry.metrics import METER

shed = METER.create_counter("lethe_submissions_shed", description="Submissions refused with 503 under load")
SUBMIT_PATH = "/v1/requests"
BUSY = "intake is busy: send the request again after Retry-After"


@dataclass(frozen=True)
class AdmissionLimits:
    max_in_flight: int = 64  # submissions inside the application at once, at most
    target_s: float = 0.25  # how long a submission should take; past it, fewer are let in at once
    retry_after_s: float = 1.0


@dataclass
class Load:
    """What admission decides on. `limit` is how many submissions may be inside at once: it
    grows by one per `limit` submissions answered within the target and shrinks by a tenth when
    one is slower (additive increase, multiplicative decrease, as TCP's congestion window), so it
    settles where intake and its database answer within the target on the CPU they get. Like
    TCP it shrinks at most once per target interval: submissions that were slow together (the
    process descheduled once) are one signal, not one each; shrinking for each collapsed the
    limit and held intake's acceptance far below what the pipeline could take."""

    in_flight: int = 0
    limit: float = 8.0  # at least one: a lone sender is never refused
    # Retry-After: refused per admitted submission over the last whole second, so that senders
    # told to wait come back spread over about as long as intake needs to take them all, not
    # all together a second later (which only refuses them again).
    wait_s: float = 1.0
    _second: tuple[float, int, int] = (0.0, 0, 0)  # (its start, admitted, refused)
    _shrunk_at: float = float("-inf")

    def count(self, admitted: bool, now: float) -> None:
        start, taken, refused = self._second
        if now - start >= 1.0:
            # From the second just ended; one that ended long ago (a quiet spell) says nothing.
            recent = now - start < 2.0
            self.wait_s = min(30.0, max(1.0, refused / max(1, taken))) if recent else 1.0
            start, taken, refused = now, 0, 0
        self._second = (start, taken + admitted, refused + (not admitted))

    def answered(self, seconds: float, limits: AdmissionLimits, now: float) -> None:
        if seconds > limits.target_s:
            if now - self._shrunk_at >= limits.target_s:
                self.limit = max(1.0, self.limit * 0.9)
                self._shrunk_at = now
        else:
            self.limit = min(float(limits.max_in_flight), self.limit + 1 / self.limit)


def refusal(load: Load, limits: AdmissionLimits) -> float | None:
    """None to admit a submission, else the seconds to ask its sender to wait."""
    if load.in_flight >= int(load.limit):
        return max(limits.retry_after_s, load.wait_s)
    return None


class Admission:
    """ASGI middleware, inside the body limit and outside authentication and the application."""

    def __init__(self, app: ASGIApp, limits: AdmissionLimits, load: Load) -> None:
        self.app = app
        self.limits = limits
        self.load = load

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not (scope["type"] == "http" and scope["method"] == "POST" and scope["path"] == SUBMIT_PATH):
            await self.app(scope, receive, send)
            return
        # The body first, before taking a place: a sender that trickles its body waits on its
        # own connection, holds no place another needs and is not taken for intake being slow
        # (else a few slow senders, no token needed, would have every submission refused).
        body = await _read_body(receive)  # at most LETHE_MAX_BODY_BYTES: the limit outside
        if body is None:
            return  # the sender went away
        wait = refusal(self.load, self.limits)
        started = time.monotonic()
        self.load.count(admitted=wait is None, now=started)
        if wait is not None:
            shed.add(1)
            await refuse(send, 503, BUSY, retry_after(wait))
            return
        self.load.in_flight += 1
        try:
            await self.app(scope, _replay(body, receive), send)
        finally:
            self.load.in_flight -= 1
            now = time.monotonic()
            self.load.answered(now - started, self.limits, now)


async def _read_body(receive: Receive) -> bytes | None:
    """The whole body, or None if the sender disconnected first."""
    chunks = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


def _replay(body: bytes, receive: Receive) -> Receive:
    """The body already read, then whatever the connection says next (a disconnect)."""
    sent = False

    async def replayed() -> Message:
        nonlocal sent
        if sent:
            return await receive()
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replayed
