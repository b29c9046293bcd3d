"""The benchmark's own arithmetic: a stall or a window computed wrongly would misreport a run."""

from __future__ import annotations

import math

from bench.stats import cpu_ms_per_request, longest_stall, windows


def test_a_stall_is_the_longest_gap_with_work_pending() -> None:
    submitted = {"a": 0.0, "b": 0.1, "c": 0.2}
    completed = {"a": 0.5, "b": 3.5, "c": 3.6}
    assert longest_stall(submitted, completed) == 3.0  # b and c waited from 0.5 to 3.5


def test_idle_time_between_requests_is_no_stall() -> None:
    submitted = {"a": 0.0, "b": 10.0}
    completed = {"a": 0.4, "b": 10.3}
    assert math.isclose(longest_stall(submitted, completed), 0.4)


def test_a_request_that_never_completes_keeps_the_stall_open() -> None:
    submitted = {"a": 0.0, "b": 1.0, "c": 2.0}
    completed = {"a": 0.2, "c": 9.0}
    # b is pending from 1.0; c's completion at 9.0 ends the stretch that began when b arrived
    assert longest_stall(submitted, completed) == 8.0
    assert longest_stall({"a": 0.0, "b": 1.0}, {"a": 0.5}) == 0.5  # the run ended at b


def test_windows_group_by_submission_time_and_count_the_missing() -> None:
    submitted = {"a": 100.0, "b": 150.0, "c": 400.0, "d": 450.0}
    completed = {"a": 100.5, "b": 151.0, "c": 402.0}
    result = windows(submitted, completed, 300.0)
    assert [w["from_s"] for w in result] == [0, 300]
    assert result[0]["completed"] == 2 and result[0]["p99"] == 1.0
    assert result[1]["completed"] == 1 and result[1]["not_completed"] == 1


def test_cpu_per_request_leaves_out_the_load_generator() -> None:
    usage = {"intake": 2.0, "postgres": 3.0, "load generator": 50.0}
    assert cpu_ms_per_request(usage, 100) == 50.0
    assert math.isnan(cpu_ms_per_request(usage, 0))
