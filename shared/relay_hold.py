"""A request to hold an outbox relay for a moment, made through a file.

The embedded stack sheds its broker's history by starting it again, empty, once everything on
it was read (cli/shedding.py). Under steady load something is always on the way; so the stack
first asks intake to hold its relay (it creates this file), waits the second or so the pipeline
takes to drain, sheds, and removes the file. Submissions meanwhile are accepted as ever and wait
in the outbox, which is what it is for. A file older than `LONGEST_S` is ignored: a supervisor
that died mid-drain must not leave requests undispatched.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

LONGEST_S = 60.0  # a hold older than this is a supervisor's leftover: ignored


class RelayHold:
    """`held()` is asked by the relay before each batch: one stat of a local file."""

    def __init__(self, path: Path | None, clock: Callable[[], float] = time.time) -> None:
        self.path = path
        self._clock = clock

    def __call__(self) -> bool:
        if self.path is None:
            return False
        try:
            made = os.stat(self.path).st_mtime
        except OSError:
            return False
        return self._clock() - made < LONGEST_S
