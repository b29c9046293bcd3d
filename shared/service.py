"""Running a service process: logs, settings errors that name the variable, and a clean stop
on SIGINT/SIGTERM."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from shared.codec import describe_validation_error
from shared.logs import configure_logging


def settings_error(exc: ValidationError) -> str:
    field, reason = describe_validation_error(exc)
    prefix = getattr(exc, "title", "")
    return f"configuration error in {prefix}: {field.upper()}: {reason}"


def run_service(name: str, main: Callable[[asyncio.Event], Coroutine[Any, Any, None]]) -> None:
    """Run `main(stop_event)` until it returns; the first SIGINT/SIGTERM sets the event."""
    configure_logging(name)

    async def runner() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await main(stop)

    try:
        asyncio.run(runner())
    except ValidationError as exc:
        print(f"{name}: {settings_error(exc)}", file=sys.stderr)
        sys.exit(2)
    except ValueError as exc:  # settings parsed but unusable: a malformed key, a bad policy file
        print(f"{name}: configuration error: {exc}", file=sys.stderr)
        sys.exit(2)


def mark_ready() -> None:
    """Tell a supervisor (the embedded stack, a test) that this process is up: it touches the
    file named by LETHE_READY_FILE, if any. Kubernetes uses the HTTP probes instead."""
    ready_file = os.environ.get("LETHE_READY_FILE")
    if ready_file:
        Path(ready_file).touch()
