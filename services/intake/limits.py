"""Limits: token buckets (calls per token, failed authentications per address), and the
request body size, as ASGI middleware so that a chunked body without Content-Length is counted
too: an oversized body is refused with 413 before the application reads it."""

from __future__ import annotations

import json
import math
import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send


class RateLimiter:
    """A token bucket per key (a token, a client address): `rate` a second, bursts up to `burst`."""

    MAX_KEYS = 100_000  # past this, full buckets are forgotten (they mean the same as none)

    def __init__(self, rate: float, burst: int) -> None:
        self.rate = rate
        self.burst = burst
        self._buckets: dict[str, tuple[float, float]] = {}

    def _level(self, key: str, now: float) -> float:
        tokens, last = self._buckets.get(key, (float(self.burst), now))
        return min(self.burst, tokens + (now - last) * self.rate)

    def wait(self, key: str) -> float:
        """The seconds until `key` may go again (0: now), taking nothing from its bucket."""
        tokens = self._level(key, time.monotonic())
        return 0.0 if tokens >= 1 else (1 - tokens) / self.rate

    def allow(self, key: str) -> float:
        """0 if allowed (and one taken from the bucket), else the seconds to wait."""
        now = time.monotonic()
        tokens = self._level(key, now)
        if tokens < 1:
            self._buckets[key] = (tokens, now)
            return (1 - tokens) / self.rate
        self._buckets[key] = (tokens - 1, now)
        if len(self._buckets) > self.MAX_KEYS:
            self._forget_full(now)
        return 0.0

    def _forget_full(self, now: float) -> None:
        """Addresses are many (IPv6): keep memory bounded by dropping the buckets that have
        refilled (or, if none has, the fuller half: the emptiest are the ones still throttled)."""
        levels = sorted(self._buckets, key=lambda k: self._level(k, now), reverse=True)
        full = [k for k in levels if self._level(k, now) >= self.burst]
        for key in full or levels[: len(levels) // 2]:
            del self._buckets[key]


def retry_after(wait: float) -> dict[str, str]:
    """Whole seconds, at least one: `Retry-After: 0` would invite an immediate retry."""
    return {"Retry-After": str(max(1, math.ceil(wait)))}


class BodyTooLarge(Exception):
    pass


class BodySizeLimit:
    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._refuse(send)
            return
        seen = 0

        async def counting_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise BodyTooLarge
            return message

        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except BodyTooLarge:
            if not started:
                await self._refuse(send)

    async def _refuse(self, send: Send) -> None:
        await refuse(send, 413, f"body: larger than {self.max_bytes} bytes")


async def refuse(send: Send, status: int, detail: str, headers: dict[str, str] | None = None) -> None:
    """An error answered from middleware, in the shape the application's errors have."""
    payload = json.dumps({"detail": detail}).encode()
    extra = [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(payload)).encode()),
                *extra,
            ],
        }
    )
    await send({"type": "http.response.body", "body": payload})
