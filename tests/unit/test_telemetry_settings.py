"""LETHE_TRACE_SQL is read strictly: a typo must say which variable, not silently pick a side."""

from __future__ import annotations

import pytest

from shared.telemetry.setup import trace_sql


@pytest.mark.parametrize(
    ("raw", "expected"), [("true", True), ("ON", True), ("1", True), ("false", False), ("", False)]
)
def test_trace_sql_reads_the_usual_spellings(
    monkeypatch: pytest.MonkeyPatch, raw: str, expected: bool
) -> None:
    monkeypatch.setenv("LETHE_TRACE_SQL", raw)
    assert trace_sql() is expected


def test_trace_sql_is_off_unless_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LETHE_TRACE_SQL", raising=False)
    assert trace_sql() is False


def test_a_bad_value_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LETHE_TRACE_SQL", "sometimes")
    with pytest.raises(ValueError, match="LETHE_TRACE_SQL"):
        trace_sql()
