"""The load generator's submitting side, in a process of its own with a minimal HTTP/1.1 client.

Measured: with httpx in the process that also reads the completions, a lone client saw intake
answer in 13 ms (p50) while the benchmark's own client reported 20 s: the load generator, not
intake, was where submissions waited (hundreds of connections in flight, each costing more
client CPU than intake spent on it). Here each submission is a few hundred bytes written on a
kept-alive connection from a small pool, and its time is from the write to the status line.

Open loop: submissions are started on schedule whatever the answers; one refused with 503 is
sent again after its Retry-After, as a DSAR tool would."""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import queue
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from cli.processes import die_with_parent

CONNECTIONS = 32  # kept open: at intake's answering time, far more than 100/s needs


@dataclass
class Submissions:
    submitted: dict[str, float] = field(default_factory=dict)  # time.monotonic() of the first send
    http_ms: list[float] = field(default_factory=list)
    shed: int = 0
    errors: Counter[str] = field(default_factory=Counter)


class Connection:
    def __init__(self, host: str, port: int, token: str) -> None:
        self.host, self.port = host, port
        self.head = f"POST /v1/requests HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {token}\r\n"
        self.streams: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None

    async def post(self, body: bytes) -> tuple[int, dict[str, str]]:
        if self.streams is None:
            self.streams = await asyncio.open_connection(self.host, self.port)
        reader, writer = self.streams
        try:
            writer.write(
                f"{self.head}Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n".encode()
                + body
            )
            status = int((await reader.readline()).split()[1])
            headers = {}
            while (line := await reader.readline()) not in (b"\r\n", b""):
                name, _, value = line.decode().partition(":")
                headers[name.strip().lower()] = value.strip()
            await reader.readexactly(int(headers.get("content-length", "0")))
        except (OSError, IndexError, ValueError, asyncio.IncompleteReadError):
            self.streams = None
            writer.close()
            raise
        if headers.get("connection") == "close":
            self.streams = None
            writer.close()
        return status, headers


async def submit(api_url: str, token: str, bodies: list[dict[str, Any]], rate: float) -> Submissions:
    url = urlsplit(api_url)
    pool: asyncio.Queue[Connection] = asyncio.Queue()
    for _ in range(CONNECTIONS):
        pool.put_nowait(Connection(url.hostname or "127.0.0.1", url.port or 80, token))
    out = Submissions()

    async def one(body: dict[str, Any]) -> None:
        rid = body["request_id"]
        out.submitted[rid] = time.monotonic()
        raw = json.dumps(body).encode()
        outcome = "no answer"
        for _ in range(1000):  # idempotent by request id: sent again until taken
            conn = await pool.get()
            sent = time.monotonic()
            try:
                status, headers = await conn.post(raw)
            except (OSError, IndexError, ValueError, asyncio.IncompleteReadError) as exc:
                outcome = type(exc).__name__
                continue
            finally:
                pool.put_nowait(conn)
            out.http_ms.append((time.monotonic() - sent) * 1000)
            outcome = f"HTTP {status}"
            if status != 503:
                break
            out.shed += 1
            await asyncio.sleep(float(headers.get("retry-after", "1")))
        if outcome != "HTTP 202":
            out.errors[outcome] += 1
            out.submitted.pop(rid, None)

    t0 = time.monotonic()
    tasks = []
    for i, body in enumerate(bodies):
        delay = t0 + i / rate - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(body)))
    await asyncio.gather(*tasks)
    return out


def _child(api_url: str, token: str, bodies: list[dict[str, Any]], rate: float, results: Any) -> None:
    die_with_parent()  # a run stopped midway must not leave its load running into the next one
    results.put(asyncio.run(submit(api_url, token, bodies, rate)))


async def submit_in_process(
    api_url: str, token: str, bodies: list[dict[str, Any]], rate: float
) -> Submissions:
    """Run `submit` in a child process; this one's event loop stays free for its own work."""
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    child = context.Process(target=_child, args=(api_url, token, bodies, rate, results), daemon=True)
    child.start()
    try:
        while True:
            try:
                outcome: Submissions = await asyncio.to_thread(results.get, True, 1.0)
                return outcome
            except queue.Empty:  # not done yet
                if not child.is_alive():
                    raise RuntimeError(f"the submitting process exited ({child.exitcode})") from None
    finally:
        child.join(timeout=5)
