"""Running a service process: logs, telemetry, the health endpoint, settings errors that name
the variable, and a clean stop on SIGINT/SIGTERM."""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import signal
import sys
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from pydantic_settings import BaseSettings

from shared.broker_memory import listen_for_nudges
from shared.codec import describe_validation_error
from shared.logs import configure_logging
from shared.telemetry.health import HealthServer, Readiness
from shared.telemetry.setup import setup_telemetry, shutdown_telemetry
from shared.telemetry.tasks import dump_tasks

_readiness: list[Readiness] = []

log = logging.getLogger(__name__)


def settings_error(exc: ValidationError) -> str:
    """One line naming the environment variable (LETHE_DATABASE_URL), not the field."""
    field, reason = describe_validation_error(exc)
    prefix = _env_prefix(exc.title)
    name = field.upper() if field.upper().startswith(prefix) else f"{prefix}{field.upper()}"
    return f"configuration error in {exc.title}: {name}: {reason}"


def _env_prefix(title: str) -> str:
    pending: list[type] = [BaseSettings]
    while pending:
        cls = pending.pop()
        if cls.__name__ == title and issubclass(cls, BaseSettings):
            return str(cls.model_config.get("env_prefix", ""))
        pending.extend(cls.__subclasses__())
    return ""


def set_readiness(check: Readiness) -> None:
    """What /readyz reports for this process (database, broker, directory…)."""
    _readiness[:] = [check]


async def _readiness_now() -> dict[str, bool]:
    return await _readiness[0]() if _readiness else {}


_service_process = False  # set by run_service: the process is the service's own


def run_service(name: str, main: Callable[[asyncio.Event], Coroutine[Any, Any, None]]) -> None:
    """Run `main(stop_event)` until it returns; the first SIGINT/SIGTERM sets the event."""
    global _service_process
    _service_process = True

    async def runner() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        loop.add_signal_handler(signal.SIGUSR1, dump_tasks)  # where each task waits, in the log
        listen_for_nudges(loop)  # SIGUSR2: check the broker now
        health = None
        port = os.environ.get("LETHE_METRICS_PORT")
        if port:
            if not port.isdigit():
                raise ValueError("LETHE_METRICS_PORT: not a port number")
            health = HealthServer(
                os.environ.get("LETHE_METRICS_HOST", "127.0.0.1"), int(port), _readiness_now
            )
            await health.start()
        try:
            await main(stop)
        finally:
            if health is not None:
                await health.stop()

    try:
        configure_logging(name)  # a bad LETHE_LOG_LEVEL is reported below, as any setting is
        setup_telemetry(name)
        with asyncio.Runner(loop_factory=event_loop_factory()) as loop_runner:
            loop_runner.run(runner())
    except ValidationError as exc:
        print(f"{name}: {settings_error(exc)}", file=sys.stderr)
        sys.exit(2)
    except ValueError as exc:  # settings parsed but unusable: a malformed key, a bad policy file
        print(f"{name}: configuration error: {exc}", file=sys.stderr)
        sys.exit(2)
    finally:
        shutdown_telemetry()


def stop_if_any_ends(tasks: list[asyncio.Task[Any]], stop: asyncio.Event, ended: list[str]) -> None:
    """A background task that ends while the service runs (a consumer whose loop raised) stops
    the service, logged, so that its supervisor starts it again: alive without it, the service
    would answer ready while, say, no status were folded any more. The names of those that
    ended go into `ended`, for the caller to exit with an error."""

    def done(task: asyncio.Task[Any]) -> None:
        if task.cancelled() or stop.is_set():
            return
        error = task.exception()
        log.error(
            "background task ended; stopping",
            extra={"task": task.get_name(), "error": type(error).__name__ if error else "returned"},
            exc_info=error,
        )
        ended.append(task.get_name())
        stop.set()

    for task in tasks:
        task.add_done_callback(done)


def mark_ready() -> None:
    """Tell a supervisor (the embedded stack, a test) that this process is up: it touches the
    file named by LETHE_READY_FILE, if any. Kubernetes uses /readyz instead.

    What the start made (modules, schemas, the telemetry SDK: some 65,000 objects in a worker,
    110,000 in intake) lives as long as the process, and each of the garbage collector's full
    passes walked all of it again: frozen, it is left out of them (30 to 50 ms of a service's
    CPU a full pass less; docs/performance.md, fifteenth part). Once, in a service's own process
    (a test process starts many). The price: an object made at the start and dropped later in
    a reference cycle (a client replaced after a reconnect) is never collected."""
    if _service_process and not gc.get_freeze_count():
        gc.collect()  # what the start left as garbage is not kept for good
        gc.freeze()
    ready_file = os.environ.get("LETHE_READY_FILE")
    if ready_file:
        Path(ready_file).touch()


def event_loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """LETHE_EVENT_LOOP: uvloop (default) or asyncio. uvloop runs the same code on libuv with
    the event loop in C; every service spends much of its CPU in the loop and its socket
    calls, and with uvloop the stack completes more requests per second (docs/performance.md,
    before issue 17). asyncio stays available to rule the loop out when debugging."""
    choice = os.environ.get("LETHE_EVENT_LOOP", "uvloop").strip().lower()
    if choice == "asyncio":
        return None
    if choice == "uvloop":
        import uvloop

        return uvloop.new_event_loop
    raise ValueError(f"LETHE_EVENT_LOOP: expected uvloop or asyncio, got {choice!r}")
