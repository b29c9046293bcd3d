"""LETHE_EVENT_LOOP picks the services' event loop, strictly."""

from __future__ import annotations

import asyncio

import pytest

from shared.service import event_loop_factory


def test_uvloop_by_default_and_it_runs_a_coroutine(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LETHE_EVENT_LOOP", raising=False)
    factory = event_loop_factory()
    assert factory is not None
    with asyncio.Runner(loop_factory=factory) as runner:
        assert runner.run(asyncio.sleep(0, result="ran")) == "ran"
        assert type(runner.get_loop()).__module__.startswith("uvloop")


def test_asyncio_on_request(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LETHE_EVENT_LOOP", "asyncio")
    assert event_loop_factory() is None


def test_a_bad_value_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LETHE_EVENT_LOOP", "trio")
    with pytest.raises(ValueError, match="LETHE_EVENT_LOOP"):
        event_loop_factory()
