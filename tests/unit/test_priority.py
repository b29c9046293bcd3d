"""The embedded stack's process priorities (cli/priority.py)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from cli.priority import PrioritySettings
from cli.processes import spawn


def test_the_pipeline_yields_to_intake_and_intake_keeps_its_priority() -> None:
    settings = PrioritySettings.load({"LETHE_EMBEDDED_PIPELINE_NICE": "7"})
    assert settings.nice_of("intake") == 0
    assert settings.nice_of("intake-b") == 0  # a second instance of it
    assert {settings.nice_of(p) for p in ("billing", "tracker", "broker", "slapd", "directory-b")} == {7}


def test_a_bad_value_names_the_variable() -> None:
    with pytest.raises(RuntimeError, match="LETHE_EMBEDDED_PIPELINE_NICE"):
        PrioritySettings.load({"LETHE_EMBEDDED_PIPELINE_NICE": "40"})
    with pytest.raises(RuntimeError, match="LETHE_EMBEDDED_PIPELINE_NICE"):
        PrioritySettings.load({"LETHE_EMBEDDED_PIPELINE_NICE": "high"})


def test_a_spawned_process_runs_at_the_nice_value_it_was_given(tmp_path: Path) -> None:
    ours = os.nice(0)
    child = spawn("child", [sys.executable, "-c", "import os; print(os.nice(0))"], os.environ, tmp_path, 3)
    assert child.wait(timeout=30) == 0
    assert (tmp_path / "child.log").read_text().strip() == str(min(ours + 3, 19))
